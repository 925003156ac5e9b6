//! Restoring one snapshot many times, fast: [`KvmRestorer`].
//!
//! The file is read and checked once. KVM VMs for it are made ahead of
//! time ([`KvmRestorer::prepare`]: memory slots, irqchip, PIT, vCPUs,
//! irqfds, ioeventfds, threads — see [`VmShell`]), so a restore only maps
//! the memory section over a ready VM's RAM and loads the saved state. A
//! VM restored through the restorer hands its KVM VM back when it is
//! dropped ([`KvmVm`]'s drop): the RAM goes back to zero pages and the VM
//! waits for the next restore instead of being closed, which spares the
//! slow release of the irqchip and PIT as well as the set-up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::error::KvmSnapshotError;
use super::format::{HostCompat, SnapshotHeader};
use super::memory::{check_layout, map_snapshot, MemoryBacking};
use super::restore::{check_config, check_machine, read_snapshot, KvmRestoreConfig};
use super::state::MicrovmState;
use crate::assemble::{assemble, DevicePart, MachineParts, PhaseTimer, SerialPart, VcpuPart};
use crate::devices::lock;
use crate::devices::virtio::persist::HostBackends;
use crate::error::VmmError;
use crate::machine::KvmVm;
use crate::vstate::memory::create_guest_memory;
use crate::vstate::shell::{ShellLayout, VmShell};
use crate::vstate::vcpu::install_kick_handler;
use crate::vstate::vm::open_kvm;

/// KVM VMs ready for a restore, shared by a restorer and the VMs it
/// restored (which hand theirs back).
#[derive(Debug)]
pub(crate) struct Spares {
    shells: Mutex<Vec<VmShell>>,
    /// Most ready VMs kept.
    keep: AtomicUsize,
    /// VMs handed back and kept for another restore.
    reused: AtomicU64,
}

impl Spares {
    /// Takes back the KVM VM of a VM that ended: ready for the next
    /// restore if it can be reset and fewer than `keep` are ready; closed
    /// otherwise.
    pub(crate) fn put_back(&self, mut shell: VmShell) {
        let room = |shells: &Vec<VmShell>| shells.len() < self.keep.load(Ordering::Relaxed);
        let wanted = room(&lock(&self.shells));
        if !wanted || !shell.reset() {
            return;
        }
        let mut shells = lock(&self.shells);
        if room(&shells) {
            shells.push(shell);
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn take(&self) -> Option<VmShell> {
        lock(&self.shells).pop()
    }
}

/// Counts of a restorer's KVM VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestorerStats {
    /// Ready for a restore now.
    pub ready: usize,
    /// Handed back by ended VMs and kept, over the restorer's life.
    pub reused: u64,
}

/// One snapshot, read once, restored as often as wanted, with KVM VMs made
/// ahead of time. `Sync`: restores may run on several threads at once.
#[derive(Debug)]
pub struct KvmRestorer {
    path: PathBuf,
    backing: MemoryBacking,
    state: MicrovmState,
    layout: ShellLayout,
    spares: Arc<Spares>,
}

/// How many ended VMs a restorer keeps for reuse unless
/// [`KvmRestorer::prepare`] asks for more.
const DEFAULT_KEEP: usize = 2;

impl KvmRestorer {
    /// Reads and checks the snapshot at `path`: format, host
    /// compatibility, and that it describes a machine this VMM builds.
    pub fn open(path: &Path) -> Result<KvmRestorer, VmmError> {
        install_kick_handler()?;
        let (file, header, state) = read_snapshot(path)?;
        check_host(&header)?;
        check_machine(&state)?;
        let memory_bytes =
            check_layout(&state.memory, header.mem_len).map_err(KvmSnapshotError::from)?;
        let layout = ShellLayout {
            memory_bytes,
            vcpus: state.vcpus.len() as u8,
            queues: state
                .devices
                .iter()
                .map(|d| d.transport.queues.len())
                .collect(),
        };
        Ok(KvmRestorer {
            path: path.to_path_buf(),
            backing: MemoryBacking {
                file: Arc::new(file),
                mem_offset: header.mem_offset,
                regions: state.memory.clone(),
            },
            state,
            layout,
            spares: Arc::new(Spares {
                shells: Mutex::new(Vec::new()),
                keep: AtomicUsize::new(DEFAULT_KEEP),
                reused: AtomicU64::new(0),
            }),
        })
    }

    /// The snapshot file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Guest RAM of the snapshot's VM, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.layout.memory_bytes
    }

    /// Makes KVM VMs until `ready` are ready for a restore (and keeps up to
    /// that many from ended VMs from now on). Slow (milliseconds per VM:
    /// the kernel waits for grace periods), so call it ahead of time, on a
    /// thread of its own.
    pub fn prepare(&self, ready: usize) -> Result<(), VmmError> {
        self.spares.keep.fetch_max(ready, Ordering::Relaxed);
        while lock(&self.spares.shells).len() < ready {
            let shell = self.new_shell(true)?;
            lock(&self.spares.shells).push(shell);
        }
        Ok(())
    }

    /// Keeps up to `n` KVM VMs of ended clones for reuse (default 2, or
    /// what [`prepare`](Self::prepare) asked for, if more); beyond that
    /// they are closed.
    pub fn keep(&self, n: usize) {
        self.spares.keep.store(n, Ordering::Relaxed);
    }

    /// How many KVM VMs are ready, and how many were reused.
    pub fn stats(&self) -> RestorerStats {
        RestorerStats {
            ready: lock(&self.spares.shells).len(),
            reused: self.spares.reused.load(Ordering::Relaxed),
        }
    }

    /// Restores the snapshot as a new running VM, into a ready KVM VM if
    /// there is one (see [`KvmVm::restore`] for what a restored VM shares
    /// with the file and its siblings).
    pub fn restore(&self, cfg: KvmRestoreConfig) -> Result<KvmVm, VmmError> {
        let mut timer = PhaseTimer::new();
        check_config(&self.state, &cfg)?;
        let shell = match self.spares.take() {
            Some(shell) => {
                timer.mark("kvm vm (ready)");
                shell
            }
            None => {
                let shell = self.new_shell(false)?;
                timer.mark("kvm vm (made now)");
                shell
            }
        };
        map_snapshot(&shell.ram, &self.backing).map_err(KvmSnapshotError::from)?;
        timer.mark("map memory");
        let state = self.state.clone();
        let vmm_reach = cfg.shares.iter().filter_map(|s| s.server.reach()).collect();
        let parts = MachineParts {
            shell,
            backing: Some(self.backing.clone()),
            vm_state: Some(state.vm),
            serial: SerialPart::Saved(state.serial),
            serial_sink: cfg.serial,
            devices: state.devices.into_iter().map(DevicePart::Saved).collect(),
            backends: HostBackends {
                console: cfg.console,
                disks: cfg.disks.into(),
                shares: cfg.shares.into_iter().map(|s| (s.tag, s.server)).collect(),
                net: cfg.net,
                balloon: None,
            },
            vcpus: VcpuPart::Saved(state.vcpus),
            boot: state.boot.restore(),
            cmdline: state.cmdline,
            mmio_hook: None,
            vmm_reach,
        };
        let mut vm = assemble(parts, timer)?;
        vm.recycle = Some(Arc::downgrade(&self.spares));
        Ok(vm)
    }

    /// A KVM VM for the snapshot; `ahead`: its threads started too (a VM
    /// made for a restore right now gets them started by its run loops).
    fn new_shell(&self, ahead: bool) -> Result<VmShell, VmmError> {
        let ram = create_guest_memory(self.layout.memory_bytes)?;
        let mut shell = VmShell::create(None, ram, self.layout.clone())?;
        if ahead {
            shell.start_threads()?;
        }
        Ok(shell)
    }
}

/// Refuses a snapshot taken on a host this one cannot stand in for.
fn check_host(header: &SnapshotHeader) -> Result<(), VmmError> {
    let kvm = open_kvm()?;
    let host = HostCompat::current(&kvm);
    match header.compat.mismatch(&host) {
        Some((what, snapshot, host)) => Err(KvmSnapshotError::Incompatible {
            what,
            snapshot,
            host,
        }
        .into()),
        None => Ok(()),
    }
}
