//! serfnode: live knowledge of a HashiCorp Serf cluster, served as files.
//!
//! The folders follow the data flow of README.md's picture, left to right;
//! no module depends on one drawn after it (`scripts/check-layers` checks,
//! DEVELOPERS.md explains):
//!
//! - the leaves: [`names`], [`backoff`];
//! - [`cluster`]: the Serf side — the RPC client ([`cluster::rpc`]), the
//!   agent serfnode runs ([`cluster::agent`]), the in-memory view
//!   ([`cluster::membership`]), gossip keys ([`cluster::keys`]) and the tags
//!   a member carries ([`cluster::tags`]);
//! - [`surface`]: the view served as files through a FUSE mount — the file
//!   tree, the write node, queries, the journal, handlers, the hosts file,
//!   templates;
//! - [`containers`]: children started from a manifest, their grants and
//!   secrets, the replica link to them, the wrapper inside a child, and the
//!   supervisor that runs as a container's PID 1;
//! - [`operator`]: the commands an operator runs against a mount;
//! - the top: [`cli`], [`config`] and [`daemon`], which the binary runs.
//!
//! See README.md for the file contract.

pub(crate) mod backoff;
pub mod event;
pub mod names;

pub mod cluster;
pub mod containers;
pub mod surface;

pub mod operator;

pub mod cli;
pub mod config;
pub mod daemon;
