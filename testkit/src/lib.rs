//! serfnode's one test kit: what every integration test and benchmark
//! shares to run real parts and wait for them. [`daemon`] runs the real
//! `serfnode` binary, [`agent`] raw `serf agent` processes, [`fake_agent`] a
//! stand-in speaking Serf's msgpack RPC (for unit tests and views larger
//! than this machine can run), [`addr`] hands out loopback addresses no
//! other test binary uses, [`wait`] waits for a condition and says what it
//! waited for, [`process`] signals, reaps, mounts and logs, [`keys`] makes
//! gossip keys.
//!
//! It does not depend on the serfnode crate (see Cargo.toml): callers pass
//! serfnode's own types and parsers in where they need them.

pub mod addr;
pub mod agent;
pub mod daemon;
pub mod fake_agent;
pub mod keys;
pub mod process;
pub mod wait;

pub use addr::unique_ip;
pub use agent::{Agent, AgentOpts, Agents};
pub use daemon::{Daemon, DaemonOpts, OnDrop};
pub use fake_agent::{FakeAgent, FakeMember};
pub use wait::{
    poll_every, poll_for, poll_for_async, wait_for, wait_for_async, wait_for_every, Outcome,
};
