//! The system calls a confined process may not make. A child container is
//! created with CAP_SYS_ADMIN (its wrapper mounts), and Docker's default
//! seccomp profile then allows what it withholds from every other
//! container: namespaces (`unshare`, `setns`, `clone` with namespace flags)
//! and the mount family among them. Dropping the capability does not take
//! those back: an application could still make a user namespace of its own
//! and be "root" with every capability inside it. This filter returns the
//! application to what the default profile gives a container without
//! CAP_SYS_ADMIN: the same calls refused with EPERM, `clone` refused with
//! a namespace flag, `clone3` ENOSYS (so the C library falls back to
//! `clone`, as Docker makes it). On x86_64 the 32-bit ABI gets the same
//! rules; an ABI without rules here gets EPERM for every call.

use std::sync::OnceLock;

use libc::{sock_filter, sock_fprog};

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const AND_K: u16 = 0x54;
const RET_K: u16 = 0x06;

/// Offsets in `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;
/// The low 32 bits of the first argument (little-endian).
const ARG0_LOW: u32 = 16;

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET, as
/// Docker's profile masks them.
const CLONE_NAMESPACES: u32 = 0x7E02_0000;

/// The calls Docker's default profile allows only with CAP_SYS_ADMIN
/// (besides `clone` and `clone3`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn native_denied() -> Vec<u32> {
    let nrs = [
        libc::SYS_bpf,
        libc::SYS_fanotify_init,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fsopen,
        libc::SYS_fspick,
        libc::SYS_lookup_dcookie,
        libc::SYS_mount,
        libc::SYS_mount_setattr,
        libc::SYS_move_mount,
        libc::SYS_name_to_handle_at,
        libc::SYS_open_tree,
        libc::SYS_perf_event_open,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_setdomainname,
        libc::SYS_sethostname,
        libc::SYS_setns,
        libc::SYS_syslog,
        libc::SYS_umount2,
        libc::SYS_unshare,
    ];
    nrs.iter().map(|&n| n as u32).collect()
}

#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const NATIVE_ARCH: u32 = 0xC000_00B7;

/// The 32-bit x86 ABI an x86_64 process can still enter (`int 0x80`).
#[cfg(target_arch = "x86_64")]
const I386_ARCH: u32 = 0x4000_0003;
/// The same calls by their i386 numbers (clone 120, clone3 435; umount 22
/// and umount2 52).
#[cfg(target_arch = "x86_64")]
const I386_DENIED: [u32; 22] = [
    357, 338, 431, 432, 430, 433, 253, 21, 442, 429, 341, 428, 336, 131, 443, 121, 74, 346, 103,
    22, 52, 310,
];

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn ret_errno(errno: i32) -> sock_filter {
    stmt(
        RET_K,
        libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
    )
}

/// The rules for one ABI; `x32`: also take the x32 numbers (x86_64's with
/// bit 30 set) as x86_64's.
fn block(denied: &[u32], clone: u32, clone3: u32, x32: bool) -> Vec<sock_filter> {
    // Layout: load, [mask], clone3?, clone?, each denied?, ALLOW, EPERM,
    // ENOSYS, then the clone check: load arg0, namespace flags? → EPERM.
    let head = 1 + usize::from(x32);
    let tests = 2 + denied.len();
    let allow = head + tests;
    let (eperm, enosys, check) = (allow + 1, allow + 2, allow + 3);
    let jump = |at: usize, to: usize| (to - at - 1) as u8;
    let mut p = vec![stmt(LD_W_ABS, NR)];
    if x32 {
        p.push(stmt(AND_K, !0x4000_0000));
    }
    let test = |nr: u32, to: usize, p: &mut Vec<sock_filter>| {
        let at = p.len();
        p.push(sock_filter {
            code: JEQ_K,
            jt: jump(at, to),
            jf: 0,
            k: nr,
        });
    };
    test(clone3, enosys, &mut p);
    test(clone, check, &mut p);
    for &nr in denied {
        test(nr, eperm, &mut p);
    }
    p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    p.push(ret_errno(libc::EPERM));
    p.push(ret_errno(libc::ENOSYS));
    debug_assert_eq!(p.len(), check);
    p.push(stmt(LD_W_ABS, ARG0_LOW));
    p.push(sock_filter {
        code: JSET_K,
        jt: 1,
        jf: 0,
        k: CLONE_NAMESPACES,
    });
    p.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    p.push(ret_errno(libc::EPERM));
    p
}

/// `block` behind a check of the ABI (`A` holds the arch).
fn for_arch(arch: u32, block: Vec<sock_filter>) -> Vec<sock_filter> {
    let mut p = vec![sock_filter {
        code: JEQ_K,
        jt: 0,
        jf: u8::try_from(block.len()).expect("a block fits a jump"),
        k: arch,
    }];
    p.extend(block);
    p
}

/// The whole program, built once (before any fork: nothing is allocated
/// between fork and exec).
pub(super) fn program() -> Option<&'static [sock_filter]> {
    static PROGRAM: OnceLock<Option<Vec<sock_filter>>> = OnceLock::new();
    PROGRAM.get_or_init(build).as_deref()
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn build() -> Option<Vec<sock_filter>> {
    let mut p = vec![stmt(LD_W_ABS, ARCH)];
    let native = block(
        &native_denied(),
        libc::SYS_clone as u32,
        libc::SYS_clone3 as u32,
        cfg!(target_arch = "x86_64"),
    );
    p.extend(for_arch(NATIVE_ARCH, native));
    #[cfg(target_arch = "x86_64")]
    p.extend(for_arch(I386_ARCH, block(&I386_DENIED, 120, 435, false)));
    p.push(ret_errno(libc::EPERM));
    Some(p)
}

/// No rules for this architecture: confinement is the capabilities and
/// no_new_privs only.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn build() -> Option<Vec<sock_filter>> {
    None
}

/// Installs `program` on the calling thread (no_new_privs must be set).
/// Between fork and exec: one syscall, nothing allocated.
pub(super) fn install(program: &[sock_filter]) -> std::io::Result<()> {
    let prog = sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut sock_filter,
    };
    // SAFETY: prctl with a pointer to a valid sock_fprog over a live slice.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const sock_fprog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::super::Restrictions;

    /// An i386 system call through `int 0x80` with one argument.
    fn i386(nr: i64, arg: i64) -> i64 {
        let ret: i64;
        // SAFETY: a system call with integer arguments; rbx (which LLVM
        // reserves) is saved and restored around it.
        unsafe {
            std::arch::asm!(
                "xchg rbx, {flags}",
                "int 0x80",
                "xchg rbx, {flags}",
                flags = inout(reg) arg => _,
                inlateout("rax") nr => ret,
            );
        }
        ret
    }

    /// `unshare(CLONE_NEWUSER)` through the 32-bit ABI (i386 call 310), which
    /// a filter of x86_64 numbers alone would let through; and `getpid` (20)
    /// there, which must work.
    fn unshare_i386() -> i64 {
        if i386(20, 0) <= 0 {
            return -1_000;
        }
        i386(310, 0x1000_0000)
    }

    /// The result of `unshare_i386` in a child process, confined or not.
    fn in_child(confine: bool) -> i64 {
        let (tx, rx) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut cmd = std::process::Command::new("true");
        Restrictions { confine, ids: None }.on_std(&mut cmd);
        // SAFETY: one system call and a send on an inherited socket.
        unsafe {
            cmd.pre_exec(move || {
                let r = unshare_i386();
                tx.send(&r.to_ne_bytes())?;
                Ok(())
            })
        };
        cmd.status().unwrap();
        let mut buf = [0u8; 8];
        rx.recv(&mut buf).unwrap();
        i64::from_ne_bytes(buf)
    }

    #[test]
    fn the_32_bit_abi_is_held_to_the_same_rules() {
        assert_eq!(in_child(false), 0, "unconfined, as root: allowed");
        assert_eq!(in_child(true), -i64::from(libc::EPERM));
    }
}
