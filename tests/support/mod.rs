#![allow(dead_code)]
//! What the integration tests share beyond the test kit
//! (`serfnode-testkit`, which runs the daemon and the agents and waits):
//! serfnode-specific helpers in the submodules, a test's phase clock and
//! checks that report every failure at the end.

pub mod child;
pub mod docker;
pub mod hosts;
pub mod node;
pub mod stream;

use std::time::Instant;

use serde_json::Value;

#[allow(unused_imports)]
pub use serfnode_testkit::{poll_for, poll_for_async, wait_for, wait_for_async};

/// Raw `serf agent` processes: the kit's.
pub mod serf {
    #[allow(unused_imports)]
    pub use serfnode_testkit::agent::*;
}

/// Prints a long test's phases with the time since it began.
pub struct Clock {
    start: Instant,
    test: &'static str,
}

impl Clock {
    /// `test` names the test in every line (`containers test`).
    pub fn new(test: &'static str) -> Clock {
        Clock {
            start: Instant::now(),
            test,
        }
    }

    pub fn phase(&self, what: &str) {
        eprintln!(
            "[{:6.1}s] {}: {what}",
            self.start.elapsed().as_secs_f64(),
            self.test
        );
    }
}

/// Checks that later steps do not depend on: each failure is printed at
/// once and the test fails at its end, so one run reports them all along
/// with the outcome of every later step.
#[derive(Default)]
pub struct Checks(std::cell::RefCell<Vec<String>>);

impl Checks {
    pub fn check(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("CHECK FAILED: {what}");
            self.0.borrow_mut().push(what);
        }
    }

    pub fn eq(&self, left: &Value, right: impl Into<Value>, what: impl FnOnce() -> String) {
        let right = right.into();
        self.check(*left == right, || {
            format!("{}: got {left}, want {right}", what())
        });
    }

    pub fn assert_none_failed(&self) {
        let failed = self.0.borrow();
        assert!(
            failed.is_empty(),
            "{} checks failed:\n  {}",
            failed.len(),
            failed.join("\n  ")
        );
    }
}
