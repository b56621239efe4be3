//! The cluster as this node knows it: an immutable, generation-numbered
//! snapshot of every member the local Serf agent reports (`view`), kept
//! current from the agent's RPC stream and `members` reads (`sync`).

mod sync;
mod view;

pub use sync::{next_client, run as sync, SyncConfig};
pub use view::{AgentState, Containers, Entry, Mirror, Shown, Snapshot, View};
