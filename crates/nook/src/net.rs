//! A VM's network: the back end (`nook-net`), the NIC the engine attaches
//! to it, and the `nook.net=` boot word that tells the agent its address.

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nook_net::{MacAddr, NetBackend, NetConfig, DNS_IP, GATEWAY_IP, GUEST_IP, PREFIX_LEN};
use nook_proto::NetBoot;

use crate::engine::EngineId;
use crate::error::VmError;

/// The guest kernel modules a NIC needs (dependencies come along).
pub(crate) const NET_MODULES: &[&str] = &["virtio_net"];

/// Guest MTU on QEMU's virtio-net (mergeable receive buffers: 64 KiB
/// frames cost one trip through the back end instead of 44).
pub(crate) const QEMU_MTU: u16 = nook_net::config::MAX_MTU;
/// Guest MTU on the kvm engine's virtio-net (one receive buffer a frame).
pub(crate) const KVM_MTU: u16 = 1500;

/// The NIC an engine attaches: its MAC and the back end's stream.
#[derive(Debug, Clone)]
pub struct NicSpec {
    pub mac: MacAddr,
    pub link: Arc<UnixStream>,
}

/// A started back end and what the engine and the guest need of it.
#[derive(Debug)]
pub(crate) struct VmNet {
    pub backend: NetBackend,
    pub nic: NicSpec,
}

/// The MAC address a booted guest's NIC gets. Every VM is alone on its
/// network, so one address serves all booted VMs and keeps the boot words
/// (and so template keys) stable; a restored clone gets a random one
/// ([`start_clone`]).
pub(crate) const BOOT_MAC: MacAddr = MacAddr([0x02, 0x4e, 0x4f, 0x4f, 0x4b, 0x0f]);

/// Starts the back end of `cfg` for a booted guest's NIC ([`BOOT_MAC`]).
pub(crate) fn start_boot(cfg: &NetConfig) -> Result<VmNet, VmError> {
    start(cfg, BOOT_MAC)
}

/// Starts the back end of `cfg` for a restored clone, with a fresh MAC.
pub(crate) fn start_clone(cfg: &NetConfig) -> Result<VmNet, VmError> {
    start(cfg, MacAddr::random())
}

fn start(cfg: &NetConfig, mac: MacAddr) -> Result<VmNet, VmError> {
    let (backend, link) = NetBackend::start(cfg, mac).map_err(VmError::Net)?;
    Ok(VmNet {
        backend,
        nic: NicSpec {
            mac,
            link: Arc::new(link),
        },
    })
}

/// The `nook.net=` boot word of a booted guest on `engine`.
pub(crate) fn boot_word(engine: EngineId) -> NetBoot {
    NetBoot {
        address: GUEST_IP,
        prefix: PREFIX_LEN,
        gateway: GATEWAY_IP,
        dns: DNS_IP,
        mtu: match engine {
            EngineId::Kvm => KVM_MTU,
            _ => QEMU_MTU,
        },
        mac: BOOT_MAC.0,
    }
}
