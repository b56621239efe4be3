//! Bounded under hostile reads and writes: a million distinct `query/NAME`
//! lookups, thousands of `events_since/N` reads, a million open+poll+close
//! cycles on an unchanged file, thousands of writers leaving partial lines,
//! thousands of open directory fds. Each measures the daemon's resident
//! memory before and after (generous bounds) and what the mount tracks.
//! Counts can be scaled with `SERFNODE_BOUNDED_SCALE` (a factor, default 1).

mod support;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::node::{raw_write, Daemon, DaemonOpts};
use support::stream::rpc;

/// `n` scaled by `SERFNODE_BOUNDED_SCALE`.
fn scaled(n: usize) -> usize {
    let factor: f64 = std::env::var("SERFNODE_BOUNDED_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((n as f64) * factor).max(1.0) as usize
}

fn lone(name: &str) -> Daemon {
    Daemon::start(DaemonOpts {
        name: name.into(),
        ..DaemonOpts::default()
    })
}

fn rss(node: &Daemon) -> u64 {
    node.rss_kib().expect("the daemon runs")
}

/// Inodes the mount tracks (its statfs reports them as `f_files`).
fn tracked_inodes(mount: &Path) -> u64 {
    let c = CString::new(mount.as_os_str().as_bytes()).unwrap();
    // SAFETY: statfs(2) into a zeroed buffer, with a NUL-terminated path.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut buf) }, 0);
    buf.f_files
}

fn stat(path: &Path) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: stat(2) into a zeroed buffer, with a NUL-terminated path.
    let mut buf: libc::stat = unsafe { std::mem::zeroed() };
    unsafe { libc::stat(c.as_ptr(), &mut buf) }
}

/// Runs `work(i)` for i in 0..n on two threads (the mount has two workers).
fn on_two_threads(n: usize, work: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        for t in 0..2 {
            let work = &work;
            s.spawn(move || (t..n).step_by(2).for_each(work));
        }
    });
}

#[test]
fn a_million_query_names_and_thousands_of_events_since_leave_memory_bounded() {
    let a = lone("many-names");
    let query = a.path("query");
    let n = scaled(1_000_000);
    let began = Instant::now();
    // Warm up: the first lookups allocate what every later one reuses.
    on_two_threads(20_000, |i| {
        assert_eq!(stat(&query.join(format!("w{i}"))), 0)
    });
    let (rss0, inodes0) = (rss(&a), tracked_inodes(&a.mount));
    on_two_threads(n, |i| assert_eq!(stat(&query.join(format!("q{i}"))), 0));
    let (rss1, inodes1) = (rss(&a), tracked_inodes(&a.mount));
    eprintln!(
        "{n} query/NAME lookups in {:?}: rss {rss0} -> {rss1} KiB, inodes {inodes0} -> {inodes1}",
        began.elapsed()
    );
    assert!(
        inodes1 < 20_000,
        "{inodes1} inodes tracked after {n} lookups"
    );
    assert!(rss1 < rss0 + 32 * 1024, "rss {rss0} -> {rss1} KiB");

    // A journal of 300 events, read from thousands of distinct numbers:
    // each shows the whole ring (behind it, with a gap line first).
    let events = 300;
    let payload = format!("\"{}\"", "x".repeat(100));
    rpc(a.rpc_addr(), async |c| {
        for _ in 0..events {
            c.event("filler", payload.as_bytes(), false).await.unwrap();
        }
    });
    support::wait_for(Duration::from_secs(30), "the events journaled", || {
        a.journal("events").len() >= events
    });
    let readers = scaled(5000);
    let since = a.path("events_since");
    let (rss0, inodes0) = (rss(&a), tracked_inodes(&a.mount));
    let mut bytes = 0;
    for i in 1..=readers {
        bytes += std::fs::read(since.join(i.to_string())).unwrap().len();
    }
    let (rss1, inodes1) = (rss(&a), tracked_inodes(&a.mount));
    eprintln!(
        "{readers} events_since/N read ({} MiB): rss {rss0} -> {rss1} KiB, inodes {inodes0} -> {inodes1}",
        bytes >> 20
    );
    assert!(inodes1 < inodes0 + 2000, "{inodes1} inodes tracked");
    assert!(rss1 < rss0 + 32 * 1024, "rss {rss0} -> {rss1} KiB");

    // Publishing still works and is seen at once.
    assert_eq!(raw_write(&a.path("parent"), b"[\"after\",1]\n"), Ok(12));
    support::wait_for(Duration::from_secs(10), "after journaled", || {
        String::from_utf8_lossy(&a.read("events").unwrap()).contains("\"after\"")
    });
}

#[test]
fn a_million_polls_of_an_unchanged_file_leave_memory_flat_and_the_last_as_fast_as_the_first() {
    let a = lone("polled");
    let path = a.path("serfnodes_by_id.json");
    let cycles = scaled(1_000_000);
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(ep >= 0);
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // open, poll for POLLPRI (epoll asks the kernel to notify: the file
    // system keeps a poll handle), close; no change ever comes.
    let cycle = || {
        // SAFETY: open/epoll_ctl/close on an fd this closure owns.
        unsafe {
            let fd = libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(fd >= 0);
            let mut ev = libc::epoll_event {
                events: libc::EPOLLPRI as u32,
                u64: 0,
            };
            assert_eq!(libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev), 0);
            libc::close(fd);
        }
    };
    for _ in 0..1000 {
        cycle();
    }
    let rss0 = rss(&a);
    let tenth = cycles / 10;
    let mut times = Vec::new();
    for _ in 0..10 {
        let began = Instant::now();
        for _ in 0..tenth {
            cycle();
        }
        times.push(began.elapsed());
    }
    // SAFETY: closing our own epoll fd.
    unsafe { libc::close(ep) };
    let rss1 = rss(&a);
    eprintln!("{cycles} open+poll+close: tenths took {times:?}; rss {rss0} -> {rss1} KiB");
    assert!(rss1 < rss0 + 4 * 1024, "rss {rss0} -> {rss1} KiB");
    // Other load only ever slows a tenth down: the fastest of the last three
    // against the first.
    let last = times[7..].iter().min().unwrap();
    assert!(
        *last < times[0] * 3,
        "the last tenths took {:?}, the first {:?}",
        &times[7..],
        times[0]
    );
    // The file still wakes a poller when it changes.
    let file = std::fs::File::open(&path).unwrap();
    let _other = lone_joining(&a);
    let mut pfd = libc::pollfd {
        fd: std::os::fd::AsRawFd::as_raw_fd(&file),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd on an open fd.
    let n = unsafe { libc::poll(&mut pfd, 1, 30_000) };
    assert_eq!(n, 1, "woken by the join");
    assert_ne!(pfd.revents & libc::POLLPRI, 0);
}

fn lone_joining(a: &Daemon) -> Daemon {
    Daemon::start(DaemonOpts {
        name: format!("{}-peer", a.name),
        join: vec![a.bind_addr()],
        ..DaemonOpts::default()
    })
}

#[test]
fn writers_leaving_partial_lines_and_open_directories_are_bounded() {
    let a = lone("many-writers");
    let node = a.path("parent");
    let rss0 = rss(&a);
    // Each thread is its own writer and leaves a 30 KB partial line.
    let writers = scaled(2000);
    let fragment = vec![b' '; 30_000];
    let mut refused = 0;
    for _ in 0..writers {
        let (node, bytes) = (node.clone(), fragment.clone());
        match std::thread::spawn(move || raw_write(&node, &bytes))
            .join()
            .unwrap()
        {
            Ok(n) => assert_eq!(n, fragment.len()),
            Err(e) => {
                assert_eq!(e, libc::EAGAIN, "a clear error past the bound");
                refused += 1;
            }
        }
    }
    let rss1 = rss(&a);
    eprintln!("{writers} writers of 30 KB fragments: {refused} refused; rss {rss0} -> {rss1} KiB");
    assert!(rss1 < rss0 + 32 * 1024, "rss {rss0} -> {rss1} KiB");
    // Whole lines need no buffer: still taken.
    assert_eq!(raw_write(&node, b"[\"whole\",1]\n"), Ok(12));

    // Directory fds: each keeps a listing until closed.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on our own process with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let fds = (lim.rlim_cur as usize)
        .saturating_sub(200)
        .min(scaled(15_000));
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let before = rss(&a);
        let open: Vec<std::fs::File> = (0..fds)
            .map(|_| std::fs::File::open(&a.mount).unwrap())
            .collect();
        let held = rss(&a);
        drop(open);
        rounds.push((before, held));
    }
    eprintln!("{fds} open directory fds, 3 rounds (before, held) KiB: {rounds:?}");
    for (before, held) in &rounds {
        assert!(
            *held < before + 3 * 1024,
            "{fds} open dirs: rss {before} -> {held} KiB"
        );
    }
    assert!(
        rounds[2].1 < rounds[0].1 + 1024,
        "listings not released: {rounds:?}"
    );
}
