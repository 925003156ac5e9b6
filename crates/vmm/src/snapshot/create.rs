//! Taking a snapshot: [`KvmVm::snapshot`].

use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::error::KvmSnapshotError;
use super::format::{encode_state, HostCompat, SnapshotHeader, PAGE_SIZE};
use super::memory::write_memory;
use super::state::{BootState, MicrovmState, VirtioSlotState};
use crate::devices::lock;
use crate::error::VmmError;
use crate::machine::KvmVm;
use crate::snapshot::persist::Persist;
use crate::vstate::exit::Outcome;
use crate::vstate::vcpu_state::msr_list;
use crate::vstate::vm_state::VmState;
use crate::ExitReason;

/// How long vCPUs get to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the source VM does once its snapshot is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSnapshot {
    /// Keep running.
    Resume,
    /// End it ([`ExitReason::Stopped`]) without running it further.
    Stop,
}

/// What a snapshot took.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// The file written.
    pub path: PathBuf,
    /// File length (header, state, whole memory section).
    pub apparent_bytes: u64,
    /// Bytes the file occupies on disk (zero pages are holes).
    pub allocated_bytes: u64,
    /// Length of the state section.
    pub state_bytes: u64,
    /// Guest pages written (the others are holes).
    pub pages_written: u64,
    /// How long the guest was paused.
    pub paused: Duration,
}

impl KvmVm {
    /// Writes a snapshot of the running VM to `path`, then resumes or
    /// stops it as `then` says.
    ///
    /// Every vCPU is parked out of `KVM_RUN` and every device is locked
    /// while the state and memory are read. The file appears at `path`
    /// only once complete and synced (written to a temporary file in the
    /// same directory, then renamed); on any error, including a full disk,
    /// nothing is left at `path` and the VM keeps running.
    pub fn snapshot(&mut self, path: &Path, then: AfterSnapshot) -> Result<SnapshotInfo, VmmError> {
        let info = self.snapshot_inner(path, then)?;
        if then == AfterSnapshot::Stop {
            self.stop();
        }
        Ok(info)
    }

    fn snapshot_inner(
        &mut self,
        path: &Path,
        then: AfterSnapshot,
    ) -> Result<SnapshotInfo, KvmSnapshotError> {
        let kvm_vm = &self.shell.as_ref().ok_or(KvmSnapshotError::NotRunning)?.fds;
        if self.exit.outcome().is_some() {
            return Err(KvmSnapshotError::NotRunning);
        }
        let compat = HostCompat::current(&kvm_vm.kvm);
        if compat.xsave_size > 4096 {
            return Err(KvmSnapshotError::Machine("xsave areas over 4 KiB"));
        }
        let msrs = cached_msr_list(&kvm_vm.kvm);
        let snap = &self.snap;
        let t0 = Instant::now();
        let vcpus = snap
            .pause
            .pause(&self.exit, usize::from(snap.vcpus), msrs, PAUSE_TIMEOUT)?;
        // From here on the vCPUs are parked: resume them whatever happens.
        let result = (|| -> Result<(SnapshotHeader, u64, u64), KvmSnapshotError> {
            let serial = lock(&snap.serial);
            let transports: Vec<_> = snap.transports.iter().map(|t| lock(t)).collect();
            let mut devices = Vec::with_capacity(transports.len());
            for t in &transports {
                let index = devices.len();
                let device = t
                    .device()
                    .save_state()
                    .map_err(|source| KvmSnapshotError::Device { index, source })?;
                devices.push(VirtioSlotState {
                    transport: t.save(),
                    device,
                });
            }
            let vm = VmState::save(&kvm_vm.fd)?;
            let mut state = MicrovmState {
                vcpus,
                vm,
                memory: Vec::new(),
                serial: serial.save(),
                devices,
                boot: BootState::save(&self.boot),
                cmdline: self.cmdline.clone(),
            };
            // The memory layout is known before the memory is written:
            // the regions back to back, page aligned.
            let mut offset = 0;
            for r in vm_memory::GuestMemory::iter(&self.mem) {
                use vm_memory::GuestMemoryRegion;
                state.memory.push(super::state::MemoryRegionState {
                    guest_addr: r.start_addr().0,
                    len: r.len(),
                    offset,
                });
                offset += r.len().next_multiple_of(PAGE_SIZE);
            }
            let bytes = encode_state(&state).map_err(KvmSnapshotError::Encode)?;
            let header = SnapshotHeader::new(&bytes, offset, compat);
            // Guest memory is private: the file is the owner's only.
            let written = nook_fsutil::write_atomic(path, 0o600, |file| {
                file.write_all_at(&bytes, header.state_offset)?;
                let backing = self.backing.as_ref();
                let (regions, stats) = write_memory(file, header.mem_offset, &self.mem, backing)?;
                if regions != state.memory {
                    return Err(io::Error::other("guest memory layout changed"));
                }
                file.set_len(header.file_len())?;
                // The header goes last: an interrupted write never has a
                // valid one.
                file.write_all_at(&header.encode(), 0)?;
                Ok(stats.pages_written)
            })?;
            Ok((header, bytes.len() as u64, written))
        })();
        let paused = t0.elapsed();
        if result.is_ok() && then == AfterSnapshot::Stop {
            // Stopped before the vCPUs wake: the guest runs no further
            // than what the file holds.
            self.exit.finish(Outcome::Exit(ExitReason::Stopped));
        }
        snap.pause.resume();
        let (header, state_bytes, pages_written) = result?;
        let allocated_bytes = std::fs::metadata(path)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        tracing::debug!(
            "vmm: snapshot {} written, guest paused {paused:?}",
            path.display()
        );
        Ok(SnapshotInfo {
            path: path.to_path_buf(),
            apparent_bytes: header.file_len(),
            allocated_bytes,
            state_bytes,
            pages_written,
            paused,
        })
    }
}

/// KVM's MSR list, read once per process.
fn cached_msr_list(kvm: &kvm_ioctls::Kvm) -> Vec<u32> {
    static LIST: OnceLock<Vec<u32>> = OnceLock::new();
    LIST.get_or_init(|| msr_list(kvm).unwrap_or_default())
        .clone()
}
