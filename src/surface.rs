//! The surface: the cluster served as files. The file tree over the view
//! ([`files`]), the write node that raises events ([`write_node`]), queries
//! asked and answered ([`query`]), the event journal ([`journal`]), the
//! handlers run for events ([`handlers`], contained by [`restrict`]), the
//! follower of the agent's stream ([`follower`]) and the router that hands
//! each event to the journal, the handlers and the query answers
//! ([`router`]), the hosts file ([`hosts`]) and templates ([`templates`]).

pub mod files;
pub mod follower;
pub mod handlers;
pub mod hosts;
pub mod journal;
pub mod query;
pub mod restrict;
pub mod router;
pub mod templates;
pub mod upstream;
pub mod write_node;
