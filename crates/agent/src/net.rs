//! The guest's network: `lo` always comes up; with a `nook.net=` word (see
//! `nook_proto::NetBoot`) the NIC with the given MAC gets its address,
//! MTU and default route, and `/etc/resolv.conf` names nook's DNS. No
//! DHCP: the host decided everything already.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nook_proto::{format_mac, NetBoot};

/// How long the NIC may take to appear after its driver loaded.
const NIC_WAIT: Duration = Duration::from_secs(2);

/// Brings `lo` up and configures the NIC the boot word describes.
pub fn setup(net: Option<&NetBoot>) -> io::Result<()> {
    let sock = control_socket()?;
    set_up(&sock, "lo")?;
    let Some(nb) = net else {
        return Ok(());
    };
    let name = find_nic(&nb.mac)?;
    set_mtu(&sock, &name, nb.mtu)?;
    set_ipv4(&sock, &name, libc::SIOCSIFADDR, nb.address)?;
    set_ipv4(&sock, &name, libc::SIOCSIFNETMASK, netmask(nb.prefix))?;
    set_up(&sock, &name)?;
    add_default_route(&sock, nb.gateway)?;
    std::fs::create_dir_all("/etc")?;
    std::fs::write("/etc/resolv.conf", format!("nameserver {}\n", nb.dns))?;
    Ok(())
}

/// Gives the NIC a new MAC address (a restored clone must not keep its
/// parent's).
pub fn set_mac(mac: &str) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, format!("bad MAC {mac}"));
    let new = nook_proto::parse_mac(mac).ok_or_else(bad)?;
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let words = nook_proto::BootWords::parse(&cmdline)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let Some(nb) = words.net else {
        return Ok(());
    };
    // The interface still has the MAC it booted with, or one set by an
    // earlier restore: find it by name instead.
    let name = find_nic(&nb.mac).or_else(|_| first_nic())?;
    let sock = control_socket()?;
    let mut req = ifreq(&name)?;
    // SAFETY: writing the sa_family and sa_data fields of the union's
    // hardware-address member of a zeroed ifreq.
    unsafe {
        req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(new) {
            *d = s as libc::c_char;
        }
    }
    ioctl(&sock, libc::SIOCSIFHWADDR, &mut req)
}

fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The interface whose address is `mac`, waiting briefly for it.
fn find_nic(mac: &[u8; 6]) -> io::Result<String> {
    let want = format_mac(mac);
    let deadline = Instant::now() + NIC_WAIT;
    loop {
        for entry in std::fs::read_dir("/sys/class/net")?.flatten() {
            let addr = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
            if addr.trim() == want {
                return Ok(entry.file_name().to_string_lossy().into_owned());
            }
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no network interface has MAC {want}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn first_nic() -> io::Result<String> {
    std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n != "lo")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no network interface"))
}

fn netmask(prefix: u8) -> Ipv4Addr {
    let bits = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits)
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(req)
}

fn ioctl<T>(sock: &OwnedFd, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request used here takes a pointer to the structure
    // type passed (ifreq or rtentry), which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request as _, arg as *mut T) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and
    // sockaddr accepts any bit pattern.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_ipv4(sock: &OwnedFd, name: &str, request: libc::c_ulong, ip: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(sock, request, &mut req)
}

fn set_mtu(sock: &OwnedFd, name: &str, mtu: u16) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = libc::c_int::from(mtu);
    ioctl(sock, libc::SIOCSIFMTU, &mut req)
}

fn set_up(sock: &OwnedFd, name: &str) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

fn add_default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain old data; all zeroes is a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    match ioctl(sock, libc::SIOCADDRT, &mut rt) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_follow_the_prefix() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn ifreq_names_are_bounded() {
        assert!(ifreq("eth0").is_ok());
        assert!(ifreq("a-very-long-interface-name").is_err());
    }
}
