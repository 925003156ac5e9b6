//! Sessions from C: what a `nook_session` handle names, and the
//! operations on it, each one call of `nook_serve` (the same functions
//! `nook start/exec/cp/stop/rm` and the daemon use).
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nook_lib::ExitStatus;
use nook_serve::SessionClient;

use crate::command::{pump, OutputStreams};
use crate::options::{nook_binary, ExecOptions, VmOptions};
use crate::status::CapiError;

/// A session by name: an opaque handle for C. It holds no connection (each
/// call opens its own), so one handle serves several threads at once.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct nook_session {
    pub(crate) name: String,
    /// `name` for `nook_session_name`.
    pub(crate) c_name: CString,
    /// `$NOOK_HOME` when the handle was made.
    pub(crate) home: PathBuf,
}

impl nook_session {
    fn new(home: &Path, name: String) -> Result<nook_session, CapiError> {
        let c_name = CString::new(name.clone()).map_err(|_| CapiError::Invalid {
            what: "session name",
            why: "it contains a NUL byte".into(),
        })?;
        Ok(nook_session {
            name,
            c_name,
            home: home.to_path_buf(),
        })
    }

    /// Starts session `name` (a fresh `cPID-N` name when `None`) with
    /// `vm`, hosted by the `nook` binary ([`nook_binary`]).
    pub fn start(home: &Path, name: Option<String>, vm: &VmOptions) -> Result<Self, CapiError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = name.unwrap_or_else(|| {
            format!(
                "c{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            )
        });
        nook_serve::validate_name(&name)?;
        let spec = vm.session_spec(home, &name)?;
        nook_serve::start(home, &spec, &nook_binary()?)?;
        nook_session::new(home, name)
    }

    /// A handle on the running session `name` (started by anyone).
    pub fn open(home: &Path, name: &str) -> Result<Self, CapiError> {
        SessionClient::open(home, name)?;
        nook_session::new(home, name.to_string())
    }

    fn client(&self) -> Result<SessionClient, CapiError> {
        Ok(SessionClient::open(&self.home, &self.name)?)
    }

    /// Runs `argv` in the session to its end.
    pub fn exec(
        &self,
        argv: Vec<String>,
        exec: &ExecOptions,
        out: OutputStreams,
    ) -> Result<ExitStatus, CapiError> {
        if argv.is_empty() {
            return Err(CapiError::Invalid {
                what: "argv",
                why: "it is empty: give a command".into(),
            });
        }
        let remote = self.client()?.exec(exec.session_spec(argv))?;
        let command = remote.into_pumped(exec.stdin.is_some())?;
        pump(command, exec.stdin.clone(), out)
    }

    /// Copies host file or tree `src` to guest path `dst`; bytes copied.
    pub fn copy_in(&self, src: &Path, dst: &str) -> Result<u64, CapiError> {
        Ok(nook_serve::copy_in(&self.client()?, src, dst)?)
    }

    /// Copies guest file or tree `src` to host path `dst`; bytes copied.
    pub fn copy_out(&self, src: &str, dst: &Path) -> Result<u64, CapiError> {
        Ok(nook_serve::copy_out(&self.client()?, src, dst)?)
    }

    /// Snapshots the session's VM as the named snapshot `name` (as the
    /// daemon's `snapshot` does); the session runs on.
    pub fn snapshot(&self, name: &str) -> Result<(), CapiError> {
        let path = nook_lib::named_snapshot(&self.home, name)?;
        Ok(self.client()?.snapshot(&path)?)
    }

    /// Stops the session cleanly (a stopped session stays stopped).
    pub fn stop(&self) -> Result<(), CapiError> {
        nook_serve::stop(&self.home, &self.name)?;
        Ok(())
    }
}

/// Removes session `name` (stopping it first with `force`).
pub fn remove(home: &Path, name: &str, force: bool) -> Result<(), CapiError> {
    Ok(nook_serve::remove(home, name, force)?)
}

/// Removes the named snapshot `name`, as `nook snapshot rm` does.
pub fn remove_snapshot(home: &Path, name: &str) -> Result<(), CapiError> {
    let path = nook_lib::named_snapshot(home, name)?;
    if !path.is_dir() {
        return Err(CapiError::NoSnapshot(name.to_string()));
    }
    Ok(nook_lib::remove_snapshot(&path)?)
}
