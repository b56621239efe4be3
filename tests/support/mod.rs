#![allow(dead_code)]
//! Helpers shared by the integration tests: real `serf agent` and
//! `serfnode` processes, and waiting for conditions.

pub mod child;
pub mod docker;
pub mod node;
pub mod serf;
pub mod stream;

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often the `wait_until*` helpers re-check their condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds (true) or `timeout` passes (false). Blocks the
/// thread: in an async test, prefer [`wait_until_async`].
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_until`] for an async condition, without blocking the runtime.
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
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
