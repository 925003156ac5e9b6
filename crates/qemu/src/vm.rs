//! A running QEMU guest: its process, channels, console log and QMP session.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::cmdline::{build_args, kernel_cmdline, ChannelFds, Launch, RamBacking};
use crate::config::{Accel, GuestRam, QemuConfig, GUEST_RAM_FILE};
use crate::error::{Diagnostics, QemuError};
use crate::qmp::{Qmp, QmpError};
use crate::reach::qemu_reach;
use crate::spawn::spawn_guarded;
use crate::tsc::host_tsc_khz;

/// File name of the guest's serial console log inside the run directory.
pub const CONSOLE_LOG: &str = "console.log";
/// File name of QEMU's own stdout and stderr inside the run directory.
pub const STDERR_LOG: &str = "qemu.stderr";
/// Console lines attached to boot-failure errors.
pub const DIAGNOSTIC_CONSOLE_LINES: usize = 30;

const DEFAULT_QMP_TIMEOUT: Duration = Duration::from_secs(10);
const STDERR_TAIL_BYTES: u64 = 8 << 10;

/// A QEMU process running one guest.
///
/// The QEMU process never outlives this value nor the process that created
/// it: dropping a `QemuVm` kills and reaps QEMU, and QEMU carries a
/// parent-death signal (see the `spawn` module) for the case where nook
/// itself dies.
#[derive(Debug)]
pub struct QemuVm {
    child: Child,
    pid: u32,
    exit: Option<ExitStatus>,
    agent: Option<UnixStream>,
    qmp_stream: Option<UnixStream>,
    qmp: Option<Qmp>,
    pub(crate) qmp_timeout: Duration,
    console_log: PathBuf,
    stderr_log: PathBuf,
    started: Instant,
    /// The config as launched, with the kernel command line as passed.
    pub(crate) config: QemuConfig,
    pub(crate) ram: RamBacking,
}

impl QemuVm {
    /// Validates `cfg` and starts QEMU. Returns as soon as the process is
    /// spawned (a few milliseconds): the agent channel is already connected,
    /// and bytes the guest writes wait in it until read. QMP is negotiated on
    /// first use of [`QemuVm::qmp`].
    ///
    /// A QEMU that rejects its configuration exits at once; the caller sees
    /// end-of-file on the agent channel and gets the reason, with QEMU's
    /// stderr, from [`QemuVm::boot_failure`].
    pub fn start(cfg: QemuConfig) -> Result<QemuVm, QemuError> {
        QemuVm::start_with_net(cfg, None)
    }

    /// [`QemuVm::start`] with the NIC's back end stream (`cfg.nic` must be
    /// set): QEMU inherits the descriptor; the caller may close its copy
    /// once this returns.
    pub fn start_with_net(
        cfg: QemuConfig,
        net: Option<BorrowedFd<'_>>,
    ) -> Result<QemuVm, QemuError> {
        cfg.validate()?;
        let ram = match cfg.ram {
            GuestRam::Anonymous => RamBacking::Anonymous,
            GuestRam::SharedFile => {
                let path = cfg.run_dir.join(GUEST_RAM_FILE);
                // A fresh sparse file of the right size, whatever a previous
                // VM in this directory left behind.
                File::create(&path)
                    .and_then(|f| f.set_len(u64::from(cfg.memory_mib) << 20))
                    .map_err(|source| QemuError::CreateFile {
                        path: path.clone(),
                        source,
                    })?;
                RamBacking::File { path, shared: true }
            }
        };
        let launch = Launch {
            ram,
            incoming: false,
        };
        QemuVm::launch(cfg, launch, None, net)
    }

    /// Spawns QEMU for a validated `cfg`; `inherit` is one more descriptor
    /// QEMU inherits under the same number (a restore's state file), `net`
    /// the NIC's back end stream.
    pub(crate) fn launch(
        mut cfg: QemuConfig,
        launch: Launch,
        inherit: Option<BorrowedFd<'_>>,
        net: Option<BorrowedFd<'_>>,
    ) -> Result<QemuVm, QemuError> {
        if cfg.nic.is_some() != net.is_some() {
            return Err(QemuError::InvalidConfig {
                field: "nic",
                reason: "a NIC needs its back end stream, and a stream a NIC",
            });
        }
        let console_log = cfg.run_dir.join(CONSOLE_LOG);
        let stderr_log = cfg.run_dir.join(STDERR_LOG);
        let create_err = |source| QemuError::CreateFile {
            path: stderr_log.clone(),
            source,
        };
        let stderr = File::create(&stderr_log).map_err(create_err)?;
        let stdout = stderr.try_clone().map_err(create_err)?;
        let (agent_host, agent_qemu) =
            UnixStream::pair().map_err(|source| QemuError::Socketpair {
                channel: "agent",
                source,
            })?;
        let (qmp_host, qmp_qemu) = UnixStream::pair().map_err(|source| QemuError::Socketpair {
            channel: "qmp",
            source,
        })?;
        let tsc_khz = match cfg.accel {
            Accel::Tcg if cfg.tsc_hint => host_tsc_khz(cfg.tsc_cache.as_deref()),
            _ => None,
        };
        let fds = ChannelFds {
            agent: agent_qemu.as_raw_fd(),
            qmp: qmp_qemu.as_raw_fd(),
            net: net.map(|fd| fd.as_raw_fd()),
        };
        let args = build_args(&cfg, &console_log, fds, tsc_khz, &launch);
        debug!(target: "nook::qemu", binary = %cfg.binary.display(), ?args, "spawning qemu");
        let mut command = Command::new(&cfg.binary);
        command
            .args(&args)
            .current_dir(&cfg.run_dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let confine = if nook_seccomp::confine_enabled() {
            let reach = qemu_reach(&cfg, &launch);
            Some(nook_seccomp::exec_ruleset(&reach).map_err(QemuError::Landlock)?)
        } else {
            None
        };
        let landlock = confine.as_ref().map(|rules| rules.status());
        let started = Instant::now();
        let mut inherit_fds = vec![fds.agent, fds.qmp];
        inherit_fds.extend(inherit.map(|fd| fd.as_raw_fd()));
        inherit_fds.extend(fds.net);
        let child =
            spawn_guarded(command, inherit_fds, confine).map_err(|source| QemuError::Spawn {
                binary: cfg.binary.clone(),
                source,
            })?;
        // Only QEMU may hold its ends now, so its exit shows up as EOF here.
        drop(agent_qemu);
        drop(qmp_qemu);
        let pid = child.id();
        info!(target: "nook::qemu", pid, accel = ?cfg.accel, memory_mib = cfg.memory_mib,
              vcpus = cfg.vcpus, ?landlock, "qemu started");
        // Record the command line as run, so a snapshot reproduces it
        // exactly (the TSC hint is measured once, not again on restore).
        cfg.cmdline = kernel_cmdline(&cfg, tsc_khz);
        cfg.tsc_hint = false;
        Ok(QemuVm {
            child,
            pid,
            exit: None,
            agent: Some(agent_host),
            qmp_stream: Some(qmp_host),
            qmp: None,
            qmp_timeout: DEFAULT_QMP_TIMEOUT,
            console_log,
            stderr_log,
            started,
            config: cfg,
            ram: launch.ram,
        })
    }

    /// The host end of the guest's `nook.agent` virtio-serial port, a
    /// connected byte stream. Returns `None` after the first call.
    pub fn take_agent_channel(&mut self) -> Option<UnixStream> {
        self.agent.take()
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Time since QEMU was spawned.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The guest's serial console log.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// QEMU's own stdout and stderr.
    pub fn stderr_log(&self) -> &Path {
        &self.stderr_log
    }

    /// The last `max_lines` lines of the serial console (empty if the guest
    /// printed nothing yet).
    pub fn console_tail(&self, max_lines: usize) -> String {
        let text = read_tail(&self.console_log, 64 << 10);
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
        let start = lines.len().saturating_sub(max_lines);
        let mut out = lines[start..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }

    /// QEMU's stderr and the console tail, as attached to boot failures.
    pub fn diagnostics(&self) -> Diagnostics {
        Diagnostics {
            stderr: read_tail(&self.stderr_log, STDERR_TAIL_BYTES),
            console_tail: self.console_tail(DIAGNOSTIC_CONSOLE_LINES),
        }
    }

    /// The error to report when the guest did not come up: the agent channel
    /// hit end-of-file, or the caller stopped waiting after `waited`. Says
    /// whether QEMU exited (with its status) or is still running, and carries
    /// [`QemuVm::diagnostics`]. Does not stop the VM.
    pub fn boot_failure(&mut self, waited: Duration) -> QemuError {
        // QEMU closes its sockets a moment before it is gone; give it that
        // moment so an exit is reported as an exit.
        match self.wait_timeout(Duration::from_millis(200)) {
            Ok(Some(status)) => QemuError::Exited {
                pid: self.pid,
                status,
                report: Box::new(self.diagnostics()),
            },
            Ok(None) => QemuError::BootTimeout {
                pid: self.pid,
                waited,
                report: Box::new(self.diagnostics()),
            },
            Err(e) => e,
        }
    }

    /// How long QMP requests (and the lazy negotiation) may take.
    pub fn set_qmp_timeout(&mut self, timeout: Duration) {
        self.qmp_timeout = timeout;
        if let Some(qmp) = &mut self.qmp {
            qmp.set_timeout(timeout);
        }
    }

    /// The QMP session, negotiated on first use (QEMU's greeting has been
    /// waiting in the socket since start, so this is one round trip).
    pub fn qmp(&mut self) -> Result<&mut Qmp, QemuError> {
        if self.qmp.is_none() {
            let stream = self
                .qmp_stream
                .take()
                .ok_or(QemuError::QmpUnavailable { pid: self.pid })?;
            match Qmp::negotiate(stream, self.qmp_timeout) {
                Ok(qmp) => {
                    debug!(target: "nook::qemu", pid = self.pid, greeting = %qmp.greeting(), "qmp ready");
                    self.qmp = Some(qmp);
                }
                Err(e) => return Err(self.qmp_failed(e)),
            }
        }
        match &mut self.qmp {
            Some(qmp) => Ok(qmp),
            None => Err(QemuError::QmpUnavailable { pid: self.pid }),
        }
    }

    /// Runs one QMP command; see [`Qmp::execute`]. A QEMU that has exited is
    /// reported as [`QemuError::Exited`] with diagnostics.
    pub fn qmp_execute(
        &mut self,
        command: &str,
        arguments: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, QemuError> {
        let result = self.qmp()?.execute(command, arguments);
        result.map_err(|e| self.qmp_failed(e))
    }

    pub(crate) fn qmp_failed(&mut self, e: QmpError) -> QemuError {
        if matches!(e, QmpError::Closed { .. }) {
            if let Ok(Some(status)) = self.wait_timeout(Duration::from_millis(200)) {
                return QemuError::Exited {
                    pid: self.pid,
                    status,
                    report: Box::new(self.diagnostics()),
                };
            }
        }
        QemuError::Qmp {
            pid: self.pid,
            source: e,
        }
    }

    /// QEMU's exit status if it has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, QemuError> {
        if let Some(status) = self.exit {
            return Ok(Some(status));
        }
        let status = self.child.try_wait().map_err(|source| QemuError::Wait {
            pid: self.pid,
            source,
        })?;
        if let Some(status) = status {
            info!(target: "nook::qemu", pid = self.pid, %status,
                  uptime_ms = self.started.elapsed().as_millis() as u64, "qemu exited");
            self.exit = Some(status);
        }
        Ok(status)
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, QemuError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// Stops the VM: asks QEMU to quit over QMP, waits up to `grace`, then
    /// kills it. Always reaps. Returns QEMU's exit status (a signal status if
    /// it had to be killed).
    pub fn shutdown(&mut self, grace: Duration) -> Result<ExitStatus, QemuError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        let deadline = Instant::now() + grace;
        let saved = self.qmp_timeout;
        self.set_qmp_timeout(grace.min(saved));
        let asked = match self.qmp() {
            Ok(qmp) => match qmp.execute("quit", None) {
                // QEMU may close the socket before its reply is read.
                Ok(_) | Err(QmpError::Closed { .. }) => true,
                Err(e) => {
                    warn!(target: "nook::qemu", pid = self.pid, error = %e, "qmp quit failed; killing");
                    false
                }
            },
            Err(e) => {
                warn!(target: "nook::qemu", pid = self.pid, error = %e, "qmp unavailable; killing");
                false
            }
        };
        self.set_qmp_timeout(saved);
        if asked {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(status) = self.wait_timeout(left)? {
                return Ok(status);
            }
            warn!(target: "nook::qemu", pid = self.pid, ?grace, "qemu ignored quit; killing");
        }
        self.kill()
    }

    /// Kills QEMU with SIGKILL and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, QemuError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        self.child.kill().map_err(|source| QemuError::Kill {
            pid: self.pid,
            source,
        })?;
        let status = self.child.wait().map_err(|source| QemuError::Wait {
            pid: self.pid,
            source,
        })?;
        info!(target: "nook::qemu", pid = self.pid, %status, "qemu killed");
        self.exit = Some(status);
        Ok(status)
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        if let Err(e) = self.kill() {
            warn!(target: "nook::qemu", pid = self.pid, error = %e, "cannot kill qemu on drop");
        }
    }
}

/// The last `max_bytes` of a file as text (lossy), starting at a line
/// boundary when the file was cut. Missing or unreadable files read as empty:
/// this only feeds diagnostics.
fn read_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if file.take(max_bytes).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    if start > 0 {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            buf.drain(..=nl);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<QemuVm>();
    }

    #[test]
    fn read_tail_cuts_at_a_line_boundary_and_tolerates_missing_files() {
        let dir = std::env::temp_dir().join(format!("nook-qemu-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, b"first line\nsecond\r\nthird \xff\n").unwrap();
        assert_eq!(
            read_tail(&path, 1000),
            "first line\nsecond\r\nthird \u{fffd}\n"
        );
        assert_eq!(read_tail(&path, 12), "third \u{fffd}\n");
        assert_eq!(read_tail(&dir.join("missing"), 100), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
