//! The cluster side: everything that speaks to Serf. The RPC client and its
//! protocol ([`rpc`]), the agent serfnode starts or attaches to ([`agent`]),
//! the in-memory view of the members and its sync ([`membership`]), gossip
//! encryption keys ([`keys`]) and the tags a member carries ([`tags`]).

pub(crate) mod agent;
pub mod keys;
pub mod membership;
pub mod rpc;
pub mod tags;
