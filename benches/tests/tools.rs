//! The measuring tools `hiccup` and `tcp-rtt`: they run, report what they
//! say they report, and refuse bad arguments clearly. No speed is asserted.

use std::process::Command;

fn json_field(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = &json[at + key.len() + 4..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

#[test]
fn hiccup_reports_every_cpu_and_refuses_a_missing_one() {
    let dir = testkit::TempDir::new("hiccup");
    let json_path = dir.join("h.json");
    let out = Command::new(env!("CARGO_BIN_EXE_hiccup"))
        .args(["--cpus", "0", "--seconds", "0.05", "--json"])
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("cpu 0: gaps 10-100us "), "{text}");
    let json = std::fs::read_to_string(&json_path).unwrap();
    assert_eq!(json_field(&json, "cpu"), 0.0);
    let lost = json_field(&json, "lost_percent");
    assert!((0.0..=100.0).contains(&lost), "{json}");
    assert_eq!(json_field(&json, "seconds"), 0.05);

    let out = Command::new(env!("CARGO_BIN_EXE_hiccup"))
        .args(["--cpus", "4000", "--seconds", "0.05"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--cpus 4000") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn tcp_rtt_measures_blocking_and_spinning_round_trips() {
    let dir = testkit::TempDir::new("rtt");
    for spin in [false, true] {
        let json_path = dir.join(format!("rtt-{spin}.json"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tcp-rtt"));
        // Spinning ends sharing a CPU wait for the scheduler's tick at
        // each turn: few trips.
        let count = if spin { "50" } else { "200" };
        cmd.args(["--count", count, "--json"]).arg(&json_path);
        if spin {
            cmd.arg("--spin");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let json = std::fs::read_to_string(&json_path).unwrap();
        assert!(json.contains(&format!("\"spin\": {spin}")), "{json}");
        let (p50, p99) = (json_field(&json, "p50"), json_field(&json, "p99"));
        assert!(p50 > 0.0 && p50 <= p99, "{json}");
    }
}
