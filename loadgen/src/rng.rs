//! A small, fast, seedable PRNG and a Zipf sampler for the order flow.
//!
//! The generator draws several random numbers per order at tens of millions
//! of orders per second, so the PRNG must cost a few cycles: wyrand (one
//! 64x64->128 multiply per output, 64-bit state) passes the usual
//! statistical batteries and is far faster than a cryptographic generator,
//! which an order flow does not need. Streams for different workers and
//! connections come from the same `--seed` mixed with their indices through
//! SplitMix64, so they are independent but reproducible.

/// `if cond { a } else { b }` compiled without a branch: for coin flips the
/// CPU cannot predict, a cmov beats a 50% mispredicted jump.
#[inline(always)]
pub fn select<T>(cond: bool, a: T, b: T) -> T {
    std::hint::select_unpredictable(cond, a, b)
}

/// SplitMix64's finalizer: spreads nearby seeds (1, 2, 3...) over the whole
/// state space.
#[inline]
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of stream `stream` (a connection's global index) under `--seed seed`.
pub const fn stream_seed(seed: u64, stream: u64) -> u64 {
    mix64(seed ^ mix64(stream.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

/// wyrand: a 64-bit-state generator with one wide multiply per output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator seeded with `seed` (any value, 0 included).
    pub const fn new(seed: u64) -> Self {
        Rng { state: mix64(seed) }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A number in `0..n` (0 when `n` is 0). Uses the high bits of a
    /// 64x64 multiply (Lemire's method without the rejection step): the
    /// bias is below `n / 2^64`, invisible for the small `n` used here.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform float in `[0, 1)`.
    #[inline]
    pub fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^s`
/// (Zipf's law) in O(1) per draw, with Walker's alias method: one random
/// number picks a column and a threshold picks the column's own rank or its
/// alias. Rank 0 is the most popular.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// Per column: the probability (scaled to 2^32) of keeping the
    /// column's own rank in the low 32 bits, the rank taken otherwise in
    /// the high 32. One load per draw.
    columns: Vec<u64>,
}

impl Zipf {
    /// The most ranks a sampler takes: the protocol's symbol ids are u32, but
    /// a server lists far fewer; this bounds the table at 8 MiB.
    pub const RANKS_MAX: usize = 1 << 20;

    /// A sampler over `n` ranks (clamped to `1..=RANKS_MAX`) with exponent `s`
    /// (0 is uniform; 1 is classic Zipf).
    pub fn new(n: usize, s: f64) -> Self {
        let n = n.clamp(1, Self::RANKS_MAX);
        let weights: Vec<f64> = (0..n).map(|k| 1.0 / ((k + 1) as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        // Vose's construction: scale so the mean column holds exactly 1.
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        // A column that keeps its own rank for sure has itself as alias, so
        // the draw needs no special case for it.
        let mut keep = vec![u32::MAX; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s_i), Some(&l_i)) = (small.pop(), large.last()) {
            keep[s_i] = (scaled[s_i] * 4_294_967_296.0).min(u32::MAX as f64) as u32;
            alias[s_i] = l_i as u32;
            scaled[l_i] -= 1.0 - scaled[s_i];
            if scaled[l_i] < 1.0 {
                large.pop();
                small.push(l_i);
            }
        }
        let columns = keep
            .iter()
            .zip(&alias)
            .map(|(&k, &a)| u64::from(k) | (u64::from(a) << 32))
            .collect();
        Zipf { columns }
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Always false: a sampler has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Draws a rank. Branch-free: the keep-or-alias choice is a coin flip
    /// the CPU cannot predict, and a mispredicted branch per order cost
    /// more than the rest of the draw.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let r = rng.next_u64();
        let column = (((r >> 32) * self.columns.len() as u64) >> 32) as u32;
        let entry = self
            .columns
            .get(column as usize)
            .copied()
            .unwrap_or(u64::from(column) << 32);
        let (keep, alias) = (entry as u32, (entry >> 32) as u32);
        select((r as u32) < keep, column, alias) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(8);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(stream_seed(1, 0), stream_seed(1, 1));
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(1);
        let mut seen = [0u32; 10];
        for _ in 0..100_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        for count in seen {
            assert!((9_000..11_000).contains(&count), "{seen:?}");
        }
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn zipf_frequencies_follow_one_over_rank() {
        let n = 16;
        let z = Zipf::new(n, 1.0);
        let mut r = Rng::new(3);
        let draws = 400_000;
        let mut counts = vec![0u64; n];
        for _ in 0..draws {
            counts[z.sample(&mut r)] += 1;
        }
        let harmonic: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
        for (rank, &count) in counts.iter().enumerate() {
            let expected = draws as f64 / ((rank + 1) as f64 * harmonic);
            let error = (count as f64 - expected).abs() / expected;
            assert!(error < 0.05, "rank {rank}: {count} vs {expected:.0}");
        }
        // The skew is real: the top rank is drawn about 16 times as often as the last.
        assert!(counts[0] > 12 * counts[n - 1]);
    }

    #[test]
    fn zipf_zero_exponent_is_uniform_and_one_rank_works() {
        let z = Zipf::new(4, 0.0);
        let mut r = Rng::new(5);
        let mut counts = [0u64; 4];
        for _ in 0..40_000 {
            counts[z.sample(&mut r)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        let one = Zipf::new(1, 1.0);
        assert_eq!(one.sample(&mut r), 0);
        assert_eq!(Zipf::new(0, 1.0).len(), 1);
    }
}
