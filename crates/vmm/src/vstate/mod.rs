//! VM state: how the VM ends, guest memory, the KVM VM and its vCPUs.
pub mod exit;
pub mod memory;
pub mod vcpu;
pub mod vm;
