//! Where `--cluster nats://...` and `--cluster auto` find their seed nodes,
//! once, before the run: the order-entry addresses that [`crate::run`]
//! then asks for the cluster map over the wire, exactly as when they are
//! given (`--cluster HOST:PORT,...`). The wire map stays the source of
//! truth while the run lasts; nothing here is on the hot path.
//!
//! - `nats://HOST:PORT[,...]`: the live nodes of the map the cluster
//!   publishes in NATS ([`engine::cluster::published::node_addresses`]).
//! - `auto`, the first of these that applies:
//!   1. `NATS_URL`, when set and not empty: read as `nats://` above. An
//!      explicit server that cannot be read is an error; nothing else is
//!      tried.
//!   2. The turbo-dex nodes announced by multicast DNS
//!      ([`engine::cluster::discovery::browse`], up to
//!      [`engine::cluster::AUTO_BROWSE`], ending at the first announcement):
//!      their announced order-entry addresses are the seeds; an
//!      announcement without one gives its NATS URLs, read as above.
//!   3. [`engine::cluster::AUTO_DEFAULT_URL`] (`nats://127.0.0.1:4222`).
//!
//! Exit statuses (main.rs): a malformed URL is a usage error (2); NATS that
//! cannot be reached, or no node found, fails the run (1), with every step
//! that was tried named in the message.

use std::net::SocketAddr;
use std::time::Duration;

use engine::cluster::discovery::Announcement;

use crate::cli::ClusterSource;
use crate::run::RunError;

/// The most addresses the `cluster: ...` line names (it counts the rest).
const ADDRESSES_SHOWN_MAX: usize = 8;

/// The seed nodes found, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds {
    /// Order-entry addresses, in the order to try them.
    pub addrs: Vec<SocketAddr>,
    /// Where they came from: the NATS URLs, or `mDNS`.
    pub from: String,
    /// Nodes they belong to (one node may announce several addresses).
    pub nodes: usize,
}

impl Seeds {
    /// `--cluster`'s value for [`crate::cli::plan`]: `HOST:PORT,...`.
    pub fn cluster_arg(&self) -> String {
        let list: Vec<String> = self.addrs.iter().map(SocketAddr::to_string).collect();
        list.join(",")
    }

    /// The line dex-trader prints: `cluster: 2 node(s) from nats://...
    /// (10.0.0.1:9000, 10.0.0.2:9000)`.
    pub fn describe(&self) -> String {
        let mut shown: Vec<String> = self
            .addrs
            .iter()
            .take(ADDRESSES_SHOWN_MAX)
            .map(SocketAddr::to_string)
            .collect();
        if self.addrs.len() > ADDRESSES_SHOWN_MAX {
            shown.push(format!(
                "and {} more",
                self.addrs.len() - ADDRESSES_SHOWN_MAX
            ));
        }
        format!(
            "cluster: {} node(s) from {} ({}); the map comes from the first that answers",
            self.nodes,
            self.from,
            shown.join(", ")
        )
    }
}

/// The seeds `source` names: read from NATS, or found by `auto` (module
/// docs). `timeout` bounds each NATS read (connecting included).
pub fn seeds(source: &ClusterSource, timeout: Duration) -> Result<Seeds, RunError> {
    match source {
        ClusterSource::Seeds => Err(RunError::Usage(
            "--cluster HOST:PORT,... names its seeds: there is nothing to find".into(),
        )),
        ClusterSource::Nats(urls) => {
            check_urls(urls)?;
            from_nats(urls, timeout).map_err(RunError::Failed)
        }
        ClusterSource::Auto => auto(
            std::env::var("NATS_URL").ok(),
            || {
                engine::cluster::discovery::browse(engine::cluster::AUTO_BROWSE, |seen| {
                    seen.iter().any(usable)
                })
                .map_err(|e| e.to_string())
            },
            |urls| from_nats(urls, timeout),
        ),
    }
}

/// NATS URLs that `async-nats` takes (a usage error otherwise).
fn check_urls(urls: &str) -> Result<(), RunError> {
    if urls.trim() == "auto" {
        // (`cluster_urls` would resolve it; here it can only be a mistake.)
        return Err(RunError::Usage(
            "`auto` is not a NATS URL; give nats://HOST:PORT".into(),
        ));
    }
    engine::cluster::cluster_urls(urls)
        .map(|_| ())
        .map_err(RunError::Usage)
}

fn from_nats(urls: &str, timeout: Duration) -> Result<Seeds, String> {
    let addrs = engine::cluster::published::node_addresses(urls, timeout)?;
    Ok(Seeds {
        nodes: addrs.len(),
        addrs,
        from: urls.to_string(),
    })
}

/// An announcement that names where to go.
fn usable(a: &Announcement) -> bool {
    !order_entry(a).is_empty() || !a.nats.is_empty()
}

/// The announced order-entry addresses that parse (`ip:port`).
fn order_entry(a: &Announcement) -> Vec<SocketAddr> {
    a.order_entry
        .iter()
        .filter_map(|text| text.trim().parse().ok())
        .collect()
}

/// `--cluster auto` with its inputs given: `NATS_URL`'s value, the mDNS
/// browse, and the NATS reader (module docs for the order).
pub fn auto(
    nats_url: Option<String>,
    browse: impl FnOnce() -> Result<Vec<Announcement>, String>,
    read_nats: impl Fn(&str) -> Result<Seeds, String>,
) -> Result<Seeds, RunError> {
    if let Some(url) = nats_url
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
    {
        check_urls(&url).map_err(|e| RunError::Usage(format!("NATS_URL: {e}")))?;
        return read_nats(&url).map_err(|e| {
            RunError::Failed(format!(
                "--cluster auto: NATS_URL={url}: {e}; unset NATS_URL to look for nodes by mDNS"
            ))
        });
    }
    let mut tried = Vec::new();
    let browse_s = engine::cluster::AUTO_BROWSE.as_secs_f64();
    match browse() {
        Ok(seen) => {
            let seen: Vec<&Announcement> = seen.iter().filter(|a| usable(a)).collect();
            let mut addrs: Vec<SocketAddr> = Vec::new();
            let mut nodes = 0;
            for a in &seen {
                let oe = order_entry(a);
                if !oe.is_empty() {
                    nodes += 1;
                }
                for addr in oe {
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
            }
            if !addrs.is_empty() {
                return Ok(Seeds {
                    addrs,
                    from: "mDNS".into(),
                    nodes,
                });
            }
            if let Some(a) = seen.iter().find(|a| !a.nats.is_empty()) {
                let urls = a.nats.join(",");
                match read_nats(&urls) {
                    Ok(found) => return Ok(found),
                    Err(e) => tried.push(format!(
                        "node {} announced by mDNS gave no order-entry address and its NATS \
                         {urls}: {e}",
                        a.node_id
                    )),
                }
            } else {
                tried.push(format!(
                    "multicast DNS: no turbo-dex node announced in {browse_s} s"
                ));
            }
        }
        Err(e) => tried.push(format!("multicast DNS: cannot browse ({e})")),
    }
    let url = engine::cluster::AUTO_DEFAULT_URL;
    match read_nats(url) {
        Ok(found) => Ok(found),
        Err(e) => {
            tried.push(format!("{url}: {e}"));
            Err(RunError::Failed(format!(
                "--cluster auto found no turbo-dex node (NATS_URL is not set; {}); give the \
                 cluster's NATS server (--cluster nats://HOST:PORT or NATS_URL) or a node \
                 (--cluster HOST:PORT)",
                tried.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announced(id: &str, oe: &[&str], nats: &[&str]) -> Announcement {
        Announcement {
            node_id: id.into(),
            order_entry: oe.iter().map(|s| s.to_string()).collect(),
            nats: nats.iter().map(|s| s.to_string()).collect(),
            route: Vec::new(),
        }
    }

    fn found(from: &str, addrs: &[&str]) -> Seeds {
        Seeds {
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            from: from.into(),
            nodes: addrs.len(),
        }
    }

    /// A NATS reader that knows one server.
    fn nats_at(
        url: &'static str,
        addrs: &'static [&'static str],
    ) -> impl Fn(&str) -> Result<Seeds, String> {
        move |u: &str| {
            if u == url {
                Ok(found(u, addrs))
            } else {
                Err("cannot reach NATS".into())
            }
        }
    }

    #[test]
    fn nats_url_comes_first_and_is_not_second_guessed() {
        let nats = nats_at("nats://10.0.0.9:4222", &["10.0.0.1:9000"]);
        let never = || -> Result<Vec<Announcement>, String> { panic!("no browse") };
        let got = auto(Some(" nats://10.0.0.9:4222 ".into()), never, &nats).unwrap();
        assert_eq!(got, found("nats://10.0.0.9:4222", &["10.0.0.1:9000"]));
        // Set but unreachable: an error (1) that names it, not mDNS.
        match auto(Some("nats://10.0.0.8:4222".into()), never, &nats) {
            Err(RunError::Failed(e)) => assert!(e.contains("NATS_URL=nats://10.0.0.8:4222"), "{e}"),
            other => panic!("{other:?}"),
        }
        // Malformed: a usage error (2).
        assert!(matches!(
            auto(Some("http://x:1".into()), never, &nats),
            Err(RunError::Usage(_))
        ));
    }

    #[test]
    fn mdns_gives_the_announced_order_entry_addresses() {
        let nats = nats_at("nats://10.0.0.9:4222", &["10.0.0.1:9000"]);
        let seen = vec![
            announced(
                "a",
                &["10.0.0.2:9000", "192.168.1.2:9000"],
                &["nats://10.0.0.2:4222"],
            ),
            announced("b", &["10.0.0.3:9000", "junk"], &[]),
        ];
        let got = auto(Some("  ".into()), || Ok(seen), &nats).unwrap();
        assert_eq!(got.from, "mDNS");
        assert_eq!(got.nodes, 2);
        assert_eq!(
            got.cluster_arg(),
            "10.0.0.2:9000,192.168.1.2:9000,10.0.0.3:9000"
        );
        assert!(
            got.describe()
                .starts_with("cluster: 2 node(s) from mDNS (10.0.0.2:9000,")
        );
        // Only NATS URLs announced: they are read.
        let seen = vec![announced("c", &[], &["nats://10.0.0.9:4222"])];
        let got = auto(None, || Ok(seen), &nats).unwrap();
        assert_eq!(got.from, "nats://10.0.0.9:4222");
    }

    #[test]
    fn nothing_announced_falls_back_to_localhost_and_names_what_was_tried() {
        let local = nats_at(engine::cluster::AUTO_DEFAULT_URL, &["127.0.0.1:9000"]);
        let got = auto(None, || Ok(Vec::new()), &local).unwrap();
        assert_eq!(got.from, engine::cluster::AUTO_DEFAULT_URL);
        let nowhere = nats_at("nats://nowhere:1", &[]);
        match auto(None, || Err("no multicast interface".into()), &nowhere) {
            Err(RunError::Failed(e)) => {
                for part in [
                    "NATS_URL is not set",
                    "no multicast interface",
                    "nats://127.0.0.1:4222: cannot reach NATS",
                ] {
                    assert!(e.contains(part), "{part}: {e}");
                }
            }
            other => panic!("{other:?}"),
        }
        match auto(None, || Ok(Vec::new()), &nowhere) {
            Err(RunError::Failed(e)) => assert!(e.contains("no turbo-dex node announced"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn descriptions_stay_short() {
        let addrs: Vec<String> = (0..10).map(|i| format!("10.0.0.{i}:9000")).collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let line = found("mDNS", &refs).describe();
        assert!(line.contains("10.0.0.7:9000, and 2 more"), "{line}");
        assert!(!line.contains("10.0.0.8:9000"), "{line}");
    }
}
