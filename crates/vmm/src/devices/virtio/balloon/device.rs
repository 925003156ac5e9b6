//! The virtio-balloon device and its host-side control.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use super::queue_handler::BalloonQueueHandler;
use crate::devices::virtio::persist::{DeviceStateError, SavedDevice, VirtioPersist};
use crate::devices::virtio::{
    device_type, ActivateContext, IrqTrigger, VirtioDevice, VirtioError, INT_CONFIG,
};

/// The driver may report memory statistics on a third queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
/// The driver reports free pages on a reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// Entries of every balloon queue.
const QUEUE_SIZE: u16 = 256;
/// Pages of the balloon's 4 KiB page unit in a MiB.
const PAGES_PER_MIB: u32 = 256;

/// A balloon device: how the guest reports, and how often it is asked for
/// statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KvmBalloonConfig {
    /// Offer `VIRTIO_BALLOON_F_REPORTING`: free pages the guest reports
    /// are discarded without a balloon target.
    pub free_page_reporting: bool,
    /// Seconds between statistics requests (0: the guest reports once).
    pub stats_interval_s: u32,
}

/// The guest's last memory statistics (`VIRTIO_BALLOON_S_*`, in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BalloonGuestStats {
    /// `MemTotal`.
    pub total_bytes: Option<u64>,
    /// `MemFree`.
    pub free_bytes: Option<u64>,
    /// `MemAvailable`.
    pub available_bytes: Option<u64>,
    /// Page cache.
    pub disk_caches_bytes: Option<u64>,
    /// Reports received so far.
    pub updates: u64,
}

/// The balloon as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalloonStats {
    /// The balloon size asked for, in 4 KiB pages.
    pub target_pages: u32,
    /// The balloon size the guest says it reached, in 4 KiB pages.
    pub actual_pages: u32,
    /// The guest's last statistics.
    pub guest: BalloonGuestStats,
    /// Pages inflated (and discarded) so far.
    pub inflated_pages: u64,
    /// Pages deflated so far.
    pub deflated_pages: u64,
    /// Bytes of free pages reported and discarded so far.
    pub reported_bytes: u64,
    /// Ranges the guest named that could not be discarded (outside guest
    /// memory, unaligned).
    pub discard_failures: u64,
}

impl BalloonStats {
    /// The balloon's size in MiB.
    pub fn actual_mib(&self) -> u32 {
        self.actual_pages / PAGES_PER_MIB
    }
}

/// The host's handle on a balloon device, shared with it.
#[derive(Debug, Default)]
pub struct BalloonControl {
    target_pages: AtomicU32,
    pub(super) actual_pages: AtomicU32,
    pub(super) guest: Mutex<BalloonGuestStats>,
    pub(super) inflated_pages: AtomicU64,
    pub(super) deflated_pages: AtomicU64,
    pub(super) reported_bytes: AtomicU64,
    pub(super) discard_failures: AtomicU64,
    /// The active device's interrupt, for configuration changes.
    pub(super) interrupt: Mutex<Option<Arc<IrqTrigger>>>,
}

impl BalloonControl {
    /// Asks the guest for a balloon of `balloon_mib` MiB: the
    /// configuration's `num_pages` changes and, once the driver runs, a
    /// configuration interrupt tells it.
    pub fn set_target_mib(&self, balloon_mib: u32) {
        self.set_target_pages(balloon_mib.saturating_mul(PAGES_PER_MIB));
    }

    pub(super) fn set_target_pages(&self, pages: u32) {
        self.target_pages.store(pages, Ordering::SeqCst);
        if let Some(irq) = crate::devices::lock(&self.interrupt).as_ref() {
            irq.trigger(INT_CONFIG);
        }
    }

    pub(super) fn target_pages(&self) -> u32 {
        self.target_pages.load(Ordering::SeqCst)
    }

    /// What the device and the guest did so far.
    pub fn stats(&self) -> BalloonStats {
        BalloonStats {
            target_pages: self.target_pages(),
            actual_pages: self.actual_pages.load(Ordering::SeqCst),
            guest: *crate::devices::lock(&self.guest),
            inflated_pages: self.inflated_pages.load(Ordering::Relaxed),
            deflated_pages: self.deflated_pages.load(Ordering::Relaxed),
            reported_bytes: self.reported_bytes.load(Ordering::Relaxed),
            discard_failures: self.discard_failures.load(Ordering::Relaxed),
        }
    }
}

/// virtio-balloon: inflate and deflate queues, a stats queue, and a
/// reporting queue when configured, in that order.
#[derive(Debug)]
pub struct Balloon {
    pub(super) config: KvmBalloonConfig,
    pub(super) control: Arc<BalloonControl>,
    /// Ticks every `stats_interval_s`: time to hand the statistics buffer
    /// back to the guest. Armed at creation, so that no thread under a
    /// seccomp filter ever sets a timer.
    timer: Option<TimerFd>,
    queue_sizes: Vec<u16>,
    pub(super) active: Option<(GuestMemoryMmap, BalloonQueueHandler<Arc<IrqTrigger>>)>,
}

impl Balloon {
    /// A new, inactive device sharing `control` with the host.
    pub fn new(config: KvmBalloonConfig, control: Arc<BalloonControl>) -> std::io::Result<Self> {
        let timer = match config.stats_interval_s {
            0 => None,
            s => {
                let mut t = TimerFd::new()?;
                // SAFETY: `t` owns the descriptor; F_SETFL only changes its
                // status flags. Non-blocking: reading a timer that has not
                // ticked must never stall the device thread.
                if unsafe { libc::fcntl(t.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let every = Duration::from_secs(u64::from(s));
                t.reset(every, Some(every))?;
                Some(t)
            }
        };
        let queues = if config.free_page_reporting { 4 } else { 3 };
        Ok(Self {
            config,
            control,
            timer,
            queue_sizes: vec![QUEUE_SIZE; queues],
            active: None,
        })
    }

    /// The host's handle on this device.
    pub fn control(&self) -> Arc<BalloonControl> {
        self.control.clone()
    }
}

/// The queue indices the driver uses with `acked` features: inflate 0,
/// deflate 1, then the stats and reporting queues, each only if
/// negotiated (the queues of features not negotiated are skipped).
pub(super) fn queue_indices(acked: u64) -> (Option<u16>, Option<u16>) {
    let mut next = 2;
    let stats = (acked & VIRTIO_BALLOON_F_STATS_VQ != 0).then(|| {
        next += 1;
        next - 1
    });
    let reporting = (acked & VIRTIO_BALLOON_F_REPORTING != 0).then_some(next);
    (stats, reporting)
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        device_type::BALLOON
    }

    fn features(&self) -> u64 {
        let reporting = if self.config.free_page_reporting {
            VIRTIO_BALLOON_F_REPORTING
        } else {
            0
        };
        VIRTIO_BALLOON_F_STATS_VQ | reporting
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// `num_pages` (the target) at 0, `actual` at 4; zeros beyond.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut space = [0u8; 8];
        space[..4].copy_from_slice(&self.control.target_pages().to_le_bytes());
        let actual = self.control.actual_pages.load(Ordering::SeqCst);
        space[4..].copy_from_slice(&actual.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| space.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    /// The driver writes `actual` (offset 4); anything else is ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == 4 {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                let pages = u32::from_le_bytes(bytes);
                self.control.actual_pages.store(pages, Ordering::SeqCst);
            }
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let (stats, reporting) = queue_indices(ctx.acked_features);
        let mut queues: Vec<Option<Queue>> = ctx.queues.into_iter().map(Some).collect();
        let mut take = |i: u16| -> Result<Queue, VirtioError> {
            queues
                .get_mut(usize::from(i))
                .and_then(Option::take)
                .filter(QueueT::ready)
                .ok_or(VirtioError::QueueNotReady(i))
        };
        let inflate = take(0)?;
        let deflate = take(1)?;
        let stats = stats.map(|i| take(i).map(|q| (i, q))).transpose()?;
        let reporting = reporting.map(|i| take(i).map(|q| (i, q))).transpose()?;
        *crate::devices::lock(&self.control.interrupt) = Some(ctx.interrupt.clone());
        let handler = BalloonQueueHandler {
            inflate,
            deflate,
            stats,
            reporting,
            stats_head: None,
            signal: ctx.interrupt,
            control: self.control.clone(),
        };
        self.active = Some((ctx.mem, handler));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        *crate::devices::lock(&self.control.interrupt) = None;
        self.control.actual_pages.store(0, Ordering::SeqCst);
    }

    fn process_queue(&mut self, index: u16) -> Result<(), VirtioError> {
        match &mut self.active {
            Some((mem, handler)) => handler.process_queue(mem, index),
            None => Ok(()),
        }
    }

    /// The statistics timer, while the driver's buffer waits here.
    fn backend_interest(&self) -> Option<(RawFd, EventSet)> {
        let waiting = self
            .active
            .as_ref()
            .is_some_and(|(_, h)| h.stats_head.is_some());
        match (&self.timer, waiting) {
            (Some(t), true) => Some((t.as_raw_fd(), EventSet::IN)),
            _ => None,
        }
    }

    /// The timer ticked: the guest gets its statistics buffer back, to
    /// fill it anew.
    fn process_backend(&mut self, _events: EventSet) -> Result<(), VirtioError> {
        if let Some(t) = &mut self.timer {
            // Non-blocking; the number of ticks does not matter.
            let _ = t.wait();
        }
        match &mut self.active {
            Some((mem, handler)) => handler.request_stats(mem),
            None => Ok(()),
        }
    }

    fn save_state(&self) -> Result<SavedDevice, DeviceStateError> {
        self.save_device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_follow_the_negotiated_features() {
        assert_eq!(queue_indices(0), (None, None));
        assert_eq!(queue_indices(VIRTIO_BALLOON_F_STATS_VQ), (Some(2), None));
        assert_eq!(queue_indices(VIRTIO_BALLOON_F_REPORTING), (None, Some(2)));
        assert_eq!(
            queue_indices(VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING),
            (Some(2), Some(3))
        );
    }

    #[test]
    fn config_space_has_the_target_and_takes_actual() {
        let control = Arc::new(BalloonControl::default());
        let mut b = Balloon::new(KvmBalloonConfig::default(), control.clone()).unwrap();
        assert_eq!(b.queue_max_sizes().len(), 3);
        assert_eq!(b.features(), VIRTIO_BALLOON_F_STATS_VQ);
        control.set_target_mib(3);
        let mut word = [0u8; 4];
        b.read_config(0, &mut word);
        assert_eq!(u32::from_le_bytes(word), 768);
        b.write_config(4, &100u32.to_le_bytes());
        b.read_config(4, &mut word);
        assert_eq!(u32::from_le_bytes(word), 100);
        assert_eq!(control.stats().actual_pages, 100);
        // Past the end and odd offsets read zeros; odd writes are ignored.
        b.read_config(12, &mut word);
        assert_eq!(word, [0; 4]);
        b.read_config(u64::MAX, &mut word);
        assert_eq!(word, [0; 4]);
        b.write_config(0, &7u32.to_le_bytes());
        assert_eq!(control.stats().target_pages, 768);

        let reporting = KvmBalloonConfig {
            free_page_reporting: true,
            stats_interval_s: 1,
        };
        let b = Balloon::new(reporting, control).unwrap();
        assert_eq!(b.queue_max_sizes().len(), 4);
        assert_ne!(b.features() & VIRTIO_BALLOON_F_REPORTING, 0);
        // No buffer is waiting: the timer is not watched.
        assert!(b.backend_interest().is_none());
    }
}
