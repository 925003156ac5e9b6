//! Fuzzes the queue processing of every kvm-engine virtio device (block,
//! console, rng, fs, net, balloon): the descriptor tables, available rings and
//! buffers are arbitrary guest memory, the queue sizes and features are
//! chosen by the input. Never a panic, whatever the driver wrote.
#![no_main]

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use nook_vmm::devices::virtio::balloon::{Balloon, KvmBalloonConfig};
use nook_vmm::devices::virtio::block::Block;
use nook_vmm::devices::virtio::console::Console;
use nook_vmm::devices::virtio::fs::Fs;
use nook_vmm::devices::virtio::net::Net;
use nook_vmm::devices::virtio::rng::Rng;
use nook_vmm::devices::virtio::{ActivateContext, IrqTrigger, VirtioDevice};
use nook_vmm::FsServer;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory: queue `i` has its descriptor table at `0x3000 * i`, its
/// available ring 0x1000 above, its used ring 0x2000 above.
const MEM_BYTES: usize = 0x1_0000;
const HEADER: usize = 4;

/// A FUSE server that answers every request with its own first bytes.
#[derive(Debug)]
struct Echo;

impl FsServer for Echo {
    fn handle(&self, r: &mut [u8], cap: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        out.extend_from_slice(&r[..r.len().min(cap)]);
        Ok(())
    }
}

/// What must outlive a device: stream peers, the disk file.
type Keep = Vec<Box<dyn std::any::Any>>;

/// The device `kind` selects, and what must outlive it.
fn device(kind: u8, read_only: bool) -> Option<(Box<dyn VirtioDevice>, Keep)> {
    let mut keep: Keep = Vec::new();
    let dev: Box<dyn VirtioDevice> = match kind % 6 {
        0 => {
            let disk = tempfile::NamedTempFile::new().ok()?;
            disk.as_file().set_len(64 * 1024).ok()?;
            let b = Block::open(disk.path(), read_only, "fuzz").ok()?;
            keep.push(Box::new(disk));
            Box::new(b)
        }
        1 => {
            let (ours, peer) = UnixStream::pair().ok()?;
            peer.set_nonblocking(true).ok()?;
            keep.push(Box::new(peer));
            Box::new(Console::new(Some(ours)).ok()?)
        }
        2 => Box::new(Rng::new()),
        3 => Box::new(Fs::new("fuzz", Arc::new(Echo))),
        5 => {
            let config = KvmBalloonConfig {
                free_page_reporting: true,
                stats_interval_s: 1,
            };
            Box::new(Balloon::new(config, Arc::default()).ok()?)
        }
        _ => {
            let (ours, peer) = UnixStream::pair().ok()?;
            peer.set_nonblocking(true).ok()?;
            keep.push(Box::new(peer));
            Box::new(Net::new([2, 0, 0, 0, 0, 1], Some(ours)).ok()?)
        }
    };
    Some((dev, keep))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (head, image) = data.split_at(HEADER);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_BYTES)]) else {
        return;
    };
    let n = image.len().min(MEM_BYTES);
    if mem.write_slice(&image[..n], GuestAddress(0)).is_err() {
        return;
    }
    let Some((mut dev, _keep)) = device(head[0], head[1] & 2 != 0) else {
        return;
    };
    let mut queues = Vec::new();
    for (i, &max) in dev.queue_max_sizes().iter().enumerate() {
        let Ok(mut q) = Queue::new(max) else { return };
        q.set_size((1u16 << (head[2] % 5)).min(max));
        let base = 0x3000 * i as u32;
        q.set_desc_table_address(Some(base), Some(0));
        q.set_avail_ring_address(Some(base + 0x1000), Some(0));
        q.set_used_ring_address(Some(base + 0x2000), Some(0));
        q.set_event_idx(head[1] & 1 != 0);
        q.set_ready(true);
        if !q.is_valid(&mem) {
            return;
        }
        queues.push(q);
    }
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues,
        interrupt: Arc::new(IrqTrigger::new(irq)),
        // The balloon's features (stats, reporting) are low bits; the
        // others' high ones.
        acked_features: if head[0] % 6 == 5 {
            u64::from(head[1] & 0x22)
        } else {
            u64::from(head[1]) << 24
        },
    };
    if dev.activate(ctx).is_err() {
        return;
    }
    let count = dev.queue_max_sizes().len() as u16;
    for _ in 0..=(head[3] % 4) {
        for q in 0..count {
            let _ = dev.process_queue(q);
        }
        if dev.backend_interest().is_some() {
            let _ = dev.process_backend(EventSet::IN | EventSet::OUT);
        }
    }
    dev.reset();
});
