//! The open-loop send schedule: when each order of a connection is due.
//!
//! Order `k` of a connection is due at `start + k * period`, whatever the
//! server does. A sender that falls behind (the server stalled, the
//! connection's outstanding bound was reached) sends the late orders as soon
//! as it can, and each keeps its intended time: its latency is measured from
//! when it should have been sent, so a stall shows up in the tail instead of
//! being hidden by a generator that politely waited (coordinated omission;
//! wrk2 and exchange-core's latency test do the same).
//!
//! Times are integer nanoseconds and the period is the exact rational
//! `per_ns / orders`, so due counts never drift from the intended times.

/// The schedule of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    start_ns: u64,
    /// `orders` orders are due every `per_ns` nanoseconds.
    orders: u64,
    per_ns: u64,
    /// Index of the next order to send.
    next: u64,
}

impl Schedule {
    /// A schedule of `orders_per_sec / share` orders per second starting at
    /// `start_ns`, offset by `phase / share` of a period so that `share`
    /// connections splitting one total rate interleave instead of all
    /// sending at the same instant. `orders_per_sec` must be above zero.
    pub fn new(start_ns: u64, orders_per_sec: u64, share: u64, phase: u64) -> Self {
        let orders = orders_per_sec.max(1);
        let per_ns = 1_000_000_000u64.saturating_mul(share.max(1));
        let offset = (u128::from(phase % share.max(1)) * 1_000_000_000 / u128::from(orders)) as u64;
        Schedule {
            start_ns: start_ns.saturating_add(offset),
            orders,
            per_ns,
            next: 0,
        }
    }

    /// When order `index` is due.
    #[inline]
    pub fn intended_ns(&self, index: u64) -> u64 {
        let delta = u128::from(index) * u128::from(self.per_ns) / u128::from(self.orders);
        self.start_ns
            .saturating_add(delta.min(u128::from(u64::MAX)) as u64)
    }

    /// How many orders are due at `now_ns` in total since the start (sent or not).
    #[inline]
    fn due_total(&self, now_ns: u64) -> u64 {
        let Some(elapsed) = now_ns.checked_sub(self.start_ns) else {
            return 0;
        };
        // Order k is due when floor(k * per / orders) <= elapsed, that is
        // when k * per < (elapsed + 1) * orders.
        let bound = (u128::from(elapsed) + 1) * u128::from(self.orders);
        bound
            .div_ceil(u128::from(self.per_ns))
            .min(u128::from(u64::MAX)) as u64
    }

    /// Orders due at `now_ns` and not yet taken.
    #[inline]
    pub fn due(&self, now_ns: u64) -> u64 {
        self.due_total(now_ns).saturating_sub(self.next)
    }

    /// Whole batches of `batch` orders due at `now_ns`: a frame of a batch
    /// is sent when its last order is due.
    #[inline]
    pub fn batches_due(&self, now_ns: u64, batch: u64) -> u64 {
        self.due(now_ns) / batch.max(1)
    }

    /// When the next whole batch of `batch` orders is due.
    #[inline]
    pub fn next_batch_due_ns(&self, batch: u64) -> u64 {
        self.intended_ns(self.next + batch.max(1) - 1)
    }

    /// Takes the next order: returns its intended time.
    #[inline]
    pub fn take(&mut self) -> u64 {
        let t = self.intended_ns(self.next);
        self.next += 1;
        t
    }

    /// Orders taken so far.
    pub fn taken(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intended_times_and_due_counts_agree() {
        let s = Schedule::new(1_000, 3, 1, 0); // period 333,333,333.3 ns
        for k in 0..50 {
            let t = s.intended_ns(k);
            assert_eq!(s.due(t), k + 1, "order {k} is due at its own time");
            if t > 0 {
                assert_eq!(s.due(t - 1), k, "and not a nanosecond before");
            }
        }
        assert_eq!(s.due(0), 0);
        assert_eq!(s.intended_ns(3), 1_000 + 1_000_000_000);
    }

    /// A fake clock and a server that keeps up: the sender wakes at jittered
    /// times, sends every due batch, and over ten simulated seconds the rate
    /// is within 1% of the target, with every order sent at or after its
    /// intended time and never late by more than the wake-up jitter.
    #[test]
    fn open_loop_holds_the_target_rate_with_a_fake_clock() {
        for (rate, batch) in [(1_000_000u64, 1u64), (5_000_000, 100), (12_345, 7)] {
            let mut s = Schedule::new(0, rate, 1, 0);
            let mut rng = crate::rng::Rng::new(rate);
            let mut now = 0u64;
            let end = 10_000_000_000u64;
            let mut sent = 0u64;
            let mut worst_late = 0u64;
            while now < end {
                for _ in 0..s.batches_due(now, batch) {
                    for _ in 0..batch {
                        let t = s.take();
                        assert!(t <= now);
                        worst_late = worst_late.max(now - t);
                        sent += 1;
                    }
                }
                // Sleep until the next batch is due, waking up to 50 us late.
                now = s.next_batch_due_ns(batch).max(now + 1) + rng.below(50_000);
            }
            let achieved = sent as f64 / 10.0;
            assert!(
                (achieved - rate as f64).abs() / (rate as f64) < 0.01,
                "rate {rate} batch {batch}: achieved {achieved}"
            );
            let batch_span = s.intended_ns(batch) - s.intended_ns(0);
            assert!(worst_late <= 50_000 + batch_span, "worst {worst_late}");
        }
    }

    /// A stalled sender keeps the intended times: after a 100 ms stall the
    /// first orders sent are 100 ms late, so the stall reaches the latency tail.
    #[test]
    fn a_stall_keeps_intended_times() {
        let mut s = Schedule::new(0, 1_000_000, 1, 0);
        let stall_end = 100_000_000;
        assert_eq!(s.due(stall_end), 100_001);
        let first = s.take();
        assert_eq!(stall_end - first, 100_000_000);
        assert_eq!(s.taken(), 1);
    }

    #[test]
    fn connections_sharing_a_rate_interleave() {
        // Four connections at 1000/s in total: each sends every 4 ms, offset by 1 ms.
        let starts: Vec<u64> = (0..4)
            .map(|c| Schedule::new(0, 1000, 4, c).intended_ns(0))
            .collect();
        assert_eq!(starts, vec![0, 1_000_000, 2_000_000, 3_000_000]);
        let s = Schedule::new(0, 1000, 4, 0);
        assert_eq!(s.intended_ns(1), 4_000_000);
        let total: u64 = (0..4)
            .map(|c| Schedule::new(0, 1000, 4, c).due(999_999_999))
            .sum();
        assert_eq!(total, 1000);
    }
}
