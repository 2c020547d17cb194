//! dex-trader: a pinned load generator for turbo-dex.
