//! dex-trader's `.hgrm` writer against HdrHistogram's Java library: the
//! same histograms must give the same bytes as Java's
//! `outputPercentileDistribution` (the reference files in tests/data are
//! written by tests/data/HgrmReference.java, which says how to regenerate
//! them).

use hdrhistogram::Histogram;
use loadgen::hgrm::{TICKS_PER_HALF_DISTANCE, percentile_distribution};

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).unwrap()
}

fn reference(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn hgrm_matches_java_for_four_values() {
    let mut h = histogram();
    for v in [100, 200, 250, 600] {
        h.record(v).unwrap();
    }
    assert_eq!(
        percentile_distribution(&h, TICKS_PER_HALF_DISTANCE, 1.0),
        reference("java-small.hgrm")
    );
}

#[test]
fn hgrm_matches_java_for_a_long_tail_in_microseconds() {
    // The same xorshift and the same values as HgrmReference.java.
    let mut h = histogram();
    let mut x: u64 = 88_172_645_463_325_252;
    for i in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut v = 1000 + (x >> 40) % 50_000;
        if i % 97 == 0 {
            v = 1000 + (x >> 20) % 10_000_000;
        }
        h.record_n(v, (x >> 58) + 1).unwrap();
    }
    let ours = percentile_distribution(&h, TICKS_PER_HALF_DISTANCE, 1000.0);
    let java = reference("java-mixed.hgrm");
    for (n, (a, b)) in ours.lines().zip(java.lines()).enumerate() {
        assert_eq!(a, b, "line {}", n + 1);
    }
    assert_eq!(ours, java);
}
