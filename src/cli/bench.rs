//! `dockhand bench`: no-op jobs through an in-process worker on the chosen
//! database, measuring what users ask about: enqueue rate, throughput by
//! concurrency, pickup latency, shutdown latency, recovery time and memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::CliError;
use crate::embed::WorkerBuilder;
use crate::job::NewJob;
use crate::machine::Config;
use crate::store::{AnyStore, ClaimRequest, Store};

/// `bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// No-op jobs per throughput round (concurrency 1 runs at most 2,000).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
    /// Concurrency levels to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<u32>,
    /// Jobs queued ahead in each throughput round's queue (the round times
    /// its first --jobs completions with this backlog still waiting), to
    /// show what a claim costs as the backlog grows. Cancelled afterwards.
    #[arg(long, default_value_t = 0)]
    pub backlog: u64,
    /// Lease for the recovery measurement (a claim left by a "killed" worker).
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub lease: Duration,
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn config(concurrency: u32) -> Config {
    Config {
        concurrency,
        batch_max: concurrency.clamp(1, 100),
        poll_interval: Duration::from_millis(50),
        ..Config::default()
    }
}

fn queue(name: &str) -> String {
    format!("bench-{name}-{:04x}", fastrand::u16(..))
}

fn noop_jobs(queue: &str, n: u64) -> Vec<NewJob> {
    (0..n)
        .map(|_| {
            let mut job = NewJob::new(vec!["noop".into()]);
            job.queue = queue.to_string();
            job
        })
        .collect()
}

fn bar(len: u64, what: &str, json: bool) -> ProgressBar {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len)
    };
    bar.set_style(
        ProgressStyle::with_template("  {msg:<28} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Enqueue `n` jobs in bulk; jobs/s.
async fn enqueue(store: &AnyStore, queue: &str, n: u64) -> Result<f64, CliError> {
    let jobs = noop_jobs(queue, n);
    let start = Instant::now();
    for chunk in jobs.chunks(10_000) {
        store.enqueue_many(chunk).await?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Run `n` queued jobs at `concurrency`; (jobs/s, peak RSS KiB).
async fn throughput(
    store: &AnyStore,
    queue: &str,
    n: u64,
    concurrency: u32,
    bar: &ProgressBar,
) -> Result<(f64, u64), CliError> {
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config(concurrency))
        .queues(&[queue])
        .handler("noop", move |_job| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        })
        .build()?;
    let start = Instant::now();
    let run = tokio::spawn(worker.run());
    let mut peak = 0;
    while done.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        bar.set_position(done.load(Ordering::Relaxed));
        peak = peak.max(rss_kib());
    }
    shutdown.shutdown().await;
    let report = run.await.map_err(|e| CliError::fatal(e.to_string()))?;
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    if report.status.counters.succeeded < n {
        return Err(CliError::fatal(format!(
            "only {} of {n} jobs were recorded as succeeded",
            report.status.counters.succeeded
        )));
    }
    Ok((n as f64 / elapsed.as_secs_f64(), peak))
}

/// Enqueue one job at a time into an idle worker; pickup latencies.
async fn pickup(
    store: &AnyStore,
    samples: u64,
    bar: &ProgressBar,
) -> Result<Vec<Duration>, CliError> {
    let queue = queue("pickup");
    let enqueued: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let (mark, sink) = (enqueued.clone(), latencies.clone());
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config(16))
        .queues(&[&queue])
        .handler("noop", move |_job| {
            let (mark, sink) = (mark.clone(), sink.clone());
            async move {
                if let Some(at) = *mark.lock().unwrap_or_else(|p| p.into_inner()) {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(at.elapsed());
                }
                Ok(())
            }
        })
        .build()?;
    let run = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..samples {
        *enqueued.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        store.enqueue_many(&noop_jobs(&queue, 1)).await?;
        let want = i as usize + 1;
        let deadline = Instant::now() + Duration::from_secs(5);
        while latencies.lock().unwrap_or_else(|p| p.into_inner()).len() < want
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        bar.set_position(i + 1);
        // Let the worker go idle again, as a fresh job would find it.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    shutdown.shutdown().await;
    let _ = run.await;
    bar.finish_and_clear();
    let mut sorted = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    sorted.sort();
    Ok(sorted)
}

/// Idle worker: signal → run() returns. Median of `rounds`, and RSS at idle.
async fn idle_exit(store: &AnyStore, rounds: usize) -> Result<(Duration, u64), CliError> {
    let mut times = Vec::new();
    let mut rss = 0;
    for _ in 0..rounds {
        let (worker, shutdown) = WorkerBuilder::new(store.clone())
            .config(config(4))
            .queues(&[&queue("idle")])
            .handler("noop", |_job| async { Ok(()) })
            .build()?;
        let run = tokio::spawn(worker.run());
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss = rss.max(rss_kib());
        let start = Instant::now();
        shutdown.shutdown().await;
        let _ = run.await;
        times.push(start.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), rss))
}

/// A job runs; the signal comes while it runs; its end → run() returns.
async fn last_job_exit(store: &AnyStore) -> Result<Duration, CliError> {
    let queue = queue("last");
    store.enqueue_many(&noop_jobs(&queue, 1)).await?;
    let finished: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mark = finished.clone();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config(4))
        .queues(&[&queue])
        .handler("noop", move |_job| {
            let mark = mark.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                *mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Ok(())
            }
        })
        .build()?;
    let run = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_millis(150)).await;
    shutdown.shutdown().await;
    let _ = run.await;
    let ended = Instant::now();
    let finished = finished
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .unwrap_or(ended);
    Ok(ended.duration_since(finished))
}

/// A claim left by a worker that died (never heartbeats): time until a
/// healthy worker runs the job again.
async fn recovery(store: &AnyStore, lease: Duration) -> Result<Duration, CliError> {
    let queue = queue("recovery");
    store.enqueue_many(&noop_jobs(&queue, 1)).await?;
    let claimed = store
        .claim(&ClaimRequest::new(
            "bench-killed-worker",
            std::slice::from_ref(&queue),
            1,
            lease,
            1,
        ))
        .await?;
    if claimed.is_empty() {
        return Err(CliError::fatal("the recovery job could not be claimed"));
    }
    let start = Instant::now();
    let ran: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mark = ran.clone();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(Config { lease, ..config(4) })
        .queues(&[&queue])
        .handler("noop", move |_job| {
            let mark = mark.clone();
            async move {
                *mark.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                Ok(())
            }
        })
        .build()?;
    let run = tokio::spawn(worker.run());
    let deadline = start + lease * 4 + Duration::from_secs(5);
    while ran.lock().unwrap_or_else(|p| p.into_inner()).is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.shutdown().await;
    let _ = run.await;
    let at = ran
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .ok_or_else(|| CliError::fatal("the abandoned job never ran again"))?;
    Ok(at.duration_since(start))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Cancel what is left of a round's backlog (only its own queue; the rows
/// stay for retention to delete), so the next round starts from its own.
async fn remove_backlog(store: &AnyStore, queue: &str) -> Result<(), CliError> {
    use crate::store::{BulkAction, BulkFilter};
    let filter = BulkFilter {
        queue: Some(queue.to_string()),
        ..BulkFilter::default()
    };
    store.bulk(BulkAction::Cancel, &filter, false).await?;
    Ok(())
}

/// Run every measurement and print the table (or JSON).
pub async fn run(store: &AnyStore, url: &str, args: BenchArgs) -> Result<i32, CliError> {
    let json = args.json;
    if !json {
        crate::outln!(
            "dockhand bench on {} ({} jobs per round, {} queued ahead)",
            crate::store::redact_url(url),
            args.jobs,
            args.backlog
        );
    }
    let (idle_exit, idle_rss) = idle_exit(store, 10).await?;
    let mut enqueue_rates = Vec::new();
    let mut rounds = Vec::new();
    let mut peak_rss = 0;
    for &concurrency in &args.concurrency {
        let n = if concurrency == 1 {
            args.jobs.min(2_000)
        } else {
            args.jobs
        };
        let queue = queue(&format!("c{concurrency}"));
        enqueue_rates.push(enqueue(store, &queue, n + args.backlog).await?);
        let bar = bar(n, &format!("concurrency {concurrency}"), json);
        let (rate, peak) = throughput(store, &queue, n, concurrency, &bar).await?;
        peak_rss = peak_rss.max(peak);
        rounds.push((concurrency, n, rate));
        if args.backlog > 0 {
            remove_backlog(store, &queue).await?;
        }
    }
    let bar = bar(200, "pickup latency", json);
    let latencies = pickup(store, 200, &bar).await?;
    let last_exit = last_job_exit(store).await?;
    let recovery = recovery(store, args.lease).await?;
    let enqueue_rate = enqueue_rates.iter().copied().fold(0.0, f64::max);
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    if json {
        let value = json!({
            "database": crate::store::redact_url(url),
            "backlog": args.backlog,
            "bulk_enqueue_jobs_per_s": enqueue_rate.round(),
            "throughput": rounds.iter().map(|(c, n, r)| json!({"concurrency": c, "jobs": n, "jobs_per_s": r.round()})).collect::<Vec<_>>(),
            "pickup_latency_ms": {"p50": ms(p50), "p99": ms(p99), "samples": latencies.len()},
            "idle_term_to_exit_ms": ms(idle_exit),
            "last_job_done_to_exit_ms": ms(last_exit),
            "abandoned_claim_rerun_ms": ms(recovery),
            "lease_ms": args.lease.as_millis() as u64,
            "rss_kib": {"idle": idle_rss, "under_load": peak_rss},
        });
        crate::outln!("{}", super::json_text(&value)?);
        return Ok(0);
    }
    crate::outln!("{:<46} {:>12}", "measure", "result");
    crate::outln!("{:<46} {:>12.0}", "bulk enqueue (jobs/s)", enqueue_rate);
    for (concurrency, n, rate) in &rounds {
        crate::outln!(
            "{:<46} {:>12.0}",
            format!("no-op jobs/s at concurrency {concurrency} ({n} jobs)"),
            rate
        );
    }
    crate::outln!("{:<46} {:>12.2}", "pickup latency p50 (ms)", ms(p50));
    crate::outln!("{:<46} {:>12.2}", "pickup latency p99 (ms)", ms(p99));
    crate::outln!("{:<46} {:>12.2}", "idle TERM -> exit (ms)", ms(idle_exit));
    crate::outln!(
        "{:<46} {:>12.2}",
        "last job done -> exit (ms)",
        ms(last_exit)
    );
    crate::outln!(
        "{:<46} {:>12.0}",
        format!(
            "killed worker's job re-run (ms, lease {}s)",
            args.lease.as_secs()
        ),
        ms(recovery)
    );
    crate::outln!("{:<46} {:>12}", "RSS idle (KiB)", idle_rss);
    crate::outln!("{:<46} {:>12}", "RSS under load (KiB)", peak_rss);
    Ok(0)
}
