//! Confinement of a host-side thread beyond its seccomp filter: the
//! no-new-privileges bit, a Landlock domain that leaves only the paths the
//! thread serves reachable (and no TCP), and, when run as root, only the
//! capabilities it needs.
//!
//! All three are per-thread in Linux: they hold for the calling thread and
//! every thread or process it starts afterwards, never for the rest of the
//! process. Landlock is applied at the best level the kernel offers
//! (best effort: a kernel without Landlock leaves the thread with the
//! other two measures, and says so in the returned [`Confined`]).

use std::cell::RefCell;
use std::path::PathBuf;

use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};

use crate::switch::Switch;

/// The newest Landlock ABI nook asks for (rights the kernel does not know
/// are left out: best effort).
const LANDLOCK_ABI: ABI = ABI::V5;

/// The capabilities a file server thread keeps when run as root: to act
/// as the guest's user on the share (credential switch), give files to
/// it, reach files another user owns as the guest's root, and set modes
/// and times. Everything else (mounts, modules, raw I/O, ptrace, network
/// administration, device nodes, ...) is dropped. Measured: without
/// `CAP_CHOWN` a guest root's `chown` fails with EPERM, without
/// `CAP_DAC_OVERRIDE` its write in a directory another user owns fails
/// with EACCES; FIFOs need no `CAP_MKNOD` (device nodes are refused by the
/// guard) and nothing needs `CAP_DAC_READ_SEARCH` (no `open_by_handle_at`).
pub const FILE_SERVER_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
];

/// One host path a confined thread may reach, and everything beneath it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FsReach {
    /// A directory (or a file).
    pub path: PathBuf,
    /// Whether the thread may change what is there (else read only).
    pub write: bool,
}

/// What a thread is confined to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadConfinement {
    /// The only paths the thread may open (nothing when empty).
    pub reach: Vec<FsReach>,
    /// Capabilities kept when the thread has any (root): nothing else.
    pub keep_caps: &'static [Capability],
}

impl ThreadConfinement {
    /// A thread that opens no file and needs no capability (a vCPU, the
    /// vhost-user protocol thread).
    pub fn nothing() -> Self {
        ThreadConfinement::default()
    }

    /// A file server thread for `reach` (shares).
    pub fn file_server(mut reach: Vec<FsReach>) -> Self {
        reach.sort();
        reach.dedup();
        ThreadConfinement {
            reach,
            keep_caps: FILE_SERVER_CAPS,
        }
    }
}

/// How far Landlock confines a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LandlockStatus {
    /// Every right nook asks for is enforced (kernel ABI given).
    Full(u32),
    /// The kernel enforces some of the rights (an older ABI, given).
    Partial(u32),
    /// The kernel has no Landlock (or it is disabled at boot).
    Unavailable,
}

/// What [`confine_thread`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confined {
    /// Confined now.
    Applied {
        /// Landlock's part.
        landlock: LandlockStatus,
        /// Whether capabilities were reduced (the thread had some).
        caps_dropped: bool,
    },
    /// The thread was already confined to the same set.
    AlreadyOn,
    /// Confinement is turned off (`NOOK_NO_CONFINE=1` or [`set_confine_enabled`]).
    Disabled,
}

/// Errors confining a thread.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no-new-privileges")]
    NoNewPrivs(#[source] std::io::Error),
    /// The Landlock domain could not be built or entered.
    #[error("cannot apply landlock rules")]
    Landlock(#[source] landlock::RulesetError),
    /// Capabilities could not be reduced.
    #[error("cannot drop capabilities")]
    Caps(#[source] caps::errors::CapsError),
    /// The thread is confined to a different set already (confinement
    /// only ever narrows): run the work on a fresh thread.
    #[error("the thread is confined to other paths already")]
    Narrowed,
}

static SWITCH: Switch = Switch::new("NOOK_NO_CONFINE");

/// Turns confinement on or off for threads that call [`confine_thread`]
/// from now on. For debugging only.
pub fn set_confine_enabled(on: bool) {
    SWITCH.set(on);
}

/// Whether [`confine_thread`] confines: on unless turned off by
/// [`set_confine_enabled`] or `NOOK_NO_CONFINE=1` (read once).
pub fn confine_enabled() -> bool {
    SWITCH.on()
}

/// The kernel's Landlock ABI version, `None` without Landlock.
pub fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_long = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag
    // the call only returns a number; it touches no memory.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).ok().filter(|&v| v > 0)
}

thread_local! {
    static CONFINED_TO: RefCell<Option<ThreadConfinement>> = const { RefCell::new(None) };
}

/// Sets the calling thread's no-new-privileges bit.
pub(crate) fn no_new_privs() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments; it changes only this thread.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Confines the calling thread (and what it starts later) to `c`: no new
/// privileges, Landlock rules (file access only beneath `c.reach`, no TCP
/// bind or connect), and only `c.keep_caps` if it has capabilities.
pub fn confine_thread(c: &ThreadConfinement) -> Result<Confined, ConfineError> {
    if !confine_enabled() {
        return Ok(Confined::Disabled);
    }
    let before = CONFINED_TO.with(|t| t.borrow().clone());
    match before {
        Some(ref b) if b == c => return Ok(Confined::AlreadyOn),
        Some(_) => return Err(ConfineError::Narrowed),
        None => {}
    }
    no_new_privs().map_err(ConfineError::NoNewPrivs)?;
    let landlock = restrict_paths(&c.reach).map_err(ConfineError::Landlock)?;
    let caps_dropped = drop_caps(c.keep_caps).map_err(ConfineError::Caps)?;
    CONFINED_TO.with(|t| *t.borrow_mut() = Some(c.clone()));
    Ok(Confined::Applied {
        landlock,
        caps_dropped,
    })
}

fn restrict_paths(reach: &[FsReach]) -> Result<LandlockStatus, landlock::RulesetError> {
    let Some(kernel) = landlock_abi() else {
        return Ok(LandlockStatus::Unavailable);
    };
    let status = ruleset(reach, LANDLOCK_ABI)?.restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => LandlockStatus::Full(kernel),
        RulesetStatus::PartiallyEnforced => LandlockStatus::Partial(kernel),
        RulesetStatus::NotEnforced => LandlockStatus::Unavailable,
    })
}

/// A created (not yet entered) Landlock ruleset at `abi`: file access only
/// beneath `reach` (every right where `write`, read and execute rights
/// elsewhere), no TCP bind or connect, and from ABI 6 on no signals to or
/// abstract Unix sockets of processes outside the domain.
pub(crate) fn ruleset(
    reach: &[FsReach],
    abi: ABI,
) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
    let (rw, ro): (Vec<_>, Vec<_>) = reach.iter().partition(|r| r.write);
    let mut rules = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?;
    if !Scope::from_all(abi).is_empty() {
        rules = rules.scope(Scope::from_all(abi))?;
    }
    rules
        .create()?
        .add_rules(path_beneath_rules(
            rw.iter().map(|r| &r.path),
            AccessFs::from_all(abi),
        ))?
        .add_rules(path_beneath_rules(
            ro.iter().map(|r| &r.path),
            AccessFs::from_read(abi),
        ))
}

/// Keeps only `keep` in the thread's effective, permitted and bounding
/// sets and clears its inheritable and ambient sets. `false` if the
/// thread had no capabilities to drop.
fn drop_caps(keep: &[Capability]) -> Result<bool, caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    if permitted.is_empty() {
        return Ok(false);
    }
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_field(name: &str) -> String {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap()
    }

    /// On a thread of its own: confined to one directory, the thread
    /// opens files there, gets EACCES for anything else, cannot connect
    /// over TCP, has no new privileges and only the file server's
    /// capabilities (when the test runs as root).
    #[test]
    fn a_confined_thread_reaches_only_its_paths() {
        set_confine_enabled(true);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inside"), b"x").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let ro = tempfile::tempdir().unwrap();
        let reach = vec![
            FsReach {
                path: dir.path().to_owned(),
                write: true,
            },
            FsReach {
                path: ro.path().to_owned(),
                write: false,
            },
        ];
        let root = !caps::read(None, CapSet::Permitted).unwrap().is_empty();
        let outside_path = outside.path().to_owned();
        let ro_path = ro.path().to_owned();
        std::thread::spawn(move || {
            let c = ThreadConfinement::file_server(reach);
            let applied = confine_thread(&c).unwrap();
            assert_eq!(confine_thread(&c).unwrap(), Confined::AlreadyOn);
            assert!(matches!(
                confine_thread(&ThreadConfinement::nothing()),
                Err(ConfineError::Narrowed)
            ));
            let Confined::Applied {
                landlock,
                caps_dropped,
            } = applied
            else {
                panic!("{applied:?}");
            };
            assert_eq!(caps_dropped, root);
            if landlock == LandlockStatus::Unavailable {
                eprintln!("skipping the landlock checks: no landlock in this kernel");
                return;
            }
            assert_eq!(std::fs::read(dir.path().join("inside")).unwrap(), b"x");
            std::fs::write(dir.path().join("new"), b"y").unwrap();
            let err = std::fs::read(&outside_path).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
            let err = std::fs::write(ro_path.join("f"), b"z").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
            let err = std::fs::read("/etc/hostname").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
            if landlock_abi().is_some_and(|v| v >= 4) {
                let l = std::net::TcpListener::bind("127.0.0.1:0");
                assert!(l.is_err(), "tcp bind is refused");
            }
        })
        .join()
        .unwrap();
        // The rest of the process is untouched.
        assert!(std::fs::read(outside.path()).is_ok());
        assert_eq!(status_field("NoNewPrivs:"), "0");
    }

    #[test]
    fn a_thread_without_paths_opens_nothing_and_keeps_no_capability() {
        set_confine_enabled(true);
        std::thread::spawn(|| {
            confine_thread(&ThreadConfinement::nothing()).unwrap();
            if landlock_abi().is_some() {
                let err = std::fs::read("/etc/hostname").unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EACCES));
            }
            assert!(caps::read(None, CapSet::Effective).unwrap().is_empty());
            assert!(caps::read(None, CapSet::Permitted).unwrap().is_empty());
        })
        .join()
        .unwrap();
    }
}
