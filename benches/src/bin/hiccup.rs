//! `hiccup`: how often, and for how long, the machine takes a CPU away
//! from a thread that never sleeps. One pinned thread per listed CPU reads
//! the monotonic clock in a tight loop; a gap between two reads longer
//! than 10 us is time the thread did not run (a hypervisor, an interrupt,
//! another task). No latency figure measured on these CPUs can beat what
//! this shows, so bench.sh prints it next to its tables.
//!
//!     hiccup [--cpus 0,1] [--seconds 10] [--json FILE]

use std::time::{Duration, Instant};

/// Gaps shorter than this are the loop itself.
const GAP_MIN_NS: u64 = 10_000;

/// Upper bounds of the gap buckets, in nanoseconds.
const BUCKETS_NS: [u64; 4] = [100_000, 1_000_000, 5_000_000, u64::MAX];

#[derive(Default)]
struct Gaps {
    cpu: usize,
    counts: [u64; 4],
    max_ns: u64,
    lost_ns: u64,
    run_ns: u64,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn measure(cpu: usize, length: Duration) -> Gaps {
    let _ = tuning::pin_current_thread(cpu);
    let mut g = Gaps {
        cpu,
        ..Gaps::default()
    };
    let start = Instant::now();
    let mut last = start;
    loop {
        let t = Instant::now();
        let gap = t.duration_since(last).as_nanos() as u64;
        last = t;
        if gap > GAP_MIN_NS {
            let b = BUCKETS_NS.iter().position(|&up| gap < up).unwrap_or(3);
            g.counts[b] += 1;
            g.lost_ns += gap;
            g.max_ns = g.max_ns.max(gap);
        }
        if t.duration_since(start) >= length {
            g.run_ns = t.duration_since(start).as_nanos() as u64;
            return g;
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("hiccup [--cpus LIST] [--seconds N] [--json FILE]");
        println!(
            "Spins one pinned thread per CPU and counts the gaps (over 10 us) in which it did not run."
        );
        return;
    }
    let cpus = match arg(&args, "--cpus") {
        Some(list) => match list.parse::<tuning::CpuList>() {
            Ok(l) => match l.check_on_this_host() {
                Ok(()) => l.to_vec(),
                Err(e) => fail(&format!("--cpus {list}: {e}")),
            },
            Err(e) => fail(&format!("--cpus {list}: {e}")),
        },
        None => vec![0],
    };
    let seconds: f64 = arg(&args, "--seconds")
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| fail("--seconds needs a number"))
        })
        .unwrap_or(10.0);
    let length = Duration::from_secs_f64(seconds.max(0.01));
    let threads: Vec<_> = cpus
        .iter()
        .map(|&cpu| std::thread::spawn(move || measure(cpu, length)))
        .collect();
    let results: Vec<Gaps> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| fail("a measuring thread failed"))
        })
        .collect();
    let mut json = String::from("{\"cpus\": [");
    for (i, g) in results.iter().enumerate() {
        let lost = g.lost_ns as f64 * 100.0 / g.run_ns.max(1) as f64;
        let longest_ms = g.max_ns as f64 / 1e6;
        let [c0, c1, c2, c3] = g.counts;
        let cpu = g.cpu;
        println!(
            "cpu {cpu}: gaps 10-100us {c0}, 0.1-1ms {c1}, 1-5ms {c2}, over 5ms {c3}; longest {longest_ms:.2} ms; {lost:.2}% of {seconds} s lost"
        );
        json.push_str(&format!(
            "{}{{\"cpu\": {cpu}, \"gaps_10us_100us\": {c0}, \"gaps_100us_1ms\": {c1}, \"gaps_1ms_5ms\": {c2}, \"gaps_over_5ms\": {c3}, \"longest_ms\": {longest_ms:.3}, \"lost_percent\": {lost:.3}}}",
            if i > 0 { ", " } else { "" },
        ));
    }
    json.push_str(&format!("], \"seconds\": {seconds}}}\n"));
    if let Some(path) = arg(&args, "--json")
        && let Err(e) = std::fs::write(&path, json)
    {
        fail(&format!("cannot write {path}: {e}"));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("hiccup: error: {msg}");
    std::process::exit(2)
}
