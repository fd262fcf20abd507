//! The configuration's `[management]` table: the network the hypervisor's own
//! station joins (`network`, a declared `[[network]]`), its address with the
//! network's prefix (`address = "10.0.9.1/24"`), and optionally the syslog
//! collector it sends its log to (`syslog = "10.0.9.2:514"`, another host of that
//! network: the hypervisor routes nowhere). Checked here as the bundle and the
//! kernel need it, each error at its key's `file:line:column`.

use toml_edit::Item;

use super::{get_str, levenshtein, type_error, unknown_key, ConfigError, Loc, Source};
use crate::vms::{ManagementDef, VmDef};

const MANAGEMENT_KEYS: &[&str] = &["network", "address", "syslog"];

/// `[management]` as written, with where its values were.
pub(super) struct RawManagement {
    network: (String, Loc),
    address: ([u8; 4], u8, Loc),
    syslog: Option<([u8; 4], u16, Loc)>,
}

/// Dotted-quad IPv4, nothing else (no leading zeros: `010` is octal to some
/// tools and decimal to others).
fn ipv4(text: &str) -> Option<[u8; 4]> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut out = [0u8; 4];
    for (o, p) in out.iter_mut().zip(parts) {
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if p.len() > 1 && p.starts_with('0') {
            return None;
        }
        *o = p.parse().ok()?;
    }
    Some(out)
}

fn show(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

/// Parses `[management]`.
pub(super) fn parse(src: &Source, item: &Item, loc: &Loc) -> Result<RawManagement, ConfigError> {
    let Some(table) = item.as_table_like() else {
        return Err(src.err(loc, type_error("a [management] table", item)));
    };
    let mut network = None;
    let mut address = None;
    let mut syslog = None;
    for (key, value) in table.iter() {
        let (key_loc, value_loc) = src.entry_locs(
            table.key(key).and_then(|k| k.span()),
            value.span().filter(|_| value.is_value()),
            &format!("management.{key}"),
        );
        match key {
            "network" => {
                network = Some((get_str(src, value, &value_loc)?.to_string(), value_loc));
            }
            "address" => {
                let text = get_str(src, value, &value_loc)?;
                let parsed = text.split_once('/').and_then(|(a, p)| {
                    let prefix: u8 = p.parse().ok().filter(|_| !p.starts_with('+'))?;
                    Some((ipv4(a)?, prefix))
                });
                let Some((a, prefix)) = parsed else {
                    return Err(src.err(
                        &value_loc,
                        format!(
                            "{text:?} is not an IPv4 address with its prefix length: write \
                             e.g. \"10.0.9.1/24\""
                        ),
                    ));
                };
                if !(1..=30).contains(&prefix) {
                    return Err(src.err(
                        &value_loc,
                        format!("/{prefix}: the prefix length must be 1 to 30, so that the network has other hosts"),
                    ));
                }
                if bundle::Management::new("m", a, prefix, None).is_none() {
                    return Err(src.err(
                        &value_loc,
                        format!(
                            "{}: not a host address of a /{prefix} network (it is the \
                             network's own or broadcast address, or 0.x, loopback, multicast)",
                            show(a)
                        ),
                    ));
                }
                address = Some((a, prefix, value_loc));
            }
            "syslog" => {
                let text = get_str(src, value, &value_loc)?;
                let parsed = text.split_once(':').and_then(|(a, p)| {
                    let port: u16 = p.parse().ok().filter(|_| !p.starts_with('+'))?;
                    Some((ipv4(a)?, port))
                });
                match parsed {
                    Some((a, port)) if port != 0 => syslog = Some((a, port, value_loc)),
                    _ => {
                        return Err(src.err(
                            &value_loc,
                            format!(
                                "{text:?} is not a collector's IPv4 address and UDP port: \
                                 write e.g. \"10.0.9.2:514\""
                            ),
                        ))
                    }
                }
            }
            other => return Err(src.err(&key_loc, unknown_key(other, MANAGEMENT_KEYS))),
        }
    }
    let missing = |key: &str, what: &str| {
        src.err(
            &Loc {
                pos: loc.pos,
                key: format!("management.{key}"),
            },
            format!("missing key `{key}` ({what})"),
        )
    };
    let network = network.ok_or_else(|| {
        missing(
            "network",
            "the [[network]] the hypervisor's station joins, e.g. network = \"mgmt\"",
        )
    })?;
    let address = address.ok_or_else(|| {
        missing(
            "address",
            "the hypervisor's IPv4 address and prefix, e.g. address = \"10.0.9.1/24\"",
        )
    })?;
    Ok(RawManagement {
        network,
        address,
        syslog,
    })
}

/// Cross-checks `[management]` against the declared networks and the VMs' NICs
/// (filled in already): the network is declared, the collector is another host
/// of it, and the station's MAC is no NIC's on it.
pub(super) fn check(
    src: &Source,
    raw: &RawManagement,
    networks: &[&str],
    vms: &[VmDef],
) -> Result<ManagementDef, ConfigError> {
    let (name, name_loc) = &raw.network;
    if !networks.contains(&name.as_str()) {
        let hint = networks
            .iter()
            .min_by_key(|k| levenshtein(name, k))
            .filter(|k| levenshtein(name, k) <= (k.len() / 3).max(1))
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        return Err(src.err(
            name_loc,
            format!(
                "no network {name:?}{hint}: the management network must be a declared \
                 [[network]] that a VM's NIC is on"
            ),
        ));
    }
    let (address, prefix, _) = raw.address;
    let syslog = raw.syslog.as_ref().map(|(a, p, _)| (*a, *p));
    if let Some((collector, port, loc)) = &raw.syslog {
        if bundle::Management::new(name, address, prefix, Some((*collector, *port))).is_none() {
            return Err(src.err(
                loc,
                format!(
                    "{}: the collector must be another host of the management network {}/{prefix} \
                     (the hypervisor routes nowhere)",
                    show(*collector),
                    show(address)
                ),
            ));
        }
    }
    let mac = mgmtnet::station_mac(name);
    if let Some(vm) = vms
        .iter()
        .find(|vm| vm.nics.iter().any(|n| &n.network == name && n.mac == mac))
    {
        return Err(src.err(
            name_loc,
            format!(
                "VM {:?} has the hypervisor's own MAC {} on network {name:?}: give its NIC \
                 another `mac`",
                vm.name,
                super::network::show_mac(&mac)
            ),
        ));
    }
    Ok(ManagementDef {
        network: name.clone(),
        address,
        prefix,
        syslog,
    })
}

#[cfg(test)]
mod tests {
    use super::ipv4;
    use crate::config::load_config;
    use crate::config::scratch::Scratch;
    use crate::vms::ManagementDef;

    const VMS: &str = "[[network]]\nname = \"mgmt\"\n\n[[vm]]\nname = \"a\"\nmemory = 4\n\
                       kernel = \"boot.bin\"\nnics = [ { network = \"mgmt\" } ]\n";

    fn load(s: &Scratch, management: &str) -> Result<Option<ManagementDef>, String> {
        let toml = format!("{management}\n{VMS}");
        load_config(&s.file("vms.toml", toml.as_bytes()))
            .map(|c| c.management)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn addresses() {
        assert_eq!(ipv4("10.0.9.1"), Some([10, 0, 9, 1]));
        assert_eq!(ipv4("255.255.255.255"), Some([255; 4]));
        for bad in [
            "",
            "10.0.9",
            "10.0.9.1.2",
            "10.0.9.256",
            "10.0.09.1",
            "10.0.9.-1",
            "a.b.c.d",
            "10..9.1",
        ] {
            assert_eq!(ipv4(bad), None, "{bad}");
        }
    }

    #[test]
    fn management_table() {
        let s = Scratch::with_boot_sector("management", "ok");
        assert_eq!(load(&s, "").unwrap(), None);
        let m = load(
            &s,
            "[management]\nnetwork = \"mgmt\"\naddress = \"10.0.9.1/24\"\nsyslog = \"10.0.9.2:514\"\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            m,
            ManagementDef {
                network: "mgmt".into(),
                address: [10, 0, 9, 1],
                prefix: 24,
                syslog: Some(([10, 0, 9, 2], 514)),
            }
        );
        // It reaches the bundle.
        let c = load_config(&s.0.join("vms.toml")).unwrap();
        let blob = crate::vms::bundle_bytes_with(&c.vms, &c.machine()).unwrap();
        let got = bundle::read_settings(&blob).unwrap().management.unwrap();
        assert_eq!(
            (got.network(), got.address, got.prefix),
            ("mgmt", [10, 0, 9, 1], 24)
        );
        assert_eq!(got.syslog, Some(([10, 0, 9, 2], 514)));
    }

    #[test]
    fn management_errors_name_the_place() {
        let s = Scratch::with_boot_sector("management", "errors");
        let cases = [
            (
                "[management]\nnetwork = \"mgmnt\"\naddress = \"10.0.9.1/24\"\n",
                "vms.toml:2:11: management.network: no network \"mgmnt\" (did you mean \"mgmt\"?)",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\naddress = \"10.0.9.1\"\n",
                "vms.toml:3:11: management.address: \"10.0.9.1\" is not an IPv4 address with its prefix length",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\naddress = \"10.0.9.0/24\"\n",
                "vms.toml:3:11: management.address: 10.0.9.0: not a host address of a /24 network",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\naddress = \"10.0.9.1/31\"\n",
                "vms.toml:3:11: management.address: /31: the prefix length must be 1 to 30",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\naddress = \"10.0.9.1/24\"\nsyslog = \"10.0.8.2:514\"\n",
                "vms.toml:4:10: management.syslog: 10.0.8.2: the collector must be another host of the management network 10.0.9.1/24",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\naddress = \"10.0.9.1/24\"\nsyslog = \"10.0.9.2\"\n",
                "vms.toml:4:10: management.syslog: \"10.0.9.2\" is not a collector's IPv4 address and UDP port",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\naddress = \"10.0.9.1/24\"\nsyslog = \"10.0.9.2:0\"\n",
                "vms.toml:4:10: management.syslog: \"10.0.9.2:0\" is not a collector's",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\nadress = \"10.0.9.1/24\"\n",
                "vms.toml:3:1: management.adress: unknown key `adress` (did you mean `address`?)",
            ),
            (
                "[management]\nnetwork = \"mgmt\"\n",
                "vms.toml:1:2: management.address: missing key `address`",
            ),
            (
                "management = 3\n",
                "vms.toml:1:1: management: expected a [management] table, found an integer",
            ),
        ];
        for (toml, expected) in cases {
            let e = load(&s, toml).expect_err(toml);
            assert!(e.contains(expected), "{toml}\n{e}\nexpected: {expected}");
        }
    }
}
