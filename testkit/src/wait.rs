//! Waiting for a condition: one [`wait_for`] that, past its timeout, says
//! what it waited for and the last value it saw; [`poll_for`] for callers
//! that report a timeout themselves (with logs of their own). Each has an
//! async twin that does not block the runtime.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often the condition is re-checked.
pub const POLL: Duration = Duration::from_millis(20);

/// What one look at a condition found: done (with a value) or not yet
/// (with what it saw, for the timeout message).
pub trait Outcome {
    type Value;
    fn into_result(self) -> Result<Self::Value, String>;
}

impl Outcome for bool {
    type Value = ();
    fn into_result(self) -> Result<(), String> {
        if self {
            Ok(())
        } else {
            Err("false".to_owned())
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.ok_or_else(|| "none".to_owned())
    }
}

impl<T, E: Display> Outcome for Result<T, E> {
    type Value = T;
    fn into_result(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Polls `f` every [`POLL`] until it is done; its value, or past
/// `timeout` the last thing it saw. Blocks the thread: in async code,
/// [`poll_for_async`].
pub fn poll_for<O: Outcome>(timeout: Duration, f: impl FnMut() -> O) -> Result<O::Value, String> {
    poll_every(POLL, timeout, f)
}

/// [`poll_for`] every `period` (a condition that is costly to look at,
/// such as a `docker exec`).
pub fn poll_every<O: Outcome>(
    period: Duration,
    timeout: Duration,
    mut f: impl FnMut() -> O,
) -> Result<O::Value, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match f().into_result() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(period),
        }
    }
}

/// Polls `f` every [`POLL`] until it is done and returns its value; past
/// `timeout` panics with `what` it waited for and the last thing `f` saw.
#[track_caller]
pub fn wait_for<O: Outcome>(timeout: Duration, what: &str, f: impl FnMut() -> O) -> O::Value {
    wait_for_every(POLL, timeout, what, f)
}

/// [`wait_for`] every `period`.
#[track_caller]
pub fn wait_for_every<O: Outcome>(
    period: Duration,
    timeout: Duration,
    what: &str,
    f: impl FnMut() -> O,
) -> O::Value {
    match poll_every(period, timeout, f) {
        Ok(v) => v,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}"),
    }
}

/// [`poll_for`] for an async condition.
pub async fn poll_for_async<F, Fut>(
    timeout: Duration,
    mut f: F,
) -> Result<<Fut::Output as Outcome>::Value, String>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await.into_result() {
            Ok(v) => return Ok(v),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// [`wait_for`] for an async condition.
pub async fn wait_for_async<F, Fut>(
    timeout: Duration,
    what: &str,
    f: F,
) -> <Fut::Output as Outcome>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    match poll_for_async(timeout, f).await {
        Ok(v) => v,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_names_what_and_the_last_value_seen() {
        let mut n = 0;
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(Duration::from_millis(50), "n to reach 1000", || {
                n += 1;
                Err::<(), _>(format!("n = {n}"))
            })
        }));
        let msg = *got.unwrap_err().downcast::<String>().unwrap();
        assert!(
            msg.contains("waiting for n to reach 1000; last seen: n = "),
            "{msg}"
        );
    }

    #[test]
    fn a_condition_that_holds_returns_its_value() {
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(v, 3);
        assert_eq!(poll_for(Duration::ZERO, || false), Err("false".to_owned()));
    }
}
