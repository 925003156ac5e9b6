//! nook-net: the user-mode network back end of nook's VMs.
//!
//! Each VM with a network gets a [`NetBackend`]: a thread running a NAT
//! built on smoltcp. The guest's TCP connections end in smoltcp and are
//! proxied to ordinary sockets of the host process, UDP is relayed, DNS is
//! answered by nook itself, and every flow passes the VM's egress
//! [`Policy`] first. It needs no root, no tap device and no host setup.
//! The engine connects the guest's NIC to it over a Unix stream
//! ([`link`]): QEMU with `-netdev socket,fd=N`, the kvm engine with its own
//! virtio-net device.
#![forbid(unsafe_code)]

mod backend;
pub mod config;
pub mod dns;
mod frames;
pub mod link;
mod metrics;
mod nat;
pub mod policy;

pub use backend::{NetBackend, NetError, PublishedPort};
pub use config::{
    EgressRule, HostEntry, MacAddr, NetConfig, ParseError, PortMapping, Protocol, DNS_IP,
    GATEWAY_IP, GUEST_IP, HOST_ALIAS, PREFIX_LEN,
};
pub use metrics::{NetStats, RefusedFlow};
pub use policy::Policy;
