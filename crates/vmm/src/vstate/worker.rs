//! Named threads that run one job after another: a vCPU's run loop, a VM's
//! event loop. A VM made ahead of time ([`super::shell::VmShell`]) keeps
//! its threads, so a restore does not wait for threads to be created and
//! scheduled, and a vCPU keeps running on the same thread from one VM to
//! the next (KVM waits for an RCU grace period when the thread running a
//! vCPU changes).

use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

type Job = Box<dyn FnOnce() + Send>;

/// A named thread that runs jobs one after another. It is started by the
/// first job (which it runs at once: a one-off VM pays one thread start,
/// as with a plain spawn) or ahead of time by [`start`](Self::start).
/// Dropping it lets the thread finish its current job, then joins it.
pub struct Worker {
    name: String,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("started", &self.thread.is_some())
            .finish()
    }
}

/// The end of one job: [`wait`](Self::wait) returns what the job returned.
#[derive(Debug)]
pub struct JobDone<T> {
    rx: Receiver<T>,
}

impl<T> JobDone<T> {
    /// Blocks until the job has returned; `None` if it panicked.
    pub fn wait(self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl Worker {
    /// A worker whose thread will be called `name` (not started yet).
    pub fn new(name: &str) -> Worker {
        Worker {
            name: name.into(),
            jobs: None,
            thread: None,
        }
    }

    /// Starts the thread now, idle, so that a later job does not wait for
    /// thread creation.
    pub fn start(&mut self) -> std::io::Result<()> {
        self.run(|| ()).map(|_| ())
    }

    /// The thread, for signals (`pthread_kill`), once started; valid while
    /// `self` lives.
    pub fn pthread(&self) -> Option<libc::pthread_t> {
        self.thread.as_ref().map(JoinHandleExt::as_pthread_t)
    }

    /// Runs `job` on the thread (after any job still running), starting
    /// the thread with it if need be.
    pub fn run<T: Send + 'static>(
        &mut self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> std::io::Result<JobDone<T>> {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        match &self.jobs {
            // Only fails if the thread is gone: the job is dropped with its
            // sender, and `wait` returns `None`.
            Some(jobs) => {
                let _ = jobs.send(job);
            }
            None => {
                let (jobs, queue) = mpsc::channel::<Job>();
                let thread =
                    std::thread::Builder::new()
                        .name(self.name.clone())
                        .spawn(move || {
                            // A job that panics loses its result (its `JobDone`
                            // sees `None`); the thread carries on with the next.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            while let Ok(job) = queue.recv() {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                        })?;
                self.jobs = Some(jobs);
                self.thread = Some(thread);
            }
        }
        Ok(JobDone { rx })
    }
}

/// Puts the calling thread in the `SCHED_BATCH` class: it keeps its fair
/// share of the CPU but no longer preempts the thread that wakes it. For
/// threads that do background work for a caller who should not wait for
/// it (a pool's filler, woken by a hand-out, would otherwise run its next
/// restore on the caller's core before the hand-out returns).
pub fn batch_scheduling() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain system call on the calling thread (tid 0) with a valid
    // parameter block; it changes only scheduling.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            })
            .count()
    }

    #[test]
    fn jobs_run_in_order_on_one_named_thread_that_ends_with_the_worker() {
        let mut w = Worker::new("nook-testwk");
        assert_eq!(threads_named("nook-testwk"), 0, "started by its first job");
        assert!(w.pthread().is_none());
        let a = w
            .run(|| std::thread::current().name().map(String::from))
            .unwrap();
        let b = w.run(|| 7).unwrap();
        assert_eq!(a.wait().flatten().as_deref(), Some("nook-testwk"));
        assert_eq!(b.wait(), Some(7));
        let panicked = w.run(|| -> u8 { panic!("job failed") }).unwrap();
        assert_eq!(panicked.wait(), None);
        assert_eq!(
            w.run(|| 8).unwrap().wait(),
            Some(8),
            "the thread survives a panic"
        );
        assert_eq!(threads_named("nook-testwk"), 1);
        drop(w);
        assert_eq!(threads_named("nook-testwk"), 0, "the thread is joined");
    }
}
