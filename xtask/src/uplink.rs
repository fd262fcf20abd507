//! The uplink under QEMU: the machine's e1000 on QEMU's user network (slirp,
//! 10.0.2.0/24, the host reachable as the gateway 10.0.2.2), and `cargo xtask run
//! --forward HOSTPORT=VM:PORT`, which becomes QEMU's `hostfwd` from the host's
//! loopback to that VM's address on the uplink network (its NIC's `ip`).

use std::net::Ipv4Addr;

use crate::vms::{UplinkDef, VmDef};

/// QEMU's user network (its default `net=10.0.2.0/24`).
pub const USER_NET: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 0);
/// Addresses of that network slirp keeps for itself: the gateway (the host) and
/// the DNS server; .0 and .255 are the network and broadcast addresses.
const RESERVED: [u8; 4] = [0, 2, 3, 255];

/// One `--forward HOSTPORT=VM:PORT` as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub vm: String,
    pub guest_port: u16,
}

/// A forward with the VM's address: what QEMU's `hostfwd` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFwd {
    pub host_port: u16,
    pub guest: Ipv4Addr,
    pub guest_port: u16,
}

fn port(text: &str, what: &str, whole: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!(
            "--forward {whole}: {what} {text:?} is not a TCP port (1 to 65535)"
        )),
        Ok(p) => Ok(p),
    }
}

/// Parses `HOSTPORT=VM:PORT` (`8080=web:80`).
pub fn parse_forward(text: &str) -> Result<Forward, String> {
    let usage = || format!("--forward {text}: expected HOSTPORT=VM:PORT, e.g. 8080=web:80");
    let (host, target) = text.split_once('=').ok_or_else(usage)?;
    let (vm, guest) = target.rsplit_once(':').ok_or_else(usage)?;
    if vm.is_empty() {
        return Err(usage());
    }
    Ok(Forward {
        host_port: port(host, "the host port", text)?,
        vm: vm.to_string(),
        guest_port: port(guest, "the VM's port", text)?,
    })
}

/// Checks `forwards` against the machine: an uplink is configured, each VM exists
/// and has a NIC with an `ip` on the uplink's network, inside QEMU's user network
/// and not one of slirp's own addresses; no host port twice.
pub fn resolve(
    forwards: &[Forward],
    vms: &[VmDef],
    uplink: Option<&UplinkDef>,
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
        let whole = format!("{}={}:{}", f.host_port, f.vm, f.guest_port);
        if out.iter().any(|o| o.host_port == f.host_port) {
            return Err(format!(
                "--forward {whole}: host port {} is forwarded twice",
                f.host_port
            ));
        }
        let Some(vm) = vms.iter().find(|v| v.name == f.vm) else {
            let names: Vec<&str> = vms.iter().map(|v| v.name.as_str()).collect();
            return Err(format!(
                "--forward {whole}: no VM {:?}; the VMs are {}",
                f.vm,
                names.join(", ")
            ));
        };
        let Some(nic) = vm.nics.iter().find(|n| n.network == uplink.network) else {
            return Err(format!(
                "--forward {whole}: VM {:?} has no NIC on the uplink's network {:?}",
                f.vm, uplink.network
            ));
        };
        let Some((ip, _)) = nic.ip else {
            return Err(format!(
                "--forward {whole}: VM {:?}'s NIC on network {:?} has no `ip`: give it one in \
                 QEMU's user network, e.g. ip = \"10.0.2.15/24\"",
                f.vm, uplink.network
            ));
        };
        let o = ip.octets();
        if o[..3] != USER_NET.octets()[..3] || RESERVED.contains(&o[3]) {
            return Err(format!(
                "--forward {whole}: VM {:?}'s address {ip} is not one QEMU's user network \
                 reaches: use 10.0.2.4 to 10.0.2.254 (10.0.2.2 is the host, 10.0.2.3 its DNS)",
                f.vm
            ));
        }
        out.push(HostFwd {
            host_port: f.host_port,
            guest: ip,
            guest_port: f.guest_port,
        });
    }
    Ok(out)
}

/// QEMU's arguments for the uplink: an e1000 on a user network, each forward from
/// the host's loopback only (nothing outside this machine reaches the VMs).
pub fn qemu_args(forwards: &[HostFwd]) -> Vec<String> {
    qemu_args_with("e1000", forwards)
}

/// [`qemu_args`] with QEMU's `device` model for the NIC (`e1000`, `e1000e`).
pub fn qemu_args_with(device: &str, forwards: &[HostFwd]) -> Vec<String> {
    let mut netdev = String::from("user,id=uplink,net=10.0.2.0/24");
    for f in forwards {
        netdev.push_str(&format!(
            ",hostfwd=tcp:127.0.0.1:{}-{}:{}",
            f.host_port, f.guest, f.guest_port
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
        assert_eq!(
            f,
            Forward {
                host_port: 8080,
                vm: "web".into(),
                guest_port: 80
            }
        );
        let r = resolve(
            &[f, parse_forward("2222=web:22").unwrap()],
            &vms(),
            Some(&lan()),
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
    fn bad_forwards_are_refused_with_the_reason() {
        for (text, expected) in [
            ("8080", "expected HOSTPORT=VM:PORT"),
            ("8080=web", "expected HOSTPORT=VM:PORT"),
            ("8080=:80", "expected HOSTPORT=VM:PORT"),
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
            let e = resolve(&forwards, &vms, uplink.as_ref()).unwrap_err();
            assert!(e.contains(expected), "{forwards:?}: {e}");
        }
        // The web VM's other NIC is not on the uplink's network: the lan one is used.
        let other = UplinkDef {
            network: "other".into(),
        };
        let e = resolve(&f("80=web:80"), &vms, Some(&other)).unwrap_err();
        assert!(e.contains("NIC on network \"other\" has no `ip`"), "{e}");
        assert_eq!(resolve(&[], &vms, None), Ok(Vec::new()));
    }
}
