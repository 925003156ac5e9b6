//! The qemu engine behind the [`Machine`] boundary.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use nook_qemu::{locate_qemu, Accel, QemuConfig, QemuVm};

use super::{Machine, MachineSpec};
use crate::error::VmError;

#[derive(Debug)]
pub struct QemuMachine {
    vm: QemuVm,
}

pub fn boot(spec: &MachineSpec, kvm_accel: bool) -> Result<QemuMachine, VmError> {
    let accel = if kvm_accel { Accel::Kvm } else { Accel::Tcg };
    let binary = locate_qemu().map_err(VmError::Qemu)?;
    let mut cfg = QemuConfig::new(binary, accel, &spec.kernel, &spec.run_dir);
    cfg.initrd = Some(spec.initrd.clone());
    cfg.cmdline = spec.cmdline.clone();
    cfg.mem_mib = spec.mem_mib;
    cfg.vcpus = spec.vcpus;
    let vm = QemuVm::start(cfg).map_err(VmError::Qemu)?;
    Ok(QemuMachine { vm })
}

impl Machine for QemuMachine {
    fn take_channel(&mut self) -> Option<UnixStream> {
        self.vm.take_agent_channel()
    }

    fn console_tail(&self, lines: usize) -> String {
        self.vm.console_tail(lines)
    }

    fn exited(&mut self) -> Option<String> {
        match self.vm.try_wait() {
            Ok(Some(status)) => Some(format!("qemu exited ({status})")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot check on qemu: {e}")),
        }
    }

    fn wait_exit(&mut self, grace: Duration) -> bool {
        matches!(self.vm.wait_timeout(grace), Ok(Some(_)))
    }

    fn kill(&mut self) {
        let _ = self.vm.kill();
    }
}
