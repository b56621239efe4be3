//! Containers: children started from a manifest. The manifest itself
//! ([`manifest`]), what a child may do ([`grants`]) and the secrets it must
//! not see ([`secrets`]), Docker ([`docker`]), the replica link between a
//! parent daemon and its children ([`replica`]), the wrapper inside a child
//! ([`child`]), the supervisor that is a container's PID 1 ([`supervisor`])
//! and its reaping of orphans ([`init`]).

pub mod child;
pub(crate) mod docker;
pub(crate) mod grants;
pub(crate) mod init;
pub(crate) mod manifest;
pub mod replica;
pub mod secrets;
pub mod supervisor;
