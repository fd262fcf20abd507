//! The configuration's networks: top-level `[[network]]` tables (a name, and an
//! optional rate limit every port on it gets) and each VM's `nics = [ { network =
//! "lan", mac = "52:54:00:12:34:56" } ]`, cross-checked as the kernel's switch
//! would need them: every NIC on a declared network, every declared network used by
//! a NIC, MACs well formed, unicast and unique on their network, at most
//! `bundle::NICS_MAX` NICs per VM. Errors point at the key, as everywhere in the
//! configuration.

use std::net::Ipv4Addr;
use std::ops::Range;

use toml_edit::{Item, TableLike, Value};

use super::{get_str, levenshtein, table_list, type_error, unknown_key, ConfigError, Loc, Source};
use crate::vms::{NicDef, VmDef};

const NETWORK_KEYS: &[&str] = &["name", "rate_mbit", "burst_kib"];
const NIC_KEYS: &[&str] = &["network", "mac", "ip"];
/// The burst a rate limit gets when the network names none: 64 KiB, some 40
/// full-size frames (a short TCP window's worth).
pub const DEFAULT_BURST_KIB: u32 = 64;

/// A declared network, with where its name was written.
pub(super) struct RawNetwork {
    pub name: String,
    pub name_loc: Loc,
    pub rate_mbit: u32,
    pub burst_kib: u32,
}

/// A VM's NIC as written.
#[derive(Clone)]
pub(super) struct RawNic {
    pub network: (String, Loc),
    pub mac: Option<([u8; 6], Loc)>,
    pub ip: Option<((Ipv4Addr, u8), Loc)>,
}

/// Parses `[[network]]` tables.
pub(super) fn parse_networks(
    src: &Source,
    item: &Item,
    loc: &Loc,
) -> Result<Vec<RawNetwork>, ConfigError> {
    let mut out: Vec<RawNetwork> = Vec::new();
    for (i, (table, span)) in table_list(src, item, loc, "[[network]] tables")?
        .into_iter()
        .enumerate()
    {
        let n = parse_network(src, table, span, i)?;
        if let Some(first) = out.iter().find(|o| o.name == n.name) {
            let line = first
                .name_loc
                .pos
                .map(|(l, _)| format!(" (first on line {l})"))
                .unwrap_or_default();
            return Err(src.err(
                &n.name_loc,
                format!("network {:?} is declared twice{line}", n.name),
            ));
        }
        out.push(n);
    }
    Ok(out)
}

fn parse_network(
    src: &Source,
    table: &dyn TableLike,
    span: Option<Range<usize>>,
    index: usize,
) -> Result<RawNetwork, ConfigError> {
    let prefix = format!("network[{index}]");
    let mut name: Option<(String, Loc)> = None;
    let mut rate: Option<(u32, Loc)> = None;
    let mut burst: Option<(u32, Loc)> = None;
    for (key, value) in table.iter() {
        let (key_loc, value_loc) = src.entry_locs(
            table.key(key).and_then(|k| k.span()),
            value.span(),
            &format!("{prefix}.{key}"),
        );
        let int = |lo: u32, hi: u32, unit: &str| -> Result<u32, ConfigError> {
            let n = value
                .as_integer()
                .ok_or_else(|| src.err(&value_loc, type_error("an integer", value)))?;
            u32::try_from(n)
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| {
                    src.err(
                        &value_loc,
                        format!("{n} {unit} is out of range: {lo} to {hi}"),
                    )
                })
        };
        match key {
            "name" => name = Some((get_str(src, value, &value_loc)?.to_string(), value_loc)),
            "rate_mbit" => rate = Some((int(1, bundle::RATE_MBIT_MAX, "Mbit/s")?, value_loc)),
            "burst_kib" => {
                burst = Some((
                    int(bundle::BURST_KIB_MIN, bundle::BURST_KIB_MAX, "KiB")?,
                    value_loc,
                ))
            }
            other => return Err(src.err(&key_loc, unknown_key(other, NETWORK_KEYS))),
        }
    }
    let (name, name_loc) = name.ok_or_else(|| {
        src.err(
            &src.loc(span, &format!("{prefix}.name")),
            "missing key `name` (what VMs' NICs name in `network = \"...\"`)",
        )
    })?;
    if !bundle::network_name_ok(&name) {
        return Err(src.err(
            &name_loc,
            format!(
                "{name:?}: a network name is 1 to {} characters of A-Z, a-z, 0-9, '_', '.' \
                 and '-'",
                bundle::NETWORK_NAME_MAX
            ),
        ));
    }
    if let (Some((_, at)), None) = (&burst, &rate) {
        return Err(src.err(
            at,
            "a burst belongs to a rate limit: add `rate_mbit` (or leave out `burst_kib`)",
        ));
    }
    Ok(RawNetwork {
        name,
        name_loc,
        rate_mbit: rate.as_ref().map_or(0, |(r, _)| *r),
        burst_kib: match (rate, burst) {
            (Some(_), Some((b, _))) => b,
            (Some(_), None) => DEFAULT_BURST_KIB,
            _ => 0,
        },
    })
}

/// A MAC written as six two-digit hex bytes separated by `:` (or `-`).
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let sep = if text.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = text.split(sep).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// A NIC's `ip`: an IPv4 address with an optional prefix length (`10.0.2.15/24`;
/// without one, /24), a host address (not unspecified, loopback, multicast,
/// broadcast, nor its subnet's network or broadcast address).
fn parse_ip(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, p),
        None => (text, "24"),
    };
    let ip: Ipv4Addr = addr.parse().map_err(|_| {
        format!("{text:?} is not an IPv4 address: write it as \"10.0.2.15/24\" (a prefix is optional, /24 if none)")
    })?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("{text:?}: the prefix length must be 1 to 32"))?;
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        return Err(format!("{ip} is not a host address a NIC can have"));
    }
    if prefix <= 30 {
        let host_bits = u32::from(ip) & (u32::MAX >> prefix);
        if host_bits == 0 || host_bits == u32::MAX >> prefix {
            return Err(format!(
                "{ip} is the network or broadcast address of {ip}/{prefix}: not a host's"
            ));
        }
    }
    Ok((ip, prefix))
}

/// A MAC as `52:54:00:12:34:56`.
pub fn show_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `nics = [ { network = "lan", mac = "..." }, ... ]` or `[[vm.nics]]` tables.
pub(super) fn parse_nics(src: &Source, item: &Item, loc: &Loc) -> Result<Vec<RawNic>, ConfigError> {
    const WHAT: &str = "an array of NICs ({ network = \"...\", mac = \"...\" })";
    let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = match item {
        Item::ArrayOfTables(aot) => aot
            .iter()
            .map(|t| (t as &dyn TableLike, t.span()))
            .collect(),
        Item::Value(Value::Array(array)) => array
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::InlineTable(t) => Ok((t as &dyn TableLike, v.span())),
                other => Err(src.err(
                    &src.loc(v.span(), &format!("nics[{i}]")),
                    format!(
                        "expected a NIC ({{ network = \"...\" }}), found {}",
                        super::article(other.type_name())
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(src.err(loc, type_error(WHAT, other))),
    };
    if tables.len() > bundle::NICS_MAX {
        return Err(src.err(
            loc,
            format!(
                "{} NICs: a VM has at most {} (PCI devices 00:04.0 to 00:07.0)",
                tables.len(),
                bundle::NICS_MAX
            ),
        ));
    }
    let mut nics = Vec::new();
    for (i, (table, span)) in tables.into_iter().enumerate() {
        let prefix = format!("nics[{i}]");
        let mut network = None;
        let mut mac = None;
        let mut ip = None;
        for (key, value) in table.iter() {
            let (key_loc, value_loc) = src.entry_locs(
                table.key(key).and_then(|k| k.span()),
                value.span(),
                &format!("{prefix}.{key}"),
            );
            match key {
                "network" => {
                    network = Some((get_str(src, value, &value_loc)?.to_string(), value_loc))
                }
                "mac" => {
                    let text = get_str(src, value, &value_loc)?;
                    let m = parse_mac(text).ok_or_else(|| {
                        src.err(
                            &value_loc,
                            format!(
                                "{text:?} is not a MAC address: write six two-digit hex \
                                 bytes separated by ':', e.g. \"52:54:00:12:34:56\""
                            ),
                        )
                    })?;
                    if m[0] & 1 != 0 {
                        return Err(src.err(
                            &value_loc,
                            format!(
                                "{} is a multicast address (bit 0 of the first byte is set): \
                                 a NIC needs a unicast one, e.g. 52:54:00:12:34:56",
                                show_mac(&m)
                            ),
                        ));
                    }
                    if m == [0; 6] {
                        return Err(src.err(&value_loc, "00:00:00:00:00:00 is no NIC's address"));
                    }
                    mac = Some((m, value_loc));
                }
                "ip" => {
                    let text = get_str(src, value, &value_loc)?;
                    let a = parse_ip(text).map_err(|m| src.err(&value_loc, m))?;
                    ip = Some((a, value_loc));
                }
                other => return Err(src.err(&key_loc, unknown_key(other, NIC_KEYS))),
            }
        }
        let network = network.ok_or_else(|| {
            src.err(
                &src.loc(span, &format!("{prefix}.network")),
                "missing key `network` (the [[network]] this NIC is attached to)",
            )
        })?;
        nics.push(RawNic { network, mac, ip });
    }
    Ok(nics)
}

/// Why `name` names no declared network: with the closest name, and the list.
pub(super) fn unknown_network(name: &str, networks: &[RawNetwork]) -> String {
    let known: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
    let hint = known
        .iter()
        .min_by_key(|k| levenshtein(name, k))
        .filter(|k| {
            let d = levenshtein(name, k);
            d <= (k.len() / 3).max(1) || (d <= 2 && name.len() > 2)
        })
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default();
    let list = if known.is_empty() {
        "there is no [[network]] table: declare it with [[network]] name = ...".to_string()
    } else {
        format!("the declared networks are {}", known.join(", "))
    };
    format!("no network {name:?}{hint}; {list}")
}

/// Cross-checks the VMs' NICs against the declared networks and fills in
/// `vms[i].nics`: each NIC's network is declared (with the closest name when not),
/// each declared network has a NIC, and no MAC (given or derived from the VM's
/// name) is on one network twice.
pub(super) fn check_nics(
    src: &Source,
    networks: &[RawNetwork],
    vms: &mut [VmDef],
    nics: &[Vec<RawNic>],
) -> Result<(), ConfigError> {
    // Every MAC placed so far: network, MAC, VM, where (the NIC's mac or network).
    let mut placed: Vec<(&str, [u8; 6], &str, Loc)> = Vec::new();
    // Every address given so far: network, address, VM, where.
    let mut addresses: Vec<(&str, Ipv4Addr, &str, Loc)> = Vec::new();
    let mut nic_defs: Vec<Vec<NicDef>> = Vec::new();
    // VM index, `hv.ip=...` for its command line.
    let mut linux_ip: Vec<(usize, String)> = Vec::new();
    for (i, list) in nics.iter().enumerate() {
        let mut out = Vec::new();
        for (j, nic) in list.iter().enumerate() {
            let (name, loc) = &nic.network;
            let Some(net) = networks.iter().find(|n| &n.name == name) else {
                return Err(src.err(loc, unknown_network(name, networks)));
            };
            // Checked when parsed: at most NICS_MAX, so the index fits.
            let (mac, mac_loc) = match &nic.mac {
                Some((m, l)) => (*m, l.clone()),
                None => (
                    virtio::net::mac_from_name(&vms[i].name, j as u16),
                    loc.clone(),
                ),
            };
            if let Some((_, _, vm, at)) = placed
                .iter()
                .find(|(n, m, _, _)| *n == name.as_str() && *m == mac)
            {
                let line = at
                    .pos
                    .map(|(l, _)| format!(" on line {l}"))
                    .unwrap_or_default();
                let derived = if nic.mac.is_none() {
                    " (derived from the VM's name: give one with `mac`)"
                } else {
                    ""
                };
                return Err(src.err(
                    &mac_loc,
                    format!(
                        "MAC {}{derived} is already used on network {name:?} by VM {vm:?}{line}: \
                         each NIC on a network needs its own",
                        show_mac(&mac)
                    ),
                ));
            }
            placed.push((name.as_str(), mac, vms[i].name.as_str(), mac_loc));
            if let Some(((ip, _), ip_loc)) = &nic.ip {
                if let Some((_, _, vm, at)) = addresses
                    .iter()
                    .find(|(n, a, _, _)| *n == name.as_str() && a == ip)
                {
                    let line = at
                        .pos
                        .map(|(l, _)| format!(" on line {l}"))
                        .unwrap_or_default();
                    return Err(src.err(
                        ip_loc,
                        format!(
                            "address {ip} is already used on network {name:?} by VM {vm:?}{line}"
                        ),
                    ));
                }
                addresses.push((name.as_str(), *ip, vms[i].name.as_str(), ip_loc.clone()));
            }
            out.push(NicDef {
                network: name.clone(),
                mac,
                rate_mbit: net.rate_mbit,
                burst_kib: net.burst_kib,
                ip: nic.ip.as_ref().map(|(a, _)| *a),
            });
        }
        // The Linux guest's /init configures eth0 from `hv.ip=`: the first NIC's
        // address goes there unless the command line sets one itself.
        if let Some(NicDef {
            ip: Some((ip, prefix)),
            ..
        }) = out.first()
        {
            if vms[i].format == bundle::ImageFormat::Linux && !vms[i].cmdline.contains("hv.ip=") {
                linux_ip.push((i, format!("hv.ip={ip}/{prefix}")));
            }
        }
        nic_defs.push(out);
    }
    for (vm, out) in vms.iter_mut().zip(nic_defs) {
        vm.nics = out;
    }
    for (i, arg) in linux_ip {
        let sep = if vms[i].cmdline.is_empty() { "" } else { " " };
        vms[i].cmdline.push_str(&format!("{sep}{arg}"));
    }
    if let Some(unused) = networks
        .iter()
        .find(|n| !nics.iter().flatten().any(|nic| nic.network.0 == n.name))
    {
        return Err(src.err(
            &unused.name_loc,
            format!(
                "network {:?} has no NIC: attach a VM with nics = [{{ network = {:?} }}] or \
                 remove it",
                unused.name, unused.name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:12:34:5a"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x5a])
        );
        assert_eq!(
            parse_mac("52-54-00-12-34-5A"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x5a])
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "52:54:00:12:34:5g",
            "525400123456",
            "52:54-00:12:34:56",
            "+2:54:00:12:34:56",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            show_mac(&[0x52, 0x54, 0, 0x12, 0x34, 0x5a]),
            "52:54:00:12:34:5a"
        );
    }
}
