//! The qemu engine behind the [`Machine`] boundary.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use nook_fs::ShareServer;
use nook_qemu::{
    locate_qemu, Accel, AfterSnapshot, GuestRam, QemuBalloonConfig, QemuConfig, QemuDiskConfig,
    QemuNicConfig, QemuRestoreConfig, QemuShareConfig, QemuVm, TSC_CACHE_FILE,
};

use super::{Engine, Machine, MachineSpec};
use crate::error::{MachineExit, VmError};

#[derive(Debug)]
pub struct QemuMachine {
    vm: QemuVm,
    /// The virtio-fs servers of the VM's shares: stopped after QEMU.
    shares: Vec<ShareServer>,
}

/// QEMU's `microvm`, accelerated by KVM or emulated by TCG.
#[derive(Debug)]
pub struct QemuEngine {
    pub kvm_accel: bool,
}

impl Engine for QemuEngine {
    fn boot(&self, spec: &MachineSpec) -> Result<Box<dyn Machine>, VmError> {
        Ok(Box::new(boot(spec, self.kvm_accel)?))
    }

    fn restore(
        &self,
        dir: &std::path::Path,
        run_dir: &std::path::Path,
        shares: &[nook_fs::Share],
        nic: Option<&crate::NicSpec>,
    ) -> Result<Box<dyn Machine>, VmError> {
        if !shares.is_empty() {
            // vhost-user-fs devices do not migrate: QEMU refuses such
            // snapshots, so there is nothing to attach a share to.
            return Err(VmError::Config(
                "a VM restored on the qemu engine cannot have shares: use --engine kvm, or boot",
            ));
        }
        Ok(Box::new(restore(dir, run_dir, nic)?))
    }
}

fn boot(spec: &MachineSpec, kvm_accel: bool) -> Result<QemuMachine, VmError> {
    let accel = if kvm_accel { Accel::Kvm } else { Accel::Tcg };
    let binary = locate_qemu().map_err(VmError::Qemu)?;
    let mut cfg = QemuConfig::new(binary, accel, &spec.kernel, &spec.run_dir);
    // The host TSC frequency is measured once per host boot, not per VM.
    cfg.tsc_cache = spec.run_dir.parent().map(|d| d.join(TSC_CACHE_FILE));
    cfg.initrd = Some(spec.initrd.clone());
    cfg.cmdline = spec.cmdline.clone();
    cfg.memory_mib = spec.memory_mib;
    cfg.vcpus = spec.vcpus;
    if spec.snapshot_ready {
        // Clones then map the snapshot's copy of this file copy-on-write
        // instead of loading a migration stream.
        cfg.ram = GuestRam::SharedFile;
    }
    // Writeback caching: the host page cache, and guest flushes reach the
    // host disk (a guest `sync` makes volume data durable).
    cfg.disks = spec
        .disks
        .iter()
        .map(|d| {
            let mut disk = QemuDiskConfig::new(&d.path, d.read_only);
            disk.serial = Some(d.serial.clone());
            disk
        })
        .collect();
    // Each share's server listens before QEMU starts: QEMU connects to it
    // while it sets up the device.
    let mut shares = Vec::with_capacity(spec.shares.len());
    for share in &spec.shares {
        let socket = spec.run_dir.join(format!("{}.fs.sock", share.tag));
        shares.push(ShareServer::start(share, &socket).map_err(VmError::Share)?);
        cfg.shares.push(QemuShareConfig {
            socket,
            tag: share.tag.clone(),
        });
    }
    cfg.balloon = spec.balloon.map(|b| QemuBalloonConfig {
        free_page_reporting: b.free_page_reporting,
        stats_interval_s: b.stats_interval_s,
    });
    cfg.nic = spec.nic.as_ref().map(|n| QemuNicConfig {
        mac: n.mac.to_string(),
    });
    let link = spec.nic.as_ref().map(|n| n.link.as_fd());
    let vm = QemuVm::start_with_net(cfg, link).map_err(VmError::Qemu)?;
    Ok(QemuMachine { vm, shares })
}

impl Machine for QemuMachine {
    fn take_channel(&mut self) -> Option<UnixStream> {
        self.vm.take_agent_channel()
    }

    fn console_tail(&self, lines: usize) -> String {
        self.vm.console_tail(lines)
    }

    fn engine_log(&self) -> String {
        self.vm.diagnostics().stderr.trim_end().to_string()
    }

    fn exited(&mut self) -> Option<MachineExit> {
        match self.vm.try_wait() {
            Ok(Some(status)) => Some(MachineExit::Qemu(status)),
            Ok(None) => None,
            Err(e) => Some(MachineExit::QemuFailed(Arc::new(e))),
        }
    }

    fn wait_exit(&mut self, grace: Duration) -> bool {
        matches!(self.vm.wait_timeout(grace), Ok(Some(_)))
    }

    fn kill(&mut self) {
        let _ = self.vm.kill();
        for share in self.shares.drain(..) {
            share.stop();
        }
    }

    fn set_balloon(&mut self, balloon_mib: u32) -> Result<(), VmError> {
        self.vm.set_balloon(balloon_mib).map_err(VmError::Qemu)
    }

    fn memory_stats(&mut self) -> Result<crate::MemoryStats, VmError> {
        let s = self.vm.balloon_stats().map_err(VmError::Qemu)?;
        Ok(crate::MemoryStats {
            memory_mib: 0,
            balloon_mib: u32::try_from(s.balloon_bytes >> 20).unwrap_or(u32::MAX),
            guest_total_bytes: s.total_bytes,
            guest_free_bytes: s.free_bytes,
            guest_available_bytes: s.available_bytes,
            host_rss_bytes: crate::balloon::process_rss_bytes(self.vm.pid()),
        })
    }

    fn snapshot(&mut self, dir: &std::path::Path) -> Result<(), VmError> {
        self.vm
            .snapshot(dir, AfterSnapshot::Resume)
            .map(|_| ())
            .map_err(VmError::Qemu)
    }
}

/// Starts a clone of a snapshot taken by [`Machine::snapshot`].
fn restore(
    dir: &std::path::Path,
    run_dir: &std::path::Path,
    nic: Option<&crate::NicSpec>,
) -> Result<QemuMachine, VmError> {
    let options = QemuRestoreConfig {
        net: nic.map(|n| n.link.clone()),
        ..QemuRestoreConfig::default()
    };
    let vm = QemuVm::restore(dir, run_dir, options).map_err(VmError::Qemu)?;
    Ok(QemuMachine {
        vm,
        shares: Vec::new(),
    })
}
