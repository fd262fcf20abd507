//! The hypervisor's `/metrics` as the integration tests read it: the Prometheus
//! text exposition format 0.0.4 parsed and checked line by line (`# HELP` and
//! `# TYPE` before each family's samples, families contiguous, label values
//! quoted with valid escapes, values numbers), a failed check a panic naming the
//! line. Shared by the network test (a guest's scrape, printed on its console)
//! and the uplink test (the host's scrape through a forwarded port).

use std::collections::BTreeMap;

/// Samples by name and labels (in the order the exposition gives them).
pub type Scrape = BTreeMap<(String, Vec<(String, String)>), f64>;

/// Parses `text`, an exposition, checking it as it goes (see the module header).
pub fn parse(text: &str) -> Scrape {
    let mut out = Scrape::new();
    let mut seen: Vec<String> = Vec::new();
    let mut typed = String::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(!seen.contains(&name), "family {name} twice");
            seen.push(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert_eq!(seen.last().map(String::as_str), Some(name), "{line}");
            assert!(kind == "counter" || kind == "gauge", "{line}");
            typed = name.to_string();
        } else {
            let end = line.find(['{', ' ']).expect(line);
            let name = &line[..end];
            assert_eq!(name, typed, "sample outside its family: {line}");
            let mut labels = Vec::new();
            let mut rest = &line[end..];
            if let Some(r) = rest.strip_prefix('{') {
                let close = r.rfind('}').expect(line);
                let mut chars = r[..close].chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect(line) {
                            '\\' => match chars.next().expect(line) {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => panic!("bad escape \\{c} in {line}"),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.push((key.trim_start_matches(',').to_string(), value));
                }
                rest = &r[close + 1..];
            }
            let value: f64 = rest.trim().parse().expect(line);
            out.insert((name.to_string(), labels), value);
        }
    }
    out
}

/// The exposition a guest printed on its console: the text of the lines of
/// `serial` after `prefix` (`lan-b | hv-metrics: `), parsed.
pub fn parse_printed(serial: &str, prefix: &str) -> Scrape {
    let text: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.split_once(prefix).map(|(_, r)| r))
        .collect();
    parse(&text.join("\n"))
}

/// The sample `name` with exactly `labels`; a panic if there is none.
pub fn sample(m: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let key = (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    *m.get(&key)
        .unwrap_or_else(|| panic!("no {name} {labels:?} in the scrape"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP hv_uptime_seconds Time since boot.\n\
                        # TYPE hv_uptime_seconds gauge\n\
                        hv_uptime_seconds 12.5\n\
                        # HELP hv_vm_cpu_seconds_total CPU time.\n\
                        # TYPE hv_vm_cpu_seconds_total counter\n\
                        hv_vm_cpu_seconds_total{vm=\"a \\\"q\\\" \\\\ b\"} 0.25\n\
                        hv_vm_cpu_seconds_total{vm=\"web\",x=\"1\\n2\"} 3\n";

    #[test]
    fn an_exposition_parses_with_its_labels_unescaped() {
        let m = parse(GOOD);
        assert_eq!(m.len(), 3);
        assert_eq!(sample(&m, "hv_uptime_seconds", &[]), 12.5);
        assert_eq!(
            sample(&m, "hv_vm_cpu_seconds_total", &[("vm", "a \"q\" \\ b")]),
            0.25
        );
        assert_eq!(
            sample(
                &m,
                "hv_vm_cpu_seconds_total",
                &[("vm", "web"), ("x", "1\n2")]
            ),
            3.0
        );
        let printed: String = GOOD
            .lines()
            .map(|l| format!("b | hv-metrics: {l}\nnoise\n"))
            .collect();
        assert_eq!(parse_printed(&printed, "b | hv-metrics: "), m);
    }

    #[test]
    fn malformed_expositions_are_refused() {
        for bad in [
            // A sample before its family's TYPE.
            "hv_uptime_seconds 1\n",
            // TYPE of another family than the HELP before it.
            "# HELP a x\n# TYPE b gauge\n",
            // An unknown type.
            "# HELP a x\n# TYPE a summary\n",
            // A family twice.
            "# HELP a x\n# TYPE a gauge\na 1\n# HELP a x\n",
            // A bad escape, an unquoted value, a value that is no number.
            "# HELP a x\n# TYPE a gauge\na{l=\"\\t\"} 1\n",
            "# HELP a x\n# TYPE a gauge\na{l=v} 1\n",
            "# HELP a x\n# TYPE a gauge\na one\n",
        ] {
            let r = std::panic::catch_unwind(|| parse(bad));
            assert!(r.is_err(), "accepted: {bad:?}");
        }
    }
}
