//! Accounts and their credentials (`turbo-dex --accounts FILE`): the file
//! format, its parser, argon2id password hashes, and the checks a logon
//! needs. No I/O here: the caller reads the file, supplies the salt bytes
//! and the peer address; verifying takes tens of milliseconds, so the
//! server calls it on its auth thread, never on an engine core.
//!
//! The file, one account per line (README "Accounts, limits and security"):
//!
//! ```text
//! # id  name   password hash (argon2id PHC string)          options
//! 1001  alice  $argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA   max_sessions=4 allow=10.0.0.0/8,::1/128
//! ```
//!
//! - fields are separated by spaces or tabs; `#` starts a comment (to the
//!   end of the line); blank lines are skipped;
//! - `id`: a decimal u64 above 0, unique; `name`: 1 to 64 of `A-Z a-z 0-9 _ . -`, unique;
//! - the hash: an argon2 PHC string (`$argon2id$...`), as `turbo-dex accounts add` writes;
//! - options, `key=value`: `max_sessions=N` (this account's sessions at
//!   once, overriding `--max-sessions-per-account`), `allow=CIDR[,CIDR...]`
//!   (the source networks it may log on from; without it, any).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// The longest password: the Hello's `credentials` field (PROTOCOL.md §5).
pub const PASSWORD_BYTES_MAX: usize = 32;
/// The longest account name.
pub const NAME_BYTES_MAX: usize = 64;
/// Salt bytes of a new hash.
pub const SALT_BYTES: usize = 16;

/// One account of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: u64,
    pub name: String,
    /// The argon2 PHC string (checked to parse).
    pub phc: String,
    /// Sessions at once; `None`: the server's default.
    pub max_sessions: Option<u32>,
    /// Source networks it may log on from; empty: any.
    pub allow: Vec<Cidr>,
}

/// The accounts of a file, by id.
#[derive(Clone, Debug, Default)]
pub struct Accounts {
    by_id: HashMap<u64, Account>,
    /// Ids in file order (for `accounts list`).
    order: Vec<u64>,
}

/// A bad line of an accounts file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.msg)
    }
}

impl std::error::Error for ParseError {}

impl Accounts {
    /// Parses a whole accounts file.
    pub fn parse(text: &str) -> Result<Accounts, ParseError> {
        let mut accounts = Accounts::default();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut lines: HashMap<u64, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let Some(a) = parse_line(raw).map_err(|msg| ParseError { line, msg })? else {
                continue;
            };
            if let Some(first) = lines.insert(a.id, line) {
                return Err(ParseError {
                    line,
                    msg: format!("account id {} is already on line {first}", a.id),
                });
            }
            if let Some(first) = names.insert(a.name.clone(), line) {
                return Err(ParseError {
                    line,
                    msg: format!("account name {:?} is already on line {first}", a.name),
                });
            }
            accounts.order.push(a.id);
            accounts.by_id.insert(a.id, a);
        }
        Ok(accounts)
    }

    pub fn get(&self, id: u64) -> Option<&Account> {
        self.by_id.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Account> {
        self.by_id.values().find(|a| a.name == name)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Accounts in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.order.iter().filter_map(|id| self.by_id.get(id))
    }

    /// The id `accounts add` gives when none is asked for: one above the highest.
    pub fn next_id(&self) -> u64 {
        self.order.iter().max().map_or(1, |m| m.saturating_add(1))
    }
}

/// Parses one line: `None` for a blank or comment line.
pub fn parse_line(raw: &str) -> Result<Option<Account>, String> {
    let text = raw.split('#').next().unwrap_or("");
    let mut fields = text.split_whitespace();
    let Some(id) = fields.next() else {
        return Ok(None);
    };
    let id: u64 = id
        .parse()
        .ok()
        .filter(|&id| id > 0)
        .ok_or_else(|| format!("account id {id:?} is not a number from 1 to {}", u64::MAX))?;
    let name = fields
        .next()
        .ok_or("the account name is missing (id name hash [options])")?;
    check_name(name)?;
    let phc = fields
        .next()
        .ok_or("the password hash is missing (id name hash [options])")?;
    check_phc(phc)?;
    let mut account = Account {
        id,
        name: name.to_string(),
        phc: phc.to_string(),
        max_sessions: None,
        allow: Vec::new(),
    };
    for option in fields {
        let (key, value) = option
            .split_once('=')
            .ok_or_else(|| format!("option {option:?} is not key=value"))?;
        match key {
            "max_sessions" => {
                let n: u32 = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("max_sessions={value}: give a number above 0"))?;
                account.max_sessions = Some(n);
            }
            "allow" => {
                for cidr in value.split(',') {
                    account.allow.push(cidr.parse()?);
                }
            }
            _ => {
                return Err(format!(
                    "unknown option {key:?}; the options are max_sessions=N and allow=CIDR[,CIDR...]"
                ));
            }
        }
    }
    Ok(Some(account))
}

/// Checks an account name: 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "account name {name:?}: use 1 to {NAME_BYTES_MAX} letters, digits, '_', '.' or '-'"
        ))
    }
}

fn check_phc(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc).map_err(|e| {
        format!(
            "the password hash is not a PHC string ({e}); make one with `turbo-dex accounts add`"
        )
    })?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "the password hash uses {}; only argon2 (argon2id) hashes are accepted",
            hash.algorithm
        ));
    }
    Ok(())
}

/// Formats an account as a file line (what `accounts add` appends).
pub fn format_line(a: &Account) -> String {
    let mut line = format!("{} {} {}", a.id, a.name, a.phc);
    if let Some(n) = a.max_sessions {
        line.push_str(&format!(" max_sessions={n}"));
    }
    if !a.allow.is_empty() {
        let nets: Vec<String> = a.allow.iter().map(Cidr::to_string).collect();
        line.push_str(&format!(" allow={}", nets.join(",")));
    }
    line
}

/// The hash as `accounts list` shows it: algorithm and parameters, never
/// the salt or the hash itself.
pub fn redacted(phc: &str) -> String {
    match PasswordHash::new(phc) {
        Ok(h) => format!(
            "${}$v={}${}$...",
            h.algorithm,
            h.version.unwrap_or(0),
            h.params
        ),
        Err(_) => "(unreadable)".into(),
    }
}

/// The argon2id parameters new hashes get: argon2's defaults (19 MiB,
/// 2 passes, 1 lane: OWASP's recommendation for argon2id).
pub fn hasher() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::default())
}

/// Checks a password's length (it must fit the Hello's credentials field).
pub fn check_password(password: &[u8]) -> Result<(), String> {
    if password.is_empty() || password.len() > PASSWORD_BYTES_MAX {
        return Err(format!(
            "the password must be 1 to {PASSWORD_BYTES_MAX} bytes (it travels in the Hello's credentials field); it is {}",
            password.len()
        ));
    }
    if password.contains(&0) {
        return Err("the password must not contain NUL bytes (the Hello pads with them)".into());
    }
    Ok(())
}

/// Hashes `password` into an argon2id PHC string with `salt` (random
/// bytes from the caller) and `argon`'s parameters.
pub fn hash_password_with(
    argon: &Argon2<'_>,
    password: &[u8],
    salt: &[u8; SALT_BYTES],
) -> Result<String, String> {
    check_password(password)?;
    let salt = SaltString::encode_b64(salt).map_err(|e| format!("salt: {e}"))?;
    argon
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password failed: {e}"))
}

/// Hashes with the default parameters ([`hasher`]).
pub fn hash_password(password: &[u8], salt: &[u8; SALT_BYTES]) -> Result<String, String> {
    hash_password_with(&hasher(), password, salt)
}

/// True when `password` matches the PHC string (its own parameters).
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(_) => false,
    }
}

/// The password a Hello carries: its credentials up to the first NUL.
pub fn password_of(credentials: &[u8]) -> &[u8] {
    let end = credentials
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(credentials.len());
    &credentials[..end]
}

impl Account {
    /// True when the account may log on from `peer` (any address when it
    /// has no `allow` list; an unknown peer only then).
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        if self.allow.is_empty() {
            return true;
        }
        peer.is_some_and(|ip| self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// An IP network, `ADDR/PREFIX` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// True when `ip` is in the network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Compared in the network's own family (its prefix counts its bits).
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V4(net), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|ip| prefix_eq(&net.octets(), &ip.octets(), self.prefix)),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.to_ipv6_mapped().octets(), self.prefix)
            }
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let bits = usize::from(prefix);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[whole] & mask) == (b[whole] & mask)
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("allow: {s:?} is not a network (10.0.0.0/8, 192.168.1.7, ::1/128)");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: the tests check behaviour, not cost.
    fn cheap() -> Argon2<'static> {
        Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
    }

    fn phc(password: &str) -> String {
        hash_password_with(&cheap(), password.as_bytes(), &[7; SALT_BYTES]).unwrap()
    }

    #[test]
    fn a_file_parses_with_comments_options_and_blank_lines() {
        let text = format!(
            "# accounts\n\n1001 alice {} max_sessions=4 allow=10.0.0.0/8,::1\n  7\tbob {}  # trailing\n",
            phc("a-secret"),
            phc("b-secret")
        );
        let accounts = Accounts::parse(&text).unwrap();
        assert_eq!(accounts.len(), 2);
        let alice = accounts.get(1001).unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.max_sessions, Some(4));
        assert_eq!(alice.allow.len(), 2);
        assert_eq!(accounts.by_name("bob").unwrap().id, 7);
        assert_eq!(accounts.next_id(), 1002);
        let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        // A line written back parses to the same account.
        let again = parse_line(&format_line(alice)).unwrap().unwrap();
        assert_eq!(&again, alice);
    }

    #[test]
    fn bad_lines_name_their_line_and_what_is_wrong() {
        let good = phc("pw");
        let cases = [
            ("x alice HASH".to_string(), "account id"),
            ("0 alice HASH".to_string(), "account id"),
            ("1".to_string(), "name is missing"),
            ("1 al/ice HASH".to_string(), "account name"),
            ("1 alice".to_string(), "hash is missing"),
            ("1 alice plaintext".to_string(), "not a PHC string"),
            (
                "1 alice $scrypt$ln=15,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".to_string(),
                "only argon2",
            ),
            (format!("1 alice {good} max_sessions=0"), "max_sessions"),
            (format!("1 alice {good} allow=10.0.0.0/33"), "not a network"),
            (format!("1 alice {good} colour=red"), "unknown option"),
            (format!("1 alice {good} loose"), "key=value"),
        ];
        for (line, want) in cases {
            let text = format!("# header\n{}\n", line.replace("HASH", &good));
            let e = Accounts::parse(&text).unwrap_err();
            assert_eq!(e.line, 2, "{line}");
            assert!(e.to_string().contains(want), "{line}: {e}");
            assert!(e.to_string().starts_with("line 2: "), "{e}");
        }
        let dup_id = format!("1 a {good}\n1 b {good}\n");
        let e = Accounts::parse(&dup_id).unwrap_err();
        assert_eq!((e.line, e.msg.contains("already on line 1")), (2, true));
        let dup_name = format!("1 a {good}\n2 a {good}\n");
        assert_eq!(Accounts::parse(&dup_name).unwrap_err().line, 2);
    }

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let h = phc("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password(&h, b"correct horse"));
        assert!(!verify_password(&h, b"correct horsf"));
        assert!(!verify_password(&h, b""));
        assert!(!verify_password("garbage", b"correct horse"));
        // The same password with another salt gives another hash.
        let other = hash_password_with(&cheap(), b"correct horse", &[8; SALT_BYTES]).unwrap();
        assert_ne!(h, other);
        assert!(verify_password(&other, b"correct horse"));
    }

    #[test]
    fn password_rules_fit_the_hello() {
        assert!(check_password(b"").is_err());
        assert!(check_password(&[b'x'; 33]).is_err());
        assert!(check_password(b"a\0b").is_err());
        assert!(check_password(&[b'x'; 32]).is_ok());
        assert_eq!(password_of(b"abc\0\0\0"), b"abc");
        assert_eq!(password_of(&[b'y'; 32]), &[b'y'; 32][..]);
    }

    #[test]
    fn the_redacted_hash_shows_parameters_not_the_hash() {
        let h = phc("pw");
        let r = redacted(&h);
        assert!(r.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{r}");
        let hash_part = h.rsplit('$').next().unwrap();
        assert!(!r.contains(hash_part));
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.prefix, 32);
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        // A mapped network keeps its 128-bit prefix.
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains("10.9.9.9".parse().unwrap()));
        assert!(mapped.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!mapped.contains("11.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let a = Account {
            id: 1,
            name: "a".into(),
            phc: String::new(),
            max_sessions: None,
            allow: vec![net],
        };
        assert!(a.allows(Some("10.1.0.1".parse().unwrap())));
        assert!(!a.allows(Some("10.9.0.1".parse().unwrap())));
        assert!(!a.allows(None));
    }
}
