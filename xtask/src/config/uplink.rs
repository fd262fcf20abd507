//! The configuration's `[uplink]` table: `network = "lan"` names the declared
//! network that the machine's own NIC joins as the virtual switch's uplink (under
//! `cargo xtask run`, an e1000 on QEMU's user network; see `uplink.rs`).

use toml_edit::Item;

use super::network::{unknown_network, RawNetwork};
use super::{get_str, type_error, unknown_key, ConfigError, Loc, Source};
use crate::vms::UplinkDef;

const UPLINK_KEYS: &[&str] = &["network"];

/// Parses `[uplink]` against the declared `networks`.
pub(super) fn parse(
    src: &Source,
    item: &Item,
    loc: &Loc,
    networks: &[RawNetwork],
) -> Result<UplinkDef, ConfigError> {
    let Some(table) = item.as_table_like() else {
        return Err(src.err(loc, type_error("an [uplink] table", item)));
    };
    let mut network = None;
    for (key, value) in table.iter() {
        let (key_loc, value_loc) = src.entry_locs(
            table.key(key).and_then(|k| k.span()),
            value.span().filter(|_| value.is_value()),
            &format!("uplink.{key}"),
        );
        match key {
            "network" => {
                let name = get_str(src, value, &value_loc)?;
                if !networks.iter().any(|n| n.name == name) {
                    return Err(src.err(&value_loc, unknown_network(name, networks)));
                }
                network = Some(name.to_string());
            }
            other => return Err(src.err(&key_loc, unknown_key(other, UPLINK_KEYS))),
        }
    }
    let network = network.ok_or_else(|| {
        src.err(
            &Loc {
                pos: loc.pos,
                key: "uplink.network".into(),
            },
            "missing key `network` (the [[network]] the machine's NIC joins as its uplink)",
        )
    })?;
    Ok(UplinkDef { network })
}
