//! The application's restrictions in a child container: the one place that
//! knows what a process serfnode starts there on the application's behalf
//! may do. The wrapper (`serfnode child`) keeps CAP_SYS_ADMIN to serve the
//! mount; everything it starts — the application, and every handler — runs
//! with [`Restrictions`], applied between fork and exec:
//!
//! - CAP_SYS_ADMIN out of the bounding, ambient, inheritable, permitted and
//!   effective sets, no_new_privs (no setuid or file-capability binary
//!   gives it back), and the system calls Docker's default seccomp profile
//!   allows a container only with CAP_SYS_ADMIN refused again
//!   ([`seccomp`]: no namespaces, no mounts), unless the child is
//!   `privileged: true`, whose application keeps everything Docker gave it;
//! - with `user:`, that user's uid, primary gid and supplementary groups
//!   exactly as `docker run --user` gives them, read from the image's
//!   /etc/passwd and /etc/group before fork.
//!
//! A value of [`Restrictions`] can be applied to any command
//! ([`Restrictions::on_std`], [`Restrictions::on_tokio`]). No process
//! serfnode starts, in a parent or a child, gets a child's token
//! ([`TOKEN_ENV`]).

mod seccomp;

use std::io;
use std::path::Path;

/// The variable that carries a child's token into its container: it proves
/// to the parent which child the wrapper is, and is removed from the
/// environment of every process serfnode starts (handlers, the application).
pub(crate) const TOKEN_ENV: &str = "SERFNODE_CHILD_TOKEN";

/// CAP_SYS_ADMIN, from linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestrictError {
    #[error("user {0}: no such user in /etc/passwd")]
    NoUser(String),
    #[error("user {user}: group {group}: no such group in /etc/group")]
    NoGroup { user: String, group: String },
    #[error("user {0:?}: empty user name")]
    Empty(String),
}

/// What the application (and whatever serfnode runs beside it) may not do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// Drop CAP_SYS_ADMIN, set no_new_privs, filter the system calls (all
    /// but privileged children).
    pub confine: bool,
    /// Switch to these ids; `None` keeps the wrapper's (root, with the
    /// groups Docker gave the container).
    pub ids: Option<Ids>,
}

/// A user as `docker run --user` makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    /// Every group the process is in, the primary one first.
    pub groups: Vec<u32>,
}

impl Restrictions {
    /// Nothing restricted (the parent's own handlers).
    pub fn none() -> Restrictions {
        Restrictions::default()
    }

    /// A child's restrictions: `user` as the manifest's `user:` (`name`,
    /// `uid`, `name:group`, `uid:gid`), looked up under `root` (the
    /// image's `/`); `privileged` keeps the capabilities.
    pub fn for_child(
        user: Option<&str>,
        privileged: bool,
        root: &Path,
    ) -> Result<Restrictions, RestrictError> {
        let read = |file: &str| std::fs::read_to_string(root.join(file)).unwrap_or_default();
        let ids = match user {
            None => None,
            Some(spec) => Some(resolve(spec, &read("etc/passwd"), &read("etc/group"))?),
        };
        Ok(Restrictions {
            confine: !privileged,
            ids,
        })
    }

    /// Applies the restrictions to the calling process. Meant for between
    /// fork and exec: raw syscalls only, nothing allocated. Capabilities go
    /// first: once the uid changed the process could not drop them.
    pub fn apply(&self) -> io::Result<()> {
        if self.confine {
            drop_sys_admin()?;
        }
        if let Some(ids) = &self.ids {
            become_user(ids)?;
        }
        if self.confine {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // Last: it refuses nothing the steps above need. Built before
            // fork (see `on_std`).
            if let Some(program) = seccomp::program() {
                seccomp::install(program)?;
            }
        }
        Ok(())
    }

    /// Whether there is nothing to apply.
    pub fn is_none(&self) -> bool {
        *self == Restrictions::none()
    }

    /// Applies them in `cmd`'s child before it execs. (Nothing is hooked
    /// when there is nothing to apply: a pre-exec hook makes the standard
    /// library fork and `execvp`, which glibc retries with /bin/sh for an
    /// executable without `#!`.)
    pub fn on_std(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        if self.is_none() {
            return;
        }
        seccomp::program();
        let me = self.clone();
        // SAFETY: `apply` makes only async-signal-safe syscalls and does not
        // allocate; `me` and the filter were made before fork.
        unsafe { cmd.pre_exec(move || me.apply()) };
    }

    /// As [`Restrictions::on_std`], for a tokio command.
    pub fn on_tokio(&self, cmd: &mut tokio::process::Command) {
        self.on_std(cmd.as_std_mut());
    }
}

/// Resolves a `--user` spec as Docker (runc's libcontainer) does: the user
/// by name or uid in `passwd` (an unknown uid is taken as it is, with gid
/// 0); the group given after `:` by name or gid (an unknown gid as it is),
/// else the user's primary group plus every group of `group` that lists the
/// user's name as a member. The groups start with the primary one.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Ids, RestrictError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() {
        return Err(RestrictError::Empty(spec.to_owned()));
    }
    let fields = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
            .filter(|f| f.len() >= 4)
            .collect()
    };
    let numeric = user.parse::<u32>().ok();
    let found = fields(passwd).into_iter().find_map(|f| {
        let uid: u32 = f[2].parse().ok()?;
        let gid: u32 = f[3].parse().ok()?;
        let matches = match numeric {
            Some(n) => uid == n,
            None => f[0] == user,
        };
        matches.then(|| (f[0].clone(), uid, gid))
    });
    let (name, uid, primary) = match (found, numeric) {
        (Some(entry), _) => (Some(entry.0), entry.1, entry.2),
        (None, Some(uid)) => (None, uid, 0),
        (None, None) => return Err(RestrictError::NoUser(user.to_owned())),
    };
    let groups = fields(group);
    let Some(grp) = grp else {
        let mut all = vec![primary];
        if let Some(name) = &name {
            for f in &groups {
                let member = f[3].split(',').any(|m| m == name);
                if let (true, Ok(gid)) = (member, f[2].parse::<u32>()) {
                    if !all.contains(&gid) {
                        all.push(gid);
                    }
                }
            }
        }
        return Ok(Ids {
            uid,
            gid: primary,
            groups: all,
        });
    };
    let gid = match grp.parse::<u32>() {
        Ok(gid) => gid,
        Err(_) => groups
            .iter()
            .find(|f| f[0] == grp)
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| RestrictError::NoGroup {
                user: user.to_owned(),
                group: grp.to_owned(),
            })?,
    };
    Ok(Ids {
        uid,
        gid,
        groups: vec![gid],
    })
}

/// Runs `f` on a thread of its own whose file-system identity is `ids`'
/// (fsuid, fsgid, supplementary groups): files it opens, creates and
/// renames are checked and owned as the application's would be, and the
/// file capabilities of root (CAP_DAC_OVERRIDE and the others) are gone
/// from that thread once its fsuid is not 0. Only that thread changes: the
/// raw system calls are per thread (the C library's wrappers would change
/// every thread of the process), and the thread ends with `f`.
pub(crate) fn as_file_user<T: Send>(ids: &Ids, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: credential syscalls on this thread only, with
                // valid arguments; `groups` outlives the call.
                unsafe {
                    if libc::syscall(libc::SYS_setgroups, ids.groups.len(), ids.groups.as_ptr())
                        != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    libc::syscall(libc::SYS_setfsgid, ids.gid);
                    libc::syscall(libc::SYS_setfsuid, ids.uid);
                    // Both return the previous id; asking with an invalid
                    // one changes nothing and tells the current one.
                    let gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
                    let uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
                    if (uid, gid) != (ids.uid, ids.gid) {
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("cannot take the file identity {}:{}", ids.uid, ids.gid),
                        ));
                    }
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the file writer panicked")))
    })
}

fn become_user(ids: &Ids) -> io::Result<()> {
    let err = io::Error::last_os_error;
    // SAFETY: credential syscalls with valid arguments; `groups` outlives
    // the call.
    unsafe {
        if libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) != 0
            || libc::setgid(ids.gid) != 0
            || libc::setuid(ids.uid) != 0
        {
            return Err(err());
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Removes CAP_SYS_ADMIN from the bounding set and from the effective,
/// permitted, inheritable and ambient sets, so the process can never mount
/// or regain it.
fn drop_sys_admin() -> io::Result<()> {
    let err = io::Error::last_os_error;
    // SAFETY: prctl/capget/capset with valid arguments and live buffers.
    unsafe {
        if libc::prctl(
            libc::PR_CAPBSET_DROP,
            CAP_SYS_ADMIN as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(err());
        }
        // Fails only where ambient capabilities do not exist (before 4.3).
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
            CAP_SYS_ADMIN as libc::c_ulong,
            0,
            0,
        );
        let mut header = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        let mut data = [CapData::default(); 2];
        if libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) != 0 {
            return Err(err());
        }
        let bit = !(1u32 << CAP_SYS_ADMIN);
        data[0].effective &= bit;
        data[0].permitted &= bit;
        data[0].inheritable &= bit;
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(err());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/tmp:/bin/sh\nbad:x:x:y::/:\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nextra:x:2000:app\nmore:x:2001:root,app\nother:x:2002:application\n";

    fn ids(uid: u32, gid: u32, groups: &[u32]) -> Ids {
        Ids {
            uid,
            gid,
            groups: groups.to_vec(),
        }
    }

    /// The cases as `docker run --user SPEC` gave them (Uid, Gid, Groups of
    /// /proc/self/status) in an image with these files.
    #[test]
    fn users_resolve_as_docker_run_gives_them() {
        let r = |spec| resolve(spec, PASSWD, GROUP);
        assert_eq!(r("app"), Ok(ids(1000, 1000, &[1000, 2000, 2001])));
        assert_eq!(r("1000"), Ok(ids(1000, 1000, &[1000, 2000, 2001])));
        assert_eq!(r("app:extra"), Ok(ids(1000, 2000, &[2000])));
        assert_eq!(r("app:2001"), Ok(ids(1000, 2001, &[2001])));
        assert_eq!(r("1000:more"), Ok(ids(1000, 2001, &[2001])));
        assert_eq!(r("4242"), Ok(ids(4242, 0, &[0])));
        assert_eq!(r("4242:77"), Ok(ids(4242, 77, &[77])));
        assert_eq!(r("root"), Ok(ids(0, 0, &[0, 2001])));
        assert_eq!(r("nobody"), Err(RestrictError::NoUser("nobody".into())));
        assert_eq!(
            r("app:nogroup"),
            Err(RestrictError::NoGroup {
                user: "app".into(),
                group: "nogroup".into()
            })
        );
        assert!(matches!(r(":1"), Err(RestrictError::Empty(_))));
        // No files at all (FROM scratch): numeric ids only.
        assert_eq!(resolve("7", "", ""), Ok(ids(7, 0, &[0])));
    }

    #[test]
    fn privileged_children_keep_their_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        let r = Restrictions::for_child(Some("app"), true, dir.path()).unwrap();
        assert!(!r.confine);
        assert_eq!(r.ids, Some(ids(1000, 1000, &[1000, 2000, 2001])));
        let r = Restrictions::for_child(None, false, dir.path()).unwrap();
        assert_eq!((r.confine, r.ids), (true, None));
        assert_eq!(Restrictions::none(), Restrictions::default());
    }

    /// Applied in a real process: no namespace of its own, by any of the
    /// three calls or ABIs that make one, while forking still works (clone
    /// without namespace flags; clone3 answers ENOSYS and the C library
    /// falls back).
    #[test]
    fn a_confined_process_makes_no_namespace() {
        let run = |script: &str, confine: bool| {
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.args(["-c", script]);
            Restrictions { confine, ids: None }.on_std(&mut cmd);
            cmd.output().unwrap()
        };
        let probe = "unshare -U true && echo user; unshare -m true && echo mount; \
                     (sh -c 'echo forked') ; echo done";
        let free = String::from_utf8_lossy(&run(probe, false).stdout).into_owned();
        assert_eq!(free, "user\nmount\nforked\ndone\n", "as root, unconfined");
        let confined = run(probe, true);
        let out = String::from_utf8_lossy(&confined.stdout);
        assert_eq!(out, "forked\ndone\n", "{confined:?}");
        let err = String::from_utf8_lossy(&confined.stderr);
        assert!(err.contains("Operation not permitted"), "{err}");
    }

    /// Applied in a real child process: its status shows no CAP_SYS_ADMIN
    /// anywhere and no_new_privs (needs root, which the tests have).
    #[test]
    fn a_confined_process_has_no_sys_admin_and_no_new_privs() {
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "grep -E '^(Cap|NoNewPrivs|Uid|Groups)' /proc/self/status",
        ]);
        Restrictions {
            confine: true,
            ids: Some(ids(1000, 1000, &[1000, 2000])),
        }
        .on_std(&mut cmd);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{out:?}");
        for line in text.lines().filter(|l| l.starts_with("Cap")) {
            let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
            assert_eq!(mask & (1 << CAP_SYS_ADMIN), 0, "{line}");
        }
        assert!(text.contains("NoNewPrivs:\t1"), "{text}");
        assert!(text.contains("Uid:\t1000\t1000\t1000\t1000"), "{text}");
        assert!(text.contains("Groups:\t1000 2000"), "{text}");
    }
}
