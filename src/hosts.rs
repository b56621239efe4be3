//! The hosts-file hook: keeps a managed block of `<service ip> <role>` lines,
//! one per role (its oldest alive member), in a hosts file that others also
//! write. Lines outside the block are never touched.
//!
//! Docker bind-mounts `/etc/hosts` into a container (and shares it with every
//! `--net container:` child), so the file is rewritten in place with a single
//! `pwrite` — a rename onto it fails with EBUSY. The file never shrinks in
//! that write (surplus bytes become blank lines, which resolvers skip), so a
//! reader never sees a cut-off line left between a write and a truncate.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::membership::Snapshot;
use crate::names::is_host_name;
use crate::tags;

pub const BEGIN: &str = "# BEGIN serfnode: roles of the cluster (managed, do not edit)";
pub const END: &str = "# END serfnode";

/// role → service address of its oldest alive member.
pub type RoleMap = BTreeMap<String, IpAddr>;

#[derive(Debug, thiserror::Error)]
#[error("hosts file {path}: {source}")]
pub struct HostsError {
    path: PathBuf,
    source: std::io::Error,
}

/// What the block should say for this snapshot, plus the roles and addresses
/// that cannot be written safely.
pub fn desired(snap: &Snapshot) -> (RoleMap, Vec<String>) {
    let mut oldest: BTreeMap<&str, &crate::rpc::Member> = BTreeMap::new();
    for m in snap.alive() {
        let role = tags::role_of(m);
        match oldest.get(role) {
            Some(cur) if tags::seniority(cur, m).is_le() => {}
            _ => {
                oldest.insert(role, m);
            }
        }
    }
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

/// `existing` with its managed block replaced by one for `roles` (appended if
/// absent, removed if `roles` is empty). Everything else is kept byte for
/// byte, except blank lines trailing the file, which are our padding.
pub fn render(existing: &str, roles: &RoleMap) -> String {
    let mut outside = Vec::new();
    let mut at = None;
    let mut inside = false;
    for line in existing.lines() {
        if line == BEGIN {
            inside = true;
            at.get_or_insert(outside.len());
        } else if line == END && inside {
            inside = false;
        } else if !inside {
            outside.push(line);
        }
    }
    while outside.last().is_some_and(|l| l.trim().is_empty()) {
        outside.pop();
    }
    let mut block = Vec::new();
    if !roles.is_empty() {
        block.push(BEGIN.to_owned());
        block.extend(roles.iter().map(|(role, ip)| format!("{ip}\t{role}")));
        block.push(END.to_owned());
    }
    let at = at.unwrap_or(outside.len()).min(outside.len());
    let mut out = String::with_capacity(existing.len() + 64);
    for line in &outside[..at] {
        out.push_str(line);
        out.push('\n');
    }
    for line in &block {
        out.push_str(line);
        out.push('\n');
    }
    for line in &outside[at..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Rewrites `path` in place with one write; returns whether bytes changed.
pub fn write_block(path: &Path, roles: &RoleMap) -> Result<bool, HostsError> {
    let err = |source| HostsError {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(err)?;
    let mut old = String::new();
    file.read_to_string(&mut old).map_err(err)?;
    let mut new = render(&old, roles);
    if new == old {
        return Ok(false);
    }
    if new.len() < old.len() {
        let pad = old.len() - new.len();
        new.extend(std::iter::repeat_n('\n', pad));
    }
    if new.len() > old.len() {
        reserve(&file, new.len()).map_err(err)?;
    }
    file.write_all_at(new.as_bytes(), 0).map_err(err)?;
    Ok(true)
}

/// Claims the disk space a longer file needs before a byte of it changes:
/// on a full disk the write would otherwise stop part-way and leave a torn
/// block. Where the file system cannot preallocate, the write goes ahead.
fn reserve(file: &std::fs::File, len: usize) -> std::io::Result<()> {
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
pub struct Hosts {
    path: PathBuf,
    written: Option<RoleMap>,
    reported: HashSet<String>,
}

impl Hosts {
    pub fn new(path: PathBuf) -> Hosts {
        Hosts {
            path,
            written: None,
            reported: HashSet::new(),
        }
    }

    /// Brings the file in line with `snap`; touches it only when the role →
    /// address map differs from what was last written.
    pub fn apply(&mut self, snap: &Snapshot) -> Result<(), HostsError> {
        let (roles, refused) = desired(snap);
        for why in refused {
            if self.reported.insert(why.clone()) {
                tracing::warn!(path = %self.path.display(), "not written to hosts file: {why}");
            }
        }
        if self.written.as_ref() == Some(&roles) {
            return Ok(());
        }
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
    use crate::membership::View;
    use crate::rpc::{Member, MemberStatus};

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

    #[test]
    fn render_keeps_outside_lines_and_replaces_block_in_place() {
        let base = "127.0.0.1\tlocalhost\n# comment\n::1 ip6-localhost\n";
        let one = render(base, &roles(&[("web", "10.0.0.1")]));
        assert_eq!(
            one,
            format!("{base}{BEGIN}\n10.0.0.1\tweb\n{END}\n"),
            "appended at the end"
        );
        let edited = one.replace("# comment", "# comment\n10.1.1.1 extra");
        let two = render(&edited, &roles(&[("db", "10.0.0.2")]));
        assert!(two.contains("10.1.1.1 extra\n"));
        assert!(two.contains("10.0.0.2\tdb\n") && !two.contains("web"));
        assert_eq!(
            render(&two, &RoleMap::new()),
            edited.replace(&format!("{BEGIN}\n10.0.0.1\tweb\n{END}\n"), "")
        );
        // Idempotent, and padding from a shrink does not accumulate.
        assert_eq!(
            render(&format!("{two}\n\n\n"), &roles(&[("db", "10.0.0.2")])),
            two
        );
    }

    #[test]
    fn block_in_the_middle_stays_where_it_is() {
        let text = format!("a\n{BEGIN}\n1.1.1.1\told\n{END}\nb\n");
        let out = render(&text, &roles(&[("new", "2.2.2.2")]));
        assert_eq!(out, format!("a\n{BEGIN}\n2.2.2.2\tnew\n{END}\nb\n"));
    }

    #[test]
    fn write_block_is_in_place_and_never_shrinks_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        let ino = std::fs::metadata(&path).unwrap();
        let big = roles(&[("a", "10.0.0.1"), ("bbbbbbbb", "10.0.0.2")]);
        assert!(write_block(&path, &big).unwrap());
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
