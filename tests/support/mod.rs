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
