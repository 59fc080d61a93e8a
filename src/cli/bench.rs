//! `dockhand bench`: no-op jobs through an in-process worker on the chosen
//! database, measuring what users ask about: enqueue rate, throughput by
//! concurrency, pickup latency, shutdown latency, recovery time and memory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::CliError;
use crate::embed::WorkerBuilder;
use crate::job::NewJob;
use crate::machine::{Config, Machine, Signal};
use crate::shell::{Observer, ShellConfig};
use crate::store::{AnyStore, ClaimRequest, Store, WorkerInfo};

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
    /// The worker's `--prefetch` in the throughput and process-job rounds:
    /// jobs claimed ahead of free slots.
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
    /// `true` commands run through the process executor at concurrency 16,
    /// under the shim as `dockhand worker` runs them (0 skips the round).
    #[arg(long, default_value_t = 2_000)]
    pub process_jobs: u64,
    /// Lease for the recovery measurement (a claim left by a "killed" worker).
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub lease: Duration,
    /// JSON instead of a table (save it as a baseline for --check).
    #[arg(long)]
    pub json: bool,
    /// Compare this run with a baseline saved from `bench --json` (made
    /// with the same settings, on the same kind of database) and exit 1 if
    /// any measure is worse than the baseline's by more than --tolerance.
    #[arg(long, value_name = "BASELINE.json")]
    pub check: Option<PathBuf>,
    /// How much worse than the baseline a measure may be, in percent:
    /// 30 lets throughput fall to 70 % of the baseline's, and latency or
    /// memory grow to 1/0.7 (1.43x) of it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=95))]
    pub tolerance: u32,
}

/// Largest baseline file read (a `bench --json` output is about 1 KiB).
const MAX_BASELINE: u64 = 1024 * 1024;

/// Which way a measure improves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
}

/// One measure of a run set against the baseline's.
#[derive(Debug, PartialEq)]
struct Compared {
    measure: String,
    baseline: f64,
    now: f64,
    better: Better,
    regressed: bool,
}

/// The measures a check compares, as JSON pointers into `bench --json`.
/// Times are in milliseconds; a millisecond is added to both sides, so
/// jitter on sub-millisecond measures (an idle exit takes about 1 ms) is
/// not taken for a regression.
const MEASURES: [(&str, Better, bool); 9] = [
    ("/bulk_enqueue_jobs_per_s", Better::Higher, false),
    ("/process_jobs_per_s", Better::Higher, false),
    ("/pickup_latency_ms/p50", Better::Lower, true),
    ("/pickup_latency_ms/p99", Better::Lower, true),
    ("/idle_term_to_exit_ms", Better::Lower, true),
    ("/last_job_done_to_exit_ms", Better::Lower, true),
    ("/abandoned_claim_rerun_ms", Better::Lower, true),
    ("/rss_kib/idle", Better::Lower, false),
    ("/rss_kib/under_load", Better::Lower, false),
];

/// Whether `now` is worse than `baseline` by more than `tolerance` (0..1),
/// as a ratio.
fn regressed(baseline: f64, now: f64, better: Better, tolerance: f64) -> bool {
    match better {
        Better::Higher => now < baseline * (1.0 - tolerance),
        Better::Lower => now * (1.0 - tolerance) > baseline,
    }
}

fn throughput_of(run: &serde_json::Value, concurrency: u64) -> Option<f64> {
    run["throughput"]
        .as_array()?
        .iter()
        .find(|round| round["concurrency"].as_u64() == Some(concurrency))?["jobs_per_s"]
        .as_f64()
}

/// Every measure of `now` set against `baseline` (both `bench --json`).
fn compare(baseline: &serde_json::Value, now: &serde_json::Value, tolerance: f64) -> Vec<Compared> {
    let mut pairs = Vec::new();
    for (pointer, better, is_ms) in MEASURES {
        if let (Some(base), Some(value)) = (
            baseline.pointer(pointer).and_then(|v| v.as_f64()),
            now.pointer(pointer).and_then(|v| v.as_f64()),
        ) {
            let shift = if is_ms { 1.0 } else { 0.0 };
            pairs.push((
                pointer.trim_start_matches('/').replace('/', "."),
                base,
                value,
                better,
                shift,
            ));
        }
    }
    for round in now["throughput"].as_array().into_iter().flatten() {
        let Some(concurrency) = round["concurrency"].as_u64() else {
            continue;
        };
        if let (Some(base), Some(value)) = (
            throughput_of(baseline, concurrency),
            round["jobs_per_s"].as_f64(),
        ) {
            pairs.push((
                format!("jobs_per_s at concurrency {concurrency}"),
                base,
                value,
                Better::Higher,
                0.0,
            ));
        }
    }
    pairs
        .into_iter()
        .map(|(measure, baseline, now, better, shift)| Compared {
            regressed: regressed(baseline + shift, now + shift, better, tolerance),
            measure,
            baseline,
            now,
            better,
        })
        .collect()
}

/// The settings a run is made with, as its JSON records them: a baseline
/// only compares with a run of the same settings on the same kind of
/// database.
fn settings(run: &serde_json::Value) -> String {
    let database = run["database"].as_str().unwrap_or_default();
    let kind = database.split(':').next().unwrap_or_default();
    let concurrency: Vec<String> = run["throughput"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|round| round["concurrency"].to_string())
        .collect();
    format!(
        "{kind} database, --jobs {} --concurrency {} --backlog {} --prefetch {} --process-jobs {} --lease {}ms",
        run["jobs"],
        concurrency.join(","),
        run["backlog"],
        // Baselines from before --prefetch ran without it.
        run["prefetch"].as_u64().unwrap_or(0),
        run["process_jobs"],
        run["lease_ms"]
    )
}

/// Read a baseline and make sure it was made the way this run will be.
fn read_baseline(path: &Path, url: &str, args: &BenchArgs) -> Result<serde_json::Value, CliError> {
    use std::io::Read;
    // One line whatever bytes the path holds.
    let shown = crate::redact::one_line(&path.display().to_string());
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_BASELINE + 1).read_to_string(&mut text))
        .map_err(|e| CliError::fatal(format!("cannot read {shown}: {e}")))?;
    if text.len() as u64 > MAX_BASELINE {
        return Err(CliError::usage(format!(
            "{shown}: larger than {MAX_BASELINE} bytes; not a bench baseline"
        )));
    }
    let baseline: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        CliError::usage(format!(
            "{shown}: not a `dockhand bench --json` output: {e}"
        ))
    })?;
    if baseline["throughput"].as_array().is_none() || baseline["jobs"].as_u64().is_none() {
        return Err(CliError::usage(format!(
            "{shown}: not a `dockhand bench --json` output"
        )));
    }
    let planned = json!({
        "database": crate::store::redact_url(url),
        "jobs": args.jobs,
        "backlog": args.backlog,
        "prefetch": args.prefetch,
        "process_jobs": args.process_jobs,
        "lease_ms": args.lease.as_millis() as u64,
        "throughput": args.concurrency.iter().map(|c| json!({"concurrency": c})).collect::<Vec<_>>(),
    });
    let (theirs, ours) = (settings(&baseline), settings(&planned));
    if theirs != ours {
        return Err(CliError::usage(format!(
            "{shown} was made with {theirs}; this run would be {ours}: run with the baseline's settings"
        )));
    }
    Ok(baseline)
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

/// The worker's own defaults (claims and outcome writes of up to 100, as
/// `dockhand worker` makes them), with a short poll for the rounds that
/// wait for an empty queue.
fn config(concurrency: u32) -> Config {
    Config {
        concurrency,
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
    enqueue_all(store, &jobs).await?;
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Enqueue in calls of 10,000 jobs (under the store's bulk limit).
async fn enqueue_all(store: &AnyStore, jobs: &[NewJob]) -> Result<(), CliError> {
    for chunk in jobs.chunks(10_000) {
        store.enqueue_many(chunk).await?;
    }
    Ok(())
}

/// Run `n` queued jobs at `concurrency`; (jobs/s, peak RSS KiB).
async fn throughput(
    store: &AnyStore,
    queue: &str,
    n: u64,
    config: Config,
    bar: &ProgressBar,
) -> Result<(f64, u64), CliError> {
    let done = Arc::new(AtomicU64::new(0));
    let counter = done.clone();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config)
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

/// Counts a worker's jobs recorded as succeeded, from its machine.
#[derive(Debug, Default)]
struct Succeeded(AtomicU64);

impl Observer for Succeeded {
    fn publish(&self, machine: &Machine) -> Option<tokio::time::Instant> {
        self.0
            .store(machine.counters().succeeded, Ordering::Relaxed);
        None
    }
}

/// Run `n` queued `true` commands at concurrency 16 through the process
/// executor, under the shim, as `dockhand worker` runs them; jobs/s.
async fn process_throughput(
    store: &AnyStore,
    n: u64,
    prefetch: u32,
    bar: &ProgressBar,
) -> Result<f64, CliError> {
    const CONCURRENCY: u32 = 16;
    let queue = queue("process");
    let mut job = NewJob::new(vec!["true".into()]);
    job.queue = queue.clone();
    enqueue_all(store, &vec![job; n as usize]).await?;
    let config = Config {
        prefetch,
        ..config(CONCURRENCY)
    };
    let pid = std::process::id();
    let counted = Arc::new(Succeeded::default());
    let shell = ShellConfig {
        worker: WorkerInfo {
            id: format!("bench-{pid}-{:08x}", fastrand::u32(..)),
            host: "bench".into(),
            pid,
            queues: vec![queue.clone()],
            concurrency: CONCURRENCY,
            lease: config.lease,
        },
        queues: vec![queue],
        machine: config,
        store_timeout: Duration::from_secs(5),
        observer: counted.clone(),
        status_to_stderr: false,
    };
    let (signal, signals) = tokio::sync::mpsc::channel(4);
    let executor = super::worker::process_executor(None, None);
    let start = Instant::now();
    let run = tokio::spawn(crate::shell::run(store.clone(), executor, signals, shell));
    while counted.0.load(Ordering::Relaxed) < n && !run.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
        bar.set_position(counted.0.load(Ordering::Relaxed));
    }
    let elapsed = start.elapsed();
    let _ = signal.send(Signal::Term).await;
    let report = run.await.map_err(|e| CliError::fatal(e.to_string()))?;
    bar.finish_and_clear();
    if let Some(message) = report.fatal {
        return Err(CliError::fatal(message));
    }
    if report.status.counters.succeeded < n {
        return Err(CliError::fatal(format!(
            "only {} of {n} process jobs were recorded as succeeded",
            report.status.counters.succeeded
        )));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
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
async fn last_job_exit_once(store: &AnyStore) -> Result<Duration, CliError> {
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

/// [`last_job_exit_once`]: the median of `rounds`, since one sample swings
/// by milliseconds on a shared machine.
async fn last_job_exit(store: &AnyStore, rounds: usize) -> Result<Duration, CliError> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        times.push(last_job_exit_once(store).await?);
    }
    times.sort();
    Ok(percentile(&times, 0.5))
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

/// Run every measurement and print the table (or JSON); with `--check`,
/// compare with the baseline and exit 1 on a regression.
pub async fn run(store: &AnyStore, url: &str, args: BenchArgs) -> Result<i32, CliError> {
    let json = args.json;
    let baseline = match &args.check {
        Some(path) => Some(read_baseline(path, url, &args)?),
        None => None,
    };
    if !json {
        crate::outln!(
            "dockhand bench on {} ({} jobs per round, {} queued ahead, prefetch {})",
            crate::store::redact_url(url),
            args.jobs,
            args.backlog,
            args.prefetch
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
        let config = Config {
            prefetch: args.prefetch,
            ..config(concurrency)
        };
        let (rate, peak) = throughput(store, &queue, n, config, &bar).await?;
        peak_rss = peak_rss.max(peak);
        rounds.push((concurrency, n, rate));
        if args.backlog > 0 {
            remove_backlog(store, &queue).await?;
        }
    }
    let process_rate = if args.process_jobs > 0 {
        let bar = bar(args.process_jobs, "process jobs, concurrency 16", json);
        Some(process_throughput(store, args.process_jobs, args.prefetch, &bar).await?)
    } else {
        None
    };
    let bar = bar(200, "pickup latency", json);
    let latencies = pickup(store, 200, &bar).await?;
    let last_exit = last_job_exit(store, 5).await?;
    let recovery = recovery(store, args.lease).await?;
    let enqueue_rate = enqueue_rates.iter().copied().fold(0.0, f64::max);
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    let mut value = json!({
        "database": crate::store::redact_url(url),
        "jobs": args.jobs,
        "backlog": args.backlog,
        "prefetch": args.prefetch,
        "process_jobs": args.process_jobs,
        "bulk_enqueue_jobs_per_s": enqueue_rate.round(),
        "throughput": rounds.iter().map(|(c, n, r)| json!({"concurrency": c, "jobs": n, "jobs_per_s": r.round()})).collect::<Vec<_>>(),
        "pickup_latency_ms": {"p50": ms(p50), "p99": ms(p99), "samples": latencies.len()},
        "idle_term_to_exit_ms": ms(idle_exit),
        "last_job_done_to_exit_ms": ms(last_exit),
        "abandoned_claim_rerun_ms": ms(recovery),
        "lease_ms": args.lease.as_millis() as u64,
        "rss_kib": {"idle": idle_rss, "under_load": peak_rss},
    });
    if let Some(rate) = process_rate {
        value["process_jobs_per_s"] = json!(rate.round());
    }
    let tolerance = f64::from(args.tolerance) / 100.0;
    let compared = baseline
        .as_ref()
        .map(|baseline| compare(baseline, &value, tolerance));
    let regressions = compared.iter().flatten().filter(|c| c.regressed).count();
    if json {
        if let Some(compared) = &compared {
            value["check"] = json!({
                "baseline": args.check.as_ref().map(|p| p.display().to_string()),
                "tolerance_percent": args.tolerance,
                "regressions": regressions,
                "measures": compared.iter().map(|c| json!({
                    "measure": c.measure,
                    "baseline": c.baseline,
                    "now": c.now,
                    "ratio": ratio(c),
                    "regressed": c.regressed,
                })).collect::<Vec<_>>(),
            });
        }
        crate::outln!("{}", super::json_text(&value)?);
    } else {
        print_table(&value, &rounds, args.lease)?;
        if let Some(compared) = &compared {
            print_check(compared, args.tolerance)?;
        }
    }
    if regressions > 0 {
        let names: Vec<&str> = compared
            .iter()
            .flatten()
            .filter(|c| c.regressed)
            .map(|c| c.measure.as_str())
            .collect();
        return Err(CliError::fatal(format!(
            "{regressions} measure(s) worse than the baseline by more than {} %: {}",
            args.tolerance,
            names.join(", ")
        )));
    }
    Ok(0)
}

/// How much better (above 1) or worse (below 1) than the baseline.
fn ratio(c: &Compared) -> f64 {
    let (better, worse) = match c.better {
        Better::Higher => (c.now, c.baseline),
        Better::Lower => (c.baseline, c.now),
    };
    if worse == 0.0 {
        1.0
    } else {
        better / worse
    }
}

fn print_table(
    value: &serde_json::Value,
    rounds: &[(u32, u64, f64)],
    lease: Duration,
) -> Result<(), CliError> {
    let number = |pointer: &str| {
        value
            .pointer(pointer)
            .and_then(|v| v.as_f64())
            .unwrap_or(0.0)
    };
    crate::outln!("{:<46} {:>12}", "measure", "result");
    crate::outln!(
        "{:<46} {:>12.0}",
        "bulk enqueue (jobs/s)",
        number("/bulk_enqueue_jobs_per_s")
    );
    for (concurrency, n, rate) in rounds {
        crate::outln!(
            "{:<46} {:>12.0}",
            format!("no-op jobs/s at concurrency {concurrency} ({n} jobs)"),
            rate
        );
    }
    if let Some(rate) = value.get("process_jobs_per_s").and_then(|v| v.as_f64()) {
        crate::outln!(
            "{:<46} {:>12.0}",
            "process jobs (`true`)/s at concurrency 16",
            rate
        );
    }
    crate::outln!(
        "{:<46} {:>12.2}",
        "pickup latency p50 (ms)",
        number("/pickup_latency_ms/p50")
    );
    crate::outln!(
        "{:<46} {:>12.2}",
        "pickup latency p99 (ms)",
        number("/pickup_latency_ms/p99")
    );
    crate::outln!(
        "{:<46} {:>12.2}",
        "idle TERM -> exit (ms)",
        number("/idle_term_to_exit_ms")
    );
    crate::outln!(
        "{:<46} {:>12.2}",
        "last job done -> exit (ms)",
        number("/last_job_done_to_exit_ms")
    );
    crate::outln!(
        "{:<46} {:>12.0}",
        format!(
            "killed worker's job re-run (ms, lease {}s)",
            lease.as_secs()
        ),
        number("/abandoned_claim_rerun_ms")
    );
    crate::outln!("{:<46} {:>12}", "RSS idle (KiB)", number("/rss_kib/idle"));
    crate::outln!(
        "{:<46} {:>12}",
        "RSS under load (KiB)",
        number("/rss_kib/under_load")
    );
    Ok(())
}

fn print_check(compared: &[Compared], tolerance: u32) -> Result<(), CliError> {
    crate::outln!("");
    crate::outln!("against the baseline (a measure may be {tolerance} % worse):");
    crate::outln!(
        "{:<34} {:>12} {:>12} {:>7}  verdict",
        "measure",
        "baseline",
        "now",
        "ratio"
    );
    for c in compared {
        crate::outln!(
            "{:<34} {:>12.2} {:>12.2} {:>6.2}x  {}",
            c.measure,
            c.baseline,
            c.now,
            ratio(c),
            if c.regressed { "REGRESSED" } else { "ok" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(jobs_per_s: f64, p50: f64, rss: u64) -> serde_json::Value {
        json!({
            "database": "sqlite://dockhand.db",
            "jobs": 100,
            "backlog": 0,
            "process_jobs": 0,
            "lease_ms": 2000,
            "bulk_enqueue_jobs_per_s": 50_000.0,
            "throughput": [{"concurrency": 16, "jobs": 100, "jobs_per_s": jobs_per_s}],
            "pickup_latency_ms": {"p50": p50, "p99": 9.0},
            "rss_kib": {"idle": rss, "under_load": 20_000},
        })
    }

    fn verdicts(baseline: &serde_json::Value, now: &serde_json::Value) -> Vec<(String, bool)> {
        compare(baseline, now, 0.3)
            .into_iter()
            .map(|c| (c.measure, c.regressed))
            .collect()
    }

    #[test]
    fn a_ratio_beyond_the_tolerance_is_a_regression_each_way() {
        assert!(!regressed(100.0, 70.0, Better::Higher, 0.3));
        assert!(regressed(100.0, 69.0, Better::Higher, 0.3));
        assert!(!regressed(100.0, 1_000.0, Better::Higher, 0.3));
        assert!(!regressed(70.0, 100.0, Better::Lower, 0.3));
        assert!(regressed(69.0, 100.0, Better::Lower, 0.3));
        assert!(!regressed(100.0, 1.0, Better::Lower, 0.3));
    }

    #[test]
    fn every_measure_is_compared_and_only_the_worse_ones_fail() {
        let baseline = run(1_000.0, 3.0, 10_000);
        let same = verdicts(&baseline, &baseline);
        let names: Vec<&str> = same.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            names,
            [
                "bulk_enqueue_jobs_per_s",
                "pickup_latency_ms.p50",
                "pickup_latency_ms.p99",
                "rss_kib.idle",
                "rss_kib.under_load",
                "jobs_per_s at concurrency 16"
            ]
        );
        assert!(same.iter().all(|(_, bad)| !bad));
        let regressed = |now: &serde_json::Value| -> Vec<String> {
            verdicts(&baseline, now)
                .into_iter()
                .filter(|(_, bad)| *bad)
                .map(|(measure, _)| measure)
                .collect()
        };
        assert_eq!(
            regressed(&run(600.0, 3.0, 10_000)),
            ["jobs_per_s at concurrency 16"]
        );
        assert_eq!(regressed(&run(1_000.0, 3.0, 15_000)), ["rss_kib.idle"]);
    }

    #[test]
    fn times_are_compared_with_a_millisecond_added() {
        // 0.2 ms -> 0.6 ms is three times slower, but within a millisecond.
        let fine = verdicts(&run(1_000.0, 0.2, 10_000), &run(1_000.0, 0.6, 10_000));
        assert!(fine.iter().all(|(_, bad)| !bad), "{fine:?}");
        let worse = verdicts(&run(1_000.0, 3.0, 10_000), &run(1_000.0, 6.0, 10_000));
        assert!(worse.contains(&("pickup_latency_ms.p50".to_string(), true)));
    }

    #[test]
    fn a_baseline_of_other_settings_is_named_as_such() {
        let mut other = run(1_000.0, 3.0, 10_000);
        assert_eq!(
            settings(&other),
            "sqlite database, --jobs 100 --concurrency 16 --backlog 0 --prefetch 0 --process-jobs 0 --lease 2000ms"
        );
        other["prefetch"] = json!(64);
        assert!(settings(&other).contains("--prefetch 64 "));
        other["database"] = json!("postgres://dockhand:xxxxx@localhost/db");
        assert!(settings(&other).starts_with("postgres database,"));
    }

    #[test]
    fn the_ratio_reads_above_one_when_better() {
        let c = |baseline, now, better| Compared {
            measure: String::new(),
            baseline,
            now,
            better,
            regressed: false,
        };
        assert_eq!(ratio(&c(100.0, 200.0, Better::Higher)), 2.0);
        assert_eq!(ratio(&c(4.0, 2.0, Better::Lower)), 2.0);
        assert_eq!(ratio(&c(4.0, 8.0, Better::Lower)), 0.5);
    }
}
