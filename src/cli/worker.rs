//! `dockhand worker`: real signals, the process executor, the shell.

use std::time::Duration;

use clap::Args;
use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
use tokio::sync::mpsc;

use super::{parse_duration, CliError};
use crate::executor::docker::{self, DockerExecutor, Limits};
use crate::executor::process::JobUser;
use crate::executor::watchdog::Watchdog;
use crate::executor::{ExecError, ProcessExecutor, Router};
use crate::http::Monitor;
use crate::machine::{Config, Signal};
use crate::shell::{self, ShellConfig};
use crate::store::{AnyStore, Store, WorkerInfo};

/// `worker` options.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Queue to take jobs from (repeatable).
    #[arg(
        long = "queue",
        env = "DOCKHAND_QUEUES",
        value_delimiter = ',',
        value_name = "QUEUE",
        default_value = "default"
    )]
    pub queues: Vec<String>,
    /// Jobs running at once.
    #[arg(long, env = "DOCKHAND_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u32,
    /// Jobs claimed ahead of free slots and held until one frees (0: claim
    /// only for free slots). Helps many short jobs; with long jobs it keeps
    /// work from idle workers. Handed back, never started, at the first
    /// SIGTERM/SIGINT.
    #[arg(long, env = "DOCKHAND_PREFETCH", default_value_t = 0)]
    pub prefetch: u32,
    /// How often to look for jobs without a wake-up (and reap expired leases).
    #[arg(long, env = "DOCKHAND_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long running jobs may go on after the first SIGTERM/SIGINT.
    #[arg(long, env = "DOCKHAND_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Time between SIGTERM and SIGKILL for a job being stopped.
    #[arg(long, env = "DOCKHAND_KILL_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// How long a claim stays valid without a heartbeat (heartbeats every lease/3).
    #[arg(long, env = "DOCKHAND_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub lease: Duration,
    /// Default memory limit of job containers, e.g. 512m.
    #[arg(long, env = "DOCKHAND_DOCKER_MEMORY", default_value = "512m", value_parser = super::enqueue::parse_memory)]
    pub docker_memory: u64,
    /// Default CPU limit of job containers, e.g. 1 or 0.5.
    #[arg(long, env = "DOCKHAND_DOCKER_CPUS", default_value = "1", value_parser = super::enqueue::parse_cpus)]
    pub docker_cpus: u32,
    /// Default process limit of job containers (at least 1: a limit cannot be turned off).
    #[arg(long, env = "DOCKHAND_DOCKER_PIDS", default_value = "512", value_parser = super::enqueue::parse_pids)]
    pub docker_pids: u32,
    /// Serve /healthz, /readyz, /metrics and /status on this address (e.g. 0.0.0.0:9090).
    #[arg(long, env = "DOCKHAND_HTTP", value_name = "ADDR")]
    pub http: Option<String>,
    /// Run process jobs as this user (USER or USER:GROUP). A root worker
    /// runs them as `nobody` unless told otherwise; `--job-user root` is an
    /// explicit (logged) opt-out. A non-root worker runs them as itself.
    #[arg(long, value_name = "USER[:GROUP]", env = "DOCKHAND_JOB_USER")]
    pub job_user: Option<String>,
    /// Delete succeeded and cancelled jobs (with their history) this long
    /// after they finished; `off` keeps them.
    #[arg(long, env = "DOCKHAND_RETAIN", default_value = "1d", value_name = "DUR|off", value_parser = parse_retention)]
    pub retain: Retention,
    /// Delete failed jobs this long after they failed; `off` keeps them.
    #[arg(long, env = "DOCKHAND_RETAIN_FAILED", default_value = "7d", value_name = "DUR|off", value_parser = parse_retention)]
    pub retain_failed: Retention,
}

/// How long finished jobs are kept (`None`: for ever).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention(pub Option<Duration>);

/// `off` or a duration of at least a second.
pub fn parse_retention(text: &str) -> Result<Retention, String> {
    if text.trim() == "off" {
        return Ok(Retention(None));
    }
    let duration = parse_duration(text)?;
    if duration < Duration::from_secs(1) {
        return Err(format!(
            "retention {text:?} is shorter than a second; use `off` to keep jobs"
        ));
    }
    Ok(Retention(Some(duration)))
}

/// Delete finished jobs past their retention until the task is dropped: a
/// round every quarter of the shortest retention (1 s to 60 s). Each round
/// deletes in batches of short transactions, and concurrent workers skip
/// each other's rows, so claims never wait behind it.
async fn prune_finished(store: AnyStore, worker_id: String, retain: Retention, failed: Retention) {
    use crate::job::JobState;
    let rounds = [
        (vec![JobState::Succeeded, JobState::Cancelled], retain.0),
        (vec![JobState::Failed], failed.0),
    ];
    let Some(shortest) = rounds.iter().filter_map(|(_, keep)| *keep).min() else {
        return;
    };
    let every = (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for (states, keep) in &rounds {
            let Some(keep) = keep else { continue };
            match store.prune(states, *keep, false).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(worker_id = %worker_id, "pruned {n} finished job(s)"),
                Err(e) => tracing::warn!(worker_id = %worker_id, "pruning finished jobs: {e}"),
            }
        }
    }
}

/// Who process jobs run as, given the flag and who the worker is: `None`
/// runs them as the worker (which is then not root).
pub(crate) fn job_user(flag: Option<&str>) -> Result<Option<JobUser>, CliError> {
    // SAFETY: plain syscall.
    let euid = unsafe { libc::geteuid() };
    let resolve = |spec: &str| JobUser::resolve(spec).map_err(CliError::usage);
    match (flag, euid == 0) {
        (None, true) => Ok(Some(resolve("nobody")?)),
        (None, false) => Ok(None),
        (Some(spec), true) => {
            let user = resolve(spec)?;
            if user.is_root() {
                tracing::warn!("--job-user root: jobs run as root and can read the worker's memory, environment and files");
            }
            Ok(Some(user))
        }
        (Some(spec), false) => {
            let user = resolve(spec)?;
            if user.uid != euid {
                return Err(CliError::usage(format!(
                    "--job-user {spec}: only a root worker can run jobs as another user"
                )));
            }
            Ok(None)
        }
    }
}

/// The process executor of the binary: jobs under the shim (all their
/// descendants die with them), as the job user.
pub(crate) fn process_executor(
    watchdog: Option<Watchdog>,
    user: Option<JobUser>,
) -> ProcessExecutor {
    let mut executor = ProcessExecutor::new(watchdog);
    match std::env::current_exe() {
        Ok(binary) => executor = executor.with_shim(binary),
        Err(error) => tracing::warn!(
            %error,
            "cannot find the dockhand binary to run jobs under its shim; descendants that leave a job's process group may outlive it"
        ),
    }
    if let Some(user) = user {
        executor = executor.with_user(user);
    }
    executor
}

impl WorkerArgs {
    /// The machine configuration these flags ask for.
    pub fn machine_config(&self) -> Config {
        Config {
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            poll_interval: self.poll_interval,
            shutdown_timeout: self.shutdown_timeout,
            kill_grace: self.kill_grace,
            lease: self.lease,
            ..Config::default()
        }
    }
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Forward TERM, INT and USR1 to the shell. Registered before anything else
/// so no signal falls to its default action once the worker runs.
pub(crate) fn signal_source() -> Result<mpsc::Receiver<Signal>, CliError> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| CliError::fatal(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            let signal = match signal {
                SIGTERM => Signal::Term,
                SIGINT => Signal::Int,
                _ => Signal::Usr1,
            };
            if tx.send(signal).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// The Docker executor for image jobs, and a task that cleans up containers
/// left by dead workers. The engine may be away now or later: the executor
/// watches it, and image jobs are claimed only while it answers. Process
/// jobs run either way.
async fn docker_executor(
    store: &AnyStore,
    args: &WorkerArgs,
    worker_id: &str,
    lease: Duration,
) -> Result<DockerExecutor, ExecError> {
    let limits = Limits {
        memory_bytes: args.docker_memory,
        cpu_millis: args.docker_cpus,
        pids: args.docker_pids,
    };
    let store_id = store.instance_id().await?;
    let executor = DockerExecutor::connect(&store_id, worker_id, limits).await?;
    let (reconcile_store, id, engine) = (
        store.clone(),
        worker_id.to_string(),
        executor.engine_handle(),
    );
    tokio::spawn(async move {
        // At start-up, then every lease: an orphan is removed at most a lease
        // after its claim expired. Each worker is judged by the lease it
        // announced, not by this one's.
        loop {
            if let (true, Some(client)) = (engine.is_up(), engine.client()) {
                match docker::reconcile(&client, &reconcile_store, &id, lease).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::warn!(worker_id = %id, removed = n, "removed containers left by dead workers")
                    }
                    Err(error) => tracing::debug!(worker_id = %id, %error, "reconciliation failed"),
                }
            }
            tokio::time::sleep(lease).await;
        }
    });
    Ok(executor)
}

/// Wait, while the worker starts, for a TERM or INT (returned); a USR1 gets
/// a status line saying the worker is starting.
pub(crate) async fn startup_signal(signals: &mut mpsc::Receiver<Signal>) -> Signal {
    loop {
        match signals.recv().await {
            Some(Signal::Usr1) => {
                crate::errln!("dockhand status: phase=starting (connecting to the database)")
            }
            Some(signal) => return signal,
            None => std::future::pending::<()>().await,
        }
    }
}

/// Run the worker; the exit code is the machine's (0 or 75), 1 if fatal.
/// `signals` were installed before the store was opened.
pub async fn run(
    store: AnyStore,
    args: WorkerArgs,
    watchdog: Option<Watchdog>,
    signals: mpsc::Receiver<Signal>,
) -> Result<i32, CliError> {
    let config = args.machine_config();
    config
        .validate()
        .map_err(|e| CliError::usage(format!("invalid worker configuration: {e}")))?;
    let user = job_user(args.job_user.as_deref())?;
    let pid = std::process::id();
    let host = host_name();
    let worker = WorkerInfo {
        id: format!("{host}-{pid}-{:08x}", fastrand::u32(..)),
        host,
        pid,
        queues: args.queues.clone(),
        concurrency: args.concurrency,
        lease: config.lease,
    };
    let monitor = Monitor::new(&worker.id, config.heartbeat_interval()).with_queue_stats(
        store.clone(),
        config.poll_interval.max(Duration::from_secs(1)),
    );
    if let Some(addr) = &args.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| CliError::fatal(format!("cannot serve HTTP on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| addr.clone());
        tracing::info!(worker_id = %worker.id, addr = %bound, "serving HTTP on {bound}");
        let (monitor, worker_id) = (monitor.clone(), worker.id.clone());
        tokio::spawn(async move {
            if let Err(error) = crate::http::serve(listener, monitor).await {
                tracing::error!(worker_id = %worker_id, %error, "HTTP server stopped");
            }
        });
    }
    let worker_id = worker.id.clone();
    let lease = config.lease;
    let shell_config = ShellConfig {
        worker,
        queues: args.queues.clone(),
        machine: config,
        store_timeout: Duration::from_secs(5),
        observer: std::sync::Arc::new(monitor),
        status_to_stderr: true,
    };
    let executor = Router::new(
        process_executor(watchdog, user),
        docker_executor(&store, &args, &worker_id, lease).await,
    );
    // Every worker enqueues the due slots of periodic jobs; the store makes
    // each slot one job across the fleet.
    let schedules = tokio::spawn(super::schedule::enqueue_due(
        store.clone(),
        worker_id.clone(),
    ));
    let pruning = tokio::spawn(prune_finished(
        store.clone(),
        worker_id.clone(),
        args.retain,
        args.retain_failed,
    ));
    let report = shell::run(store, executor, signals, shell_config).await;
    schedules.abort();
    pruning.abort();
    if let Some(message) = report.fatal {
        return Err(CliError::fatal(message));
    }
    if !report.trace.is_empty() {
        crate::errln!("shutdown trace:\n{}", report.trace.trim_end());
    }
    Ok(report.code)
}
