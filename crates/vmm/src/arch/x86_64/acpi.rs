//! Minimal ACPI tables: RSDP → XSDT → {FADT → DSDT, MADT}.
//!
//! The FADT declares a hardware-reduced platform whose only power
//! management is the sleep control register ([`SLEEP_CONTROL_PORT`]) and
//! the reset register ([`RESET_PORT`]); the DSDT holds just `\_S5` so that
//! Linux installs its ACPI power-off handler. The MADT lists one LAPIC per
//! vCPU and the IOAPIC, which is how a Linux guest finds its CPUs.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_ADDR, ACPI_END, IOAPIC_ADDR, LAPIC_ADDR, RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT,
    SLEEP_STATUS_PORT,
};

/// Errors writing ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the ACPI area.
    #[error("acpi tables need {0} bytes, more than the acpi area holds")]
    TooLarge(u64),
    /// Guest memory write failed.
    #[error("cannot write acpi tables to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

const OEM_ID: &[u8; 6] = b"NOOK  ";
const OEM_TABLE_ID: &[u8; 8] = b"NOOKVMM ";

/// Builds a table with the standard 36-byte header; `body` follows it.
fn table(signature: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(OEM_TABLE_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(b"NOOK"); // creator id
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Generic address structure for a byte-wide I/O port.
fn gas_io_byte(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O space
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn fadt(dsdt: u64) -> Vec<u8> {
    // Body offsets below are the FADT offsets minus the 36-byte header.
    let mut b = vec![0u8; 276 - 36];
    let put = |b: &mut Vec<u8>, off: usize, bytes: &[u8]| {
        b[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut b, 40, &(dsdt as u32).to_le_bytes()); // DSDT
                                                   // IAPC_BOOT_ARCH: 8042 present, no VGA, no CMOS RTC.
    put(&mut b, 109, &(0x0002u16 | 0x0004 | 0x0020).to_le_bytes());
    // Flags: RESET_REG_SUP (10), HW_REDUCED_ACPI (20).
    put(&mut b, 112, &((1u32 << 10) | (1 << 20)).to_le_bytes());
    put(&mut b, 116, &gas_io_byte(RESET_PORT));
    put(&mut b, 128, &[RESET_VALUE]);
    put(&mut b, 140, &dsdt.to_le_bytes()); // X_DSDT
    put(&mut b, 244, &gas_io_byte(SLEEP_CONTROL_PORT));
    put(&mut b, 256, &gas_io_byte(SLEEP_STATUS_PORT));
    put(&mut b, 268, b"NOOKVMM\0"); // hypervisor vendor identity
    table(b"FACP", 6, &b)
}

fn dsdt() -> Vec<u8> {
    // Name (_S5_, Package (4) { 5, 0, 0, 0 })
    let aml = [
        0x08, b'_', b'S', b'5', b'_', // NameOp "_S5_"
        0x12, 0x07, 0x04, // PackageOp, PkgLength 7, 4 elements
        0x0a, 0x05, // BytePrefix 5 (SLP_TYPa)
        0x00, 0x00, 0x00, // Zero, Zero, Zero
    ];
    table(b"DSDT", 2, &aml)
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // no 8259 PIC in use
    for id in 0..vcpus {
        b.extend_from_slice(&[0, 8, id, id]); // type 0: processor local APIC
        b.extend_from_slice(&1u32.to_le_bytes()); // enabled
    }
    b.extend_from_slice(&[1, 12, 0, 0]); // type 1: IOAPIC id 0
    b.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    table(b"APIC", 4, &b)
}

fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

fn align16(x: u64) -> u64 {
    (x + 15) & !15
}

/// Writes the tables at [`ACPI_ADDR`]; returns the RSDP address.
pub fn write_acpi_tables(mem: &GuestMemoryMmap, vcpus: u8) -> Result<u64, AcpiError> {
    let rsdp_addr = ACPI_ADDR;
    let xsdt_addr = align16(rsdp_addr + 36);
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align16(xsdt_addr + xsdt_len);
    let dsdt_addr = align16(fadt_addr + 276);
    let dsdt = dsdt();
    let madt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let madt = madt(vcpus);
    let end = madt_addr + madt.len() as u64;
    if end > ACPI_END {
        return Err(AcpiError::TooLarge(end - ACPI_ADDR));
    }
    let mut xsdt_body = Vec::new();
    xsdt_body.extend_from_slice(&fadt_addr.to_le_bytes());
    xsdt_body.extend_from_slice(&madt_addr.to_le_bytes());
    let parts = [
        (rsdp_addr, rsdp(xsdt_addr)),
        (xsdt_addr, table(b"XSDT", 1, &xsdt_body)),
        (fadt_addr, fadt(dsdt_addr)),
        (dsdt_addr, dsdt),
        (madt_addr, madt),
    ];
    for (addr, bytes) in parts {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(AcpiError::Memory)?;
    }
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_are_well_formed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let rsdp_addr = write_acpi_tables(&mem, 2).unwrap();
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(rsdp_addr)).unwrap();
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert!(sums_to_zero(&rsdp[..20]) && sums_to_zero(&rsdp));
        let xsdt_addr = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let read_table = |addr: u64| {
            let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
            let mut t = vec![0u8; len as usize];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            assert!(sums_to_zero(&t));
            t
        };
        let xsdt = read_table(xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        let fadt_addr = u64::from_le_bytes(xsdt[36..44].try_into().unwrap());
        let madt_addr = u64::from_le_bytes(xsdt[44..52].try_into().unwrap());
        let fadt = read_table(fadt_addr);
        assert_eq!((&fadt[..4], fadt.len()), (&b"FACP"[..], 276));
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        assert_eq!(fadt[244], 1);
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            u64::from(SLEEP_CONTROL_PORT)
        );
        let dsdt_addr = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = read_table(dsdt_addr);
        assert_eq!(&dsdt[36..41], b"\x08_S5_");
        let madt = read_table(madt_addr);
        assert_eq!(&madt[..4], b"APIC");
        // Two LAPIC entries of 8 bytes, one IOAPIC of 12.
        assert_eq!(madt.len(), 36 + 8 + 2 * 8 + 12);
        assert_eq!(&madt[44 + 8..44 + 12], &[0, 8, 1, 1]);
    }
}
