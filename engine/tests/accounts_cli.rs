//! `turbo-dex accounts add` and `accounts list`, and `--accounts` with a
//! bad file, through the binary.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use testkit::TempDir;

fn turbo_dex(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_turbo-dex"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn accounts_add_hashes_the_password_and_list_never_shows_the_hash() {
    let dir = TempDir::new("accounts-cli");
    let file = dir.path().join("accounts.txt");
    let file = file.to_str().unwrap();
    let out = turbo_dex(
        &["accounts", "add", "alice", "--file", file],
        "alpha-secret\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("added account 1 (alice)"),
        "{}",
        text(&out.stdout)
    );
    let out = turbo_dex(
        &[
            "accounts",
            "add",
            "bob",
            "--id",
            "77",
            "--max-sessions",
            "3",
            "--allow",
            "10.0.0.0/8",
            "--file",
            file,
        ],
        "bravo\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let content = std::fs::read_to_string(file).unwrap();
    assert!(
        !content.contains("alpha-secret") && !content.contains("bravo"),
        "{content}"
    );
    let accounts = engine::accounts::Accounts::parse(&content).unwrap();
    let alice = accounts.by_name("alice").unwrap();
    assert!(alice.phc.starts_with("$argon2id$"), "{}", alice.phc);
    assert!(engine::accounts::verify_password(
        &alice.phc,
        b"alpha-secret"
    ));
    let bob = accounts.get(77).unwrap();
    assert_eq!(bob.max_sessions, Some(3));
    assert!(engine::accounts::verify_password(&bob.phc, b"bravo"));
    // Only the owner may read it.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(file).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    // A taken name, a taken id, a password too long: refused, file unchanged.
    for (args, password, want) in [
        (vec!["alice"], "x", "exists already"),
        (vec!["carol", "--id", "77"], "x", "taken"),
        (vec!["carol"], &"y".repeat(33) as &str, "1 to 32 bytes"),
        (vec!["carol"], "", "1 to 32 bytes"),
    ] {
        let mut all = vec!["accounts", "add"];
        all.extend(args);
        all.extend(["--file", file]);
        let out = turbo_dex(&all, &format!("{password}\n"));
        assert_eq!(out.status.code(), Some(2), "{all:?}");
        assert!(
            text(&out.stderr).contains(want),
            "{all:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(std::fs::read_to_string(file).unwrap(), content);

    let out = turbo_dex(&["accounts", "list", "--file", file], "");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains("alice") && listing.contains("bob") && listing.contains("10.0.0.0/8"),
        "{listing}"
    );
    assert!(
        listing.contains("$argon2id$v=19$m=19456,t=2,p=1$..."),
        "{listing}"
    );
    for a in accounts.iter() {
        let hash = a.phc.rsplit('$').next().unwrap();
        let salt = a.phc.rsplit('$').nth(1).unwrap();
        assert!(
            !listing.contains(hash) && !listing.contains(salt),
            "{listing}"
        );
    }
}

#[test]
fn a_bad_accounts_file_names_its_line() {
    let dir = TempDir::new("accounts-bad");
    let file = dir.path().join("accounts.txt");
    std::fs::write(&file, "# ok\n1 alice not-a-hash\n").unwrap();
    let file = file.to_str().unwrap();
    let out = turbo_dex(
        &[
            "--accounts",
            file,
            "--listen",
            "127.0.0.1:0",
            "--journal",
            "none",
            "--admin",
            "none",
            "--quiet",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(file) && err.contains("line 2") && err.contains("PHC"),
        "{err}"
    );
    let out = turbo_dex(
        &["accounts", "list", "--file", "/nonexistent/accounts.txt"],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read the accounts file"),
        "{}",
        text(&out.stderr)
    );
}
