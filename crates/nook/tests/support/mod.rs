//! Fixtures shared by the library's integration tests and benchmarks.
pub mod kvm_snapshot;
