//! `serfnode watch`: follows the journal's files under a mount
//! (`events_since/<N>`, see [`crate::surface::journal`]) and prints every
//! new line, for plain shells that cannot poll.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::surface::journal::{EVENTS, EVENTS_SINCE};

/// The longest `watch` relies on a wake-up before reading again anyway.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// Following the journal's files failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("poll {}: {source}", path.display())]
    Poll { path: PathBuf, source: io::Error },
    #[error("{}: line without a sequence number: {line}", path.display())]
    Line { path: PathBuf, line: String },
    #[error("write events: {0}")]
    Write(io::Error),
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Follows the journal under `mount` (the directory holding `events` and
/// `events_since`): writes every line after `from` to `out`, verbatim, as it
/// appears; without `from`, only lines newer than the journal's head now.
/// Returns once `stop` says so (checked at least every second).
pub fn watch(
    mount: &Path,
    from: Option<u64>,
    out: &mut impl Write,
    stop: impl Fn() -> bool,
) -> Result<(), WatchError> {
    let mut last = match from {
        Some(n) => n,
        None => head(mount)?,
    };
    let since = mount.join(EVENTS_SINCE);
    while !stop() {
        let path = since.join(last.to_string());
        let read_failed = |source| WatchError::Read {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(read_failed)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(read_failed)?;
        let mut wrote = false;
        // Documents hold whole lines; anything after the last newline is
        // left for the next read.
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if line.last() != Some(&b'\n') {
                break;
            }
            last = line_seq(&path, line)?;
            out.write_all(line).map_err(WatchError::Write)?;
            wrote = true;
        }
        if wrote {
            out.flush().map_err(WatchError::Write)?;
            // The next file is another name: open it before waiting.
            continue;
        }
        // Nothing newer in this version. Wait for a newer one (POLLPRI), but
        // only so long: reading again costs nothing when nothing changed, and
        // nothing then depends on one wake-up arriving.
        wait_for_change(&file, &path)?;
    }
    Ok(())
}

/// The seq of the newest line of `<mount>/events`, 0 when it is empty.
fn head(mount: &Path) -> Result<u64, WatchError> {
    let path = mount.join(EVENTS);
    let bytes = std::fs::read(&path).map_err(|source| WatchError::Read {
        path: path.clone(),
        source,
    })?;
    match bytes.split(|&b| b == b'\n').rev().find(|l| !l.is_empty()) {
        Some(line) => line_seq(&path, line),
        None => Ok(0),
    }
}

fn line_seq(path: &Path, line: &[u8]) -> Result<u64, WatchError> {
    serde_json::from_slice::<SeqOnly>(line)
        .map(|l| l.seq)
        .map_err(|_| WatchError::Line {
            path: path.to_path_buf(),
            line: String::from_utf8_lossy(line).trim_end().to_owned(),
        })
}

/// poll(2) `file` for POLLPRI for up to `WATCH_POLL`; interruptions and
/// timeouts are fine, the caller reads again either way.
fn wait_for_change(file: &File, path: &Path) -> Result<(), WatchError> {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    let timeout = WATCH_POLL.as_millis() as libc::c_int;
    // SAFETY: `pfd` is one valid pollfd for the duration of the call, and its
    // fd stays open while `file` is borrowed.
    if unsafe { libc::poll(&mut pfd, 1, timeout) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(WatchError::Poll {
                path: path.to_path_buf(),
                source: e,
            });
        }
    }
    Ok(())
}

/// Real mounts: needs root and /dev/fuse (skipped without it).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::surface::journal::tests::user;
    use crate::surface::journal::{Journal, JournalSnap, DEFAULT_CAPACITY};
    use parking_lot::Mutex;
    use serde_json::{json, Value};
    use serfnode_fs::{Dir, Node, NodeKind};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    fn seqs(bytes: &[u8]) -> Vec<u64> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }
    use serfnode_fs::{mount, Mount, MountOptions, Publisher};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::Instant;

    /// Generous: only a broken implementation takes this long.
    const EVENTUALLY: Duration = Duration::from_secs(30);

    struct Root(Arc<JournalSnap>);

    impl Dir for Root {
        fn get(&self, name: &str) -> Option<Node> {
            self.0.node(name)
        }

        fn entries(&self) -> Vec<(String, NodeKind)> {
            JournalSnap::listing()
                .iter()
                .map(|(n, k)| (n.to_string(), *k))
                .collect()
        }
    }

    /// A journal served from a mount in a fresh temporary directory.
    struct Fixture {
        journal: Journal,
        mount: Option<Mount>,
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(journal: Journal) -> Option<Fixture> {
            if !Path::new("/dev/fuse").exists() {
                eprintln!("skipping: /dev/fuse is absent");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let root = Arc::new(Root(journal.snapshot()));
            let mount = mount(dir.path(), root, &MountOptions::default()).unwrap();
            Some(Fixture {
                journal,
                mount: Some(mount),
                dir,
            })
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn push(&self, i: u64) -> u64 {
            self.journal
                .push(user("e", json!(i)), SystemTime::now())
                .unwrap()
        }

        fn publisher(&self) -> Publisher {
            self.mount.as_ref().unwrap().publisher()
        }

        fn publish(&self) {
            self.publisher()
                .publish(Arc::new(Root(self.journal.snapshot())));
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            if let Some(mount) = self.mount.take() {
                if let Err(e) = mount.unmount() {
                    eprintln!("{e}");
                }
            }
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn seqs(&self) -> Vec<u64> {
            seqs(&self.0.lock())
        }
    }

    /// `watch` on a thread, stopped and joined by `finish`.
    struct Watcher {
        out: Buffer,
        stop: Arc<AtomicBool>,
        thread: thread::JoinHandle<Result<(), WatchError>>,
    }

    impl Watcher {
        fn start(mount: &Path, from: Option<u64>) -> Watcher {
            let out = Buffer::default();
            let stop = Arc::new(AtomicBool::new(false));
            let (mount, mut sink, flag) = (mount.to_owned(), out.clone(), stop.clone());
            let thread = thread::spawn(move || {
                watch(&mount, from, &mut sink, || flag.load(Ordering::SeqCst))
            });
            Watcher { out, stop, thread }
        }

        fn wait_until(&self, what: &str, done: impl Fn(&[u64]) -> bool) {
            let deadline = Instant::now() + EVENTUALLY;
            while !done(&self.out.seqs()) {
                assert!(!self.thread.is_finished(), "watch ended early");
                assert!(Instant::now() < deadline, "{what}: {:?}", self.out.seqs());
                thread::sleep(Duration::from_millis(10));
            }
        }

        fn finish(self) -> Vec<u8> {
            self.stop.store(true, Ordering::SeqCst);
            self.thread.join().unwrap().unwrap();
            let out = self.out.0.lock().clone();
            out
        }
    }

    #[test]
    fn watch_prints_every_event_in_order() {
        let Some(fx) = Fixture::new(Journal::with_start(DEFAULT_CAPACITY, 1000)) else {
            return;
        };
        let first = fx.push(0);
        fx.publish();
        let w = Watcher::start(fx.path(), Some(first));
        // Single publishes and bursts, racing the reader.
        let mut last = first;
        for i in 1..=60 {
            last = fx.push(i);
            if i % 4 != 0 {
                fx.publish();
            }
            if i % 20 == 0 {
                thread::sleep(Duration::from_millis(30));
            }
        }
        fx.publish();
        w.wait_until("all events", |s| s.last() == Some(&last));
        let out = w.finish();
        let expected: Vec<u64> = (first + 1..=last).collect();
        assert_eq!(seqs(&out), expected);
        // Verbatim: exactly what the journal shows.
        let all = fx.journal.snapshot().render_since(first);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            String::from_utf8(all).unwrap()
        );
    }

    #[test]
    fn watch_without_a_start_prints_only_new_events() {
        let Some(fx) = Fixture::new(Journal::with_start(DEFAULT_CAPACITY, 1000)) else {
            return;
        };
        let old = fx.push(0);
        fx.publish();
        let w = Watcher::start(fx.path(), None);
        // The watcher takes its start when it gets to it: feed it until
        // it shows something, then a few more.
        let mut i = 1;
        let mut last = old;
        let deadline = Instant::now() + EVENTUALLY;
        while w.out.seqs().is_empty() {
            assert!(Instant::now() < deadline, "watch showed nothing");
            last = fx.push(i);
            fx.publish();
            i += 1;
            thread::sleep(Duration::from_millis(20));
        }
        for _ in 0..3 {
            last = fx.push(i);
            fx.publish();
            i += 1;
        }
        w.wait_until("the last event", |s| s.last() == Some(&last));
        let got = seqs(&w.finish());
        assert!(got[0] > old, "{got:?}");
        let contiguous: Vec<u64> = (got[0]..=last).collect();
        assert_eq!(got, contiguous);
    }

    #[test]
    fn watch_starts_with_a_gap_line_when_the_ring_moved_on() {
        let Some(fx) = Fixture::new(Journal::with_start(4, 1000)) else {
            return;
        };
        for i in 0..10 {
            fx.push(i); // keeps 1006..=1009
        }
        fx.publish();
        let w = Watcher::start(fx.path(), Some(1001));
        w.wait_until("the ring", |s| s.last() == Some(&1009));
        let out = w.finish();
        let first = std::str::from_utf8(&out).unwrap().lines().next().unwrap();
        assert_eq!(first, r#"{"seq":1005,"type":"gap","first_lost":1002}"#);
        assert_eq!(seqs(&out), [1005, 1006, 1007, 1008, 1009]);
    }

    #[test]
    fn a_poll_on_the_head_file_wakes_after_a_push_is_published() {
        let Some(fx) = Fixture::new(Journal::with_start(DEFAULT_CAPACITY, 1000)) else {
            return;
        };
        let head = fx.push(0);
        fx.publish();
        let path = fx.path().join(EVENTS_SINCE).join(head.to_string());
        let mut file = File::open(&path).unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        assert!(content.is_empty());
        let poll = |timeout: libc::c_int| {
            let mut pfd = libc::pollfd {
                fd: file.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            };
            // SAFETY: one valid pollfd on an fd `file` keeps open.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
            (n, pfd.revents)
        };
        assert_eq!(poll(0), (0, 0), "nothing newer yet");

        let (journal, publisher) = (fx.journal.clone(), fx.publisher());
        let pusher = thread::spawn(move || {
            let seq = journal.push(user("e", json!(1)), SystemTime::now());
            publisher.publish(Arc::new(Root(journal.snapshot())));
            seq.unwrap()
        });
        let (n, revents) = poll(EVENTUALLY.as_millis() as libc::c_int);
        let new = pusher.join().unwrap();
        assert_eq!(n, 1, "woken, not timed out");
        assert!(revents & libc::POLLPRI != 0, "revents {revents:#x}");
        assert_eq!(seqs(&std::fs::read(&path).unwrap()), [new]);
    }
}
