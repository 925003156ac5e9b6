//! Per-vCPU CPUID: KVM's supported CPUID with topology and identity fixed
//! up (APIC ids, logical processor counts, hypervisor bit).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Fixes up a copy of `supported` for vCPU `index` of `count`.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, count: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        fixup_entry(entry, index, count);
    }
    cpuid
}

/// Number of bits needed to hold ids `0..count`.
fn id_bits(count: u8) -> u32 {
    if count <= 1 {
        0
    } else {
        u32::BITS - u32::from(count - 1).leading_zeros()
    }
}

fn fixup_entry(e: &mut kvm_cpuid_entry2, index: u8, count: u8) {
    let apic_id = u32::from(index);
    let count32 = u32::from(count.max(1));
    match e.function {
        0x1 => {
            // EBX[31:24] initial APIC id, EBX[23:16] logical processors.
            e.ebx = (e.ebx & 0x0000_ffff) | (apic_id << 24) | ((count32 & 0xff) << 16);
            // ECX[31]: running under a hypervisor.
            e.ecx |= 1 << 31;
            // EDX[28] HTT: the count field above is valid.
            if count > 1 {
                e.edx |= 1 << 28;
            } else {
                e.edx &= !(1 << 28);
            }
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing
            // this cache - 1 (one core per vCPU, L3 shared by all).
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count32 - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((count32 - 1) << 26) | (sharing << 14);
        }
        0xb | 0x1f => {
            // Extended topology: one thread per core, `count` cores.
            e.edx = apic_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1 << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(count);
                    e.ebx = count32;
                    e.ecx = (2 << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_beef,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_and_hypervisor_bit() {
        let base = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        let c = vcpu_cpuid(&base, 3, 4);
        let e = c.as_slice()[0];
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0xbeef);
        assert_ne!(e.ecx & (1 << 31), 0);
        assert_ne!(e.edx & (1 << 28), 0);
    }

    #[test]
    fn leaf_b_describes_cores() {
        let base = CpuId::from_entries(&[entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)]).unwrap();
        let c = vcpu_cpuid(&base, 1, 2);
        let s = c.as_slice();
        assert_eq!((s[0].ebx, s[0].edx), (1, 1));
        assert_eq!((s[1].eax, s[1].ebx, s[1].ecx >> 8), (1, 2, 2));
        assert_eq!(s[2].ecx >> 8, 0);
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
    }
}
