//! The hosts-file hook: keeps a managed block of `<service ip> <role>` lines,
//! one per role (its oldest alive member), in a hosts file that others also
//! write. Lines outside the block are kept byte for byte.
//!
//! The file is shared, so every rule here is about not harming what others
//! put in it:
//! - It is handled as bytes, never decoded: CRLF lines, bytes that are not
//!   UTF-8 and a `# BEGIN serfnode` line with no END after it (an ordinary
//!   line then) are kept as they are. A block is a BEGIN line and the next
//!   END line; every such block is ours and is replaced.
//! - It is read whole, up to [`MAX_LEN`]; a larger file is refused with an
//!   error naming it, and left alone.
//! - Docker bind-mounts `/etc/hosts` into a container (and shares it with
//!   every `--net container:` child), so it is rewritten in place with a
//!   single `pwrite` (a rename onto it fails with EBUSY), and that write
//!   never reaches past the file's current end: a line someone appends
//!   (O_APPEND) while we write lands after it and survives. The file grows
//!   only by appends of our own (a padding line), re-read before the write.
//! - Just before the write, the bytes it will cover are read again and
//!   compared with what the new content was made from; if anyone changed
//!   them meanwhile, the update starts over from their version (appends do
//!   not count: they lie past the write). (Nothing can stop a writer that
//!   rewrites the whole file in the microseconds between that compare and
//!   the write; Docker takes no lock, so a lock of ours would not help.)
//! - It never shrinks: bytes a shorter content leaves over become a padding
//!   line (`# serfnode pad` and spaces), which a later update reuses, so a
//!   reader never sees a cut-off line between a write and a truncate, and a
//!   truncate can never cut off a line appended meanwhile.
//! - Disk space for a growing file is reserved (`fallocate`) before a byte
//!   changes: on a full disk the update fails whole instead of tearing.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use imbl::OrdMap;

use crate::cluster::membership::{Entry, Snapshot};
use crate::cluster::rpc::{Member, MemberStatus};
use crate::cluster::tags;
use crate::names::is_host_name;

pub const BEGIN: &str = "# BEGIN serfnode: roles of the cluster (managed, do not edit)";
pub const END: &str = "# END serfnode";
/// Starts a padding line: this, then spaces, then `\n`.
pub const PAD: &str = "# serfnode pad";
/// The shortest padding line.
const MIN_PAD: usize = PAD.len() + 1;
/// The largest hosts file managed. Docker's are a few hundred bytes; the
/// largest in common use (ad-blocking lists) are a few MiB.
pub const MAX_LEN: u64 = 8 << 20;
/// Updates that find the file changed under them are started over this
/// many times before the hook gives up until its next retry.
const ATTEMPTS: usize = 50;
/// Room reserved past a growing file's end beyond our own append, for lines
/// others append meanwhile.
const SLACK: usize = 4096;

/// role → service address of its oldest alive member.
pub(crate) type RoleMap = BTreeMap<String, IpAddr>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HostsError {
    #[error("hosts file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "hosts file {path}: {len} bytes, over the {MAX_LEN} bytes serfnode manages; left as it is"
    )]
    TooLarge { path: PathBuf, len: u64 },
    #[error(
        "hosts file {path}: changed by another writer during each of {ATTEMPTS} attempts; not written"
    )]
    Busy { path: PathBuf },
}

/// Each role's alive members in seniority order, kept across snapshots:
/// a new snapshot is applied as its difference from the last one (imbl
/// skips the subtrees they share), so a change costs the members it
/// touched, not a pass over the cluster.
#[derive(Default)]
pub(crate) struct RoleIndex {
    roles: BTreeMap<String, BTreeMap<Senior, Arc<Member>>>,
    last: OrdMap<String, Entry>,
    /// What `desired` last made; `None` once a role's oldest member may have
    /// moved. A change to any other member leaves the block as it is, so
    /// most changes cost no pass over the roles.
    block: Option<(RoleMap, Vec<String>)>,
}

/// A member's place in its role: [`tags::seniority`] as a key.
#[derive(PartialEq)]
struct Senior(f64, String);

impl Eq for Senior {}

impl PartialOrd for Senior {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Senior {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        tags::seniority_of(self.0, &self.1, other.0, &other.1)
    }
}

impl RoleIndex {
    /// Brings the index to `snap`'s members.
    pub(crate) fn update(&mut self, snap: &Snapshot) {
        let last = std::mem::take(&mut self.last);
        for item in last.diff(&snap.members) {
            match item {
                DiffItem::Add(_, e) => self.add(e),
                DiffItem::Update { old, new } => {
                    self.remove(old.1);
                    self.add(new.1);
                }
                DiffItem::Remove(_, e) => self.remove(e),
            }
        }
        self.last = snap.members.clone();
    }

    fn add(&mut self, e: &Entry) {
        if e.member.status != MemberStatus::Alive {
            return;
        }
        let json = e.node_info_json();
        let members = self.roles.entry(json.role.clone()).or_default();
        let key = Senior(json.start, e.member.name.clone());
        if members
            .first_key_value()
            .is_none_or(|(first, _)| key < *first)
        {
            self.block = None;
        }
        members.insert(key, e.member.clone());
    }

    fn remove(&mut self, e: &Entry) {
        if e.member.status != MemberStatus::Alive {
            return;
        }
        let json = e.node_info_json();
        if let Some(members) = self.roles.get_mut(&json.role) {
            let key = Senior(json.start, e.member.name.clone());
            if members
                .first_key_value()
                .is_some_and(|(first, _)| first.cmp(&key).is_eq())
            {
                self.block = None;
            }
            members.remove(&key);
            if members.is_empty() {
                self.roles.remove(&json.role);
            }
        }
    }

    /// What the block should say, plus the roles and addresses that cannot
    /// be written safely; and whether that was made anew for this call
    /// (else it is what the last call returned).
    pub(crate) fn desired(&mut self) -> (&(RoleMap, Vec<String>), bool) {
        let fresh = self.block.is_none();
        let block = self.block.get_or_insert_with(|| {
            let oldest = self.roles.iter().filter_map(|(role, members)| {
                members.values().next().map(|m| (role.as_str(), &**m))
            });
            block_of(oldest)
        });
        (block, fresh)
    }
}

/// What the block should say for this snapshot, plus the roles and addresses
/// that cannot be written safely (a fresh index: what the kept one must say).
#[cfg(test)]
pub(crate) fn desired(snap: &Snapshot) -> (RoleMap, Vec<String>) {
    let mut index = RoleIndex::default();
    index.update(snap);
    index.desired().0.clone()
}

/// The block for each role's oldest alive member.
fn block_of<'a>(oldest: impl Iterator<Item = (&'a str, &'a Member)>) -> (RoleMap, Vec<String>) {
    let mut map = RoleMap::new();
    let mut refused = Vec::new();
    for (role, m) in oldest {
        if !is_host_name(role) {
            refused.push(format!(
                "role {role:?} of node {} is not a host name",
                m.name
            ));
            continue;
        }
        match tags::service_ip(m).parse::<IpAddr>() {
            Ok(ip) => {
                map.insert(role.to_owned(), ip);
            }
            Err(_) => refused.push(format!(
                "service address {:?} of node {} is not an ip address",
                tags::service_ip(m),
                m.name
            )),
        }
    }
    (map, refused)
}

/// The file's lines, each with its `\n` (the last one may have none).
fn lines(text: &[u8]) -> Vec<&[u8]> {
    text.split_inclusive(|&b| b == b'\n').collect()
}

/// A line without its terminator (`\n` or `\r\n`).
fn bare(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn is_pad(line: &[u8]) -> bool {
    line.strip_suffix(b"\n")
        .and_then(|l| l.strip_prefix(PAD.as_bytes()))
        .is_some_and(|rest| rest.iter().all(|&b| b == b' '))
}

/// A padding line of exactly `len` bytes (at least [`MIN_PAD`]).
fn pad_line(len: usize) -> Vec<u8> {
    debug_assert!(len >= MIN_PAD);
    let mut line = PAD.as_bytes().to_vec();
    line.resize(len - 1, b' ');
    line.push(b'\n');
    line
}

/// `existing` with its managed blocks replaced by one for `roles` (where the
/// first block was, else appended; none if `roles` is empty) and our
/// padding lines dropped; every other byte is kept. Also returns where
/// padding goes: right after the block, or where it was.
pub fn render(existing: &[u8], roles: &RoleMap) -> (Vec<u8>, usize) {
    let lines = lines(existing);
    let mut in_block = vec![false; lines.len()];
    let mut open = None;
    for (i, line) in lines.iter().enumerate() {
        let b = bare(line);
        if b == BEGIN.as_bytes() {
            // A BEGIN with no END before the next BEGIN is an ordinary line.
            open = Some(i);
        } else if b == END.as_bytes() {
            if let Some(start) = open.take() {
                in_block[start..=i].fill(true);
            }
        }
    }
    let mut out = Vec::with_capacity(existing.len() + 64);
    let mut at = None;
    for (line, inside) in lines.iter().zip(in_block) {
        if inside {
            at.get_or_insert(out.len());
        } else if !is_pad(line) {
            out.extend_from_slice(line);
        }
    }
    let at = match at {
        Some(at) => at,
        None => {
            if !roles.is_empty() && !out.is_empty() && !out.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.len()
        }
    };
    let mut block = Vec::new();
    if !roles.is_empty() {
        block.extend_from_slice(BEGIN.as_bytes());
        block.push(b'\n');
        for (role, ip) in roles {
            block.extend_from_slice(format!("{ip}\t{role}\n").as_bytes());
        }
        block.extend_from_slice(END.as_bytes());
        block.push(b'\n');
    }
    out.splice(at..at, block.iter().copied());
    (out, at + block.len())
}

/// How the file gets from `old` to the rendered content.
#[derive(Debug, PartialEq)]
enum Step {
    /// It says that already.
    Same,
    /// Write these bytes over the whole file (same length).
    Write(Vec<u8>),
    /// Append this padding first: the content needs more room.
    Grow(Vec<u8>),
}

fn step(old: &[u8], roles: &RoleMap) -> Step {
    let (new, pad_at) = render(old, roles);
    let spare = old.len() as i64 - new.len() as i64;
    if spare == 0 || spare >= MIN_PAD as i64 {
        let mut padded = new;
        if spare > 0 {
            padded.splice(pad_at..pad_at, pad_line(spare as usize));
        }
        return if padded == old {
            Step::Same
        } else {
            Step::Write(padded)
        };
    }
    // An append goes after the last line: that line gets its newline first,
    // and the room is counted from there.
    let (mut grow, spare) = if old.is_empty() || old.ends_with(b"\n") {
        (Vec::new(), spare)
    } else {
        let ended = [old, b"\n"].concat();
        let spare = ended.len() as i64 - render(&ended, roles).0.len() as i64;
        (b"\n".to_vec(), spare)
    };
    // Room for the content, and for a whole padding line if what would be
    // left over is too short for one.
    let deficit = (-spare).max(0) as usize;
    let len = if deficit >= MIN_PAD {
        deficit
    } else {
        deficit + MIN_PAD
    };
    grow.extend(pad_line(len));
    Step::Grow(grow)
}

/// The whole file (read from its start), or an error when it is over
/// [`MAX_LEN`].
fn read_all(file: &File, path: &Path) -> Result<Vec<u8>, HostsError> {
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match file.read_at(&mut chunk, text.len() as u64) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(path, e)),
        };
        if n == 0 {
            return Ok(text);
        }
        text.extend_from_slice(&chunk[..n]);
        if text.len() as u64 > MAX_LEN {
            let len = file.metadata().map_or(text.len() as u64, |m| m.len());
            return Err(HostsError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
    }
}

/// Whether the file still starts with `old`.
fn unchanged(file: &File, old: &[u8]) -> std::io::Result<bool> {
    let mut now = vec![0u8; old.len()];
    match file.read_exact_at(&mut now, 0) {
        Ok(()) => Ok(now == old),
        // Shorter now: someone rewrote it.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn io(path: &Path, source: std::io::Error) -> HostsError {
    HostsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Brings the block in `path` in line with `roles`, in place; returns
/// whether bytes changed.
pub(crate) fn write_block(path: &Path, roles: &RoleMap) -> Result<bool, HostsError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    let mut changed = false;
    for _ in 0..ATTEMPTS {
        let old = read_all(&file, path)?;
        match step(&old, roles) {
            Step::Same => return Ok(changed),
            Step::Grow(pad) => {
                reserve(&file, old.len() + pad.len() + SLACK).map_err(|e| io(path, e))?;
                // O_APPEND: lands after whatever others appended meanwhile.
                let mut appender = OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(|e| io(path, e))?;
                appender.write_all(&pad).map_err(|e| io(path, e))?;
                changed = true;
            }
            Step::Write(new) => {
                // Someone changed what we are about to overwrite: start over
                // from their version. (Lines appended since lie past it, and
                // stay where they are.)
                if !unchanged(&file, &old).map_err(|e| io(path, e))? {
                    continue;
                }
                file.write_all_at(&new, 0).map_err(|e| io(path, e))?;
                return Ok(true);
            }
        }
    }
    Err(HostsError::Busy {
        path: path.to_owned(),
    })
}

/// Claims the disk space a longer file needs before a byte of it changes:
/// on a full disk the write would otherwise stop part-way and leave a torn
/// line. Where the file system cannot preallocate, the write goes ahead.
pub(crate) fn reserve(file: &File, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate(2) on an open fd; KEEP_SIZE leaves its length (and
    // so what readers see) unchanged.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            0,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

/// The hook's state across view changes: what it last wrote, and which bad
/// roles it has already reported (each is logged once, not on every change).
pub(crate) struct Hosts {
    path: PathBuf,
    written: Option<RoleMap>,
    index: RoleIndex,
    reported: HashSet<String>,
}

impl Hosts {
    pub fn new(path: PathBuf) -> Hosts {
        Hosts {
            path,
            written: None,
            reported: HashSet::new(),
            index: RoleIndex::default(),
        }
    }

    /// Brings the role index to `snap` and returns the block to write, if the
    /// role → address map differs from what was last written. Never touches
    /// the file: cheap enough for an async task (the index moves by the
    /// snapshot's difference).
    pub fn due(&mut self, snap: &Snapshot) -> Option<RoleMap> {
        self.index.update(snap);
        let ((roles, refused), fresh) = self.index.desired();
        if fresh {
            for why in refused {
                if self.reported.insert(why.clone()) {
                    tracing::warn!(path = %self.path.display(), "not written to hosts file: {why}");
                }
            }
        }
        (self.written.as_ref() != Some(roles)).then(|| roles.clone())
    }

    /// Writes `roles` (from [`Hosts::due`]) to the file. Blocks on the file.
    /// Until it succeeds, `due` keeps returning the block.
    pub fn write(&mut self, roles: RoleMap) -> Result<(), HostsError> {
        if write_block(&self.path, &roles)? {
            tracing::info!(path = %self.path.display(), roles = roles.len(), "hosts file updated");
        }
        self.written = Some(roles);
        Ok(())
    }

    /// Removes the managed block (at shutdown: our roles would go stale).
    pub fn clear(&mut self) -> Result<(), HostsError> {
        write_block(&self.path, &RoleMap::new())?;
        self.written = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::View;

    fn member(name: &str, role: &str, ts: &str, service: &str, status: MemberStatus) -> Member {
        let tags = [("role", role), ("timestamp", ts), ("service", service)];
        Member {
            status,
            ..Member::fixture(name, &tags)
        }
    }

    fn roles(pairs: &[(&str, &str)]) -> RoleMap {
        pairs
            .iter()
            .map(|(r, ip)| (r.to_string(), ip.parse().unwrap()))
            .collect()
    }

    /// The index kept across snapshots says what a fresh one says, through
    /// joins, failures, role moves, seniority changes, reaps and returns.
    #[test]
    fn the_kept_index_agrees_with_a_fresh_one_at_every_step() {
        use MemberStatus::*;
        let view = View::new();
        let mut index = RoleIndex::default();
        let mut members: Vec<Member> = (0..40)
            .map(|i| {
                member(
                    &format!("n{i}"),
                    ["web", "db", "bad role", "cache"][i % 4],
                    &format!("{}", 100 - i),
                    &format!("10.0.0.{i}"),
                    Alive,
                )
            })
            .collect();
        let mut rng = 7u64;
        for step in 0..300 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (rng >> 33) as usize % members.len();
            let m = &mut members[i];
            match step % 6 {
                0 => m.status = Failed,
                1 => m.status = Alive,
                2 => {
                    m.tags.insert(
                        "role".into(),
                        ["web", "db", "x"][(rng >> 40) as usize % 3].into(),
                    );
                }
                3 => {
                    m.tags
                        .insert("timestamp".into(), format!("{}", (rng >> 45) % 50));
                }
                4 => {
                    m.tags
                        .insert("service".into(), format!("10.1.0.{}", (rng >> 50) % 200));
                }
                _ => {}
            }
            let mut now = members.clone();
            if step % 7 == 0 {
                now.remove(i); // reaped, back at the next step
            }
            if step % 2 == 0 {
                view.reconcile(now);
            } else {
                view.upsert(vec![members[i].clone()]);
            }
            let snap = view.snapshot();
            if step % 3 != 0 {
                // Some snapshots are skipped, as the watch channel does.
                index.update(&snap);
                assert_eq!(index.desired().0, &desired(&snap), "step {step}");
            }
        }
    }

    #[test]
    fn oldest_alive_member_wins_and_hostile_roles_are_refused() {
        use MemberStatus::*;
        let view = View::new();
        view.reconcile(vec![
            member("w2", "web", "20", "10.0.0.2", Alive),
            member("w1", "web", "10", "10.0.0.1", Alive),
            member("w0", "web", "5", "10.0.0.9", Failed),
            member("d1", "db", "30", "10.0.1.1", Alive),
            member("e1", "evil role", "1", "10.6.6.6", Alive),
            member("e2", "x\n1.2.3.4 bank", "1", "10.6.6.6", Alive),
            member("e3", "ok", "1", "10.0.0.7\n1.2.3.4 bank", Alive),
        ]);
        let (map, refused) = desired(&view.snapshot());
        assert_eq!(map, roles(&[("db", "10.0.1.1"), ("web", "10.0.0.1")]));
        assert_eq!(refused.len(), 3, "{refused:?}");
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    fn rendered(existing: &str, roles: &RoleMap) -> String {
        text(&render(existing.as_bytes(), roles).0)
    }

    #[test]
    fn render_keeps_outside_lines_and_replaces_block_in_place() {
        let base = "127.0.0.1\tlocalhost\n# comment\n::1 ip6-localhost\n";
        let one = rendered(base, &roles(&[("web", "10.0.0.1")]));
        assert_eq!(
            one,
            format!("{base}{BEGIN}\n10.0.0.1\tweb\n{END}\n"),
            "appended at the end"
        );
        let edited = one.replace("# comment", "# comment\n10.1.1.1 extra");
        let two = rendered(&edited, &roles(&[("db", "10.0.0.2")]));
        assert!(two.contains("10.1.1.1 extra\n"));
        assert!(two.contains("10.0.0.2\tdb\n") && !two.contains("web"));
        assert_eq!(
            rendered(&two, &RoleMap::new()),
            edited.replace(&format!("{BEGIN}\n10.0.0.1\tweb\n{END}\n"), "")
        );
        assert_eq!(rendered(&two, &roles(&[("db", "10.0.0.2")])), two);
        // Blank lines are the user's: kept.
        let blank = format!("{two}\n\n\n");
        assert_eq!(rendered(&blank, &roles(&[("db", "10.0.0.2")])), blank);
    }

    #[test]
    fn block_in_the_middle_stays_where_it_is() {
        let text = format!("a\n{BEGIN}\n1.1.1.1\told\n{END}\nb\n");
        let out = rendered(&text, &roles(&[("new", "2.2.2.2")]));
        assert_eq!(out, format!("a\n{BEGIN}\n2.2.2.2\tnew\n{END}\nb\n"));
    }

    #[test]
    fn whatever_the_file_holds_outside_a_block_is_kept_byte_for_byte() {
        let web = roles(&[("web", "10.0.0.1")]);
        let block = format!("{BEGIN}\n10.0.0.1\tweb\n{END}\n");
        // A BEGIN with no END, CRLF lines, bytes that are not UTF-8, and a
        // last line with no newline.
        let mut odd = b"127.0.0.1\tlocalhost\r\n".to_vec();
        odd.extend_from_slice(b"10.1.1.1 caf\xe9 \xff\xfe\r\n");
        odd.extend_from_slice(format!("{BEGIN}\n10.2.2.2 after-a-lone-begin\n\n").as_bytes());
        odd.extend_from_slice(b"10.3.3.3 no-newline");
        let (out, _) = render(&odd, &web);
        let mut want = odd.clone();
        want.push(b'\n');
        want.extend_from_slice(block.as_bytes());
        assert_eq!(text(&out), text(&want));
        assert_eq!(out, want);
        // Again: the lone BEGIN does not swallow the lines up to our END.
        assert_eq!(render(&out, &web).0, want);
        let (gone, _) = render(&out, &RoleMap::new());
        assert_eq!(gone, [&odd[..], b"\n"].concat());

        // A block with CRLF markers (the file went through unix2dos) is
        // ours; two blocks (a copied file) become one.
        let dos = format!("a\r\n{BEGIN}\r\n1.1.1.1\told\r\n{END}\r\nb\r\n{block}c\r\n");
        assert_eq!(rendered(&dos, &web), format!("a\r\n{block}b\r\nc\r\n"));
        // A lone END is an ordinary line too.
        let end = format!("{END}\nx\n");
        assert_eq!(rendered(&end, &web), format!("{end}{block}"));
    }

    #[test]
    fn padding_fills_what_a_shorter_block_leaves_and_is_reused() {
        let long = roles(&[
            ("a", "10.0.0.1"),
            ("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "10.0.0.2"),
        ]);
        let short = roles(&[("a", "10.0.0.1")]);
        let old = render(b"x\n", &long).0;
        let Step::Write(new) = step(&old, &short) else {
            panic!("a shorter block fits")
        };
        assert_eq!(new.len(), old.len());
        let t = text(&new);
        assert!(t.starts_with(&format!("x\n{BEGIN}\n10.0.0.1\ta\n{END}\n{PAD} ")));
        assert_eq!(step(&new, &short), Step::Same);
        // The padding goes when the block grows again, and nothing else.
        assert_eq!(step(&new, &long), Step::Write(old.clone()));
        // A block longer than the file and its padding: grow first.
        assert!(matches!(
            step(b"x", &long),
            Step::Grow(g) if g.starts_with(b"\n# serfnode pad ")
        ));
        assert!(!is_pad(b"# serfnode pad x\n") && !is_pad(b"# serfnode pad"));
    }

    #[test]
    fn write_block_is_in_place_and_never_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        let ino = std::fs::metadata(&path).unwrap();
        let big = roles(&[("a", "10.0.0.1"), ("bbbbbbbb", "10.0.0.2")]);
        assert!(write_block(&path, &big).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("127.0.0.1 localhost\n{BEGIN}\n10.0.0.1\ta\n10.0.0.2\tbbbbbbbb\n{END}\n"),
            "grown by exactly the block"
        );
        assert!(
            !write_block(&path, &big).unwrap(),
            "no write when nothing changed"
        );
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(write_block(&path, &roles(&[("a", "10.0.0.1")])).unwrap());
        let after = std::fs::metadata(&path).unwrap();
        assert_eq!(after.len(), len);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(after.ino(), ino.ino(), "rewritten in place, not renamed");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!(
            "127.0.0.1 localhost\n{BEGIN}\n10.0.0.1\ta\n{END}\n"
        )));
        assert!(!text.contains("bbbbbbbb"));
        // Cleared and set again: the padding is reused, the file stays put.
        assert!(write_block(&path, &RoleMap::new()).unwrap());
        assert!(write_block(&path, &big).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }

    #[test]
    fn a_file_over_the_limit_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        let body = vec![b'#'; MAX_LEN as usize + 1];
        std::fs::write(&path, &body).unwrap();
        let err = write_block(&path, &roles(&[("a", "10.0.0.1")])).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "hosts file {}: {} bytes, over the",
                path.display(),
                body.len()
            )),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), body);
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = write_block(Path::new("/nonexistent/hosts"), &RoleMap::new()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hosts file /nonexistent/hosts: "),
            "{err}"
        );
    }
}
