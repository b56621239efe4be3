//! Timing a change's arrival: polling a member file, or the agent's
//! `members`, until a member's tag carries a value, as fast as a reader
//! would.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;
use serfnode::cluster::rpc::Client;
use tokio::runtime::Runtime;

/// The tag the freshness trials change.
pub const PROBE_TAG: &str = "probe";
/// How long one trial waits for its change to show.
pub const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The member file's poll period: a reader spinning on cached reads would
/// take a whole core from the daemon (and the agents) on a small machine.
pub const FILE_POLL: Duration = Duration::from_millis(1);

/// Reads `path` into `buf`: how long the open+read took, in µs.
pub fn read_us_of(path: &Path, buf: &mut Vec<u8>) -> Result<f64> {
    buf.clear();
    let t = Instant::now();
    File::open(path)
        .and_then(|mut f| f.read_to_end(buf))
        .with_context(|| format!("read {}", path.display()))?;
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

/// Reads `file` (a member's JSON) every `pause` until its tag `tag` carries
/// `value`: when, and how long that read (the first to show it) took, in
/// µs; `None` past `deadline`. The file's bytes are left in `buf`.
pub fn poll_file(
    file: &Path,
    tag: &str,
    value: &str,
    deadline: Instant,
    pause: Duration,
    buf: &mut Vec<u8>,
) -> Result<Option<(Instant, f64)>> {
    while Instant::now() < deadline {
        if let Ok(us) = read_us_of(file, buf) {
            let doc: Value = serde_json::from_slice(buf).context("not json")?;
            if doc["tags"][tag] == value {
                return Ok(Some((Instant::now(), us)));
            }
        }
        std::thread::sleep(pause);
    }
    Ok(None)
}

/// Asks the agent behind `local` for its members every `pause` (none: back
/// to back) until member `name`'s tag `tag` carries `value`: when; `None`
/// past `deadline`.
pub async fn poll_members(
    local: &Client,
    name: &str,
    tag: &str,
    value: &str,
    deadline: Instant,
    pause: Option<Duration>,
) -> Result<Option<Instant>> {
    while Instant::now() < deadline {
        let members = local.members().await.context("members")?;
        if members
            .iter()
            .any(|m| m.name == name && m.tags.get(tag).is_some_and(|v| v == value))
        {
            return Ok(Some(Instant::now()));
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(None)
}

/// Polls the agent's `members` through `local` (on `rt`, every
/// `members_pause`) and `file` (every [`FILE_POLL`]) at once, each until it
/// shows member `name`'s [`PROBE_TAG`] at `value`: when each did (`None`:
/// not by `deadline`).
#[allow(clippy::too_many_arguments)]
pub fn poll_members_and_file(
    rt: &Runtime,
    local: &Client,
    name: &str,
    file: &Path,
    value: &str,
    deadline: Instant,
    members_pause: Option<Duration>,
) -> Result<(Option<Instant>, Option<Instant>)> {
    let (agent, file_seen) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            rt.block_on(poll_members(
                local,
                name,
                PROBE_TAG,
                value,
                deadline,
                members_pause,
            ))
        });
        let b = s.spawn(|| {
            poll_file(file, PROBE_TAG, value, deadline, FILE_POLL, &mut Vec::new())
                .map(|seen| seen.map(|(t, _)| t))
        });
        (a.join(), b.join())
    });
    let agent = agent
        .map_err(|_| anyhow!("members poller panicked"))?
        .context("members of the agent")?;
    let file_seen = file_seen
        .map_err(|_| anyhow!("file poller panicked"))?
        .with_context(|| format!("{}", file.display()))?;
    Ok((agent, file_seen))
}
