//! Unit tests of the unmounted filesystem: versions and inodes, the publish diff, forget,
//! poll, listings, rendering, control-node writes, and volatile names.

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::control::{Completion, FRAGMENT_IDLE, MAX_FRAGMENT};
use crate::node::{Doc, MapDir};
use crate::volatile::{Resolve, Resolved};

fn tree(entries: Vec<(&str, Node)>) -> Arc<dyn Dir> {
    Arc::new(
        entries
            .into_iter()
            .fold(MapDir::new(), |dir, (name, node)| dir.with(name, node)),
    )
}

fn file(version: u64, text: &str) -> Node {
    Node::File(Doc::ready(version, text.into()))
}

fn subdir(entries: Vec<(&str, Node)>) -> Node {
    Node::Dir(tree(entries))
}

/// A lazily rendered document that counts its renders.
fn counted(version: u64, text: &'static str, renders: &Arc<AtomicUsize>) -> Node {
    let renders = Arc::clone(renders);
    Node::File(Doc::new(version, move || {
        renders.fetch_add(1, Ordering::SeqCst);
        text.into()
    }))
}

fn lookup(core: &Core, parent: u64, name: &str) -> Result<Attr, i32> {
    match core.lookup(parent, OsStr::new(name))? {
        Found::Inode(attr) => Ok(attr),
        Found::Volatile(_) => panic!("{name} is volatile"),
    }
}

fn ino(core: &Core, parent: u64, name: &str) -> u64 {
    lookup(core, parent, name).expect("lookup").ino
}

fn content(core: &Core, ino: u64) -> Result<Vec<u8>, i32> {
    core.read(ino, 0, u32::MAX).map(|chunk| chunk.to_vec())
}

fn inval(parent: u64, name: &str, child: u64, gone: bool) -> Inval {
    Inval {
        parent,
        name: name.into(),
        child,
        gone,
    }
}

#[test]
fn lookup_serves_the_current_version_with_exact_size() {
    let core = Core::new(tree(vec![
        ("a", file(1, "hello world")),
        ("d", subdir(vec![("b", file(4, "bee"))])),
    ]));
    let a = lookup(&core, ROOT, "a").unwrap();
    assert_eq!((a.kind, a.size), (NodeKind::File, 11));
    assert_eq!(&*core.read(a.ino, 6, 100).unwrap(), b"world");
    assert_eq!(&*core.read(a.ino, 2, 3).unwrap(), b"llo");
    assert!(core.read(a.ino, 50, 10).unwrap().is_empty());
    assert_eq!(
        lookup(&core, ROOT, "a").unwrap(),
        a,
        "same version, same inode"
    );
    assert_eq!(core.getattr(a.ino).unwrap(), a);

    let d = lookup(&core, ROOT, "d").unwrap();
    assert_eq!(d.kind, NodeKind::Dir);
    assert_eq!(content(&core, ino(&core, d.ino, "b")).unwrap(), b"bee");
    assert_eq!(content(&core, d.ino), Err(libc::EISDIR));
    assert_eq!(lookup(&core, ROOT, "missing"), Err(libc::ENOENT));
    assert_eq!(lookup(&core, a.ino, "x"), Err(libc::ENOTDIR));
    assert_eq!(core.getattr(ROOT).unwrap().kind, NodeKind::Dir);
    assert_eq!(core.getattr(999), Err(libc::ENOENT));
}

#[test]
fn publish_invalidates_exactly_the_known_names_that_changed() {
    let (s1, s2) = (Sink::new(), Sink::new());
    let core = Core::new(tree(vec![
        ("a", file(1, "a1")),
        ("never", file(1, "n1")),
        ("same", file(1, "s1")),
        (
            "d",
            subdir(vec![("x", file(1, "x1")), ("y", file(1, "y1"))]),
        ),
        ("gone", file(1, "g1")),
        ("g", subdir(vec![("inner", file(1, "i1"))])),
        ("c", Node::Control(s1.clone())),
        ("swap", file(1, "w1")),
    ]));
    let a = ino(&core, ROOT, "a");
    let same = ino(&core, ROOT, "same");
    let d = ino(&core, ROOT, "d");
    let x = ino(&core, d, "x");
    let y = ino(&core, d, "y");
    core.forget(y, 1); // still current: tracked, but the kernel holds no dentry for it
    let gone = ino(&core, ROOT, "gone");
    let g = ino(&core, ROOT, "g");
    let inner = ino(&core, g, "inner");
    let c = ino(&core, ROOT, "c");
    let swap = ino(&core, ROOT, "swap");

    let published = core.publish(tree(vec![
        ("a", file(2, "a2")),
        ("never", file(2, "n2")),
        ("same", file(1, "s1")),
        (
            "d",
            subdir(vec![("x", file(1, "x1")), ("y", file(2, "y2"))]),
        ),
        ("g2", subdir(vec![])),
        ("c", Node::Control(s2.clone())),
        ("swap", subdir(vec![])),
    ]));

    let mut invals = published.invals;
    let order = |ino| invals.iter().position(|i| i.child == ino).unwrap();
    assert!(
        order(inner) < order(g),
        "children are invalidated before their directory"
    );
    invals.sort_by_key(|i| i.child);
    assert_eq!(
        invals,
        vec![
            inval(ROOT, "a", a, false),
            inval(ROOT, "gone", gone, true),
            inval(ROOT, "g", g, true),
            inval(g, "inner", inner, true),
            inval(ROOT, "swap", swap, false),
        ]
    );
    assert!(published.polls.is_empty());

    // Unchanged names keep their inodes; changed ones get new ones with the new bytes.
    assert_eq!(ino(&core, ROOT, "same"), same);
    assert_eq!(ino(&core, ROOT, "d"), d);
    assert_eq!(ino(&core, d, "x"), x);
    let y2 = ino(&core, d, "y");
    assert!(y2 > swap, "new inode numbers only grow");
    assert_eq!(content(&core, y2).unwrap(), b"y2");
    assert_eq!(
        core.getattr(y),
        Err(libc::ENOENT),
        "unheld outdated inode is freed"
    );
    assert_eq!(lookup(&core, ROOT, "swap").unwrap().kind, NodeKind::Dir);
    assert_eq!(lookup(&core, ROOT, "g2").unwrap().kind, NodeKind::Dir);
    assert_eq!(lookup(&core, g, "inner"), Err(libc::ENOENT), "g is gone");

    // The control node kept its inode and now feeds the new sink.
    assert_eq!(ino(&core, ROOT, "c"), c);
    assert_eq!(write(&core, c, 1, b"hi\n"), Ok(3));
    assert!(s1.lines().is_empty());
    assert_eq!(s2.lines(), vec![vec!["hi"]]);

    // Publishing the same tree again changes nothing.
    let again = core.publish(tree(vec![("same", file(1, "s1"))]));
    assert!(!again.invals.iter().any(|i| i.child == same));
}

#[test]
fn an_outdated_inode_stays_readable_until_forgotten() {
    let core = Core::new(tree(vec![("a", file(1, "one"))]));
    let old = ino(&core, ROOT, "a");
    assert_eq!(ino(&core, ROOT, "a"), old); // two kernel references now
    core.publish(tree(vec![("a", file(2, "two!"))]));

    let new = lookup(&core, ROOT, "a").unwrap();
    assert_ne!(new.ino, old);
    assert_eq!(
        (content(&core, new.ino).unwrap(), new.size),
        (b"two!".to_vec(), 4)
    );
    assert_eq!(content(&core, old).unwrap(), b"one");
    assert_eq!(core.getattr(old).unwrap().size, 3);
    core.forget(old, 1);
    assert_eq!(content(&core, old).unwrap(), b"one");
    core.forget(old, 1);
    assert_eq!(content(&core, old), Err(libc::ENOENT));
    assert_eq!(core.getattr(old), Err(libc::ENOENT));
    assert_eq!(content(&core, new.ino).unwrap(), b"two!");
}

#[test]
fn a_current_version_keeps_its_inode_after_forget_until_outdated() {
    let renders = Arc::new(AtomicUsize::new(0));
    let core = Core::new(tree(vec![("a", counted(1, "v1", &renders))]));
    let first = ino(&core, ROOT, "a");
    core.forget(first, 1);
    assert_eq!(ino(&core, ROOT, "a"), first);
    assert_eq!(renders.load(Ordering::SeqCst), 1);

    core.forget(first, 1);
    let published = core.publish(tree(vec![("a", file(2, "v2"))]));
    assert_eq!(
        published,
        Published::default(),
        "nothing held: nothing to tell"
    );
    assert_eq!(core.getattr(first), Err(libc::ENOENT));
    assert_ne!(ino(&core, ROOT, "a"), first);
}

#[test]
fn renders_once_per_version_and_never_during_publish() {
    let renders = Arc::new(AtomicUsize::new(0));
    let core = Core::new(tree(vec![("a", counted(1, "v1", &renders))]));
    for version in 2..5 {
        core.publish(tree(vec![("a", counted(version, "vx", &renders))]));
    }
    assert_eq!(renders.load(Ordering::SeqCst), 0);

    let a = ino(&core, ROOT, "a");
    assert_eq!(renders.load(Ordering::SeqCst), 1);
    ino(&core, ROOT, "a");
    content(&core, a).unwrap();
    core.getattr(a).unwrap();
    core.publish(tree(vec![("a", counted(4, "vx", &renders))]));
    assert_eq!(renders.load(Ordering::SeqCst), 1, "same version: no render");

    // Concurrent first lookups of a slow render share one render.
    let slow = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&slow);
    core.publish(tree(vec![(
        "a",
        Node::File(Doc::new(5, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(50));
            b"slow".to_vec()
        })),
    )]));
    let core = Arc::new(core);
    let lookups: Vec<_> = (0..8)
        .map(|_| {
            let core = Arc::clone(&core);
            thread::spawn(move || lookup(&core, ROOT, "a").unwrap())
        })
        .collect();
    for handle in lookups {
        assert_eq!(handle.join().unwrap().size, 4);
    }
    assert_eq!(slow.load(Ordering::SeqCst), 1);
}

#[test]
fn poll_raises_pri_once_outdated_and_wakes_registered_handles() {
    let core = Core::new(tree(vec![
        ("a", file(1, "a1")),
        ("b", file(1, "b1")),
        ("c", Node::Control(Sink::new())),
    ]));
    let a = ino(&core, ROOT, "a");
    let (pollin, pollpri) = (libc::POLLIN as u32, libc::POLLPRI as u32);
    assert_eq!(core.poll(a, None), Ok(pollin));
    assert_eq!(core.poll(a, Some(7)), Ok(pollin));
    assert_eq!(core.poll(a, Some(7)), Ok(pollin));
    assert_eq!(
        core.poll(ino(&core, ROOT, "c"), None),
        Ok(libc::POLLOUT as u32)
    );

    let unrelated = core.publish(tree(vec![("a", file(1, "a1")), ("b", file(2, "b2"))]));
    assert!(unrelated.polls.is_empty());
    assert_eq!(core.poll(a, None), Ok(pollin));

    let outdating = core.publish(tree(vec![("a", file(2, "a2"))]));
    assert_eq!(outdating.polls, vec![7], "one wakeup per handle");
    assert_eq!(core.poll(a, Some(8)), Ok(pollin | pollpri));
    let a2 = ino(&core, ROOT, "a");
    assert_eq!(core.poll(a2, None), Ok(pollin));

    // Handles of an inode the kernel forgot belong to closed files: dropped.
    assert_eq!(core.poll(a2, Some(9)), Ok(pollin));
    core.forget(a2, 1);
    let later = core.publish(tree(vec![("a", file(3, "a3"))]));
    assert!(later.polls.is_empty());
    assert_eq!(core.poll(12345, None), Err(libc::ENOENT));
}

#[test]
fn listings_are_snapshots_of_the_current_tree() {
    let core = Core::new(tree(vec![
        ("a", file(1, "a1")),
        ("d", subdir(vec![])),
        ("c", Node::Control(Sink::new())),
    ]));
    let a = ino(&core, ROOT, "a");
    let fh = core.opendir(ROOT).unwrap();
    core.publish(tree(vec![("z", file(1, "z"))]));
    let entries = core.readdir(fh).unwrap();
    let entry = |ino, kind, name: &str| Entry {
        ino,
        kind,
        name: name.into(),
    };
    assert_eq!(
        &*entries,
        &[
            entry(ROOT, NodeKind::Dir, "."),
            entry(ROOT, NodeKind::Dir, ".."),
            entry(a, NodeKind::File, "a"),
            entry(UNKNOWN_INO, NodeKind::Control, "c"),
            entry(UNKNOWN_INO, NodeKind::Dir, "d"),
        ]
    );
    core.releasedir(fh);
    assert_eq!(core.readdir(fh).err(), Some(libc::EBADF));

    let fresh = core.opendir(ROOT).unwrap();
    let names: Vec<_> = core
        .readdir(fresh)
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    assert_eq!(names, [".", "..", "z"]);
    assert_eq!(core.opendir(ino(&core, ROOT, "z")), Err(libc::ENOTDIR));
}

#[test]
fn only_a_control_truncation_may_set_attributes() {
    let core = Core::new(tree(vec![
        ("a", file(1, "a1")),
        ("c", Node::Control(Sink::new())),
    ]));
    let (a, c) = (ino(&core, ROOT, "a"), ino(&core, ROOT, "c"));
    assert_eq!(core.setattr(c, Some(0), false).unwrap().size, 0);
    assert_eq!(
        core.setattr(c, None, false).unwrap().kind,
        NodeKind::Control
    );
    assert_eq!(core.setattr(c, Some(5), false), Err(libc::EPERM));
    assert_eq!(core.setattr(c, None, true), Err(libc::EPERM));
    assert_eq!(core.setattr(a, Some(0), false), Err(libc::EPERM));
    assert_eq!(content(&core, c), Err(libc::EACCES));
}

// ---- control nodes ----

/// Records submissions. Rejects from the first line containing "bad" with EINVAL, unless a
/// custom verdict is set; a fragment "[...]" counts as complete.
#[derive(Default)]
struct Sink {
    log: Mutex<Vec<(Writer, Vec<Vec<u8>>)>>,
    verdict: Option<Verdict>,
}

type Verdict = Box<dyn Fn(Vec<Vec<u8>>, Completion) + Send + Sync>;

impl Sink {
    fn new() -> Arc<Sink> {
        Arc::new(Sink::default())
    }

    fn with(verdict: impl Fn(Vec<Vec<u8>>, Completion) + Send + Sync + 'static) -> Arc<Sink> {
        Arc::new(Sink {
            verdict: Some(Box::new(verdict)),
            ..Sink::default()
        })
    }

    fn lines(&self) -> Vec<Vec<String>> {
        let log = self.log.lock();
        log.iter()
            .map(|(_, lines)| {
                lines
                    .iter()
                    .map(|l| String::from_utf8_lossy(l).into())
                    .collect()
            })
            .collect()
    }
}

impl ControlSink for Sink {
    fn submit(&self, writer: Writer, lines: Vec<Vec<u8>>, done: Completion) {
        self.log.lock().push((writer, lines.clone()));
        if let Some(verdict) = &self.verdict {
            return verdict(lines, done);
        }
        match lines.iter().position(|l| l.windows(3).any(|w| w == b"bad")) {
            Some(k) => done.fail(k, libc::EINVAL),
            None => done.accept_all(),
        }
    }

    fn fragment_is_complete(&self, fragment: &[u8]) -> bool {
        fragment.starts_with(b"[") && fragment.ends_with(b"]")
    }
}

fn writer(pid: u32) -> Writer {
    Writer {
        pid,
        uid: 1000 + pid,
        gid: 2000 + pid,
    }
}

/// Writes `data` at `offset` of the writer's file and waits (briefly) for the answer.
fn write_at(
    core: &Core,
    ino: u64,
    pid: u32,
    (offset, data): (u64, &[u8]),
    now: Instant,
) -> Result<u32, i32> {
    let (tx, rx) = mpsc::channel();
    let reply = Box::new(move |r| tx.send(r).unwrap());
    core.write_at(ino, writer(pid), offset, data, reply, now);
    rx.recv_timeout(Duration::from_secs(5))
        .expect("write answered")
}

fn write(core: &Core, ino: u64, pid: u32, data: &[u8]) -> Result<u32, i32> {
    write_at(core, ino, pid, (0, data), Instant::now())
}

fn control_core(sink: &Arc<Sink>) -> (Core, u64) {
    let core = Core::new(tree(vec![
        ("c", Node::Control(sink.clone())),
        ("c2", Node::Control(sink.clone())),
    ]));
    let c = ino(&core, ROOT, "c");
    (core, c)
}

#[test]
fn lines_are_split_and_partial_lines_buffered_per_writer() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    let c2 = ino(&core, ROOT, "c2");
    assert_eq!(write(&core, c, 1, b"a\nb\n"), Ok(4));
    assert_eq!(write(&core, c, 1, b"par"), Ok(3));
    assert_eq!(write(&core, c, 2, b"other"), Ok(5));
    assert_eq!(write(&core, c2, 1, b"elsewhere"), Ok(9));
    assert_eq!(write(&core, c, 1, b"tial\n\nc"), Ok(7));
    assert_eq!(write(&core, c, 2, b"\n"), Ok(1));
    assert_eq!(write(&core, c, 1, b"\n"), Ok(1));
    assert_eq!(write(&core, c2, 1, b"\n"), Ok(1));
    assert_eq!(
        write(&core, c, 1, b"\n\n"),
        Ok(2),
        "empty lines are skipped"
    );
    assert_eq!(
        sink.lines(),
        vec![
            vec!["a", "b"],
            vec!["partial"],
            vec!["other"],
            vec!["c"],
            vec!["elsewhere"]
        ]
    );
    let writers: Vec<Writer> = sink.log.lock().iter().map(|(w, _)| *w).collect();
    assert_eq!(writers, [1, 1, 2, 1, 1].map(writer));
}

#[test]
fn a_complete_fragment_is_submitted_without_newline() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    assert_eq!(write(&core, c, 3, br#"["a",1]"#), Ok(7));
    assert_eq!(write(&core, c, 3, br#"["b","#), Ok(5));
    assert_eq!(write(&core, c, 3, b"2]"), Ok(2));
    assert_eq!(write(&core, c, 3, b"x\n[\"c\"]"), Ok(7));
    assert_eq!(
        sink.lines(),
        vec![
            vec![r#"["a",1]"#],
            vec![r#"["b",2]"#],
            vec!["x", r#"["c"]"#]
        ]
    );
}

#[test]
fn rejected_lines_give_short_writes_then_the_errno() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    // Line 1 accepted: the write ends after its newline; the retry then fails.
    assert_eq!(write(&core, c, 4, b"ok1\nbad\nok2\n"), Ok(4));
    assert_eq!(write(&core, c, 4, b"bad\nok2\n"), Err(libc::EINVAL));
    // Skipped empty lines between the accepted and the rejected one are retried too.
    assert_eq!(write(&core, c, 5, b"ok\n\n\nbad\n"), Ok(3));
    // A partial line of a failed write is not kept.
    assert_eq!(write(&core, c, 6, b"ok\nbad\ntail"), Ok(3));
    assert_eq!(write(&core, c, 6, b"\n"), Ok(1));
    assert_eq!(write(&core, c, 7, b"bad\nfrag"), Err(libc::EINVAL));
    assert_eq!(write(&core, c, 7, b"x\n"), Ok(2));
    // A buffered prefix belongs to the first line of the next write.
    assert_eq!(write(&core, c, 8, b"ba"), Ok(2));
    assert_eq!(write(&core, c, 8, b"d\nok\n"), Err(libc::EINVAL));
    assert_eq!(
        sink.lines(),
        vec![
            vec!["ok1", "bad", "ok2"],
            vec!["bad", "ok2"],
            vec!["ok", "bad"],
            vec!["ok", "bad"],
            vec!["bad"],
            vec!["x"],
            vec!["bad", "ok"],
        ]
    );
}

#[test]
fn the_sink_verdict_maps_to_the_write_result() {
    let verdict = |accepted: usize, errno: i32| {
        Sink::with(move |_, done: Completion| done.fail(accepted, errno))
    };
    for (accepted, errno, expected) in [
        (0, libc::EAGAIN, Err(libc::EAGAIN)),
        (0, libc::EMSGSIZE, Err(libc::EMSGSIZE)),
        (0, 0, Err(libc::EIO)),
        (0, -3, Err(libc::EIO)),
        (1, libc::EACCES, Ok(2)),
        (2, libc::EACCES, Ok(5)),
        (3, libc::EACCES, Ok(8)),
        (7, libc::EACCES, Ok(8)),
    ] {
        let sink = verdict(accepted, errno);
        let (core, c) = control_core(&sink);
        assert_eq!(
            write(&core, c, 1, b"a\nbb\n[c]"),
            expected,
            "fail({accepted}, {errno})"
        );
    }

    // fail(k) with k covering every line is acceptance: the trailing fragment is kept.
    let sink = verdict(3, libc::EIO);
    let (core, c) = control_core(&sink);
    assert_eq!(write(&core, c, 1, b"a\nb\nc\nfrag"), Ok(10));
    assert_eq!(write(&core, c, 1, b"ment\n"), Ok(5));
    assert_eq!(sink.lines()[1], vec!["fragment"]);
}

#[test]
fn completions_may_answer_later_from_another_thread() {
    let (tx, rx) = mpsc::channel::<Completion>();
    let tx = Mutex::new(tx);
    let sink = Sink::with(move |_, done| tx.lock().send(done).unwrap());
    let (core, c) = control_core(&sink);
    let core = Arc::new(core);

    let writer_core = Arc::clone(&core);
    let pending = thread::spawn(move || write(&writer_core, c, 1, b"slow\n"));
    let done = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    thread::sleep(Duration::from_millis(20));
    assert!(!pending.is_finished(), "the write waits for the sink");
    thread::spawn(move || done.accept_all()).join().unwrap();
    assert_eq!(pending.join().unwrap(), Ok(5));

    let writer_core = Arc::clone(&core);
    let dropped = thread::spawn(move || write(&writer_core, c, 1, b"lost\n"));
    drop(rx.recv_timeout(Duration::from_secs(5)).unwrap());
    assert_eq!(dropped.join().unwrap(), Err(libc::EIO));
}

/// The kernel splits a write(2) at page boundaries; a failure of a later piece makes the
/// write(2) return what the earlier pieces accepted, and the writer retries from there.
#[test]
fn a_rejected_line_split_across_writes_rejects_its_retried_tail() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    let now = Instant::now();
    let data = b"ok\n[\"bad\",1]\nnext\n";
    let (head, tail) = data.split_at(6);
    assert_eq!(write_at(&core, c, 1, (4090, head), now), Ok(6));
    assert_eq!(write_at(&core, c, 1, (4096, tail), now), Err(libc::EINVAL));
    // write(2) returned 6; the writer retries the rest and must get the error, not a new line.
    assert_eq!(write_at(&core, c, 1, (4096, tail), now), Err(libc::EINVAL));
    // Its next, different write is a line again.
    assert_eq!(write_at(&core, c, 1, (4096, b"next\n"), now), Ok(5));
    // Another writer's identical bytes are unaffected.
    assert_eq!(
        write_at(&core, c, 2, (4096, tail), now),
        Ok(tail.len() as u32)
    );
    assert_eq!(
        sink.lines(),
        vec![
            vec!["ok"],
            vec![r#"["bad",1]"#, "next"],
            vec!["next"],
            vec![r#"ad",1]"#, "next"],
        ]
    );

    // The same for a partial line that grows too long across the split.
    let (first, second) = (vec![b'x'; 4076], vec![b'x'; 61_924]);
    assert_eq!(write_at(&core, c, 3, (20, &first), now), Ok(4076));
    assert_eq!(
        write_at(&core, c, 3, (4096, &second), now),
        Err(libc::EMSGSIZE)
    );
    assert_eq!(
        write_at(&core, c, 3, (4096, &second), now),
        Err(libc::EMSGSIZE)
    );
    assert_eq!(write_at(&core, c, 3, (4096, b"y\n"), now), Ok(2));
    assert_eq!(sink.lines().last().unwrap(), &vec!["y"]);
}

#[test]
fn oversized_partial_lines_are_refused() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    let big = vec![b'x'; MAX_FRAGMENT + 1];
    assert_eq!(write(&core, c, 1, &big), Err(libc::EMSGSIZE));
    assert_eq!(
        write(&core, c, 1, &big[..MAX_FRAGMENT]),
        Ok(MAX_FRAGMENT as u32)
    );
    assert_eq!(
        write(&core, c, 1, b"xx"),
        Err(libc::EMSGSIZE),
        "buffered + new"
    );
    assert_eq!(write(&core, c, 1, b"y\n"), Ok(2), "the buffer was dropped");
    // Complete lines of any size are the sink's business.
    let mut line = big.clone();
    line.push(b'\n');
    assert_eq!(write(&core, c, 1, &line), Ok(line.len() as u32));
    let lines = sink.lines();
    assert_eq!(lines[0], vec!["y"]);
    assert_eq!(lines[1][0].len(), MAX_FRAGMENT + 1);
}

#[test]
fn idle_partial_lines_expire() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    let t0 = Instant::now();
    assert_eq!(write_at(&core, c, 1, (0, b"stale"), t0), Ok(5));
    assert_eq!(write_at(&core, c, 2, (0, b"kept"), t0), Ok(4));
    let later = t0 + FRAGMENT_IDLE - Duration::from_secs(1);
    assert_eq!(write_at(&core, c, 2, (4, b"\n"), later), Ok(1));
    let expired = t0 + FRAGMENT_IDLE + Duration::from_secs(1);
    assert_eq!(write_at(&core, c, 1, (5, b"\n"), expired), Ok(1));
    assert_eq!(sink.lines(), vec![vec!["kept"]]);
}

#[test]
fn writes_to_removed_control_nodes_and_other_inodes_fail() {
    let sink = Sink::new();
    let core = Core::new(tree(vec![
        ("c", Node::Control(sink.clone())),
        ("a", file(1, "a")),
        ("d", subdir(vec![])),
    ]));
    let (c, a, d) = (
        ino(&core, ROOT, "c"),
        ino(&core, ROOT, "a"),
        ino(&core, ROOT, "d"),
    );
    core.publish(tree(vec![("a", file(1, "a")), ("d", subdir(vec![]))]));
    assert_eq!(write(&core, c, 1, b"late\n"), Err(libc::ESTALE));
    assert_eq!(write(&core, a, 1, b"x\n"), Err(libc::EACCES));
    assert_eq!(write(&core, d, 1, b"x\n"), Err(libc::EISDIR));
    assert_eq!(write(&core, 4242, 1, b"x\n"), Err(libc::ENOENT));
    assert!(sink.lines().is_empty());
}

/// A resolver that answers at once with "answer N", N counting its resolutions.
#[derive(Default)]
struct Counter(AtomicUsize);

impl Resolve for Counter {
    fn resolve(&self, done: Resolved) {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        done.file(format!("answer {n}").into_bytes());
    }
}

/// A resolver that hands each `Resolved` to the test, to answer later from another thread.
struct Later(Mutex<mpsc::Sender<Resolved>>);

impl Later {
    fn new() -> (Arc<Later>, mpsc::Receiver<Resolved>) {
        let (tx, rx) = mpsc::channel();
        (Arc::new(Later(Mutex::new(tx))), rx)
    }
}

impl Resolve for Later {
    fn resolve(&self, done: Resolved) {
        self.0.lock().send(done).unwrap();
    }
}

/// The answer to one volatile lookup, and the names handed out for unhashing with it.
struct Answer {
    entry: mpsc::Receiver<Result<Attr, i32>>,
    unhash: mpsc::Receiver<Vec<String>>,
    /// "unhash" and "reply", in the order they happened.
    events: Arc<Mutex<Vec<&'static str>>>,
}

impl Answer {
    fn entry(&self) -> Result<Attr, i32> {
        self.entry
            .recv_timeout(Duration::from_secs(5))
            .expect("lookup answered")
    }

    fn unhashed(&self) -> Vec<String> {
        self.unhash.try_recv().expect("unhash called")
    }
}

/// Looks up a volatile name and asks its resolver, as the adapter does.
fn resolve(core: &Arc<Core>, parent: u64, name: &str) -> Answer {
    let Found::Volatile(resolution) = core.lookup(parent, OsStr::new(name)).unwrap() else {
        panic!("{name} is not volatile");
    };
    let (entry_tx, entry) = mpsc::channel();
    let (unhash_tx, unhash) = mpsc::channel();
    let events = Arc::new(Mutex::new(Vec::new()));
    let (on_reply, on_unhash) = (Arc::clone(&events), Arc::clone(&events));
    core.resolve(
        resolution,
        Box::new(move |result| {
            on_reply.lock().push("reply");
            entry_tx.send(result).unwrap();
        }),
        Box::new(move |names| {
            on_unhash.lock().push("unhash");
            let names = names.iter().map(|n| n.to_string()).collect();
            unhash_tx.send(names).unwrap();
        }),
    );
    Answer {
        entry,
        unhash,
        events,
    }
}

#[test]
fn each_lookup_of_a_volatile_name_resolves_to_a_fresh_untracked_inode() {
    let counter = Arc::new(Counter::default());
    let core = Arc::new(Core::new(tree(vec![
        ("q", Node::Volatile(counter.clone())),
        ("d", subdir(vec![("w", Node::Volatile(counter.clone()))])),
        ("a", file(1, "a1")),
    ])));
    let base = core.inode_count();

    let first = resolve(&core, ROOT, "q");
    let one = first.entry().unwrap();
    assert_eq!(first.unhashed(), ["q"]);
    assert_eq!(*first.events.lock(), ["unhash", "reply"]);
    assert_eq!((one.kind, one.size), (NodeKind::File, 8));
    assert_eq!(content(&core, one.ino).unwrap(), b"answer 1");
    assert_eq!(core.getattr(one.ino).unwrap(), one);
    assert_eq!(core.inode_count(), base + 1);

    let two = resolve(&core, ROOT, "q").entry().unwrap();
    assert_ne!(two.ino, one.ino, "every resolution is a new inode");
    assert_eq!(content(&core, two.ino).unwrap(), b"answer 2");
    assert_eq!(
        content(&core, one.ino).unwrap(),
        b"answer 1",
        "answers never change"
    );

    let d = ino(&core, ROOT, "d");
    let w = resolve(&core, d, "w");
    assert_eq!(content(&core, w.entry().unwrap().ino).unwrap(), b"answer 3");
    assert_eq!(w.unhashed(), ["w"]);

    // Never tracked: listed as files of unknown inode, untouched by publishes, which have
    // nothing to invalidate or wake for them.
    let fh = core.opendir(ROOT).unwrap();
    let listed = core.readdir(fh).unwrap();
    let q = listed.iter().find(|e| e.name == "q").unwrap();
    assert_eq!((q.ino, q.kind), (UNKNOWN_INO, NodeKind::File));
    assert_eq!(core.poll(two.ino, Some(3)), Ok(libc::POLLIN as u32));
    let published = core.publish(tree(vec![("a", file(1, "a1"))]));
    assert_eq!(published.polls, Vec::<u64>::new());
    assert!(published.invals.iter().all(|i| i.name.as_ref() == "d"));
    assert_eq!(
        core.poll(two.ino, None),
        Ok(libc::POLLIN as u32),
        "an answer is never outdated"
    );
    assert_eq!(content(&core, two.ino).unwrap(), b"answer 2");

    // Read-only like any file; freed when the kernel forgets it.
    assert_eq!(write(&core, two.ino, 1, b"x\n"), Err(libc::EACCES));
    assert_eq!(core.setattr(two.ino, Some(0), false), Err(libc::EPERM));
    for attr in [one, two] {
        core.forget(attr.ino, 1);
        assert_eq!(core.getattr(attr.ino), Err(libc::ENOENT));
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 3);
}

#[test]
fn volatile_answers_may_come_later_from_another_thread_or_fail() {
    let (later, pending) = Later::new();
    let core = Arc::new(Core::new(tree(vec![
        ("a", Node::Volatile(later.clone())),
        ("b", Node::Volatile(later.clone())),
        ("c", Node::Volatile(later.clone())),
        ("d", subdir(vec![("w", Node::Volatile(later.clone()))])),
    ])));
    let d = ino(&core, ROOT, "d");
    let base = core.inode_count();
    let recv = || pending.recv_timeout(Duration::from_secs(5)).unwrap();

    let a = resolve(&core, ROOT, "a");
    let done_a = recv();
    let b = resolve(&core, ROOT, "b");
    let done_b = recv();
    let w = resolve(&core, d, "w");
    let done_w = recv();
    assert!(
        a.entry.try_recv().is_err(),
        "the lookup waits for its resolver"
    );
    assert_eq!(core.inode_count(), base);

    thread::spawn(move || done_a.file(b"A".to_vec()))
        .join()
        .unwrap();
    let attr = a.entry().unwrap();
    assert_eq!(content(&core, attr.ino).unwrap(), b"A");
    // "b" is still being resolved in the same directory: dropping the dentry of "a" now
    // would make the kernel hold up the directory's lookups until "b" is answered.
    assert_eq!(a.unhashed(), Vec::<String>::new());
    done_w.file(b"W".to_vec());
    assert_eq!(w.unhashed(), ["w"], "other directories are independent");
    let c = resolve(&core, ROOT, "c");
    let done_c = recv();
    done_b.fail(libc::EAGAIN);
    assert_eq!(b.entry(), Err(libc::EAGAIN));
    assert_eq!(b.unhashed(), Vec::<String>::new(), "c is pending");
    drop(done_c);
    assert_eq!(c.entry(), Err(libc::EIO), "dropped unanswered");
    assert_eq!(c.unhashed(), ["a"], "failed lookups leave no dentry");
    assert_eq!(core.inode_count(), base + 2);

    // Handed out, but a lookup started there before the invalidation: it waits again.
    let a: Arc<str> = "a".into();
    let zero = resolve(&core, ROOT, "a");
    assert!(!core.unhash_now(ROOT, &a));
    assert!(core.unhash_now(d, &"w".into()), "no lookup pending below d");
    recv().fail(0);
    assert_eq!(zero.entry(), Err(libc::EIO));
    assert_eq!(zero.unhashed(), ["a"]);
    assert!(core.unhash_now(ROOT, &a));
}

/// A directory whose content its owner changes in place, without publishing.
struct Swap(Mutex<Arc<dyn Dir>>);

impl Dir for Swap {
    fn get(&self, name: &str) -> Option<Node> {
        self.0.lock().get(name)
    }

    fn entries(&self) -> Vec<(String, NodeKind)> {
        self.0.lock().entries()
    }
}

#[test]
fn a_name_that_turns_volatile_stops_being_tracked() {
    let counter = Arc::new(Counter::default());
    let core = Arc::new(Core::new(tree(vec![
        ("a", file(1, "a1")),
        ("b", file(1, "b1")),
    ])));
    let a = ino(&core, ROOT, "a");
    let published = core.publish(tree(vec![
        ("a", Node::Volatile(counter.clone())),
        ("b", file(1, "b1")),
    ]));
    assert_eq!(published.invals, vec![inval(ROOT, "a", a, false)]);
    assert_eq!(
        core.poll(a, None),
        Ok((libc::POLLIN | libc::POLLPRI) as u32)
    );
    let answer = resolve(&core, ROOT, "a").entry().unwrap();
    assert_eq!(content(&core, answer.ino).unwrap(), b"answer 1");

    // Changed without a publish: the lookup itself lets go of the tracked inode.
    let swap = Arc::new(Swap(Mutex::new(tree(vec![("b", file(1, "b1"))]))));
    core.publish(tree(vec![("s", Node::Dir(swap.clone()))]));
    let s = ino(&core, ROOT, "s");
    let b = ino(&core, s, "b");
    *swap.0.lock() = tree(vec![("b", Node::Volatile(counter.clone()))]);
    resolve(&core, s, "b").entry().unwrap();
    assert!(core.tree.lock().children(s).unwrap().is_empty());
    assert_eq!(
        core.poll(b, None),
        Ok((libc::POLLIN | libc::POLLPRI) as u32)
    );
    assert_eq!(
        content(&core, b).unwrap(),
        b"b1",
        "readable until forgotten"
    );
    core.forget(b, 1);
    assert_eq!(core.getattr(b), Err(libc::ENOENT));
}
