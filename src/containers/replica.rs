//! The replica link between a parent's daemon and its children's mounts: the
//! parent streams its view (members, agent state, container info) to each
//! child over a unix socket, and a child forwards the events written to its
//! write node and gets back, per write, how many were raised and the errno.
//!
//! Children thus need no Serf access and no Docker socket, and when the
//! parent's daemon restarts a child keeps serving the last view, marked
//! stale, instead of failing reads ("Transport endpoint is not connected").
//!
//! The parent also sends its event journal (the entries it held when the
//! child connected, marked `backlog`, then each new one), which the child
//! mirrors as its own `events` files and runs its own handlers from, and
//! asks the cluster the queries the child's `query/` files ask.
//!
//! Wire: one JSON object per line, `{"type": ...}`. The child speaks first
//! (`hello`); the parent sends a `view` at once and after every change
//! (only the latest when the child lags), `journal` entries, an `outcome`
//! per `events` and `answers` per `query`.
//!
//! [`wire`] is the format, [`server`] the parent's side, [`client`] the
//! child's side.

pub(crate) mod client;
pub(crate) mod server;
pub(crate) mod wire;

pub(crate) use client::follow;
pub(crate) use client::{ChildSide, ParentLink};
pub use server::bind;
pub(crate) use server::{serve, DEFAULT_CHILD_QUERY_RATE};
pub(crate) use wire::SOCKET;
pub use wire::{ToParent, WireEvent, MAX_CHILD_FRAME, MAX_HELLO};

#[doc(hidden)]
pub mod fuzz {
    //! Hooks for the property tests in `tests/fuzz.rs`: the parent's
    //! reading of a connection exactly as [`serve`](super::serve) runs it,
    //! on bytes instead of a socket. Not an API.

    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, BufReader, ReadBuf};

    use super::wire::{read_hello, read_request, ToParent, MAX_HELLO};

    /// Yields its pieces one read at a time, as a socket may.
    struct Pieces(VecDeque<Vec<u8>>);

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if let Some(front) = self.0.front_mut() {
                let n = front.len().min(buf.remaining());
                buf.put_slice(&front[..n]);
                front.drain(..n);
                if front.is_empty() {
                    self.0.pop_front();
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What the parent makes of a connection that sends `pieces`: its
    /// hello (as [`ToParent::Hello`]), then each request, up to the first
    /// refusal (an `Err` naming why, after which the parent hangs up) or
    /// the end. No time passes here: the hello's deadline is not fuzzed.
    pub fn server_reads(pieces: &[&[u8]]) -> Vec<Result<ToParent, String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let source = Pieces(pieces.iter().map(|p| p.to_vec()).collect());
            let mut r = BufReader::with_capacity(MAX_HELLO, source);
            let mut buf = Vec::new();
            let mut got = Vec::new();
            match read_hello(&mut r, &mut buf).await {
                Ok((child, token)) => got.push(Ok(ToParent::Hello { child, token })),
                Err(e) => {
                    got.push(Err(e.to_string()));
                    return got;
                }
            }
            loop {
                match read_request(&mut r, &mut buf).await {
                    Ok(Some(msg)) => got.push(Ok(msg)),
                    Ok(None) => return got,
                    Err(e) => {
                        got.push(Err(e.to_string()));
                        return got;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {

    use super::server::*;
    use super::wire::*;

    use std::path::{Path, PathBuf};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::net::UnixStream;

    use tokio_util::sync::CancellationToken;

    use crate::cluster::membership::{Containers, View};
    use crate::cluster::rpc::Member;
    use crate::containers::grants::{Allow, Grants};
    use crate::event::Event;
    use crate::event::Origin;
    use crate::surface::journal::Journal;
    use crate::surface::query::{Answers, Ask};
    use crate::surface::upstream::Upstream;

    use crate::cluster::rpc::MemberStatus;

    #[test]
    fn a_view_survives_the_wire() {
        let view = View::new();
        view.reconcile(vec![Member {
            name: "n1".into(),
            addr: "10.0.0.1".parse().unwrap(),
            port: 7946,
            tags: [("role".to_string(), "web".to_string())].into(),
            status: MemberStatus::Failed,
            protocol: [1, 5, 5],
            delegate: [2, 5, 4],
        }]);
        view.set_local("n1");
        view.set_containers(Containers {
            me: Some(serde_json::json!({"Id": "parent"})),
            parent: None,
            children: [("web".to_string(), serde_json::json!({"Id": "child"}))].into(),
            ..Containers::default()
        });
        let wire = serde_json::to_string(&ToChild::View(Box::new(WireView::of(
            &view.snapshot(),
            "web",
        ))))
        .unwrap();
        let ToChild::View(back) = serde_json::from_str(&wire).unwrap() else {
            panic!()
        };
        let copy = View::new();
        assert!(copy.mirror(back.into_mirror()));
        let (a, b) = (view.snapshot(), copy.snapshot());
        assert_eq!(b.generation, 1, "one generation for the whole mirror");
        assert_eq!(a.members["n1"].member, b.members["n1"].member);
        assert_eq!(b.local.as_deref(), Some("n1"));
        assert_eq!(b.containers.me, Some(serde_json::json!({"Id": "child"})));
        assert_eq!(
            b.containers.parent,
            Some(serde_json::json!({"Id": "parent"}))
        );
        assert!(!b.agent.connected, "the parent was not following an agent");
    }

    #[test]
    fn frames_are_tagged_lines() {
        let msg = ToParent::Events {
            id: 7,
            pid: 42,
            events: vec![WireEvent {
                name: "deploy".into(),
                payload: "{\"v\":2}".into(),
            }],
        };
        let text = serde_json::to_string(&msg).unwrap();
        assert_eq!(
            text,
            r#"{"type":"events","id":7,"pid":42,"events":[{"name":"deploy","payload":"{\"v\":2}"}]}"#
        );
    }

    /// Raises and answers everything, recording what reached it.
    #[derive(Default)]
    struct Recorder(parking_lot::Mutex<Vec<(Option<String>, String)>>);

    impl Upstream for Recorder {
        async fn raise(&self, origin: &Origin, events: Vec<Event>) -> Result<(), (usize, i32)> {
            let mut seen = self.0.lock();
            for e in events {
                seen.push((origin.child.clone(), e.name));
            }
            Ok(())
        }

        async fn ask(&self, origin: &Origin, ask: Ask) -> Result<Answers, i32> {
            self.0
                .lock()
                .push((origin.child.clone(), format!("?{}", ask.name)));
            Ok(Answers {
                query: ask.name,
                payload: ask.payload,
                responses: Default::default(),
                missing: vec![],
                complete: true,
                elapsed_ms: 0,
            })
        }
    }

    async fn frame(w: &mut OwnedWriteHalf, msg: &ToParent) {
        write_frame(w, msg).await.unwrap();
    }

    /// Reads frames until one that `pick` accepts; None if the link closed.
    /// Asks `where` for the role `web` as query `id`: whether it was answered.
    async fn ask_where(
        r: &mut BufReader<OwnedReadHalf>,
        w: &mut OwnedWriteHalf,
        want: u64,
    ) -> Option<Result<(), i32>> {
        let ask = Ask::from_file("where", "web").unwrap();
        frame(
            w,
            &ToParent::Query {
                id: want,
                pid: 1,
                ask,
            },
        )
        .await;
        until(r, |m| match m {
            ToChild::Answers { id, result } if id == want => Some(result.map(|_| ())),
            _ => None,
        })
        .await
    }

    /// The outcome the parent sends for the child's `events` request `id`.
    async fn outcome_of(
        r: &mut BufReader<OwnedReadHalf>,
        want: u64,
    ) -> Option<(usize, Option<i32>)> {
        until(r, |m| match m {
            ToChild::Outcome { id, raised, errno } if id == want => Some((raised, errno)),
            _ => None,
        })
        .await
    }

    async fn until<T>(
        r: &mut BufReader<OwnedReadHalf>,
        mut pick: impl FnMut(ToChild) -> Option<T>,
    ) -> Option<T> {
        let mut buf = Vec::new();
        loop {
            let msg = read_frame::<ToChild>(r, &mut buf).await.ok()??;
            if let Some(t) = pick(msg) {
                return Some(t);
            }
        }
    }

    #[tokio::test]
    async fn children_are_known_by_their_token_and_held_to_their_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let grants = web_grants(Allow {
            events: Some(vec!["deploy".into()]),
            queries: Some(vec![]),
        });
        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            bind(&path).unwrap(),
            View::new(),
            Journal::new(8),
            recorder.clone(),
            Some(grants),
            0,
            stop.clone(),
        ));
        let hello = |token: Option<&str>| ToParent::Hello {
            child: "web".into(),
            token: token.map(String::from),
        };

        // A wrong or missing token: the parent hangs up before any view.
        for token in [None, Some("guess")] {
            let (r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
            frame(&mut w, &hello(token)).await;
            let mut r = BufReader::new(r);
            assert!(
                until(&mut r, |_| Some(())).await.is_none(),
                "{token:?} served"
            );
        }

        // The right token: served, and held to its allow list.
        let (r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
        let mut r = BufReader::new(r);
        frame(&mut w, &hello(Some("secret"))).await;
        let events = |id, names: &[&str]| ToParent::Events {
            id,
            pid: 1,
            events: names
                .iter()
                .map(|n| WireEvent {
                    name: n.to_string(),
                    payload: "1".into(),
                })
                .collect(),
        };
        frame(&mut w, &events(1, &["deploy", "other", "deploy"])).await;
        let outcome = outcome_of(&mut r, 1).await;
        assert_eq!(outcome, Some((1, Some(libc::EACCES))));
        frame(&mut w, &events(2, &["container"])).await;
        let outcome = outcome_of(&mut r, 2).await;
        assert_eq!(
            outcome,
            Some((0, Some(libc::EACCES))),
            "a child forging container events"
        );
        let answer = ask_where(&mut r, &mut w, 3).await;
        assert_eq!(answer, Some(Err(libc::EACCES)));
        assert_eq!(
            *recorder.0.lock(),
            [(Some("web".to_string()), "deploy".to_string())],
            "only the allowed event got through"
        );
        shut(stop, server).await;
    }

    /// A parent serving `web` (token `secret`, default allow) with `rate`
    /// queries a second per child.
    /// Grants for one child, `web`, with the token `secret`.
    fn web_grants(allow: Allow) -> Grants {
        let grants = Grants::default();
        grants.set(
            "web",
            crate::containers::grants::Grant {
                token: "secret".into(),
                allow,
            },
        );
        grants
    }

    /// Stops a parent's server and waits for it.
    async fn shut(stop: CancellationToken, server: tokio::task::JoinHandle<()>) {
        stop.cancel();
        server.await.unwrap();
    }

    fn parent(
        rate: u32,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SOCKET);
        let grants = web_grants(Allow::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            bind(&path).unwrap(),
            View::new(),
            Journal::new(8),
            Arc::new(Recorder::default()),
            Some(grants),
            rate,
            stop.clone(),
        ));
        (dir, path, stop, server)
    }

    /// A connection that said hello as `web` and got its first view.
    async fn child(path: &Path) -> (BufReader<OwnedReadHalf>, OwnedWriteHalf) {
        let (r, mut w) = UnixStream::connect(path).await.unwrap().into_split();
        let mut r = BufReader::new(r);
        let hello = ToParent::Hello {
            child: "web".into(),
            token: Some("secret".into()),
        };
        frame(&mut w, &hello).await;
        assert!(
            until(&mut r, |m| matches!(m, ToChild::View(_)).then_some(()))
                .await
                .is_some(),
            "not served"
        );
        (r, w)
    }

    /// Whether the parent hung up on `r` within `within`.
    async fn hung_up(r: &mut (impl AsyncReadExt + Unpin), within: Duration) -> bool {
        let mut sink = vec![0u8; 1 << 16];
        tokio::time::timeout(within, async {
            loop {
                match r.read(&mut sink).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    #[tokio::test]
    async fn nothing_is_buffered_before_a_hello_and_silent_connections_make_way() {
        let (_dir, path, stop, server) = parent(0);
        // A hello over MAX_HELLO: refused after reading at most that much.
        let (mut r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
        let big = format!(
            "{{\"type\":\"hello\",\"child\":\"{}\"}}\n",
            "x".repeat(MAX_HELLO)
        );
        let _ = w.write_all(big.as_bytes()).await;
        assert!(hung_up(&mut r, Duration::from_secs(1)).await, "big hello");
        // No newline ever: refused at MAX_HELLO bytes, not read on.
        let (mut r, mut w) = UnixStream::connect(&path).await.unwrap().into_split();
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 1 << 16];
            let mut sent = 0usize;
            while w.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
            }
            sent
        });
        assert!(
            hung_up(&mut r, Duration::from_secs(1)).await,
            "endless line"
        );
        let sent = writer.await.unwrap();
        assert!(sent < 8 << 20, "{sent} bytes taken before the hang-up");
        // Silent: hung up at the deadline.
        let (mut r, _w) = UnixStream::connect(&path).await.unwrap().into_split();
        assert!(!hung_up(&mut r, HELLO_DEADLINE / 2).await, "too early");
        assert!(hung_up(&mut r, HELLO_DEADLINE).await, "at the deadline");
        // More silent ones than may wait: the oldest make way, and a child
        // saying hello is served meanwhile.
        let mut silent = Vec::new();
        for _ in 0..MAX_PENDING + 8 {
            silent.push(UnixStream::connect(&path).await.unwrap());
        }
        let _served = child(&path).await;
        let mut closed = 0;
        for s in &mut silent[..8] {
            closed += usize::from(hung_up(s, Duration::from_millis(500)).await);
        }
        assert_eq!(closed, 8, "the 8 oldest of {} pushed out", silent.len());
        shut(stop, server).await;
    }

    #[tokio::test]
    async fn frames_are_bounded_and_a_reconnect_replaces_the_oldest_link() {
        let (_dir, path, stop, server) = parent(0);
        let (mut r, mut w) = child(&path).await;
        let line = vec![b'x'; MAX_CHILD_FRAME + 1];
        let _ = w.write_all(&line).await;
        assert!(
            hung_up(&mut r, Duration::from_secs(2)).await,
            "a frame over the bound"
        );
        let mut links = Vec::new();
        for _ in 0..MAX_PER_CHILD + 1 {
            links.push(child(&path).await);
        }
        assert!(
            hung_up(&mut links[0].0, Duration::from_secs(1)).await,
            "the oldest link of the child closed"
        );
        for (r, _) in &mut links[1..] {
            assert!(!hung_up(r, Duration::from_millis(200)).await);
        }
        shut(stop, server).await;
    }

    #[tokio::test]
    async fn queries_are_paced_per_child_and_reserved_names_refused() {
        let (_dir, path, stop, server) = parent(3);
        let (mut r, mut w) = child(&path).await;
        let mut results = Vec::new();
        for (id, name) in [(1, "member-join"), (2, "where"), (3, "where"), (4, "where")] {
            let ask = Ask::from_file(name, "web").unwrap();
            frame(&mut w, &ToParent::Query { id, pid: 1, ask }).await;
            let got = until(&mut r, |m| match m {
                ToChild::Answers { id: got, result } if got == id => Some(result.map(|_| ())),
                _ => None,
            })
            .await;
            results.push(got);
        }
        assert_eq!(
            results,
            [
                Some(Err(libc::EACCES)),
                Some(Ok(())),
                Some(Ok(())),
                Some(Err(libc::EAGAIN))
            ],
            "a burst of 3, the refused one included"
        );
        // A reconnect does not refill the bucket.
        drop((r, w));
        let (mut r, mut w) = child(&path).await;
        let got = ask_where(&mut r, &mut w, 5).await;
        assert_eq!(got, Some(Err(libc::EAGAIN)));
        shut(stop, server).await;
    }
}
