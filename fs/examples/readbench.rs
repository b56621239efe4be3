//! Cost of open+read+close of a 2 KB and a 20 KB document served by serfnode-fs, against the
//! same bytes on tmpfs (/dev/shm). Needs root and /dev/fuse:
//! `cargo run --release -p serfnode-fs --example readbench`

use std::error::Error;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serfnode_fs::{mount, Doc, MapDir, MountOptions, Node};

const ROUNDS: usize = 9;
const ITERS: usize = 4000;

/// Mean µs per open+read+close over one round.
fn round(path: &Path, buf: &mut Vec<u8>) -> f64 {
    let start = Instant::now();
    for _ in 0..ITERS {
        buf.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_end(buf))
            .expect("read");
    }
    start.elapsed().as_secs_f64() * 1e6 / ITERS as f64
}

fn main() -> Result<(), Box<dyn Error>> {
    let docs = [("2k.json", 2 * 1024), ("20k.json", 20 * 1024)];
    let content = |size: usize| -> Vec<u8> { (0..size).map(|i| b'a' + (i % 26) as u8).collect() };

    let mountpoint = tempfile::tempdir()?;
    let shm = tempfile::tempdir_in("/dev/shm")?;
    let mut root = MapDir::new();
    for (name, size) in docs {
        root.insert(name, Node::File(Doc::ready(1, content(size))));
        std::fs::write(shm.path().join(name), content(size))?;
    }
    let mount = mount(mountpoint.path(), Arc::new(root), &MountOptions::default())?;

    println!(
        "{:>9} {:>9} {:>9} {:>6} {:>9}",
        "file", "tmpfs µs", "fuse µs", "ratio", "requests"
    );
    let mut buf = Vec::new();
    for (name, size) in docs {
        let fuse = mountpoint.path().join(name);
        let tmpfs = shm.path().join(name);
        // Warm-up: the first open looks the name up and reads the bytes once.
        for path in [&fuse, &tmpfs] {
            round(path, &mut buf);
            assert_eq!(buf, content(size));
        }
        let before = mount.requests();
        // Alternate the two so drift in machine load hits both; keep each one's best round.
        let (mut best_tmpfs, mut best_fuse) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..ROUNDS {
            best_tmpfs = best_tmpfs.min(round(&tmpfs, &mut buf));
            best_fuse = best_fuse.min(round(&fuse, &mut buf));
        }
        println!(
            "{name:>9} {best_tmpfs:>9.2} {best_fuse:>9.2} {:>6.2} {:>9}",
            best_fuse / best_tmpfs,
            mount.requests() - before
        );
    }
    mount.unmount()?;
    Ok(())
}
