//! What every call returns ([`nook_status`]) and the errors of this
//! boundary ([`CapiError`]), mapped from the library's own error enums.
#![forbid(unsafe_code)]

use std::ffi::CStr;

use nook_lib::{ExecError, ImageError, VmError};
use nook_serve::wire::SessionErrorCode;
use nook_serve::SessionError;

/// What a call did. Every function that can fail returns one; the message
/// of a failure is `nook_last_error()`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum nook_status {
    /// It worked.
    NOOK_OK = 0,
    /// A null pointer where a value is needed, a string that is not UTF-8,
    /// an option out of range, an invalid session or snapshot name, or
    /// options that contradict each other.
    NOOK_ERR_INVALID_ARGUMENT = 1,
    /// No such session, snapshot, guest program or guest file, or no `nook`
    /// binary to host sessions.
    NOOK_ERR_NOT_FOUND = 2,
    /// A session of that name already exists.
    NOOK_ERR_EXISTS = 3,
    /// The session is not running (it was stopped, or it ended).
    NOOK_ERR_NOT_RUNNING = 4,
    /// The session is running (remove it with `force`), or is busy.
    NOOK_ERR_BUSY = 5,
    /// The guest refused: the program is not executable, or a guest file
    /// may not be read or written.
    NOOK_ERR_PERMISSION = 6,
    /// The image reference is invalid, or the image cannot be found,
    /// pulled or read.
    NOOK_ERR_IMAGE = 7,
    /// The VM failed: it did not boot, the engine or the guest agent
    /// failed, the session host broke down.
    NOOK_ERR_VM = 8,
    /// The VM did not boot in time, or the command's timeout killed it (the
    /// result is filled in all the same: see `nook_run`).
    NOOK_ERR_TIMEOUT = 9,
    /// A host file or directory could not be read or written.
    NOOK_ERR_IO = 10,
    /// A bug in nook (a panic, caught at the boundary).
    NOOK_ERR_INTERNAL = 11,
}

impl nook_status {
    /// Every status, in the order of their values.
    pub(crate) const ALL: [nook_status; 12] = [
        nook_status::NOOK_OK,
        nook_status::NOOK_ERR_INVALID_ARGUMENT,
        nook_status::NOOK_ERR_NOT_FOUND,
        nook_status::NOOK_ERR_EXISTS,
        nook_status::NOOK_ERR_NOT_RUNNING,
        nook_status::NOOK_ERR_BUSY,
        nook_status::NOOK_ERR_PERMISSION,
        nook_status::NOOK_ERR_IMAGE,
        nook_status::NOOK_ERR_VM,
        nook_status::NOOK_ERR_TIMEOUT,
        nook_status::NOOK_ERR_IO,
        nook_status::NOOK_ERR_INTERNAL,
    ];

    /// The status's name as the header spells it.
    pub fn name(self) -> &'static CStr {
        match self {
            nook_status::NOOK_OK => c"NOOK_OK",
            nook_status::NOOK_ERR_INVALID_ARGUMENT => c"NOOK_ERR_INVALID_ARGUMENT",
            nook_status::NOOK_ERR_NOT_FOUND => c"NOOK_ERR_NOT_FOUND",
            nook_status::NOOK_ERR_EXISTS => c"NOOK_ERR_EXISTS",
            nook_status::NOOK_ERR_NOT_RUNNING => c"NOOK_ERR_NOT_RUNNING",
            nook_status::NOOK_ERR_BUSY => c"NOOK_ERR_BUSY",
            nook_status::NOOK_ERR_PERMISSION => c"NOOK_ERR_PERMISSION",
            nook_status::NOOK_ERR_IMAGE => c"NOOK_ERR_IMAGE",
            nook_status::NOOK_ERR_VM => c"NOOK_ERR_VM",
            nook_status::NOOK_ERR_TIMEOUT => c"NOOK_ERR_TIMEOUT",
            nook_status::NOOK_ERR_IO => c"NOOK_ERR_IO",
            nook_status::NOOK_ERR_INTERNAL => c"NOOK_ERR_INTERNAL",
        }
    }

    /// The status whose value is `value`.
    pub fn from_value(value: i32) -> Option<nook_status> {
        usize::try_from(value)
            .ok()
            .and_then(|i| nook_status::ALL.get(i).copied())
    }
}

/// What a call of the C API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CapiError {
    #[error("{0} is a null pointer")]
    Null(&'static str),
    #[error("{0} is not valid UTF-8")]
    Utf8(&'static str),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
    #[error("no snapshot named `{0}` (see `nook snapshot ls`)")]
    NoSnapshot(String),
    #[error("cannot find the `nook` binary that hosts sessions: set NOOK_BIN to its path or put it on PATH (`bash scripts/setup` does)")]
    NoNookBinary,
    #[error("cannot get image `{reference}`")]
    Image {
        reference: String,
        #[source]
        source: Box<ImageError>,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("the command timed out and was killed")]
    CommandTimedOut,
    #[error("cannot pass on the command's {pipe}")]
    Output {
        pipe: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the command was interrupted by signal {0}")]
    Interrupted(i32),
    #[error("nook panicked: {0}")]
    Panic(String),
}

impl CapiError {
    /// The status a C caller sees for this error.
    pub fn status(&self) -> nook_status {
        use nook_status::*;
        match self {
            CapiError::Null(_) | CapiError::Utf8(_) | CapiError::Invalid { .. } => {
                NOOK_ERR_INVALID_ARGUMENT
            }
            CapiError::NoSnapshot(_) | CapiError::NoNookBinary => NOOK_ERR_NOT_FOUND,
            CapiError::Image { .. } => NOOK_ERR_IMAGE,
            CapiError::Session(e) => session_status(e),
            CapiError::Vm(e) => vm_status(e),
            CapiError::Exec(e) => exec_status(e),
            CapiError::CommandTimedOut => NOOK_ERR_TIMEOUT,
            CapiError::Output { .. } => NOOK_ERR_IO,
            CapiError::Interrupted(_) => NOOK_ERR_VM,
            CapiError::Panic(_) => NOOK_ERR_INTERNAL,
        }
    }

    /// The message `nook_last_error()` gives: this error and its causes.
    pub fn message(&self) -> String {
        nook_lib::error_chain(self)
    }
}

fn vm_status(e: &VmError) -> nook_status {
    use nook_status::*;
    match e {
        VmError::Config(_) | VmError::Resources(_) | VmError::NotRestorable { .. } => {
            NOOK_ERR_INVALID_ARGUMENT
        }
        VmError::Boot {
            cause: nook_lib::BootFailure::NotReady(_),
            ..
        } => NOOK_ERR_TIMEOUT,
        VmError::RunDir { .. } | VmError::SnapshotIo { .. } => NOOK_ERR_IO,
        _ => NOOK_ERR_VM,
    }
}

fn exec_status(e: &ExecError) -> nook_status {
    use nook_status::*;
    match e {
        ExecError::NotFound(_) => NOOK_ERR_NOT_FOUND,
        ExecError::NotExecutable(_) => NOOK_ERR_PERMISSION,
        ExecError::BadRequest(_) => NOOK_ERR_INVALID_ARGUMENT,
        ExecError::Timeout { .. } => NOOK_ERR_TIMEOUT,
        ExecError::Vm(e) => vm_status(e),
        ExecError::Remote(e) => match e.downcast_ref::<SessionError>() {
            Some(e) => session_status(e),
            None => NOOK_ERR_VM,
        },
        _ => NOOK_ERR_VM,
    }
}

fn session_status(e: &SessionError) -> nook_status {
    use nook_status::*;
    match e {
        SessionError::BadName(_) => NOOK_ERR_INVALID_ARGUMENT,
        SessionError::NoSuchSession(_) => NOOK_ERR_NOT_FOUND,
        SessionError::Exists(_) => NOOK_ERR_EXISTS,
        SessionError::Running(_) => NOOK_ERR_BUSY,
        SessionError::NotRunning(_) => NOOK_ERR_NOT_RUNNING,
        SessionError::Io { .. } | SessionError::Corrupt { .. } => NOOK_ERR_IO,
        SessionError::Refused { code, .. } => refused_status(*code),
        SessionError::Vm(e) => vm_status(e),
        SessionError::NoImage(_) | SessionError::Image { .. } | SessionError::ImageBuild { .. } => {
            NOOK_ERR_IMAGE
        }
        _ => NOOK_ERR_VM,
    }
}

fn refused_status(code: SessionErrorCode) -> nook_status {
    use nook_status::*;
    match code {
        SessionErrorCode::BadRequest => NOOK_ERR_INVALID_ARGUMENT,
        SessionErrorCode::NotFound | SessionErrorCode::NoProcess => NOOK_ERR_NOT_FOUND,
        SessionErrorCode::NotExecutable | SessionErrorCode::PermissionDenied => NOOK_ERR_PERMISSION,
        SessionErrorCode::NotADirectory
        | SessionErrorCode::IsADirectory
        | SessionErrorCode::NotEmpty
        | SessionErrorCode::Io => NOOK_ERR_IO,
        SessionErrorCode::Vm
        | SessionErrorCode::NoDisplay
        | SessionErrorCode::DesktopFailed
        | SessionErrorCode::Other => NOOK_ERR_VM,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_value_and_its_header_name() {
        for (i, s) in nook_status::ALL.iter().enumerate() {
            assert_eq!(*s as i32, i as i32);
            assert_eq!(nook_status::from_value(i as i32), Some(*s));
            let name = s.name().to_str().unwrap();
            assert!(name.starts_with("NOOK_"), "{name}");
            assert_eq!(format!("{s:?}"), name);
        }
        assert_eq!(nook_status::from_value(-1), None);
        assert_eq!(nook_status::from_value(12), None);
    }

    #[test]
    fn library_errors_map_to_their_statuses() {
        use nook_status::*;
        let cases = [
            (
                CapiError::from(SessionError::NoSuchSession("x".into())),
                NOOK_ERR_NOT_FOUND,
            ),
            (
                CapiError::from(SessionError::NotRunning("x".into())),
                NOOK_ERR_NOT_RUNNING,
            ),
            (
                CapiError::from(SessionError::Running("x".into())),
                NOOK_ERR_BUSY,
            ),
            (
                CapiError::from(SessionError::BadName("../x".into())),
                NOOK_ERR_INVALID_ARGUMENT,
            ),
            (
                CapiError::from(SessionError::Refused {
                    code: SessionErrorCode::NotFound,
                    message: "no /nope".into(),
                }),
                NOOK_ERR_NOT_FOUND,
            ),
            (
                CapiError::from(ExecError::Remote(Box::new(SessionError::NotRunning(
                    "x".into(),
                )))),
                NOOK_ERR_NOT_RUNNING,
            ),
            (
                CapiError::from(ExecError::NotExecutable("/etc/passwd".into())),
                NOOK_ERR_PERMISSION,
            ),
            (
                CapiError::from(VmError::Config("bad")),
                NOOK_ERR_INVALID_ARGUMENT,
            ),
            (CapiError::Null("argv"), NOOK_ERR_INVALID_ARGUMENT),
            (CapiError::Panic("boom".into()), NOOK_ERR_INTERNAL),
        ];
        for (e, want) in cases {
            assert_eq!(e.status(), want, "{e}");
        }
    }
}
