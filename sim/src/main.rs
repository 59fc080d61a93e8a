//! Long seed hunts: `cargo run -p dockhand-sim --release -- --seeds 100000 [--start 0]`.
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

fn main() {
    let seeds = arg("--seeds", 10_000);
    let start = arg("--start", 0);
    let began = Instant::now();
    let mut totals = dockhand_sim::Stats::default();
    let mut failures = Vec::new();
    for (i, seed) in (start..start + seeds).enumerate() {
        match dockhand_sim::run(seed) {
            Ok(report) => {
                let s = report.stats;
                totals.signals += s.signals;
                totals.crashes += s.crashes;
                totals.partitions += s.partitions;
                totals.store_errors += s.store_errors;
                totals.jobs += s.jobs;
                totals.exits += s.exits;
                totals.simulated += s.simulated;
            }
            Err(failure) => {
                eprintln!("{failure}\n");
                failures.push(seed);
            }
        }
        if (i + 1) % 1000 == 0 {
            let rate = (i + 1) as f64 / began.elapsed().as_secs_f64();
            eprintln!(
                "{} seeds, {} failed, {rate:.0} seeds/s",
                i + 1,
                failures.len()
            );
        }
    }
    let elapsed = began.elapsed();
    println!("seeds:            {seeds} (from {start})");
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
    println!("worker exits:     {}", totals.exits);
    println!("violations:       {} {:?}", failures.len(), failures);
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
