//! Legacy PC devices: 8250 serial, i8042 (reset only), ACPI power ports.
pub mod i8042;
pub mod persist;
pub mod power;
pub mod serial;
