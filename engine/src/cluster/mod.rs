//! Clusters of turbo-dex nodes (`--cluster`): several nodes own the
//! symbol shards between them, coordinated through NATS JetStream
//! key-value buckets, never through a consensus protocol of our own and
//! never on the order path. A node serves only the shards it holds a lease
//! on, and answers the others with `Rejected(WrongNode)` and the owner's
//! address (wire/PROTOCOL.md §8.11); it never forwards an order.
//!
//! - [`plan`]: the decisions (shares, claims, renewals, the map), no I/O.
//! - [`view`]: what the cores and the admin endpoint read (an atomic
//!   bitmap of served shards and the latest map).
//! - [`agent`]: the control thread (tokio + async-nats, never an engine
//!   core) and the operator commands (`turbo-dex cluster ...`).
//! - [`discovery`]: how a node with `--cluster auto` finds the NATS server
//!   that carries the control plane (`NATS_URL`, multicast DNS, a server
//!   on this host, or one it starts), and [`natsd`], the nats-server child
//!   process it starts when there is none.

pub mod agent;
pub mod discovery;
pub mod natsd;
pub mod plan;
pub mod published;
pub mod view;

use std::io::Read;
use std::path::Path;

pub use view::ClusterView;

/// The NATS server `--cluster auto` uses when `NATS_URL` is not set.
pub const AUTO_DEFAULT_URL: &str = "nats://127.0.0.1:4222";
/// The file in the journal directory that holds the node id.
pub const NODE_ID_FILE: &str = "node-id";

/// `--cluster auto` for a tool that joins nothing (`turbo-dex cluster
/// status|claim`): `NATS_URL` when it is set (and not empty), else the
/// NATS URLs a node announces by mDNS (browsed for up to
/// [`AUTO_BROWSE`]), else [`AUTO_DEFAULT_URL`]. A node itself uses
/// [`discover_auto`], which may also start a server.
pub fn resolve_auto() -> Result<String, String> {
    if let Some(url) = std::env::var("NATS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    {
        return Ok(resolve_auto_from(Some(url)));
    }
    let found = discovery::browse(AUTO_BROWSE, |seen| seen.iter().any(|a| !a.nats.is_empty()))
        .unwrap_or_default();
    match found.iter().find(|a| !a.nats.is_empty()) {
        Some(a) => Ok(a.nats.join(",")),
        None => Ok(resolve_auto_from(None)),
    }
}

/// How long [`resolve_auto`] browses mDNS for an announced node.
pub const AUTO_BROWSE: std::time::Duration = std::time::Duration::from_secs(2);

/// `--cluster auto` for a node: [`discovery::discover`] (`NATS_URL`, a
/// server announced by mDNS, one on 127.0.0.1:4222, or a nats-server it
/// starts with its data under `journal_dir`), announcing `order_entry`.
/// The result must be kept for as long as the node runs: dropping it
/// stops the announcement and the server it started.
pub fn discover_auto(
    journal_dir: &Path,
    node_id: u64,
    order_entry: std::net::SocketAddr,
) -> Result<discovery::Discovered, String> {
    let mut cfg = discovery::DiscoveryConfig::new(
        &format_node_id(node_id),
        order_entry,
        journal_dir.to_path_buf(),
    );
    if let Some(jitter) = jitter_override()? {
        cfg.jitter = jitter;
    }
    discovery::discover(&cfg).map_err(|e| format!("--cluster auto: {e}"))
}

/// The environment variable that replaces the random part of the mDNS
/// browse ([`discovery::DiscoveryConfig::jitter`], in ms). `0` makes nodes
/// started at the same instant each start a nats-server, so that they
/// must merge them into one cluster: the path `scripts/auto-cluster.sh`'s
/// test exercises on purpose.
pub const JITTER_ENV: &str = "TURBO_DEX_DISCOVERY_JITTER_MS";

/// The largest [`JITTER_ENV`] taken, ms.
pub const JITTER_ENV_MAX_MS: u64 = 60_000;

fn jitter_override() -> Result<Option<std::time::Duration>, String> {
    match std::env::var(JITTER_ENV) {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&ms| ms <= JITTER_ENV_MAX_MS)
            .map(|ms| Some(std::time::Duration::from_millis(ms)))
            .ok_or_else(|| {
                format!("{JITTER_ENV}={v:?}: give milliseconds, 0 to {JITTER_ENV_MAX_MS}")
            }),
    }
}

/// [`resolve_auto`] with `NATS_URL`'s value given (for tests).
pub fn resolve_auto_from(nats_url: Option<String>) -> String {
    nats_url
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| AUTO_DEFAULT_URL.to_string())
}

/// `--cluster`'s value as NATS URLs: `auto` ([`resolve_auto`]) or a
/// comma-separated list of `nats://HOST:PORT` (checked).
pub fn cluster_urls(arg: &str) -> Result<String, String> {
    let urls = if arg.trim() == "auto" {
        resolve_auto()?
    } else {
        arg.trim().to_string()
    };
    crate::mdbridge::parse_servers(&urls).map_err(|e| format!("--cluster: {e}"))?;
    Ok(urls)
}

/// This node's id: read from `dir/node-id`, or generated (random, never 0)
/// and written there the first time. The id follows the journal: a node
/// restarted on the same journal directory is the same node, and takes
/// back its shards.
pub fn node_id(dir: &Path) -> Result<u64, String> {
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return parse_node_id(text.trim()).map_err(|e| format!("{}: {e}", path.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the journal directory {}: {e}", dir.display()))?;
    let mut id = 0u64;
    while id == 0 {
        let mut bytes = [0u8; 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("cannot read random bytes for the node id: {e}"))?;
        // Ids stay below 2^53 so that JSON readers that use doubles keep them exact.
        id = u64::from_le_bytes(bytes) & ((1u64 << 53) - 1);
    }
    // Written to a temporary file and renamed: never a half-written id.
    let tmp = dir.join(format!("{NODE_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{}\n", format_node_id(id)))
        .and_then(|()| std::fs::File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// A node id as written in files, keys and logs: 16 hex digits.
pub fn format_node_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Parses a node id: 16 hex digits (as [`format_node_id`] writes), or a
/// decimal number; never 0.
pub fn parse_node_id(text: &str) -> Result<u64, String> {
    let id = if text.len() == 16 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        u64::from_str_radix(text, 16).map_err(|e| e.to_string())?
    } else if let Some(hex) = text.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).map_err(|e| format!("node id {text:?}: {e}"))?
    } else {
        text.parse::<u64>().map_err(|e| {
            format!("node id {text:?}: {e}; give 16 hex digits (as `cluster status` shows)")
        })?
    };
    if id == 0 {
        return Err("node id 0 means no node".into());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_nats_url_else_localhost() {
        // (resolve_auto's mDNS step is tested in tests/discovery.rs.)
        assert_eq!(resolve_auto_from(None), AUTO_DEFAULT_URL);
        assert_eq!(resolve_auto_from(Some("  ".into())), AUTO_DEFAULT_URL);
        assert_eq!(
            resolve_auto_from(Some("nats://10.0.0.5:4222".into())),
            "nats://10.0.0.5:4222"
        );
        assert!(cluster_urls("nats://a:1,nats://b:2").is_ok());
        assert!(
            cluster_urls("http://a:1")
                .unwrap_err()
                .contains("--cluster")
        );
    }

    #[test]
    fn node_ids_are_stable_in_their_directory() {
        let dir = std::env::temp_dir().join(format!("turbo-dex-node-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = node_id(&dir).unwrap();
        assert_ne!(a, 0);
        assert_eq!(node_id(&dir).unwrap(), a);
        assert_eq!(parse_node_id(&format_node_id(a)), Ok(a));
        assert_eq!(parse_node_id("42"), Ok(42));
        assert!(parse_node_id("0").is_err());
        std::fs::write(dir.join(NODE_ID_FILE), "junk").unwrap();
        assert!(node_id(&dir).unwrap_err().contains("node-id"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
