//! The book's measured cases, shared by the criterion bench
//! (`benches/benches/book.rs`), the cachegrind driver (`book-ops`) and the
//! tests that keep the naive reference book honest.

use std::net::{Ipv4Addr, SocketAddr};

use engine::book::ShardConfig;
use engine::book::workload::{Mix, WorkloadConfig};

/// One measured case: a workload and the names it goes by.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    /// Command-line name (`book-ops`, `scripts/book-cachegrind.sh`).
    pub arg: &'static str,
    /// Criterion's benchmark name.
    pub bench: &'static str,
    /// How the summary lines and tables call it.
    pub label: &'static str,
    /// What to generate.
    pub config: WorkloadConfig,
}

/// Heavy matching, exchange-core-like on one book, exchange-core over 64
/// books: in this order everywhere.
pub fn flows() -> [Flow; 3] {
    [
        Flow {
            arg: "heavy",
            bench: "heavy_matching_mix",
            label: "heavy matching",
            config: WorkloadConfig {
                mix: Mix::HEAVY_MATCHING,
                ..WorkloadConfig::default()
            },
        },
        Flow {
            arg: "exchange-core",
            bench: "exchange_core_mix",
            label: "exchange-core-like",
            config: WorkloadConfig::default(),
        },
        Flow {
            arg: "exchange-core-64",
            bench: "exchange_core_mix_64_symbols",
            label: "exchange-core, 64 books",
            config: WorkloadConfig {
                symbols: 64,
                ..WorkloadConfig::default()
            },
        },
    ]
}

/// The flow whose [`Flow::arg`] is `arg`.
pub fn flow(arg: &str) -> Option<Flow> {
    flows().into_iter().find(|f| f.arg == arg)
}

/// Sized for the flows: 128 Ki orders is twice the deepest flow (64 books
/// of 1,000), so the slabs never fill and the index load stays below 1/4.
pub fn shard_config() -> ShardConfig {
    ShardConfig {
        orders_max: 1 << 17,
        ..ShardConfig::default()
    }
}

/// Commands per `process_batch` in the server at its default settings
/// (`ServerConfig::batch`: most messages per ring drain).
pub fn server_batch_commands() -> usize {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    engine::server::ServerConfig::new(listen, vec![0], Vec::new()).batch
}
