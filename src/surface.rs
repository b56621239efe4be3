//! The surface: the cluster served as files. The file tree over the view
//! ([`files`]), the write node that raises events ([`write_node`]), queries
//! asked and answered ([`query`]), the event journal ([`journal`]), the
//! handlers run for events ([`handlers`], contained by [`restrict`]), the
//! stream follower ([`events`]), the hosts file ([`hosts`]) and templates
//! ([`templates`]).

pub mod events;
pub mod files;
pub mod handlers;
pub mod hosts;
pub mod journal;
pub mod query;
pub mod restrict;
pub mod templates;
pub mod write_node;
