//! Child reaping. As PID 1 the agent inherits every orphan and must reap
//! it; the commands it started must have their status delivered to the
//! thread waiting for them.
//!
//! The reaper peeks at a zombie with `waitid(WNOWAIT)` and only reaps it
//! while holding the registry lock. Spawning also holds that lock, so a
//! child whose `exec` failed (which `std` reaps itself inside `spawn`) is
//! never stolen, and every started command is registered before its status
//! can be collected.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

#[derive(Debug, Default)]
struct Registry {
    waiting: HashMap<i32, Sender<WaitStatus>>,
    spawned: u64,
}

#[derive(Debug, Clone)]
pub struct Reaper {
    inner: Arc<(Mutex<Registry>, Condvar)>,
}

impl Reaper {
    pub fn start() -> io::Result<Reaper> {
        let reaper = Reaper {
            inner: Arc::new((Mutex::new(Registry::default()), Condvar::new())),
        };
        let r = reaper.clone();
        std::thread::Builder::new()
            .name("nook-reaper".into())
            .spawn(move || r.run())?;
        Ok(reaper)
    }

    /// Spawns `cmd` and registers it; the receiver yields its wait status.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<(Child, Receiver<WaitStatus>)> {
        let (lock, cv) = &*self.inner;
        let mut reg = lock.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        let (tx, rx) = channel();
        // Process ids fit in i32 on Linux.
        reg.waiting.insert(child.id() as i32, tx);
        reg.spawned += 1;
        cv.notify_all();
        Ok((child, rx))
    }

    fn run(&self) {
        let (lock, cv) = &*self.inner;
        loop {
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    let mut reg = lock.lock().unwrap_or_else(|p| p.into_inner());
                    if let Ok(st) = waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        if !matches!(st, WaitStatus::StillAlive) {
                            if let Some(tx) = reg.waiting.remove(&pid.as_raw()) {
                                let _ = tx.send(st);
                            }
                        }
                    }
                }
                Err(nix::Error::ECHILD) => {
                    // No children: sleep until something is spawned.
                    let reg = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let seen = reg.spawned;
                    let _ =
                        cv.wait_timeout_while(reg, Duration::from_secs(1), |r| r.spawned == seen);
                }
                Err(nix::Error::EINTR) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// Sends `sig` to the process group `pgid`.
pub fn kill_group(pgid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), sig);
}
