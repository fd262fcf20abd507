//! The uplink under QEMU: the machine's e1000 on QEMU's user network (slirp,
//! 10.0.2.0/24, the host reachable as the gateway 10.0.2.2), and `cargo xtask run
//! --forward [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT`, which becomes QEMU's `hostfwd`
//! (TCP or UDP, as QEMU's own `hostfwd=udp::5353-:53` takes it) from the host's
//! loopback, or the host address given, to that VM's address on the uplink network
//! (its NIC's `ip`), or, with [`STATION`] for VM (`--forward 9100=hv:80`), to the
//! hypervisor's own station when `[management]` puts it on the uplink's network.
//!
//! Without a host address a forward listens on 127.0.0.1 only, unlike QEMU's
//! `hostfwd`, whose empty address means every interface: a VM (or the
//! hypervisor's metrics) is reachable from other machines only when the operator
//! names an address for it, e.g. `0.0.0.0:8080=web:80`.

use std::fmt;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};

use crate::vms::{ManagementDef, UplinkDef, VmDef};

/// QEMU's user network (its default `net=10.0.2.0/24`).
pub const USER_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// The host as the user network shows it (slirp's gateway): forwarded connections
/// come from this address.
pub const USER_NET_HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Addresses of that network slirp keeps for itself: the gateway (the host) and
/// the DNS server; .0 and .255 are the network and broadcast addresses.
const RESERVED: [u8; 4] = [0, 2, 3, 255];

/// What `--forward HOSTPORT=hv:PORT` names instead of a VM: the hypervisor's own
/// station (`[management]`), which serves `/metrics` on [`mgmtnet::HTTP_PORT`].
pub const STATION: &str = "hv";

/// What the station serves, per protocol and port: `/metrics` over HTTP on TCP,
/// and nothing on UDP (its one UDP socket only sends syslog; a datagram to it is
/// never read), so a UDP forward to the station is refused rather than made into
/// a forward that silently goes nowhere.
const STATION_SERVICES: &[(Protocol, u16, &str)] =
    &[(Protocol::Tcp, mgmtnet::HTTP_PORT, "GET /metrics")];

/// The transport a forward carries, as QEMU's `hostfwd` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name in `--forward udp:...` and in QEMU's `hostfwd=udp:...`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The name in messages.
    pub fn upper(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// One `--forward [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT` as written (no prefix:
/// TCP; no host address: 127.0.0.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub protocol: Protocol,
    /// The host address QEMU listens on ([`Ipv4Addr::LOCALHOST`] unless given;
    /// [`Ipv4Addr::UNSPECIFIED`] is every interface).
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub vm: String,
    pub guest_port: u16,
}

impl Forward {
    /// A TCP forward (what `HOSTPORT=VM:PORT` without a prefix is).
    pub fn tcp(host_port: u16, vm: &str, guest_port: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            vm: vm.into(),
            guest_port,
        }
    }
}

/// As the user writes it: `udp:5353=web:53`, TCP without its (optional) prefix,
/// and the host address only when it is not the default 127.0.0.1.
impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.protocol == Protocol::Udp {
            write!(f, "udp:")?;
        }
        if self.host_addr != Ipv4Addr::LOCALHOST {
            write!(f, "{}:", self.host_addr)?;
        }
        write!(f, "{}={}:{}", self.host_port, self.vm, self.guest_port)
    }
}

/// A forward with the VM's address: what QEMU's `hostfwd` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFwd {
    pub protocol: Protocol,
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest: Ipv4Addr,
    pub guest_port: u16,
}

/// Whether slirp delivers to `ip`: inside 10.0.2.0/24 and none of its own.
fn user_net_reaches(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[..3] == USER_NET.octets()[..3] && !RESERVED.contains(&o[3])
}

fn port(text: &str, what: &str, protocol: Protocol, whole: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "--forward {whole}: {what} {text:?} is not a {} port (1 to 65535)",
            protocol.upper()
        )),
        Ok(p) => Ok(p),
    }
}

/// Parses `[tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT` (`8080=web:80`,
/// `udp:5353=web:53`, `0.0.0.0:8080=web:80`); no prefix is TCP, as in QEMU's
/// `hostfwd`, and no host address is 127.0.0.1 (see the module header).
pub fn parse_forward(text: &str) -> Result<Forward, String> {
    let usage = || {
        format!(
            "--forward {text}: expected [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT, e.g. \
             8080=web:80, udp:5353=web:53 or 0.0.0.0:8080=web:80"
        )
    };
    let (host, target) = text.split_once('=').ok_or_else(usage)?;
    // Up to three fields: the protocol, the host address and the port, the port
    // always last; a field that is not a protocol name is taken as the address.
    let mut fields: Vec<&str> = host.split(':').collect();
    let port_text = fields.pop().ok_or_else(usage)?;
    let protocol = match fields.first() {
        Some(&"tcp") => Some(Protocol::Tcp),
        Some(&"udp") => Some(Protocol::Udp),
        _ => None,
    };
    if protocol.is_some() {
        fields.remove(0);
    }
    let protocol_named = protocol.is_some();
    let protocol = protocol.unwrap_or(Protocol::Tcp);
    let host_addr = match fields.as_slice() {
        [] => Ipv4Addr::LOCALHOST,
        [addr] => match addr.parse::<Ipv4Addr>() {
            Ok(a) if a.is_multicast() || a.is_broadcast() => {
                return Err(format!(
                    "--forward {text}: host address {a} is not one a listener can bind \
                     (a unicast IPv4 address of this host, or 0.0.0.0 for all of them)"
                ))
            }
            Ok(a) => a,
            Err(_) if !protocol_named && fields.len() == 1 && !addr.contains('.') => {
                return Err(format!(
                    "--forward {text}: protocol {addr:?} is not tcp or udp (the prefix is \
                     optional: no prefix is tcp)"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "--forward {text}: host address {addr:?} is not an IPv4 address (QEMU's \
                     user network forwards IPv4; 127.0.0.1 when none is given, 0.0.0.0 for \
                     every interface)"
                ))
            }
        },
        _ => return Err(usage()),
    };
    let host = port_text;
    let (vm, guest) = target.rsplit_once(':').ok_or_else(usage)?;
    if vm.is_empty() {
        return Err(usage());
    }
    Ok(Forward {
        protocol,
        host_addr,
        host_port: port(host, "the host port", protocol, text)?,
        vm: vm.to_string(),
        guest_port: port(guest, "the VM's port", protocol, text)?,
    })
}

/// Checks `forwards` against the machine: an uplink is configured, each VM exists
/// and has a NIC with an `ip` on the uplink's network, inside QEMU's user network
/// and not one of slirp's own addresses; [`STATION`] is the hypervisor's station
/// (see [`station_address`]); no host port twice for one protocol (TCP and UDP
/// ports are separate: `8053=web:53` and `udp:8053=web:53` go together), whatever
/// the host addresses (0.0.0.0 covers every address, so a port on two addresses
/// is refused rather than left to the host's rules on overlapping binds).
pub fn resolve(
    forwards: &[Forward],
    vms: &[VmDef],
    uplink: Option<&UplinkDef>,
    management: Option<&ManagementDef>,
) -> Result<Vec<HostFwd>, String> {
    if forwards.is_empty() {
        return Ok(Vec::new());
    }
    let Some(uplink) = uplink else {
        return Err(
            "--forward needs an uplink: add `[uplink] network = \"...\"` to the configuration \
             (see README, Network) and run it with --config"
                .into(),
        );
    };
    let mut out: Vec<HostFwd> = Vec::new();
    for f in forwards {
        if out
            .iter()
            .any(|o| o.protocol == f.protocol && o.host_port == f.host_port)
        {
            return Err(format!(
                "--forward {f}: {} host port {} is forwarded twice",
                f.protocol.upper(),
                f.host_port
            ));
        }
        let guest = if f.vm == STATION {
            if vms.iter().any(|v| v.name == STATION) {
                return Err(format!(
                    "--forward {f}: {STATION:?} names the hypervisor's station here, and a \
                     VM has that name too: rename the VM"
                ));
            }
            station_address(f.protocol, f.guest_port, uplink, management)
                .map_err(|e| format!("--forward {f}: {e}"))?
        } else {
            vm_address(f, vms, uplink).map_err(|e| format!("--forward {f}: {e}"))?
        };
        out.push(HostFwd {
            protocol: f.protocol,
            host_addr: f.host_addr,
            host_port: f.host_port,
            guest,
            guest_port: f.guest_port,
        });
    }
    Ok(out)
}
/// The address of `f`'s VM on the uplink's network.
fn vm_address(f: &Forward, vms: &[VmDef], uplink: &UplinkDef) -> Result<Ipv4Addr, String> {
    let Some(vm) = vms.iter().find(|v| v.name == f.vm) else {
        let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
        return Err(format!(
            "no VM {:?}; the VMs are {} (or {STATION:?}, the hypervisor's station)",
            f.vm,
            names.join(", ")
        ));
    };
    let Some(nic) = vm.nics.iter().find(|n| n.network == uplink.network) else {
        return Err(format!(
            "VM {:?} has no NIC on the uplink's network {:?}",
            f.vm, uplink.network
        ));
    };
    let Some((ip, _)) = nic.ip else {
        return Err(format!(
            "VM {:?}'s NIC on network {:?} has no `ip`: give it one in QEMU's user network, \
             e.g. ip = \"10.0.2.15/24\"",
            f.vm, uplink.network
        ));
    };
    if !user_net_reaches(ip) {
        return Err(format!(
            "VM {:?}'s address {ip} is not one QEMU's user network reaches: use 10.0.2.4 to \
             10.0.2.254 (10.0.2.2 is the host, 10.0.2.3 its DNS)",
            f.vm
        ));
    }
    Ok(ip)
}

/// The hypervisor's station as a forward's target: it serves `protocol` on
/// `port` (see [`STATION_SERVICES`]: nothing on UDP), `[management]` exists, is on
/// the uplink's network (QEMU's user network reaches no other), has an address
/// slirp delivers to, and its subnet holds the host 10.0.2.2, the source of every
/// forwarded connection (the station has no gateway: it answers only hosts of its
/// own subnet).
pub fn station_address(
    protocol: Protocol,
    port: u16,
    uplink: &UplinkDef,
    management: Option<&ManagementDef>,
) -> Result<Ipv4Addr, String> {
    station_serves(protocol, port)?;
    let Some(m) = management else {
        return Err(format!(
            "the hypervisor has no station: add a [management] table on the uplink's \
             network, e.g. network = {:?}, address = \"10.0.2.10/24\" (see README, \
             Management network)",
            uplink.network
        ));
    };
    if m.network != uplink.network {
        return Err(format!(
            "the hypervisor's station is on network {:?}, not on the uplink's network {:?}, \
             the only one QEMU's user network reaches: set [management] network = {:?} \
             (with an address in 10.0.2.0/24)",
            m.network, uplink.network, uplink.network
        ));
    }
    let ip = Ipv4Addr::from(m.address);
    if !user_net_reaches(ip) {
        return Err(format!(
            "the hypervisor's address {ip} is not one QEMU's user network reaches: use \
             10.0.2.4 to 10.0.2.254 (10.0.2.2 is the host, 10.0.2.3 its DNS)"
        ));
    }
    let mask = u32::MAX << (32 - u32::from(m.prefix.clamp(1, 32)));
    if u32::from(ip) & mask != u32::from(USER_NET_HOST) & mask {
        return Err(format!(
            "the hypervisor's network {ip}/{} does not hold the host {USER_NET_HOST}, from \
             which forwarded connections come, and the station routes nowhere: use a prefix \
             that does (/24 covers QEMU's whole user network)",
            m.prefix
        ));
    }
    Ok(ip)
}

/// Whether the station serves `protocol` on `port`; if not, what it does serve.
fn station_serves(protocol: Protocol, port: u16) -> Result<(), String> {
    if STATION_SERVICES
        .iter()
        .any(|&(p, n, _)| p == protocol && n == port)
    {
        return Ok(());
    }
    let served: Vec<String> = STATION_SERVICES
        .iter()
        .map(|(p, n, what)| format!("{} port {n} ({what})", p.upper()))
        .collect();
    let served = served.join(", ");
    if STATION_SERVICES.iter().any(|&(p, _, _)| p == protocol) {
        Err(format!(
            "the hypervisor's station serves only {served}, not {} port {port}",
            protocol.upper()
        ))
    } else {
        Err(format!(
            "the hypervisor's station serves nothing on {} (it listens only on {served}): \
             forward {} to a VM instead",
            protocol.upper(),
            protocol.upper()
        ))
    }
}

/// `user`'s forwards followed by each of `defaults` that none of them overrides:
/// a user forward of the same protocol on the same host port, or to the same VM
/// and port, replaces the default (a UDP forward leaves a TCP default alone).
pub fn with_defaults(user: Vec<Forward>, defaults: &[Forward]) -> Vec<Forward> {
    let mut out = user;
    for d in defaults {
        let overridden = out.iter().any(|f| {
            f.protocol == d.protocol
                && (f.host_port == d.host_port || (f.vm == d.vm && f.guest_port == d.guest_port))
        });
        if !overridden {
            out.push(d.clone());
        }
    }
    out
}

/// Checks that every forward's host port is free on its host address now, for its
/// protocol (QEMU binds a TCP listener or a UDP socket there), so that a port in
/// use (another run, another service) or an address this host does not have is a
/// clear error before QEMU starts rather than QEMU's "Could not set up host
/// forwarding rule". (Another program may still take it before QEMU does; QEMU
/// then says so.)
pub fn check_host_ports(forwards: &[Forward]) -> Result<(), String> {
    for f in forwards {
        let addr = (f.host_addr, f.host_port);
        let bound = match f.protocol {
            Protocol::Tcp => TcpListener::bind(addr).map(drop),
            Protocol::Udp => UdpSocket::bind(addr).map(drop),
        };
        if let Err(e) = bound {
            let other = Forward {
                host_port: f.host_port.checked_add(1).unwrap_or(1024),
                ..f.clone()
            };
            if e.kind() == std::io::ErrorKind::AddrNotAvailable {
                return Err(format!(
                    "--forward {f}: host address {} is not one of this host's ({e}): use \
                     an address of one of its interfaces, 0.0.0.0 for all of them, or none \
                     for 127.0.0.1",
                    f.host_addr
                ));
            }
            return Err(format!(
                "--forward {f}: {} host port {} on {} is not free ({e}): choose \
                 another, e.g. --forward {other}",
                f.protocol.upper(),
                f.host_port,
                f.host_addr,
            ));
        }
    }
    Ok(())
}

/// QEMU's arguments for the uplink: an e1000 on a user network, each forward from
/// its host address (the loopback unless the operator named another, so by
/// default nothing outside this machine reaches the VMs), as `hostfwd=tcp:...` or
/// `hostfwd=udp:...` (QEMU's `-netdev user` documentation).
pub fn qemu_args(forwards: &[HostFwd]) -> Vec<String> {
    qemu_args_with("e1000", forwards)
}

/// [`qemu_args`] with QEMU's `device` model for the NIC (`e1000`, `e1000e`).
pub fn qemu_args_with(device: &str, forwards: &[HostFwd]) -> Vec<String> {
    let mut netdev = String::from("user,id=uplink,net=10.0.2.0/24");
    for f in forwards {
        netdev.push_str(&format!(
            ",hostfwd={}:{}:{}-{}:{}",
            f.protocol.name(),
            f.host_addr,
            f.host_port,
            f.guest,
            f.guest_port
        ));
    }
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("{device},netdev=uplink"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vms::NicDef;

    fn vms() -> Vec<VmDef> {
        let mut web = VmDef::new("web", "bzImage", 65536);
        let mut nic = NicDef::on("lan", "web", 0);
        nic.ip = Some((Ipv4Addr::new(10, 0, 2, 15), 24));
        web.nics = vec![NicDef::on("other", "web", 1), nic];
        let mut bare = VmDef::new("bare", "bzImage", 65536);
        bare.nics = vec![NicDef::on("lan", "bare", 0)];
        let alone = VmDef::new("alone", "bzImage", 65536);
        let mut far = VmDef::new("far", "bzImage", 65536);
        let mut nic = NicDef::on("lan", "far", 0);
        nic.ip = Some((Ipv4Addr::new(192, 168, 1, 5), 24));
        far.nics = vec![nic];
        vec![web, bare, alone, far]
    }

    fn lan() -> UplinkDef {
        UplinkDef {
            network: "lan".into(),
        }
    }

    #[test]
    fn forwards_parse_and_become_hostfwd() {
        let f = parse_forward("8080=web:80").unwrap();
        assert_eq!(f, Forward::tcp(8080, "web", 80));
        let r = resolve(
            &[f, parse_forward("2222=web:22").unwrap()],
            &vms(),
            Some(&lan()),
            None,
        )
        .unwrap();
        assert_eq!(
            qemu_args(&r),
            [
                "-netdev",
                "user,id=uplink,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80,hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22",
                "-device",
                "e1000,netdev=uplink"
            ]
        );
        assert_eq!(qemu_args(&[])[1], "user,id=uplink,net=10.0.2.0/24");
    }

    #[test]
    fn forwards_take_a_host_address() {
        let every = parse_forward("0.0.0.0:8080=web:80").unwrap();
        assert_eq!(every.protocol, Protocol::Tcp);
        assert_eq!(every.host_addr, Ipv4Addr::UNSPECIFIED);
        assert_eq!(every.to_string(), "0.0.0.0:8080=web:80");
        let udp = parse_forward("udp:127.0.0.2:5353=web:53").unwrap();
        assert_eq!(
            (udp.protocol, udp.host_addr, udp.host_port),
            (Protocol::Udp, Ipv4Addr::new(127, 0, 0, 2), 5353)
        );
        assert_eq!(udp.to_string(), "udp:127.0.0.2:5353=web:53");
        // The default address is not written back, so messages show what was typed.
        let tcp = parse_forward("tcp:127.0.0.1:2222=web:22").unwrap();
        assert_eq!(tcp, Forward::tcp(2222, "web", 22));
        assert_eq!(tcp.to_string(), "2222=web:22");
        let r = resolve(&[every, udp], &vms(), Some(&lan()), None).unwrap();
        assert_eq!(
            qemu_args(&r)[1],
            "user,id=uplink,net=10.0.2.0/24,hostfwd=tcp:0.0.0.0:8080-10.0.2.15:80,\
             hostfwd=udp:127.0.0.2:5353-10.0.2.15:53"
        );
        // One port on two addresses of one protocol: 0.0.0.0 would overlap.
        let e = resolve(
            &[
                parse_forward("0.0.0.0:8080=web:80").unwrap(),
                parse_forward("8080=web:81").unwrap(),
            ],
            &vms(),
            Some(&lan()),
            None,
        )
        .unwrap_err();
        assert!(e.contains("TCP host port 8080 is forwarded twice"), "{e}");
    }

    #[test]
    fn a_host_address_this_host_lacks_is_refused_before_qemu_starts() {
        // 192.0.2.1 is TEST-NET-1 (RFC 5737): no interface of a test machine has it.
        let f = parse_forward("192.0.2.1:8080=web:80").unwrap();
        let e = check_host_ports(&[f]).unwrap_err();
        assert!(
            e.contains("host address 192.0.2.1 is not one of this host's"),
            "{e}"
        );
        // Another loopback address is this host's, and binds.
        let port = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
            .and_then(|s| s.local_addr())
            .unwrap()
            .port();
        let f = parse_forward(&format!("udp:127.0.0.2:{port}=web:53")).unwrap();
        check_host_ports(&[f]).unwrap();
    }

    #[test]
    fn bad_forwards_are_refused_with_the_reason() {
        for (text, expected) in [
            ("8080", "expected [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT"),
            (
                "8080=web",
                "expected [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT",
            ),
            (
                "8080=:80",
                "expected [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT",
            ),
            (
                "udp:8080=web",
                "expected [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT",
            ),
            ("sctp:8080=web:80", "protocol \"sctp\" is not tcp or udp"),
            ("UDP:8080=web:80", "protocol \"UDP\" is not tcp or udp"),
            (":8080=web:80", "protocol \"\" is not tcp or udp"),
            ("udp:0=web:53", "the host port \"0\" is not a UDP port"),
            (
                "udp:5353=web:70000",
                "the VM's port \"70000\" is not a UDP port",
            ),
            ("tcp:x=web:80", "the host port \"x\" is not a TCP port"),
            (
                "udp:udp:53=web:53",
                "host address \"udp\" is not an IPv4 address",
            ),
            (
                "1.2.3:8080=web:80",
                "host address \"1.2.3\" is not an IPv4 address",
            ),
            (
                "udp:224.0.0.1:5353=web:53",
                "host address 224.0.0.1 is not one a listener can bind",
            ),
            (
                "tcp:0.0.0.0:1:80=web:80",
                "expected [tcp:|udp:][HOSTADDR:]HOSTPORT=VM:PORT",
            ),
            ("0=web:80", "the host port \"0\" is not a TCP port"),
            ("x=web:80", "the host port \"x\" is not a TCP port"),
            (
                "8080=web:65536",
                "the VM's port \"65536\" is not a TCP port",
            ),
            ("8080=web:-1", "the VM's port \"-1\" is not a TCP port"),
        ] {
            let e = parse_forward(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let f = |t: &str| vec![parse_forward(t).unwrap()];
        let vms = vms();
        for (forwards, uplink, expected) in [
            (f("80=web:80"), None, "--forward needs an uplink"),
            (
                f("80=nope:80"),
                Some(lan()),
                "no VM \"nope\"; the VMs are web, bare, alone, far",
            ),
            (
                f("80=alone:80"),
                Some(lan()),
                "VM \"alone\" has no NIC on the uplink's network \"lan\"",
            ),
            (
                f("80=bare:80"),
                Some(lan()),
                "VM \"bare\"'s NIC on network \"lan\" has no `ip`",
            ),
            (
                f("80=far:80"),
                Some(lan()),
                "address 192.168.1.5 is not one QEMU's user network reaches",
            ),
            (
                vec![
                    parse_forward("80=web:80").unwrap(),
                    parse_forward("80=web:81").unwrap(),
                ],
                Some(lan()),
                "host port 80 is forwarded twice",
            ),
        ] {
            let e = resolve(&forwards, &vms, uplink.as_ref(), None).unwrap_err();
            assert!(e.contains(expected), "{forwards:?}: {e}");
        }
        // The web VM's other NIC is not on the uplink's network: the lan one is used.
        let other = UplinkDef {
            network: "other".into(),
        };
        let e = resolve(&f("80=web:80"), &vms, Some(&other), None).unwrap_err();
        assert!(e.contains("NIC on network \"other\" has no `ip`"), "{e}");
        assert_eq!(resolve(&[], &vms, None, None), Ok(Vec::new()));
    }

    fn station(network: &str, address: [u8; 4], prefix: u8) -> ManagementDef {
        ManagementDef {
            network: network.into(),
            address,
            prefix,
            syslog: None,
        }
    }

    #[test]
    fn the_hypervisors_station_is_forwarded_to_on_the_uplinks_network() {
        let m = station("lan", [10, 0, 2, 10], 24);
        let r = resolve(
            &[
                parse_forward("9100=hv:80").unwrap(),
                parse_forward("8080=web:80").unwrap(),
            ],
            &vms(),
            Some(&lan()),
            Some(&m),
        )
        .unwrap();
        assert_eq!(
            r,
            [
                HostFwd {
                    protocol: Protocol::Tcp,
                    host_addr: Ipv4Addr::LOCALHOST,
                    host_port: 9100,
                    guest: Ipv4Addr::new(10, 0, 2, 10),
                    guest_port: 80
                },
                HostFwd {
                    protocol: Protocol::Tcp,
                    host_addr: Ipv4Addr::LOCALHOST,
                    host_port: 8080,
                    guest: Ipv4Addr::new(10, 0, 2, 15),
                    guest_port: 80
                }
            ]
        );
        assert_eq!(
            qemu_args(&r[..1])[1],
            "user,id=uplink,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:9100-10.0.2.10:80"
        );
        // A narrower subnet that still holds the host 10.0.2.2.
        let narrow = station("lan", [10, 0, 2, 5], 29);
        assert!(resolve(
            &[parse_forward("9100=hv:80").unwrap()],
            &vms(),
            Some(&lan()),
            Some(&narrow)
        )
        .is_ok());
    }

    #[test]
    fn bad_forwards_to_the_station_are_refused_with_the_reason() {
        let hv = vec![parse_forward("9100=hv:80").unwrap()];
        let vms = vms();
        for (forwards, uplink, management, expected) in [
            (hv.clone(), None, Some(station("lan", [10, 0, 2, 10], 24)), "--forward needs an uplink"),
            (
                hv.clone(),
                Some(lan()),
                None,
                "--forward 9100=hv:80: the hypervisor has no station: add a [management] table on the uplink's network",
            ),
            (
                hv.clone(),
                Some(lan()),
                Some(station("mgmt", [10, 0, 2, 10], 24)),
                "the hypervisor's station is on network \"mgmt\", not on the uplink's network \"lan\"",
            ),
            (
                hv.clone(),
                Some(lan()),
                Some(station("lan", [10, 0, 9, 1], 24)),
                "the hypervisor's address 10.0.9.1 is not one QEMU's user network reaches",
            ),
            (
                hv.clone(),
                Some(lan()),
                Some(station("lan", [10, 0, 2, 3], 24)),
                "the hypervisor's address 10.0.2.3 is not one QEMU's user network reaches",
            ),
            (
                hv.clone(),
                Some(lan()),
                Some(station("lan", [10, 0, 2, 100], 28)),
                "the hypervisor's network 10.0.2.100/28 does not hold the host 10.0.2.2",
            ),
            (
                vec![parse_forward("9100=hv:8080").unwrap()],
                Some(lan()),
                Some(station("lan", [10, 0, 2, 10], 24)),
                "the hypervisor's station serves only TCP port 80 (GET /metrics), not TCP port 8080",
            ),
            (
                vec![
                    parse_forward("9100=web:80").unwrap(),
                    parse_forward("9100=hv:80").unwrap(),
                ],
                Some(lan()),
                Some(station("lan", [10, 0, 2, 10], 24)),
                "host port 9100 is forwarded twice",
            ),
            (
                vec![parse_forward("9100=nope:80").unwrap()],
                Some(lan()),
                None,
                "no VM \"nope\"; the VMs are web, bare, alone, far (or \"hv\", the hypervisor's station)",
            ),
        ] {
            let e = resolve(&forwards, &vms, uplink.as_ref(), management.as_ref()).unwrap_err();
            assert!(e.contains(expected), "{forwards:?}: {e}");
        }
        // A VM named "hv" makes the name ambiguous.
        let mut named = vms.clone();
        named.push(VmDef::new("hv", "bzImage", 65536));
        let e = resolve(
            &hv,
            &named,
            Some(&lan()),
            Some(&station("lan", [10, 0, 2, 10], 24)),
        )
        .unwrap_err();
        assert!(e.contains("a VM has that name too"), "{e}");
    }

    #[test]
    fn defaults_give_way_to_the_users_forwards() {
        let d = [parse_forward("9100=hv:80").unwrap()];
        let f = |t: &str| parse_forward(t).unwrap();
        assert_eq!(with_defaults(Vec::new(), &d), d);
        assert_eq!(
            with_defaults(vec![f("8080=web:80")], &d),
            [f("8080=web:80"), f("9100=hv:80")]
        );
        // The same host port, or the same target: the user's forward alone.
        assert_eq!(
            with_defaults(vec![f("9100=web:80")], &d),
            [f("9100=web:80")]
        );
        assert_eq!(with_defaults(vec![f("9200=hv:80")], &d), [f("9200=hv:80")]);
    }

    #[test]
    fn a_host_port_in_use_is_refused_before_qemu_starts() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let f = Forward::tcp(port, "hv", 80);
        let e = check_host_ports(std::slice::from_ref(&f)).unwrap_err();
        assert!(
            e.contains(&format!("host port {port} on 127.0.0.1 is not free")),
            "{e}"
        );
        drop(busy);
        // Free again (the listener is gone; SO_REUSEADDR covers TIME_WAIT).
        assert_eq!(check_host_ports(&[f]), Ok(()));
    }

    #[test]
    fn udp_forwards_parse_and_become_udp_hostfwd() {
        let udp = parse_forward("udp:5353=web:53").unwrap();
        assert_eq!(
            udp,
            Forward {
                protocol: Protocol::Udp,
                host_addr: Ipv4Addr::LOCALHOST,
                host_port: 5353,
                vm: "web".into(),
                guest_port: 53
            }
        );
        assert_eq!(udp.to_string(), "udp:5353=web:53");
        // An explicit tcp: is the same as none.
        assert_eq!(
            parse_forward("tcp:8080=web:80").unwrap(),
            parse_forward("8080=web:80").unwrap()
        );
        assert_eq!(
            parse_forward("tcp:8080=web:80").unwrap().to_string(),
            "8080=web:80"
        );
        let r = resolve(
            &[udp, parse_forward("8080=web:80").unwrap()],
            &vms(),
            Some(&lan()),
            None,
        )
        .unwrap();
        assert_eq!(
            r[0],
            HostFwd {
                protocol: Protocol::Udp,
                host_addr: Ipv4Addr::LOCALHOST,
                host_port: 5353,
                guest: Ipv4Addr::new(10, 0, 2, 15),
                guest_port: 53
            }
        );
        assert_eq!(
            qemu_args_with("e1000e", &r),
            [
                "-netdev",
                "user,id=uplink,net=10.0.2.0/24,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53,hostfwd=tcp:127.0.0.1:8080-10.0.2.15:80",
                "-device",
                "e1000e,netdev=uplink"
            ]
        );
    }

    #[test]
    fn a_host_port_is_taken_once_per_protocol() {
        let f = |t: &str| parse_forward(t).unwrap();
        // The same host port for TCP and for UDP: two forwards.
        let r = resolve(
            &[f("8053=web:53"), f("udp:8053=web:53")],
            &vms(),
            Some(&lan()),
            None,
        )
        .unwrap();
        assert_eq!(
            r.iter().map(|h| h.protocol).collect::<Vec<_>>(),
            [Protocol::Tcp, Protocol::Udp]
        );
        // Twice for one protocol: refused, naming it.
        let e = resolve(
            &[f("udp:8053=web:53"), f("8053=web:53"), f("udp:8053=web:54")],
            &vms(),
            Some(&lan()),
            None,
        )
        .unwrap_err();
        assert!(
            e.contains("--forward udp:8053=web:54: UDP host port 8053 is forwarded twice"),
            "{e}"
        );
        let e = resolve(
            &[f("80=web:80"), f("tcp:80=web:81")],
            &vms(),
            Some(&lan()),
            None,
        )
        .unwrap_err();
        assert!(e.contains("TCP host port 80 is forwarded twice"), "{e}");
        // A UDP forward is checked against the VM as a TCP one is.
        for (text, expected) in [
            ("udp:53=nope:53", "--forward udp:53=nope:53: no VM \"nope\""),
            (
                "udp:53=alone:53",
                "VM \"alone\" has no NIC on the uplink's network",
            ),
            (
                "udp:53=bare:53",
                "VM \"bare\"'s NIC on network \"lan\" has no `ip`",
            ),
            (
                "udp:53=far:53",
                "192.168.1.5 is not one QEMU's user network reaches",
            ),
        ] {
            let e = resolve(&[f(text)], &vms(), Some(&lan()), None).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        let e = resolve(&[f("udp:53=web:53")], &vms(), None, None).unwrap_err();
        assert!(e.contains("--forward needs an uplink"), "{e}");
    }

    #[test]
    fn udp_to_the_station_is_refused_since_it_serves_nothing_there() {
        let good = station("lan", [10, 0, 2, 10], 24);
        for (text, management, expected) in [
            (
                "udp:9100=hv:80",
                Some(good.clone()),
                "--forward udp:9100=hv:80: the hypervisor's station serves nothing on UDP \
                 (it listens only on TCP port 80 (GET /metrics)): forward UDP to a VM instead",
            ),
            // Its syslog source port is not a service either.
            (
                "udp:5514=hv:514",
                Some(good.clone()),
                "serves nothing on UDP",
            ),
            // Said before the station's own configuration is looked at.
            ("udp:9100=hv:80", None, "serves nothing on UDP"),
            (
                "tcp:9100=hv:8080",
                Some(good.clone()),
                "serves only TCP port 80 (GET /metrics), not TCP port 8080",
            ),
        ] {
            let e = resolve(
                &[parse_forward(text).unwrap()],
                &vms(),
                Some(&lan()),
                management.as_ref(),
            )
            .unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
        // TCP port 80 is served, beside a UDP forward to a VM.
        let r = resolve(
            &[
                parse_forward("tcp:9100=hv:80").unwrap(),
                parse_forward("udp:9100=web:7").unwrap(),
            ],
            &vms(),
            Some(&lan()),
            Some(&good),
        )
        .unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn udp_forwards_override_only_udp_defaults() {
        let f = |t: &str| parse_forward(t).unwrap();
        let d = [f("9100=hv:80")];
        // A UDP forward on the default's host port, or to its target port, is
        // another forward: the TCP default stays.
        assert_eq!(
            with_defaults(vec![f("udp:9100=web:7")], &d),
            [f("udp:9100=web:7"), f("9100=hv:80")]
        );
        assert_eq!(
            with_defaults(vec![f("udp:9200=hv:80")], &d),
            [f("udp:9200=hv:80"), f("9100=hv:80")]
        );
        let ud = [f("udp:5353=web:53")];
        assert_eq!(
            with_defaults(vec![f("udp:5353=web:54")], &ud),
            [f("udp:5353=web:54")]
        );
        assert_eq!(
            with_defaults(vec![f("5353=web:53")], &ud),
            [f("5353=web:53"), f("udp:5353=web:53")]
        );
    }

    #[test]
    fn a_udp_host_port_in_use_is_refused_before_qemu_starts() {
        let busy = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = busy.local_addr().unwrap().port();
        let udp = parse_forward(&format!("udp:{port}=web:7")).unwrap();
        let e = check_host_ports(std::slice::from_ref(&udp)).unwrap_err();
        assert!(
            e.contains(&format!(
                "--forward udp:{port}=web:7: UDP host port {port} on 127.0.0.1 is not free"
            )),
            "{e}"
        );
        assert!(e.contains("e.g. --forward udp:"), "{e}");
        // The TCP port of the same number is another port (free unless some other
        // program holds it: then this says so, which is what the check is for).
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            assert_eq!(check_host_ports(&[Forward::tcp(port, "web", 7)]), Ok(()));
        }
        drop(busy);
        assert_eq!(check_host_ports(&[udp]), Ok(()));
    }
}
