//! What a running cluster publishes for its clients, read from NATS: the
//! live nodes' order-entry addresses. For traders and tools that are given
//! a NATS server rather than a node (`dex-trader --cluster nats://...`):
//! they read this once, before they trade, and then ask a node for the
//! cluster map over the wire (wire/PROTOCOL.md §8.11), which stays the
//! source of truth. Never on an order path.
//!
//! The agents write the map under `map` in [`CLUSTER_BUCKET`] ([`MapJson`],
//! whenever its version changes) and each node's heartbeat under
//! `node-<ID>` in [`NODES_BUCKET`] ([`NodeRecord`]). [`node_addresses`]
//! takes the map's live nodes, and when there is no map (or it names no
//! live node with an address) the node records whose heartbeat is fresh.
//!
//! Buckets are only opened, never created: reading must not make a cluster
//! where there is none (and `create_key_value` cannot parse nats-server
//! 2.9's account info anyway; see [`super::agent`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::KeyValueErrorKind;
use async_nats::jetstream::kv::Store;

use super::agent::{CLUSTER_BUCKET, MAP_KEY, MapJson, NODES_BUCKET, read_nodes, wall_ms};
use super::plan::{self, NodeRecord};

/// The order-entry addresses of the live nodes of the cluster whose NATS
/// servers are `urls` (`nats://HOST:PORT[,nats://...]`), in the order the
/// map lists them (by node id), without repeats. All of it within
/// `timeout` (connecting included). Errors say what was tried: NATS not
/// reachable, no turbo-dex cluster there, or no live node.
pub fn node_addresses(urls: &str, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    let servers = crate::mdbridge::parse_servers(urls)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to read NATS: {e}"))?;
    let deadline = Instant::now() + timeout;
    rt.block_on(async {
        let read = async {
            let client = async_nats::ConnectOptions::new()
                .name("turbo-dex cluster reader")
                .connection_timeout(timeout)
                .request_timeout(Some(timeout))
                .connect(servers)
                .await
                .map_err(|e| {
                    format!(
                        "cannot reach NATS at {urls}: {e}; is the cluster's nats-server \
                         running there (with -js)?"
                    )
                })?;
            let js = async_nats::jetstream::new(client);
            let cluster = open(&js, CLUSTER_BUCKET, urls).await?;
            if let Some(value) = cluster
                .get(MAP_KEY)
                .await
                .map_err(|e| format!("reading {CLUSTER_BUCKET}/{MAP_KEY} at {urls}: {e}"))?
            {
                match serde_json::from_slice::<MapJson>(&value) {
                    Ok(map) => {
                        let found = live_in_map(&map);
                        if !found.is_empty() {
                            return Ok(found);
                        }
                    }
                    Err(e) => tracing::debug!(
                        "{CLUSTER_BUCKET}/{MAP_KEY} at {urls} is not a map ({e}); \
                         reading the node records"
                    ),
                }
            }
            let nodes = open(&js, NODES_BUCKET, urls).await?;
            let records = read_nodes(&nodes)
                .await
                .map_err(|e| format!("{NODES_BUCKET} at {urls}: {e}"))?;
            let found = live_in_records(&records, wall_ms());
            if found.is_empty() {
                return Err(format!(
                    "the turbo-dex cluster at {urls} has no live node with an address \
                     ({} node record(s), none with a heartbeat in the last {} ms); are the \
                     nodes running? `turbo-dex cluster status --cluster {urls}` lists them",
                    records.len(),
                    plan::NODE_TIMEOUT_MS
                ));
            }
            Ok(found)
        };
        match tokio::time::timeout_at(deadline.into(), read).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from NATS at {urls} within {} ms (is it the cluster's \
                 nats-server, with -js?)",
                timeout.as_millis()
            )),
        }
    })
}

/// Opens an existing bucket.
async fn open(
    js: &async_nats::jetstream::Context,
    name: &str,
    urls: &str,
) -> Result<Store, String> {
    js.get_key_value(name).await.map_err(|e| {
        if e.kind() == KeyValueErrorKind::GetBucket {
            format!(
                "no turbo-dex cluster at {urls}: cannot open its key-value bucket {name} \
                 ({e}); is JetStream on (-js) and has a node joined with --cluster there?"
            )
        } else {
            format!("cannot open the key-value bucket {name} at {urls}: {e}")
        }
    })
}

/// The addresses of the nodes `map` says are alive, in its order, without
/// repeats. Pure.
pub fn live_in_map(map: &MapJson) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for node in map.nodes.iter().filter(|n| n.alive) {
        if let Some(addr) = node.address
            && !out.contains(&addr)
        {
            out.push(addr);
        }
    }
    out
}

/// The addresses of the records alive at `now_ms` ([`plan::alive`]), by
/// node id, without repeats. Pure.
pub fn live_in_records(records: &[NodeRecord], now_ms: u64) -> Vec<SocketAddr> {
    let mut live: Vec<&NodeRecord> = records.iter().filter(|r| plan::alive(r, now_ms)).collect();
    live.sort_by_key(|r| r.id);
    let mut out = Vec::new();
    for r in live {
        if !out.contains(&r.address) {
            out.push(r.address);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::agent::MapNodeJson;

    fn node(id: &str, address: Option<&str>, alive: bool) -> MapNodeJson {
        MapNodeJson {
            id: id.into(),
            address: address.map(|a| a.parse().unwrap()),
            cores: 1,
            alive,
            shards_owned: 1,
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_map_gives_its_live_nodes_with_an_address() {
        let map = MapJson {
            version: 7,
            written_by: "0000000000000001".into(),
            shards: 4,
            nodes: vec![
                node("0000000000000001", Some("10.0.0.1:9000"), true),
                node("0000000000000002", Some("10.0.0.2:9000"), false),
                node("0000000000000003", None, true),
                node("0000000000000004", Some("10.0.0.4:9000"), true),
                node("0000000000000005", Some("10.0.0.1:9000"), true),
            ],
            owners: vec![None; 4],
        };
        assert_eq!(
            live_in_map(&map),
            addrs(&["10.0.0.1:9000", "10.0.0.4:9000"])
        );
        let empty = MapJson {
            nodes: vec![],
            ..map
        };
        assert!(live_in_map(&empty).is_empty());
    }

    #[test]
    fn node_records_count_while_their_heartbeat_is_fresh() {
        let record = |id: u64, addr: &str, heartbeat_ms: u64| NodeRecord {
            id,
            address: addr.parse().unwrap(),
            cores: 2,
            version: "0.1.0".into(),
            shards: 4,
            heartbeat_ms,
        };
        let now = 1_000_000;
        let records = [
            record(3, "10.0.0.3:9000", now),
            record(1, "10.0.0.1:9000", now - plan::NODE_TIMEOUT_MS),
            record(2, "10.0.0.2:9000", now - plan::NODE_TIMEOUT_MS - 1),
        ];
        assert_eq!(
            live_in_records(&records, now),
            addrs(&["10.0.0.1:9000", "10.0.0.3:9000"])
        );
    }

    #[test]
    fn bad_urls_are_refused_before_any_connection() {
        let e = node_addresses("http://127.0.0.1:4222", Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("http") && e.contains("nats://HOST:PORT"), "{e}");
        let e = node_addresses("", Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }
}
