//! The cluster as this node knows it: an immutable, generation-numbered
//! snapshot of every member the local Serf agent reports (`view`), kept
//! current by `sync`: the agent's log lines (`trigger`) and stream records
//! pick members to re-read, a slow full `members` read reconciles the rest.

mod sync;
mod trigger;
mod view;

pub use sync::{next_client, run as sync, SyncConfig};
pub use view::{AgentState, Containers, Entry, Mirror, Shown, Snapshot, View};
