//! x86_64: guest physical layout, boot protocols, ACPI tables, vCPU set-up.
pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod paging;
pub mod payload;
pub mod regs;
