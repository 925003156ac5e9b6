//! Fixtures shared by the library's integration tests and benchmarks.
pub mod guest;
pub mod kvm_snapshot;
