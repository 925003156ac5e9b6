//! The kvm engine (nook's own VMM) behind the [`Machine`] boundary.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nook_vmm::{KvmConfig, KvmDiskConfig, KvmShareConfig, SerialSink};

use super::{tail_lines, Engine, Machine, MachineSpec};
use crate::error::{MachineExit, VmError};

/// The VMM's snapshot file inside a snapshot's engine directory.
const SNAPSHOT_FILE: &str = "vm.snap";

#[derive(Debug)]
pub struct KvmMachine {
    vm: nook_vmm::KvmVm,
    channel: Option<UnixStream>,
    console_log: PathBuf,
    ended: Option<MachineExit>,
}

/// nook's own VMM.
#[derive(Debug)]
pub struct KvmEngine;

impl Engine for KvmEngine {
    fn boot(&self, spec: &MachineSpec) -> Result<Box<dyn Machine>, VmError> {
        Ok(Box::new(boot(spec)?))
    }

    fn restore(
        &self,
        dir: &std::path::Path,
        run_dir: &std::path::Path,
        shares: &[nook_fs::Share],
        nic: Option<&crate::NicSpec>,
    ) -> Result<Box<dyn Machine>, VmError> {
        Ok(Box::new(restore(dir, run_dir, shares, nic)?))
    }
}

/// A share's FUSE session as the VMM's virtio-fs server.
#[derive(Debug)]
struct ShareServer(nook_fs::FuseSession);

impl nook_vmm::FsServer for ShareServer {
    fn handle(
        &self,
        request: &mut [u8],
        reply_capacity: usize,
        reply: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        self.0.handle(request, reply_capacity, reply)
    }

    fn reach(&self) -> Option<nook_seccomp::FsReach> {
        Some(self.0.reach().clone())
    }
}

/// In-process virtio-fs devices for `shares`, served by the same guarded
/// file system as the qemu engine's vhost-user servers.
fn share_devices(shares: &[nook_fs::Share]) -> Result<Vec<KvmShareConfig>, VmError> {
    shares
        .iter()
        .map(|s| {
            let session = nook_fs::FuseSession::open(s).map_err(VmError::Share)?;
            Ok(KvmShareConfig {
                tag: s.tag.clone(),
                server: Arc::new(ShareServer(session)),
            })
        })
        .collect()
}

fn boot(spec: &MachineSpec) -> Result<KvmMachine, VmError> {
    // The VMM serves the guest's console port on one end of a socketpair;
    // the agent channel is the other end, exactly as with QEMU.
    let (host, guest) = UnixStream::pair().map_err(VmError::Channel)?;
    let console_log = spec.run_dir.join("console.log");
    let mut cfg = KvmConfig::new(&spec.kernel);
    cfg.initrd = Some(spec.initrd.clone());
    cfg.cmdline = spec.cmdline.clone();
    cfg.memory_mib = spec.memory_mib;
    cfg.vcpus = spec.vcpus;
    cfg.serial = SerialSink::File(console_log.clone());
    cfg.console = Some(guest);
    cfg.rng = true;
    cfg.shares = share_devices(&spec.shares)?;
    cfg.disks = spec
        .disks
        .iter()
        .map(|d| KvmDiskConfig {
            path: d.path.clone(),
            read_only: d.read_only,
            id: d.serial.clone(),
        })
        .collect();
    cfg.net = spec.nic.as_ref().map(nic_config).transpose()?;
    cfg.balloon = spec.balloon.map(|b| nook_vmm::KvmBalloonConfig {
        free_page_reporting: b.free_page_reporting,
        stats_interval_s: b.stats_interval_s,
    });
    let vm = nook_vmm::KvmVm::start(cfg).map_err(VmError::Kvm)?;
    Ok(KvmMachine {
        vm,
        channel: Some(host),
        console_log,
        ended: None,
    })
}

impl Machine for KvmMachine {
    fn take_channel(&mut self) -> Option<UnixStream> {
        self.channel.take()
    }

    fn console_tail(&self, lines: usize) -> String {
        tail_lines(&self.console_log, lines)
    }

    fn exited(&mut self) -> Option<MachineExit> {
        if self.ended.is_none() {
            self.ended = match self.vm.wait_timeout(Duration::ZERO) {
                Ok(Some(reason)) => Some(MachineExit::Kvm(reason)),
                Ok(None) => None,
                Err(e) => Some(MachineExit::KvmFailed(Arc::new(e))),
            };
        }
        self.ended.clone()
    }

    fn wait_exit(&mut self, grace: Duration) -> bool {
        matches!(self.vm.wait_timeout(grace), Ok(Some(_)) | Err(_))
    }

    fn kill(&mut self) {
        self.vm.stop();
    }

    fn set_balloon(&mut self, balloon_mib: u32) -> Result<(), VmError> {
        self.vm.set_balloon(balloon_mib).map_err(VmError::Kvm)
    }

    fn memory_stats(&mut self) -> Result<crate::MemoryStats, VmError> {
        let s = self.vm.balloon_stats().ok_or(VmError::NoBalloon)?;
        Ok(crate::MemoryStats {
            memory_mib: 0,
            balloon_mib: s.actual_mib(),
            guest_total_bytes: s.guest.total_bytes,
            guest_free_bytes: s.guest.free_bytes,
            guest_available_bytes: s.guest.available_bytes,
            host_rss_bytes: self.vm.resident_memory_bytes().ok(),
        })
    }

    fn snapshot(&mut self, dir: &std::path::Path) -> Result<(), VmError> {
        std::fs::create_dir(dir).map_err(|source| VmError::SnapshotIo {
            path: dir.to_path_buf(),
            source,
        })?;
        self.vm
            .snapshot(&dir.join(SNAPSHOT_FILE), nook_vmm::AfterSnapshot::Resume)
            .map(|_| ())
            .map_err(VmError::Kvm)
    }
}

/// Starts a clone of a snapshot taken by [`Machine::snapshot`]: guest
/// memory is mapped copy-on-write from the snapshot file.
fn restore(
    dir: &std::path::Path,
    run_dir: &std::path::Path,
    shares: &[nook_fs::Share],
    nic: Option<&crate::NicSpec>,
) -> Result<KvmMachine, VmError> {
    restore_with(&open_restorer(dir)?, run_dir, shares, nic)
}

/// The VMM's virtio-net on its own handle of the back end's stream.
fn nic_config(nic: &crate::NicSpec) -> Result<nook_vmm::KvmNetConfig, VmError> {
    Ok(nook_vmm::KvmNetConfig {
        mac: nic.mac.0,
        stream: nic.link.try_clone().map_err(VmError::Channel)?,
    })
}

/// Reads the snapshot in `dir` (written by [`Machine::snapshot`]) for
/// restoring many times ([`restore_with`]), into KVM VMs made ahead.
pub(crate) fn open_restorer(dir: &std::path::Path) -> Result<nook_vmm::KvmRestorer, VmError> {
    nook_vmm::KvmRestorer::open(&dir.join(SNAPSHOT_FILE)).map_err(VmError::Kvm)
}

/// Starts a clone of `restorer`'s snapshot, in one of its ready KVM VMs if
/// it has one, serving `shares` (those of the snapshotted VM, in order);
/// the clone's KVM VM goes back to it when the clone ends. `nic` attaches
/// the clone's NIC to its own network back end.
pub(crate) fn restore_with(
    restorer: &nook_vmm::KvmRestorer,
    run_dir: &std::path::Path,
    shares: &[nook_fs::Share],
    nic: Option<&crate::NicSpec>,
) -> Result<KvmMachine, VmError> {
    let (host, guest) = UnixStream::pair().map_err(VmError::Channel)?;
    let console_log = run_dir.join("console.log");
    let cfg = nook_vmm::KvmRestoreConfig {
        serial: SerialSink::File(console_log.clone()),
        console: Some(guest),
        disks: Vec::new(),
        shares: share_devices(shares)?,
        net: nic
            .map(|n| n.link.try_clone())
            .transpose()
            .map_err(VmError::Channel)?,
    };
    let vm = restorer.restore(cfg).map_err(VmError::Kvm)?;
    Ok(KvmMachine {
        vm,
        channel: Some(host),
        console_log,
        ended: None,
    })
}
