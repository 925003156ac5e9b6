//! Hardening of nook's long-lived host processes (session hosts, the
//! daemon): resource limits and the process-wide `service` seccomp
//! deny-list (see `docs/security.md`).

use nook_seccomp::ThreadFilter;

/// Sets the process's resource limits (no core files, bounded open
/// files) unless confinement is off, then puts every thread of the
/// process under `filter` unless seccomp is off. Call it after set-up
/// and before reading anything from a client.
pub(crate) fn harden_process(filter: ThreadFilter) -> Result<(), nook_seccomp::SeccompError> {
    if nook_seccomp::confine_enabled() {
        if let Err(e) = nook_seccomp::limit_process() {
            tracing::warn!("nook: cannot set resource limits: {e}");
        }
    }
    let applied = nook_seccomp::apply(filter)?;
    tracing::debug!("nook: {} seccomp filter: {applied:?}", filter.name());
    Ok(())
}

/// [`harden_process`] for a daemon (`nook serve`, `nook serve --e2b`):
/// resource limits and the `daemon` deny-list on every thread.
pub fn harden_daemon() -> Result<(), nook_seccomp::SeccompError> {
    harden_process(ThreadFilter::Daemon)
}
