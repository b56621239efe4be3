//! Watching user events from the outside: an RPC `user` stream on a
//! member's agent, payloads out of serfnode's envelope, and a one-shot RPC
//! client for commands (tags, events) the tests send around serfnode.

use std::time::{Duration, Instant};

use serde_json::Value;
use serfnode::cluster::rpc::{Client, StreamRecord};
use serfnode::event::Raiser;
use tokio::runtime::Runtime;

use super::node::Daemon;

const T: Duration = Duration::from_secs(30);

/// One user event as an agent's stream delivers it: name, payload (out of
/// its envelope) and the node that raised it.
pub type Seen = (String, Value, Option<String>);

/// Collects the user events one member's agent receives, over RPC, each
/// as `T` (a [`Seen`] unless the test says).
pub struct Observer<T = Seen> {
    rt: Runtime,
    rx: tokio::sync::mpsc::UnboundedReceiver<T>,
}

impl Observer {
    pub fn on(node: &Daemon) -> Observer {
        Observer::with(node, |name, payload, from| {
            (name, payload, from.map(|f| f.node))
        })
    }
}

impl<T: Send + std::fmt::Debug + 'static> Observer<T> {
    /// Each event as `seen` makes it of its name, payload and origin (which
    /// may check them: a panic there ends the stream, and the test's next
    /// look fails).
    pub fn with(node: &Daemon, seen: fn(String, Value, Option<Raiser>) -> T) -> Observer<T> {
        let rt = Runtime::new().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let addr = node.rpc_addr();
        rt.block_on(async {
            let client = Client::connect(addr, None).await.unwrap();
            let mut sub = client.stream("user").await.unwrap();
            tokio::spawn(async move {
                let _keep = client;
                while let Some(rec) = sub.recv().await {
                    if let StreamRecord::User { name, payload, .. } = rec {
                        let (payload, from) = serfnode::event::unwrap(&payload);
                        let _ = tx.send(seen(name, payload, from));
                    }
                }
            });
        });
        Observer { rt, rx }
    }

    pub fn next(&mut self) -> T {
        let rx = &mut self.rx;
        self.rt
            .block_on(async { tokio::time::timeout(T, rx.recv()).await })
            .expect("event in time")
            .expect("stream open")
    }

    /// Nothing arrives within `d` (events gossip in ~100 ms here).
    pub fn quiet_for(&mut self, d: Duration) {
        let rx = &mut self.rx;
        let got = self
            .rt
            .block_on(async { tokio::time::timeout(d, rx.recv()).await });
        assert!(got.is_err(), "unexpected event {got:?}");
    }

    /// Everything that arrives until nothing did for `quiet` (or `T` passed).
    pub fn drain(&mut self, quiet: Duration) -> Vec<T> {
        let rx = &mut self.rx;
        let deadline = Instant::now() + T;
        let mut out = Vec::new();
        self.rt.block_on(async {
            while Instant::now() < deadline {
                match tokio::time::timeout(quiet, rx.recv()).await {
                    Ok(Some(seen)) => out.push(seen),
                    _ => break,
                }
            }
        });
        out
    }

    /// Events until `want` of them arrived or nothing came for `quiet`.
    pub fn collect(&mut self, want: usize, quiet: Duration) -> Vec<T> {
        let rx = &mut self.rx;
        let deadline = Instant::now() + T;
        let mut out = Vec::new();
        self.rt.block_on(async {
            while out.len() < want && Instant::now() < deadline {
                match tokio::time::timeout(quiet, rx.recv()).await {
                    Ok(Some(seen)) => out.push(seen),
                    _ => break,
                }
            }
        });
        out
    }
}

/// Runs `f` with an RPC client of the agent at `addr`.
pub fn rpc<T>(addr: std::net::SocketAddr, f: impl AsyncFnOnce(&Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect(addr, None).await.unwrap();
        f(&client).await
    })
}
