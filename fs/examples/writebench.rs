//! Cost of one write(2) of one line to a control node served by serfnode-fs, against a
//! round trip to another thread over a pipe (two cross-thread wake-ups, the floor of any
//! hand-off), for two sinks: one that accepts on the FUSE worker, and one that hands the
//! line to another thread which answers (as the write node's verdict comes from the RPC
//! reader). Needs root and /dev/fuse:
//! `cargo run --release -p serfnode-fs --example writebench`

use std::error::Error;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use serfnode_fs::{mount, Completion, ControlSink, MapDir, MountOptions, Node, Writer};

const ROUNDS: usize = 7;
const ITERS: usize = 3000;

/// Accepts every write on the FUSE worker that received it.
struct AtOnce;

impl ControlSink for AtOnce {
    fn submit(&self, _: Writer, _: Vec<Vec<u8>>, done: Completion) {
        done.accept_all();
    }
}

/// Hands every write to one answering thread.
struct Elsewhere(Mutex<mpsc::Sender<Completion>>);

impl ControlSink for Elsewhere {
    fn submit(&self, _: Writer, _: Vec<Vec<u8>>, done: Completion) {
        self.0.lock().unwrap().send(done).expect("answering thread");
    }
}

/// Tells another thread of every write and waits on the FUSE worker for its word, then
/// answers there.
struct Waits {
    probes: Mutex<mpsc::Sender<()>>,
    /// Words given so far.
    word: Arc<(Mutex<u64>, Condvar)>,
}

impl ControlSink for Waits {
    fn submit(&self, _: Writer, _: Vec<Vec<u8>>, done: Completion) {
        let (lock, cv) = &*self.word;
        let mut given = lock.lock().unwrap();
        let want = *given + 1;
        self.probes.lock().unwrap().send(()).expect("word thread");
        while *given < want {
            given = cv.wait(given).unwrap();
        }
        drop(given);
        done.accept_all();
    }
}

/// Mean µs per one-line write(2) over one round.
fn writes(path: &Path) -> f64 {
    let mut node = OpenOptions::new().write(true).open(path).expect("open");
    let start = Instant::now();
    for i in 0..ITERS {
        let line = format!("[\"e\",{i}]\n");
        assert_eq!(node.write(line.as_bytes()).expect("write"), line.len());
    }
    start.elapsed().as_secs_f64() * 1e6 / ITERS as f64
}

/// Mean µs per one-byte round trip to an echoing thread.
fn pipe_round_trips() -> f64 {
    let (mut ours, mut theirs) = UnixStream::pair().expect("socket pair");
    let echo = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while theirs.read_exact(&mut b).is_ok() {
            if theirs.write_all(&b).is_err() {
                break;
            }
        }
    });
    let mut b = [0u8; 1];
    let start = Instant::now();
    for _ in 0..ITERS {
        ours.write_all(&b).expect("ping");
        ours.read_exact(&mut b).expect("pong");
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / ITERS as f64;
    drop(ours);
    echo.join().expect("echo thread");
    us
}

fn main() -> Result<(), Box<dyn Error>> {
    let (tx, rx) = mpsc::channel::<Completion>();
    let answering = std::thread::spawn(move || {
        for done in rx {
            done.accept_all();
        }
    });
    let (probes, probes_rx) = mpsc::channel::<()>();
    let word = Arc::new((Mutex::new(0u64), Condvar::new()));
    let w = word.clone();
    let words = std::thread::spawn(move || {
        for () in probes_rx {
            *w.0.lock().unwrap() += 1;
            w.1.notify_all();
        }
    });
    let mut root = MapDir::new();
    root.insert(
        "waits",
        Node::Control(Arc::new(Waits {
            probes: Mutex::new(probes),
            word,
        })),
    );
    root.insert("at_once", Node::Control(Arc::new(AtOnce)));
    root.insert(
        "elsewhere",
        Node::Control(Arc::new(Elsewhere(Mutex::new(tx)))),
    );
    let mountpoint = tempfile::tempdir()?;
    let mount = mount(mountpoint.path(), Arc::new(root), &MountOptions::default())?;
    let (at_once, elsewhere, waits) = (
        mountpoint.path().join("at_once"),
        mountpoint.path().join("elsewhere"),
        mountpoint.path().join("waits"),
    );
    writes(&at_once);
    writes(&elsewhere);
    writes(&waits);
    // Alternate so drift in machine load hits all three; keep each one's best round.
    let [mut pipe, mut fuse, mut handed, mut waited] = [f64::INFINITY; 4];
    for _ in 0..ROUNDS {
        pipe = pipe.min(pipe_round_trips());
        fuse = fuse.min(writes(&at_once));
        handed = handed.min(writes(&elsewhere));
        waited = waited.min(writes(&waits));
    }
    println!("{:<58} {:>8}", "one round trip", "µs");
    println!(
        "{:<58} {pipe:>8.1}",
        "socket pair to an echoing thread (two wake-ups)"
    );
    println!(
        "{:<58} {fuse:>8.1}",
        "write(2) of a line, sink answers on the FUSE worker"
    );
    println!(
        "{:<58} {handed:>8.1}",
        "write(2) of a line, sink answers from another thread"
    );
    println!(
        "{:<58} {waited:>8.1}",
        "write(2) of a line, the worker waits for another thread's word"
    );
    mount.unmount()?;
    drop(mountpoint);
    // The sink (and its sender) went with the mount: the thread's loop ends.
    answering.join().expect("answering thread");
    words.join().expect("word thread");
    Ok(())
}
