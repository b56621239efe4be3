//! Unit tests of the unmounted filesystem: versions and inodes, the publish diff, forget,
//! poll, listings, rendering, control-node writes, and volatile names.

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::control::{Completion, FRAGMENT_IDLE, MAX_FRAGMENT, MAX_PENDING, MAX_WRITERS};
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
    match core.lookup(parent, OsStr::new(name))?.0 {
        Found::Inode(attr) => Ok(attr),
        Found::Volatile(_) => panic!("{name} is volatile"),
    }
}

/// Readiness of a poll (and no handles to wake).
fn ready(polled: Result<(u32, Vec<u64>), i32>) -> Result<u32, i32> {
    polled.map(|(ready, wake)| {
        assert!(wake.is_empty(), "woke {wake:?}");
        ready
    })
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
    core.forget(y, 1); // the kernel holds nothing of it: freed, though current
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
fn a_forgotten_current_version_is_freed_and_looked_up_afresh() {
    let renders = Arc::new(AtomicUsize::new(0));
    let core = Core::new(tree(vec![("a", counted(1, "v1", &renders))]));
    let first = ino(&core, ROOT, "a");
    assert_eq!(ino(&core, ROOT, "a"), first);
    core.forget(first, 1);
    assert_eq!(content(&core, first).unwrap(), b"v1", "still held once");
    core.forget(first, 1);
    assert_eq!(core.getattr(first), Err(libc::ENOENT));
    assert_eq!(core.inode_count(), 1, "the root alone");
    let second = ino(&core, ROOT, "a");
    assert!(second > first, "never reused");
    assert_eq!(content(&core, second).unwrap(), b"v1");
    assert_eq!(renders.load(Ordering::SeqCst), 2, "rendered again");

    core.forget(second, 1);
    let published = core.publish(tree(vec![("a", file(2, "v2"))]));
    assert_eq!(
        published,
        Published::default(),
        "nothing held: nothing to tell"
    );
}

#[test]
fn open_ended_directories_keep_only_the_recent_names() {
    /// Answers every name, listing none.
    struct Numbers;
    impl Dir for Numbers {
        fn get(&self, name: &str) -> Option<Node> {
            Some(file(1, name))
        }
        fn entries(&self) -> Vec<(String, NodeKind)> {
            Vec::new()
        }
        fn open_ended(&self) -> bool {
            true
        }
    }
    let core = Core::new(tree(vec![("n", Node::Dir(Arc::new(Numbers)))]));
    let n = ino(&core, ROOT, "n");
    let mut evicted = Vec::new();
    let mut inos = HashMap::new();
    for i in 0..10 * OPEN_ENDED_KEEP {
        let name = i.to_string();
        let (found, out) = core.lookup(n, OsStr::new(&name)).unwrap();
        let Found::Inode(attr) = found else { panic!() };
        inos.insert(name.clone(), attr.ino);
        // The kernel forgets what it is told to (here at once), except "0",
        // held open by a reader, and the most recent names.
        for name in out {
            if &*name != "0" {
                core.forget(inos[&*name], 1);
            }
            evicted.push(name);
        }
    }
    let tracked = core.inode_count() as usize;
    assert!(
        tracked <= OPEN_ENDED_KEEP + 3,
        "{tracked} inodes for {} names",
        10 * OPEN_ENDED_KEEP
    );
    assert!(evicted.iter().any(|n| &**n == "0"), "the oldest go first");
    assert!(!evicted
        .iter()
        .any(|n| **n == (10 * OPEN_ENDED_KEEP - 1).to_string()));
    // The held name is still tracked and current: a change reaches it.
    let published = core.publish(tree(vec![("n", Node::Dir(Arc::new(MapDir::new())))]));
    assert!(published.invals.iter().any(|i| i.child == inos["0"]));
    // An ordinary directory keeps every name it is asked for.
    let names: Vec<(String, Node)> = (0..2 * OPEN_ENDED_KEEP)
        .map(|i| (i.to_string(), file(1, "x")))
        .collect();
    let plain = MapDir::new();
    let plain = names
        .into_iter()
        .fold(plain, |d, (n, node)| d.with(n, node));
    let core = Core::new(tree(vec![("p", Node::Dir(Arc::new(plain)))]));
    let p = ino(&core, ROOT, "p");
    for i in 0..2 * OPEN_ENDED_KEEP {
        let (_, out) = core.lookup(p, OsStr::new(&i.to_string())).unwrap();
        assert!(out.is_empty());
    }
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
    assert_eq!(ready(core.poll(a, None)), Ok(pollin));
    assert_eq!(ready(core.poll(a, Some(7))), Ok(pollin));
    assert_eq!(ready(core.poll(a, Some(7))), Ok(pollin));
    assert_eq!(
        ready(core.poll(ino(&core, ROOT, "c"), None)),
        Ok(libc::POLLOUT as u32)
    );

    let unrelated = core.publish(tree(vec![("a", file(1, "a1")), ("b", file(2, "b2"))]));
    assert!(unrelated.polls.is_empty());
    assert_eq!(ready(core.poll(a, None)), Ok(pollin));

    let outdating = core.publish(tree(vec![("a", file(2, "a2"))]));
    assert_eq!(outdating.polls, vec![7], "one wakeup per handle");
    assert_eq!(ready(core.poll(a, Some(8))), Ok(pollin | pollpri));
    let a2 = ino(&core, ROOT, "a");
    assert_eq!(ready(core.poll(a2, None)), Ok(pollin));

    // Handles of an inode the kernel forgot belong to closed files: dropped.
    assert_eq!(ready(core.poll(a2, Some(9))), Ok(pollin));
    core.forget(a2, 1);
    let later = core.publish(tree(vec![("a", file(3, "a3"))]));
    assert!(later.polls.is_empty());
    assert_eq!(core.poll(12345, None), Err(libc::ENOENT));
}

#[test]
fn poll_handles_of_gone_pollers_are_woken_and_dropped_past_a_bound() {
    let core = Core::new(tree(vec![("a", file(1, "a1"))]));
    let a = ino(&core, ROOT, "a");
    // A million pollers that each poll once and go (open, poll, close):
    // the handles stay bounded, each is woken once.
    let mut woken = 0;
    for kh in 0..100_000 {
        let (_, wake) = core.poll(a, Some(kh)).unwrap();
        woken += wake.len();
        assert!(core.poll_handles(a) <= POLL_FLUSH_MIN);
    }
    assert!(woken >= 100_000 - POLL_FLUSH_MIN, "{woken} woken");
    // Live pollers come back when woken: they are kept, and not woken at
    // every new handle.
    let live: Vec<u64> = (1_000_000..1_000_200).collect();
    let mut wakes_of_live = 0;
    let mut next_dead = 2_000_000;
    for round in 0..50 {
        let mut again = Vec::new();
        for &kh in &live {
            let (_, wake) = core.poll(a, Some(kh)).unwrap();
            again.extend(wake);
        }
        for _ in 0..10 {
            let (_, wake) = core.poll(a, Some(next_dead)).unwrap();
            again.extend(wake);
            next_dead += 1;
        }
        // Woken live pollers poll again (the next round does).
        let live_woken = again.iter().filter(|k| live.contains(k)).count();
        if round > 5 {
            wakes_of_live += live_woken;
        }
    }
    assert!(core.poll_handles(a) <= POLL_FLUSH_MIN + 2 * live.len() + 10);
    assert!(
        wakes_of_live <= 3 * live.len(),
        "live pollers woken {wakes_of_live} times in 44 rounds"
    );
    // A change wakes every registered handle.
    let published = core.publish(tree(vec![("a", file(2, "a2"))]));
    assert!(published.polls.len() >= live.len());
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
    let entry = |ino, kind, name: &str| DirEntry {
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

    // Opendirs of an unchanged directory share one listing; a lookup there
    // (a new inode number to show) or a publish makes a new one.
    core.forget(ino(&core, ROOT, "z"), 2);
    let (one, two) = (core.opendir(ROOT).unwrap(), core.opendir(ROOT).unwrap());
    assert_eq!(core.readdir(one).unwrap()[2].ino, UNKNOWN_INO);
    assert!(Arc::ptr_eq(
        &core.readdir(one).unwrap(),
        &core.readdir(two).unwrap()
    ));
    let z = ino(&core, ROOT, "z");
    let three = core.opendir(ROOT).unwrap();
    let listing = core.readdir(three).unwrap();
    assert!(!Arc::ptr_eq(&core.readdir(one).unwrap(), &listing));
    assert_eq!(listing[2].ino, z);
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
fn a_rejected_line_split_across_writes_is_tried_whole_again_when_retried() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    let now = Instant::now();
    let data = b"ok\n[\"bad\",1]\nnext\n";
    let (head, tail) = data.split_at(6);
    assert_eq!(write_at(&core, c, 1, (4090, head), now), Ok(6));
    assert_eq!(write_at(&core, c, 1, (4096, tail), now), Err(libc::EINVAL));
    // write(2) returned 6; the writer retries the rest: the whole line again, not its tail.
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

/// A sink refusing with EAGAIN until opened, as the event rate does.
fn gated(open: &Arc<std::sync::atomic::AtomicBool>) -> Arc<Sink> {
    let open = Arc::clone(open);
    Sink::with(move |_, done| {
        if open.load(Ordering::SeqCst) {
            done.accept_all()
        } else {
            done.fail(0, libc::EAGAIN)
        }
    })
}

#[test]
fn a_refused_write_leaves_the_pending_bytes_as_they_were() {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink = gated(&open);
    let (core, c) = control_core(&sink);
    let now = Instant::now();
    // The head is taken; its end is refused, retried, refused, then taken.
    assert_eq!(write_at(&core, c, 1, (0, br#"["b",2"#), now), Ok(6));
    for _ in 0..3 {
        assert_eq!(write_at(&core, c, 1, (6, b"]\n"), now), Err(libc::EAGAIN));
    }
    open.store(true, Ordering::SeqCst);
    assert_eq!(write_at(&core, c, 1, (6, b"]\n"), now), Ok(2));
    assert_eq!(sink.lines().last().unwrap(), &vec![r#"["b",2]"#]);

    // Refused, then the writer moves on: the refused line's head is dropped.
    open.store(false, Ordering::SeqCst);
    assert_eq!(write_at(&core, c, 1, (8, br#"["c",3"#), now), Ok(6));
    assert_eq!(write_at(&core, c, 1, (14, b"]\n"), now), Err(libc::EAGAIN));
    open.store(true, Ordering::SeqCst);
    assert_eq!(write_at(&core, c, 1, (14, b"[\"d\",4]\n"), now), Ok(8));
    assert_eq!(sink.lines().last().unwrap(), &vec![r#"["d",4]"#]);
    assert_eq!(core.writers.len(), 0, "nothing left behind");
}

#[test]
fn an_unknown_outcome_is_told_to_a_writer_that_got_a_short_count_before_any_retry() {
    let sink = Sink::with(
        |lines, done| match lines.iter().position(|l| l == b"late") {
            Some(k) => done.unknown(k, libc::ETIMEDOUT),
            None => done.accept_all(),
        },
    );
    let (core, c) = control_core(&sink);
    let now = Instant::now();
    // Line 1 taken, line 2 unknown: a short count, then the errno for the retry, untried.
    assert_eq!(write_at(&core, c, 1, (0, b"ok\nlate\n"), now), Ok(3));
    assert_eq!(
        write_at(&core, c, 1, (3, b"late\n"), now),
        Err(libc::ETIMEDOUT)
    );
    assert_eq!(sink.lines().len(), 1, "not tried again");
    // Told once; a retry after that is the writer's choice: tried.
    assert_eq!(
        write_at(&core, c, 1, (3, b"late\n"), now),
        Err(libc::ETIMEDOUT)
    );
    assert_eq!(sink.lines().len(), 2);

    // A later piece of a split write(2) (on a page boundary): the same.
    assert_eq!(write_at(&core, c, 2, (4090, b"[\"ok\","), now), Ok(6));
    assert_eq!(write_at(&core, c, 2, (4096, b"1]\nlate\n"), now), Ok(3));
    assert_eq!(
        write_at(&core, c, 2, (4099, b"late\n"), now),
        Err(libc::ETIMEDOUT)
    );
    let tried = sink.lines().len();
    assert_eq!(write_at(&core, c, 3, (4090, b"la"), now), Ok(2));
    assert_eq!(
        write_at(&core, c, 3, (4096, b"te\n"), now),
        Err(libc::ETIMEDOUT)
    );
    assert_eq!(
        write_at(&core, c, 3, (4096, b"te\n"), now),
        Err(libc::ETIMEDOUT)
    );
    assert_eq!(
        sink.lines().len(),
        tried + 1,
        "the retry was answered untried"
    );
    // ... and then tried whole.
    assert_eq!(
        write_at(&core, c, 3, (4096, b"te\n"), now),
        Err(libc::ETIMEDOUT)
    );
    assert_eq!(sink.lines().len(), tried + 2);
    assert_eq!(sink.lines().last().unwrap(), &vec!["late"]);

    // A writer that saw the errno itself (not on a page boundary) retries at once.
    assert_eq!(
        write_at(&core, c, 4, (10, b"late\n"), now),
        Err(libc::ETIMEDOUT)
    );
    let tried = sink.lines().len();
    assert_eq!(
        write_at(&core, c, 4, (10, b"late\n"), now),
        Err(libc::ETIMEDOUT)
    );
    assert_eq!(sink.lines().len(), tried + 1);
}

#[test]
fn all_writers_together_keep_bounded_state() {
    let sink = Sink::new();
    let (core, c) = control_core(&sink);
    let now = Instant::now();
    let fragment = vec![b'x'; MAX_FRAGMENT];
    let fit = MAX_PENDING / MAX_FRAGMENT;
    for pid in 0..fit as u32 {
        assert_eq!(
            write_at(&core, c, pid, (0, &fragment), now),
            Ok(MAX_FRAGMENT as u32)
        );
    }
    // No room for another partial line: refused, or only the complete lines taken.
    let next = fit as u32;
    assert_eq!(
        write_at(&core, c, next, (0, b"frag"), now),
        Err(libc::EAGAIN)
    );
    assert_eq!(write_at(&core, c, next, (0, b"whole\nfrag"), now), Ok(6));
    assert_eq!(write_at(&core, c, next, (0, b"whole\n"), now), Ok(6));
    // A writer completing its line frees its room.
    assert_eq!(
        write_at(&core, c, 0, (MAX_FRAGMENT as u64, b"\n"), now),
        Ok(1)
    );
    assert_eq!(write_at(&core, c, next, (0, b"frag"), now), Ok(4));
    // Idle states go, making room.
    let later = now + FRAGMENT_IDLE + Duration::from_secs(1);
    assert_eq!(
        write_at(&core, c, next + 1, (0, &fragment), later),
        Ok(MAX_FRAGMENT as u32)
    );
    assert_eq!(core.writers.len(), 1);

    // So do writer counts: many small fragments.
    let (core, c) = control_core(&sink);
    for pid in 0..MAX_WRITERS as u32 {
        assert_eq!(write_at(&core, c, pid, (0, b"f"), now), Ok(1));
    }
    assert_eq!(
        write_at(&core, c, 999_999, (0, b"f"), now),
        Err(libc::EAGAIN)
    );
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
    let Found::Volatile(resolution) = core.lookup(parent, OsStr::new(name)).unwrap().0 else {
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
    assert_eq!(ready(core.poll(two.ino, Some(3))), Ok(libc::POLLIN as u32));
    let published = core.publish(tree(vec![("a", file(1, "a1"))]));
    assert_eq!(published.polls, Vec::<u64>::new());
    assert!(published.invals.iter().all(|i| i.name.as_ref() == "d"));
    assert_eq!(
        ready(core.poll(two.ino, None)),
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
        ready(core.poll(a, None)),
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
        ready(core.poll(b, None)),
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
