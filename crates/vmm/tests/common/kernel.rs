//! Real-kernel test support: find the test kernel. (Extracting `vmlinux`
//! from a bzImage is the library's job: `nook_vmm::arch::x86_64::payload`.)

use std::path::PathBuf;

/// `NOOK_TEST_KERNEL`, or `None` after printing why the test is skipped.
pub fn test_kernel() -> Option<PathBuf> {
    match std::env::var_os("NOOK_TEST_KERNEL") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            eprintln!("skipping: NOOK_TEST_KERNEL not set");
            None
        }
    }
}
