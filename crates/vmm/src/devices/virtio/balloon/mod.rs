//! virtio-balloon: guest memory the host asks back (inflate and deflate
//! queues), the guest's memory statistics (stats queue), and free page
//! reporting (`VIRTIO_BALLOON_F_REPORTING`: free ranges the guest reports
//! are discarded). Pages given back are `madvise(MADV_DONTNEED)`ed
//! ([`crate::vstate::memory::discard_range`]).
//!
//! The host side talks to a running device through its [`BalloonControl`]:
//! a new target raises a configuration interrupt; the guest's answers
//! (the config space's `actual`, statistics, what was discarded) are read
//! from it.
mod device;
mod persist;
mod queue_handler;

pub use device::{
    Balloon, BalloonControl, BalloonGuestStats, BalloonStats, KvmBalloonConfig,
    VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ,
};
pub use persist::{BalloonArgs, BalloonState};
pub use queue_handler::{BalloonQueueHandler, MAX_PFNS_PER_CHAIN};
