//! serfnode: live knowledge of a HashiCorp Serf cluster, served as files.
//!
//! A daemon beside a real `serf agent` follows the cluster over Serf's RPC
//! protocol into an in-memory view ([`membership`]), serves that view as
//! JSON files through a FUSE mount ([`files`], over the `serfnode-fs`
//! crate), raises user events written to the `parent` write node
//! ([`control`]), runs handlers for cluster events ([`events`],
//! [`handlers`]), keeps an event journal ([`journal`]), asks and answers
//! queries ([`query`]) and keeps each role's oldest member in the hosts file
//! ([`hosts`]), encrypts gossip with keys rotated cluster-wide
//! ([`keys`]), and renders templates of the cluster ([`templates`]; so far
//! through `serfnode render`). See README.md for the file contract.

pub mod agent;
pub mod backoff;
pub mod child;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod docker;
pub mod events;
pub mod files;
pub mod grants;
pub mod handlers;
pub mod hosts;
pub mod init;
pub mod journal;
pub mod keys;
pub mod manifest;
pub mod membership;
pub mod names;
pub mod operator;
pub mod parent;
pub mod query;
pub mod replica;
pub mod restrict;
pub mod rpc;
pub mod secrets;
pub mod tags;
pub mod templates;
