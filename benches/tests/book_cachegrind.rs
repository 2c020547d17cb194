//! scripts/book-cachegrind.sh, run tiny against the debug `book-ops`: it
//! must print a complete table of positive per-operation counts, and say
//! plainly when valgrind is missing. Nothing here asserts a speed.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::{TempDir, output_text as text};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/book-cachegrind.sh")
}

const MIXES: [&str; 3] = [
    "heavy matching",
    "exchange-core-like (",
    "exchange-core-like over 64 books",
];
const BOOKS: [&str; 3] = ["turbo-dex, one at a time", "turbo-dex, batched", "naive"];

#[test]
fn tiny_run_prints_a_complete_table() {
    if let Some(why) = testkit::missing(false, &["valgrind"]) {
        testkit::skip!("{why}");
        return;
    }
    let tmp = TempDir::new("book-cachegrind");
    let out = Command::new(script())
        .args(["--tiny", "--bin", env!("CARGO_BIN_EXE_book-ops"), "--out"])
        .arg(tmp.path())
        .output()
        .expect("book-cachegrind.sh runs");
    let log = text(&out);
    assert!(
        out.status.success(),
        "book-cachegrind.sh --tiny failed:\n{log}"
    );
    let table = std::fs::read_to_string(tmp.path().join("table.md")).expect("table.md written");
    assert!(log.contains(&table), "the table is printed:\n{log}");
    assert!(
        table.contains("Command: `scripts/book-cachegrind.sh"),
        "{table}"
    );
    assert!(table.contains("Machine: "), "{table}");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| mix "))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), MIXES.len() * BOOKS.len(), "{table}");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 5, "{table}");
        let (mix, book) = (i / BOOKS.len(), i % BOOKS.len());
        if book == 0 {
            assert!(row[0].starts_with(MIXES[mix]), "row {i}: {row:?}");
        } else {
            assert_eq!(row[0], "", "row {i}: {row:?}");
        }
        assert_eq!(row[1], BOOKS[book], "row {i}: {row:?}");
        let numbers: Vec<f64> = row[2..]
            .iter()
            .map(|c| c.parse().unwrap_or_else(|_| panic!("row {i}: {c:?}")))
            .collect();
        // Every operation executes instructions and touches memory; the
        // last level may hold a tiny book entirely.
        assert!(numbers[0] >= 100.0, "instructions, row {i}: {row:?}");
        assert!(numbers[1] > 0.0, "D1 misses, row {i}: {row:?}");
        assert!(numbers[2] >= 0.0, "last-level misses, row {i}: {row:?}");
    }
}

#[test]
fn says_so_when_valgrind_is_missing() {
    // A PATH with the one tool the script needs before it looks for
    // valgrind.
    let tmp = TempDir::new("book-cachegrind-path");
    let which = |tool: &str| {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .expect("sh runs");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    std::os::unix::fs::symlink(which("dirname"), tmp.path().join("dirname")).expect("symlink");
    let out = Command::new(which("bash"))
        .arg(script())
        .env("PATH", tmp.path())
        .output()
        .expect("bash runs");
    let log = text(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("valgrind is not installed"), "{log}");
    assert!(log.contains("apt-get install valgrind"), "{log}");
}
