//! The vhost-user-fs backend: virtqueues in, FUSE requests through the
//! guarded passthrough file system, replies out.
//!
//! virtio-fs has one high-priority queue (index 0, FORGET and INTERRUPT
//! requests) and request queues after it; QEMU's `vhost-user-fs-device`
//! asks for one request queue by default. All queues are served by one
//! worker thread, in order, each request answered before the next is read.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::guard::GuardedFs;

/// The file system a share serves.
pub(crate) type ShareFs = GuardedFs<PassthroughFs>;

type Memory = GuestMemoryAtomic<GuestMemoryMmap>;

/// Queues: the high-priority queue and one request queue.
const NUM_QUEUES: usize = 2;
/// Largest queue the backend accepts (QEMU's default is 128).
const MAX_QUEUE_SIZE: usize = 1024;

/// What a backend has done, for benchmarks and debugging.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// FUSE requests answered.
    pub requests: AtomicU64,
    /// Descriptor chains that could not be parsed or answered.
    pub bad_requests: AtomicU64,
}

/// A vhost-user-fs device backend for one share.
pub struct FsBackend {
    server: Server<Arc<ShareFs>>,
    fs: Arc<ShareFs>,
    mem: RwLock<Option<Memory>>,
    event_idx: AtomicBool,
    thread_name: String,
    /// What the queue workers may reach (the share).
    confinement: nook_seccomp::ThreadConfinement,
    metrics: FsMetrics,
    /// Exit notifiers handed to the worker threads, to stop them.
    exit: std::sync::Mutex<Vec<EventNotifier>>,
}

impl std::fmt::Debug for FsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsBackend")
            .field("read_only", &self.fs.read_only())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl FsBackend {
    /// A backend serving `fs`; its queue worker thread names itself
    /// `thread_name` and is confined to `confinement`.
    pub(crate) fn new(
        fs: Arc<ShareFs>,
        thread_name: String,
        confinement: nook_seccomp::ThreadConfinement,
    ) -> Self {
        FsBackend {
            server: Server::new(fs.clone()),
            fs,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            thread_name,
            confinement,
            metrics: FsMetrics::default(),
            exit: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Requests served and refused so far.
    pub fn metrics(&self) -> &FsMetrics {
        &self.metrics
    }

    /// The guarded file system behind the queues.
    pub fn fs(&self) -> &GuardedFs<PassthroughFs> {
        &self.fs
    }

    /// Stops the queue worker threads.
    pub(crate) fn stop_workers(&self) {
        for n in self.exit.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = n.notify();
        }
    }

    /// Answers every request available on `vring`.
    fn process_queue(&self, vring: &VringRwLock<Memory>) -> io::Result<()> {
        let Some(atomic) = self.mem.read().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Ok(());
        };
        let mem = atomic.memory();
        let mut used_any = false;
        loop {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(atomic.memory());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let len = match (
                Reader::from_descriptor_chain(&*mem, chain.clone()),
                VirtioFsWriter::new(&*mem, chain),
            ) {
                (Ok(reader), Ok(writer)) => {
                    match self
                        .server
                        .handle_message(reader, writer.into(), None, None)
                    {
                        Ok(n) => {
                            self.metrics.requests.fetch_add(1, Ordering::Relaxed);
                            n
                        }
                        Err(e) => {
                            self.note_bad_request(&e);
                            0
                        }
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    self.note_bad_request(&e);
                    0
                }
            };
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            vring
                .add_used(head, len)
                .map_err(|e| io::Error::other(format!("cannot add a used descriptor: {e}")))?;
            used_any = true;
        }
        if used_any
            && vring
                .needs_notification()
                .map_err(|e| io::Error::other(format!("cannot check notification: {e}")))?
        {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn note_bad_request(&self, e: &dyn std::fmt::Display) {
        let n = self.metrics.bad_requests.fetch_add(1, Ordering::Relaxed);
        // A guest can trigger this at will: log the first few only.
        if n < 10 {
            tracing::warn!("nook-fs: bad request from the guest: {e}");
        }
    }

    /// First event on a queue worker thread: names it as nook's, confines
    /// it to the share (Landlock, capabilities, no new privileges) and
    /// puts it under the `fs` seccomp filter before it reads a guest
    /// request.
    pub(crate) fn prepare_thread_once(&self) -> io::Result<()> {
        thread_local!(static READY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
        if READY.with(std::cell::Cell::get) {
            return Ok(());
        }
        // The worker is spawned by vhost-user-backend with its own name;
        // rename it so it is recognisable as nook's.
        let _ = std::fs::write("/proc/thread-self/comm", &self.thread_name);
        let confined = nook_seccomp::confine_thread(&self.confinement).map_err(io::Error::other)?;
        let applied =
            nook_seccomp::apply(nook_seccomp::ThreadFilter::Fs).map_err(io::Error::other)?;
        tracing::debug!(
            "nook-fs: {}: confinement {confined:?}, seccomp filter {applied:?}",
            self.thread_name
        );
        READY.with(|r| r.set(true));
        Ok(())
    }
}

impl VhostUserBackend for FsBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|p| p.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        self.exit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(notifier.try_clone().ok()?);
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        self.prepare_thread_once()?;
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let Some(vring) = vrings.get(usize::from(device_event)) else {
            return Err(io::Error::other(format!("no queue {device_event}")));
        };
        if self.event_idx.load(Ordering::Relaxed) {
            // Keep notifications off while draining; re-check after turning
            // them back on so a request that raced in is not left behind.
            loop {
                vring
                    .disable_notification()
                    .map_err(|e| io::Error::other(format!("{e}")))?;
                self.process_queue(vring)?;
                if !vring
                    .enable_notification()
                    .map_err(|e| io::Error::other(format!("{e}")))?
                {
                    break;
                }
            }
        } else {
            self.process_queue(vring)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Share;
    use crate::testing::{status_field, thread_status};

    /// A queue worker, prepared as on its first event, opens files in its
    /// share but gets EACCES from Landlock beyond it (its seccomp filter
    /// allows `openat`), and keeps at most the file server's capabilities.
    #[test]
    fn a_queue_worker_reaches_only_its_share() {
        nook_seccomp::set_enabled(true);
        nook_seccomp::set_confine_enabled(true);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("inside"), b"in").unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        let share = Share {
            host_dir: dir.path().to_owned(),
            tag: "worker".into(),
            read_only: false,
        };
        let fs = Arc::new(crate::server::share_fs(&share).unwrap());
        let backend = Arc::new(FsBackend::new(
            fs,
            "nook-fs-wtest-q".into(),
            nook_seccomp::ThreadConfinement::file_server(vec![share.reach()]),
        ));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let outside_path = outside.path().to_owned();
        let inside = dir.path().join("inside");
        let worker = std::thread::spawn(move || {
            backend.prepare_thread_once().unwrap();
            let read_inside = std::fs::read(&inside).map_err(|e| e.raw_os_error());
            let read_outside = std::fs::read(&outside_path).map_err(|e| e.raw_os_error());
            let read_etc = std::fs::read("/etc/hostname").map_err(|e| e.raw_os_error());
            let _ = done_rx.recv();
            (read_inside, read_outside, read_etc)
        });
        let status = thread_status("nook-fs-wtest-q", "Seccomp:\t2").expect("thread found");
        done_tx.send(()).unwrap();
        let (inside, outside, etc) = worker.join().unwrap();
        assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
        assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
        let cap_eff = u64::from_str_radix(status_field(&status, "CapEff:"), 16).unwrap();
        let allowed: u64 = nook_seccomp::FILE_SERVER_CAPS
            .iter()
            .map(|c| c.bitmask())
            .sum();
        assert_eq!(cap_eff & !allowed, 0, "{status}");
        assert_eq!(inside, Ok(b"in".to_vec()));
        if nook_seccomp::landlock_abi().is_none() {
            eprintln!("skipping the landlock checks: no landlock in this kernel");
            return;
        }
        assert_eq!(outside, Err(Some(libc::EACCES)));
        assert_eq!(etc, Err(Some(libc::EACCES)));
    }
}
