//! nook's own virtual machine monitor on KVM (the `kvm` engine).
pub mod probe;
