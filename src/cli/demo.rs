//! `dockhand demo`: a self-contained tour on a fresh machine. An embedded
//! database in a temporary directory, six jobs, a real worker, and a real
//! SIGTERM to itself part-way through — then the drain, the kill of a job
//! that ignores TERM, its requeue, and the shutdown trace, in plain words.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::worker::{host_name, signal_source};
use super::CliError;
use crate::executor::watchdog::Watchdog;
use crate::executor::Router;
use crate::http::Monitor;
use crate::job::{JobId, JobState, NewJob};
use crate::machine::Config;
use crate::shell::{self, ShellConfig};
use crate::store::{AnyStore, JobFilter, SqliteStore, Store, WorkerInfo};

/// When the demo sends itself SIGTERM.
const TERM_AFTER: Duration = Duration::from_millis(2500);

struct DemoJob {
    label: &'static str,
    what: &'static str,
    script: &'static str,
    max_attempts: u32,
}

const JOBS: [DemoJob; 6] = [
    DemoJob {
        label: "quick-1",
        what: "finishes in 0.3s",
        script: "sleep 0.3; echo hello from quick-1",
        max_attempts: 3,
    },
    DemoJob {
        label: "quick-2",
        what: "finishes in 0.5s",
        script: "sleep 0.5; echo hello from quick-2",
        max_attempts: 3,
    },
    DemoJob {
        label: "quick-3",
        what: "finishes in 0.8s",
        script: "sleep 0.8; echo hello from quick-3",
        max_attempts: 3,
    },
    DemoJob {
        label: "flaky",
        what: "fails, is retried after ~1s, fails again",
        script: "echo trying; exit 1",
        max_attempts: 2,
    },
    DemoJob {
        label: "slow",
        what: "takes 5s: still running at the SIGTERM",
        script: "sleep 5; echo slow job done",
        max_attempts: 3,
    },
    DemoJob {
        label: "stubborn",
        what: "ignores SIGTERM: must be killed",
        script: "trap '' TERM; sleep 600 & wait",
        max_attempts: 3,
    },
];

/// A line above the progress bar; plain stdout when the bar is hidden
/// (not a terminal), where indicatif would drop it.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        // The tour goes on even if nobody reads it any more.
        let _ = super::out::line(format_args!("{line}"));
    } else {
        bar.println(line);
    }
}

fn elapsed(start: tokio::time::Instant) -> String {
    format!("{:>5.1}s", start.elapsed().as_secs_f64())
}

/// Run the tour; the exit code is the worker's.
pub async fn run(watchdog: Option<Watchdog>) -> Result<i32, CliError> {
    let dir = tempfile::tempdir()
        .map_err(|e| CliError::fatal(format!("cannot create a temporary directory: {e}")))?;
    let url = format!("sqlite://{}", dir.path().join("demo.db").display());
    let store = AnyStore::Sqlite(SqliteStore::open(&url).await?);
    store.migrate().await?;

    crate::outln!("dockhand demo: one worker, six jobs, and a SIGTERM part-way through.");
    crate::outln!("database: {url} (temporary)\n");
    let mut labels = BTreeMap::new();
    for job in &JOBS {
        let mut new = NewJob::new(vec!["sh".into(), "-c".into(), job.script.into()]);
        new.max_attempts = job.max_attempts;
        let ids = store.enqueue_many(&[new]).await?;
        labels.insert(ids[0], job.label);
        crate::outln!("  enqueued job {}  {:<9} {}", ids[0], job.label, job.what);
    }
    let config = Config {
        concurrency: 4,
        poll_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(3),
        kill_grace: Duration::from_secs(1),
        lease: Duration::from_secs(3),
        ..Config::default()
    };
    crate::outln!(
        "\nworker: concurrency {}, shutdown timeout {}s, kill grace {}s (short, for the demo)",
        config.concurrency,
        config.shutdown_timeout.as_secs(),
        config.kill_grace.as_secs()
    );
    let user = super::worker::job_user(None)?;
    match &user {
        Some(user) => crate::outln!(
            "jobs run as {} (uid {}), not as the worker (root), each under a shim that kills all its descendants\n",
            user.name,
            user.uid
        ),
        None => crate::outln!(
            "jobs run as the worker's own user, which is non-dumpable (they cannot read its memory or environment), each under a shim that kills all its descendants\n"
        ),
    }

    let signals = signal_source()?;
    let pid = std::process::id();
    let worker = WorkerInfo {
        id: format!("demo-{}-{pid}", host_name()),
        host: host_name(),
        pid,
        queues: vec!["default".into()],
        concurrency: config.concurrency,
        lease: config.lease,
    };
    let monitor = Monitor::new(&worker.id, config.heartbeat_interval());
    let shell_config = ShellConfig {
        worker,
        queues: vec!["default".into()],
        machine: config,
        store_timeout: Duration::from_secs(5),
        observer: std::sync::Arc::new(monitor),
        status_to_stderr: true,
    };
    let start = tokio::time::Instant::now();
    let bar = ProgressBar::new(JOBS.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("  [{bar:24}] {pos}/{len} done  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let (stop_watcher, stopped) = tokio::sync::oneshot::channel();
    let watcher = tokio::spawn(watch(
        store.clone(),
        labels.clone(),
        bar.clone(),
        start,
        stopped,
    ));
    let worker_task = tokio::spawn(shell::run(
        store.clone(),
        Router::new(
            super::worker::process_executor(watchdog, user),
            Err(crate::executor::ExecError::NotConfigured(
                "the demo runs no containers",
            )),
        ),
        signals,
        shell_config,
    ));
    tokio::time::sleep(TERM_AFTER).await;
    say(&bar, format!(
        "{}  --- sending SIGTERM to myself (pid {pid}), as `kubectl delete pod` or `systemctl stop` would ---",
        elapsed(start)
    ));
    // SAFETY: a plain syscall signalling this process.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let report = worker_task
        .await
        .map_err(|e| CliError::fatal(format!("the worker task failed: {e}")))?;
    // The watcher takes one last look, so the log ends on the final states.
    let _ = stop_watcher.send(());
    let _ = watcher.await;
    bar.finish_and_clear();
    if let Some(message) = report.fatal {
        return Err(CliError::fatal(message));
    }
    crate::outln!("\nshutdown trace (what the worker prints at exit):");
    crate::outln!("{}", report.trace.trim_end());
    summary(&store, &labels, report.code).await?;
    Ok(report.code)
}

/// Print each job's state change as it happens, until told to stop.
async fn watch(
    store: AnyStore,
    labels: BTreeMap<JobId, &'static str>,
    bar: ProgressBar,
    start: tokio::time::Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut seen = BTreeMap::new();
    loop {
        let _ = report_changes(&store, &labels, &bar, start, &mut seen).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = &mut stop => {
                let _ = report_changes(&store, &labels, &bar, start, &mut seen).await;
                return;
            }
        }
    }
}

async fn report_changes(
    store: &AnyStore,
    labels: &BTreeMap<JobId, &'static str>,
    bar: &ProgressBar,
    start: tokio::time::Instant,
    seen: &mut BTreeMap<JobId, (JobState, u32, u32)>,
) -> Result<(), CliError> {
    let jobs = store.list(&JobFilter::default()).await?;
    let mut done = 0;
    let mut running = 0;
    for job in jobs.iter().rev() {
        let now = (job.state, job.attempts, job.interruptions);
        if job.state.is_final() {
            done += 1;
        }
        if job.state == JobState::Running {
            running += 1;
        }
        if seen.insert(job.id, now) == Some(now) {
            continue;
        }
        let label = labels.get(&job.id).copied().unwrap_or("?");
        let text = match job.state {
            JobState::Running => "started".to_string(),
            JobState::Succeeded => "succeeded".to_string(),
            JobState::Failed => format!("failed for good: {}", job.error.as_deref().unwrap_or("")),
            JobState::Queued if job.interruptions > 0 => {
                format!(
                    "requeued: interrupted {} time(s), attempts used {}",
                    job.interruptions, job.attempts
                )
            }
            JobState::Queued if job.attempts > 0 => {
                format!(
                    "failed attempt {} of {}: retry scheduled",
                    job.attempts, job.max_attempts
                )
            }
            JobState::Queued => continue,
            JobState::Cancelled => "cancelled".to_string(),
        };
        say(
            bar,
            format!("{}  job {} {label:<9} {text}", elapsed(start), job.id),
        );
    }
    bar.set_position(done);
    bar.set_message(format!("{running} running"));
    Ok(())
}

async fn summary(
    store: &AnyStore,
    labels: &BTreeMap<JobId, &'static str>,
    code: i32,
) -> Result<(), CliError> {
    let jobs = store.list(&JobFilter::default()).await?;
    let by_label = |label: &str| jobs.iter().find(|j| labels.get(&j.id) == Some(&label));
    crate::outln!("\nwhat happened:");
    crate::outln!("  - at the SIGTERM the worker stopped claiming; jobs already running went on.");
    if let Some(slow) = by_label("slow") {
        crate::outln!(
            "  - the slow job finished during the drain: {}.",
            slow.state
        );
    }
    if let Some(stubborn) = by_label("stubborn") {
        crate::outln!(
            "  - the stubborn job ignored SIGTERM; after the shutdown timeout and the kill grace it was \
             killed and is {} again (interruptions {}, attempts {}): the next worker runs it, and an \
             interruption never uses up an attempt.",
            stubborn.state, stubborn.interruptions, stubborn.attempts
        );
    }
    if let Some(flaky) = by_label("flaky") {
        crate::outln!(
            "  - the flaky job failed, was retried after a backoff, and is {} after {} attempts.",
            flaky.state,
            flaky.attempts
        );
    }
    let meaning = match code {
        0 => "every job running at the signal finished on its own",
        75 => "some job was interrupted and requeued (EX_TEMPFAIL): nothing is lost",
        _ => "the worker hit a fatal error",
    };
    crate::outln!("  - exit code {code}: {meaning}.");
    crate::outln!("\nnext: `cargo run -- enqueue -- sh -c 'sleep 5; echo done'`, then `cargo run -- worker` and press Ctrl-C.");
    Ok(())
}
