//! VM state: how the VM ends, guest memory, the KVM VM and its vCPUs.
pub mod exit;
pub mod fault;
pub mod memory;
pub mod pause;
pub(crate) mod shell;
pub mod vcpu;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
pub mod worker;
