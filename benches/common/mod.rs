//! What the benchmarks share beyond the test kit (`serfnode-testkit`, which
//! runs the daemon, the agents and the stand-in agent, hands out addresses
//! and reaps what they leave): how figures are printed ([`report`]), what
//! is read from /proc ([`procfs`]), synthetic members ([`synth`]), the
//! polls that time a change's arrival ([`poll`]) and Serf's own user events
//! for the baselines ([`user_events`]).

// Each bench uses a part of these.
#[allow(dead_code)]
pub mod poll;
#[allow(dead_code)]
pub mod procfs;
#[allow(dead_code)]
pub mod report;
#[allow(dead_code)]
pub mod synth;
#[allow(dead_code)]
pub mod user_events;
