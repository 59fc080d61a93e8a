//! Long seed hunts: `cargo run -p dockhand-sim --profile sim -- --seeds 100000 [--start 0] [--threads N]`
//! (one thread per core by default).
//! Prints progress, every failure with its replay command, and a summary.

use std::time::Instant;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("dockhand-sim: {name} takes a number, got {v:?}");
                std::process::exit(2);
            })
        })
        .unwrap_or(default)
}

fn add(totals: &mut dockhand_sim::Stats, s: &dockhand_sim::Stats) {
    totals.signals += s.signals;
    totals.crashes += s.crashes;
    totals.partitions += s.partitions;
    totals.store_errors += s.store_errors;
    totals.claim_reply_faults += s.claim_reply_faults;
    totals.outcomes_refused += s.outcomes_refused;
    totals.clock_jumps += s.clock_jumps;
    totals.jobs += s.jobs;
    totals.exits += s.exits;
    totals.simulated += s.simulated;
}

/// What one thread found: totals and failing seeds.
#[derive(Default)]
struct Tally {
    totals: dockhand_sim::Stats,
    failures: Vec<u64>,
}

fn main() {
    let seeds = arg("--seeds", 10_000);
    let start = arg("--start", 0);
    // Each seed is a world of its own (its own runtime and clock): threads
    // share nothing, and a seed's trace is the same on any thread.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let threads = arg("--threads", cores).clamp(1, 256);
    let began = Instant::now();
    let done = std::sync::atomic::AtomicU64::new(0);
    let failed = std::sync::atomic::AtomicU64::new(0);
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (done, failed) = (&done, &failed);
                scope.spawn(move || {
                    let mut tally = Tally::default();
                    let mut seed = start + t;
                    while seed < start + seeds {
                        match dockhand_sim::run(seed) {
                            Ok(report) => add(&mut tally.totals, &report.stats),
                            Err(failure) => {
                                eprintln!("{failure}\n");
                                tally.failures.push(seed);
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        if n % 1000 == 0 {
                            let rate = n as f64 / began.elapsed().as_secs_f64();
                            eprintln!(
                                "{n} seeds, {} failed, {rate:.0} seeds/s",
                                failed.load(std::sync::atomic::Ordering::Relaxed)
                            );
                        }
                        seed += threads;
                    }
                    tally
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    let mut totals = dockhand_sim::Stats::default();
    let mut failures = Vec::new();
    for tally in tallies {
        add(&mut totals, &tally.totals);
        failures.extend(tally.failures);
    }
    failures.sort_unstable();
    let elapsed = began.elapsed();
    println!("seeds:            {seeds} (from {start}, {threads} threads)");
    println!(
        "seeds/s:          {:.0}",
        seeds as f64 / elapsed.as_secs_f64()
    );
    println!("wall time:        {elapsed:.1?}");
    println!("simulated time:   {:.0?}", totals.simulated);
    println!("jobs:             {}", totals.jobs);
    println!("signals sent:     {}", totals.signals);
    println!("crashes:          {}", totals.crashes);
    println!("partitions:       {}", totals.partitions);
    println!("store errors:     {}", totals.store_errors);
    println!("claim replies lost or late: {}", totals.claim_reply_faults);
    println!("outcomes refused for good:  {}", totals.outcomes_refused);
    println!("database clock jumps:       {}", totals.clock_jumps);
    println!("worker exits:     {}", totals.exits);
    println!("violations:       {} {:?}", failures.len(), failures);
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
