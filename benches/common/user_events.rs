//! Serf user events as the baselines send and watch them, outside
//! serfnode: one `serf event` process per event, and an agent's `user`
//! stream followed on a runtime.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serfnode::cluster::rpc::{Client, StreamRecord};
use tokio::runtime::Runtime;

/// Raises event `name` with `payload` by one `serf event -coalesce=false`
/// process against the agent at `rpc`; fails unless it succeeds.
pub fn serf_event(rpc: SocketAddr, name: &str, payload: &str) -> Result<()> {
    let out = Command::new("serf")
        .args(["event", "-coalesce=false"])
        .arg(format!("-rpc-addr={rpc}"))
        .args([name, payload])
        .output()
        .context("run `serf event`")?;
    ensure!(
        out.status.success(),
        "`serf event` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Follows the `user` stream of the agent at `addr` on `rt`, handing each
/// record to `on` as it arrives, for as long as the runtime runs.
pub fn follow_user_stream(
    rt: &Runtime,
    addr: SocketAddr,
    mut on: impl FnMut(StreamRecord) + Send + 'static,
) -> Result<()> {
    rt.block_on(async {
        let client = Client::connect(addr, None).await?;
        let mut stream = client.stream("user").await?;
        tokio::spawn(async move {
            let _keep = client;
            while let Some(rec) = stream.recv().await {
                on(rec);
            }
        });
        anyhow::Ok(())
    })
    .with_context(|| format!("user stream of {addr}"))
}
