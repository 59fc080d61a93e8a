//! Listing and changing commands: `jobs`, `show`, `logs`, `cancel`, `retry`,
//! `status`, `queues`, `pause`, `resume`.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{
    BulkArgs, CliError, IdArg, JobsArgs, JsonArg, PruneArgs, QueueArg, ShowArgs, StateFilter,
    StatusArgs,
};
use crate::job::{JobId, JobState};
use crate::machine::fmt_duration;
use crate::redact::{redact_text, redacted_env};
use crate::store::{
    unix_ms_now, AnyStore, BulkAction, BulkFilter, CancelResult, Job, JobEvent, JobFilter,
    QueueStats, Store, StoreError, WorkerRow,
};

/// Widest command shown in the `jobs` table.
const COMMAND_WIDTH: usize = 48;

/// RFC 3339 with milliseconds, UTC.
pub fn time(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

fn opt_time(ms: Option<i64>) -> Value {
    ms.map(|ms| Value::String(time(ms))).unwrap_or(Value::Null)
}

/// The command as a shell would read it, URL passwords hidden.
pub(crate) fn command_line(job: &Job) -> String {
    shown_command(job)
        .iter()
        .map(|arg| {
            if arg.contains(char::is_whitespace) || arg.is_empty() {
                format!("'{}'", arg.replace('\'', "'\\''"))
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command's words with URL passwords hidden (`psql postgres://u:pw@h`).
fn shown_command(job: &Job) -> Vec<String> {
    job.spec
        .command
        .iter()
        .map(|arg| redact_text(arg))
        .collect()
}

/// The state a person reads: `scheduled` for a queued job due later.
pub(crate) fn shown_state(job: &Job, now_ms: i64) -> &'static str {
    if job.is_scheduled(now_ms) {
        "scheduled"
    } else {
        job.state.as_str()
    }
}

/// A job as JSON: the keys of the CLI contract, secrets redacted.
pub fn job_json(job: &Job, now_ms: i64) -> Value {
    json!({
        "id": job.id,
        "queue": job.queue,
        "state": shown_state(job, now_ms),
        "unique_key": job.unique_key,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "interruptions": job.interruptions,
        "max_interruptions": job.max_interruptions,
        "exit_code": job.exit_code,
        "error": job.error.as_deref().map(redact_text),
        "worker_id": job.worker_id,
        "created_at": time(job.created_at),
        "run_at": time(job.run_at),
        "started_at": opt_time(job.started_at),
        "finished_at": opt_time(job.finished_at),
        "priority": job.priority,
        "command": shown_command(job),
        "image": job.spec.image,
        "env": redacted_env(&job.spec.env),
        "timeout_ms": job.spec.timeout_ms,
        "cancel_requested": job.cancel_requested,
    })
}

fn event_json(event: &JobEvent) -> Value {
    json!({
        "at": time(event.at),
        "kind": event.kind,
        "worker_id": event.worker_id,
        "lease_token": event.lease_token,
        "detail": event.detail.as_deref().map(redact_text),
    })
}

fn print_json(value: &Value) -> Result<(), CliError> {
    crate::outln!("{}", super::json_text(value)?);
    Ok(())
}

/// `jobs`.
pub async fn jobs(store: &AnyStore, args: JobsArgs) -> Result<i32, CliError> {
    let (state, scheduled) = match args.state {
        Some(StateFilter::State(state)) => (Some(state), None),
        Some(StateFilter::Scheduled) => (Some(JobState::Queued), Some(true)),
        None => (None, None),
    };
    let filter = JobFilter {
        state,
        queue: args.queue,
        limit: Some(args.limit),
        scheduled,
        text: args.command,
        before: args.before.map(JobId),
        ..JobFilter::default()
    };
    let jobs = store.list(&filter).await?;
    let now = unix_ms_now();
    if args.json {
        print_json(&Value::Array(
            jobs.iter().map(|job| job_json(job, now)).collect(),
        ))?;
        return Ok(0);
    }
    crate::outln!(
        "{:>8}  {:<10}  {:<12}  {:>8}  COMMAND",
        "ID",
        "STATE",
        "QUEUE",
        "ATTEMPTS"
    );
    for job in &jobs {
        let mut command = command_line(job);
        if command.chars().count() > COMMAND_WIDTH {
            command = command.chars().take(COMMAND_WIDTH - 1).collect::<String>() + "…";
        }
        if let Some(image) = &job.spec.image {
            command = format!("[{image}] {command}");
        }
        crate::outln!(
            "{:>8}  {:<10}  {:<12}  {:>8}  {command}",
            job.id.0,
            shown_state(job, now),
            job.queue,
            format!("{}/{}", job.attempts, job.max_attempts)
        );
    }
    Ok(0)
}

async fn find(store: &AnyStore, id: i64) -> Result<Job, CliError> {
    match store.get(JobId(id)).await? {
        Some(job) => Ok(job),
        None => Err(StoreError::NotFound(JobId(id)).into()),
    }
}

/// `show`.
pub async fn show(store: &AnyStore, args: ShowArgs) -> Result<i32, CliError> {
    let job = find(store, args.id).await?;
    let history = store.history(job.id).await?;
    let now = unix_ms_now();
    if args.json {
        let mut value = job_json(&job, now);
        value["history"] = Value::Array(history.iter().map(event_json).collect());
        print_json(&value)?;
        return Ok(0);
    }
    let mut text = String::new();
    let mut line = |key: &str, value: String| {
        text.push_str(&format!("{key:<14} {value}\n"));
    };
    line("id", job.id.to_string());
    line("state", shown_state(&job, now).to_string());
    line("queue", job.queue.clone());
    if job.state == JobState::Queued {
        line("run at", time(job.run_at));
    }
    if let Some(key) = &job.unique_key {
        line("unique key", key.clone());
    }
    line("command", command_line(&job));
    if let Some(image) = &job.spec.image {
        line("image", image.clone());
    }
    for (key, value) in redacted_env(&job.spec.env) {
        line("env", format!("{key}={value}"));
    }
    if let Some(timeout) = job.spec.timeout() {
        line("timeout", fmt_duration(timeout));
    }
    line("priority", job.priority.to_string());
    line(
        "attempts",
        format!("{} of {}", job.attempts, job.max_attempts),
    );
    line("interruptions", job.interruptions.to_string());
    if let Some(code) = job.exit_code {
        line("exit code", code.to_string());
    }
    if let Some(error) = &job.error {
        line("error", redact_text(error));
    }
    if let Some(worker) = &job.worker_id {
        line("worker", worker.clone());
    }
    line("created", time(job.created_at));
    if let Some(at) = job.started_at {
        line("started", time(at));
    }
    if let Some(at) = job.finished_at {
        line("finished", time(at));
    }
    text.push_str("history:\n");
    for event in &history {
        text.push_str(&format!("  {}  {}", time(event.at), event.kind));
        if let Some(worker) = &event.worker_id {
            text.push_str(&format!("  worker={worker}"));
        }
        if let Some(token) = event.lease_token {
            text.push_str(&format!("  lease={token}"));
        }
        if let Some(detail) = &event.detail {
            text.push_str(&format!("  {}", redact_text(detail)));
        }
        text.push('\n');
    }
    super::out::bytes(text.as_bytes())?;
    Ok(0)
}

/// `logs`.
pub async fn logs(store: &AnyStore, args: IdArg) -> Result<i32, CliError> {
    let job = find(store, args.id).await?;
    if let Some(output) = store.output(job.id).await? {
        // The job's bytes as it wrote them, whatever they are.
        super::out::bytes(&output)?;
    }
    Ok(0)
}

/// `cancel` or `retry` of one job: the line to print, or the error.
async fn one(store: &AnyStore, action: BulkAction, id: i64) -> Result<String, CliError> {
    match action {
        BulkAction::Cancel => match store.cancel(JobId(id)).await? {
            CancelResult::Cancelled => Ok(format!("job {id} cancelled")),
            CancelResult::Requested => Ok(format!(
                "job {id} is running: its worker will stop it and record it cancelled"
            )),
            CancelResult::AlreadyFinal(state) => Err(CliError::fatal(format!(
                "job {id} is already {state}; nothing to cancel"
            ))),
        },
        BulkAction::Retry => {
            if store.retry(JobId(id)).await? {
                return Ok(format!("job {id} queued again"));
            }
            let job = find(store, id).await?;
            if matches!(job.state, JobState::Failed | JobState::Cancelled) {
                return Err(CliError::fatal(format!(
                    "job {id} was not retried: a newer job holds its unique key {:?}",
                    job.unique_key.as_deref().unwrap_or_default()
                )));
            }
            Err(CliError::fatal(format!(
                "job {id} is {}; only failed or cancelled jobs can be retried",
                job.state
            )))
        }
    }
}

/// `cancel` and `retry`: each id in turn (every one is tried; the exit code
/// is the first failure's), or every job a filter selects, in batches.
pub async fn bulk(store: &AnyStore, action: BulkAction, args: BulkArgs) -> Result<i32, CliError> {
    if !args.ids.is_empty() {
        let mut first_error = None;
        let mut results = Vec::new();
        for id in &args.ids {
            match one(store, action, *id).await {
                Ok(line) => {
                    if !args.json {
                        crate::outln!("{line}");
                    }
                    results.push(json!({ "id": id, "ok": true, "message": line }));
                }
                Err(error) => {
                    if !args.json {
                        crate::errln!("dockhand: {}", error.message);
                    }
                    results.push(json!({ "id": id, "ok": false, "message": error.message }));
                    first_error.get_or_insert(error.code);
                }
            }
        }
        if args.json {
            print_json(&json!({ "jobs": results }))?;
        }
        return Ok(first_error.unwrap_or(0));
    }
    let state = match args.state {
        Some(StateFilter::State(state)) => Some(state),
        Some(StateFilter::Scheduled) => {
            return Err(CliError::usage(
                "--state scheduled: use --state queued, which includes scheduled jobs",
            ))
        }
        None => None,
    };
    let filter = BulkFilter {
        state,
        queue: args.queue,
        older_than: args.older_than,
    };
    action
        .select(&filter)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let count = store.bulk(action, &filter, args.dry_run).await?;
    if args.json {
        print_json(&json!({
            "action": action.verb(),
            "dry_run": args.dry_run,
            "count": count,
        }))?;
    } else if args.dry_run {
        crate::outln!(
            "would {} {count} job(s) (dry run: nothing changed)",
            action.verb()
        );
    } else {
        match action {
            BulkAction::Cancel => crate::outln!(
                "cancelled {count} job(s) (running ones are stopped by their workers)"
            ),
            BulkAction::Retry => crate::outln!("queued {count} job(s) again"),
        }
    }
    Ok(0)
}

fn queue_json(queue: &QueueStats) -> Value {
    json!({
        "queue": queue.queue,
        "ready": queue.ready,
        "scheduled": queue.scheduled,
        "running": queue.running,
        "succeeded": queue.succeeded,
        "failed": queue.failed,
        "cancelled": queue.cancelled,
        "paused": queue.paused,
        "oldest_ready_age_ms": queue.oldest_ready_age_ms,
    })
}

/// `queues`.
pub async fn queues(store: &AnyStore, args: JsonArg) -> Result<i32, CliError> {
    let queues = store.queue_stats().await?;
    if args.json {
        print_json(&json!({ "queues": queues.iter().map(queue_json).collect::<Vec<_>>() }))?;
        return Ok(0);
    }
    if queues.is_empty() {
        crate::outln!("no queues");
        return Ok(0);
    }
    crate::outln!(
        "{:<20}  {:>8}  {:>9}  {:>7}  {:>9}  {:>7}  {:>9}  {:<6}  OLDEST READY",
        "QUEUE",
        "READY",
        "SCHEDULED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "PAUSED"
    );
    for q in &queues {
        let oldest = if q.ready == 0 {
            "-".to_string()
        } else {
            fmt_duration(Duration::from_millis(q.oldest_ready_age_ms))
        };
        crate::outln!(
            "{:<20}  {:>8}  {:>9}  {:>7}  {:>9}  {:>7}  {:>9}  {:<6}  {oldest}",
            q.queue,
            q.ready,
            q.scheduled,
            q.running,
            q.succeeded,
            q.failed,
            q.cancelled,
            if q.paused { "yes" } else { "no" }
        );
    }
    Ok(0)
}

/// `prune`.
pub async fn prune(store: &AnyStore, args: PruneArgs) -> Result<i32, CliError> {
    let states = if args.states.is_empty() {
        vec![JobState::Succeeded, JobState::Failed, JobState::Cancelled]
    } else {
        args.states
    };
    let count = store
        .prune(&states, args.older_than, args.dry_run)
        .await
        .map_err(|e| match e {
            StoreError::InvalidJob(why) => CliError::usage(why),
            other => other.into(),
        })?;
    if args.json {
        print_json(&json!({ "dry_run": args.dry_run, "count": count }))?;
    } else if args.dry_run {
        crate::outln!("would delete {count} job(s) (dry run: nothing changed)");
    } else {
        crate::outln!("deleted {count} job(s) and their history");
    }
    Ok(0)
}

/// `pause` and `resume`.
pub async fn pause(store: &AnyStore, args: &QueueArg, paused: bool) -> Result<i32, CliError> {
    let queue = &args.queue;
    let changed = store.set_paused(queue, paused).await.map_err(|e| match e {
        StoreError::InvalidJob(why) => CliError::usage(why),
        other => other.into(),
    })?;
    if args.json {
        print_json(&json!({ "queue": queue, "paused": paused, "changed": changed }))?;
        return Ok(0);
    }
    match (paused, changed) {
        (true, true) => crate::outln!(
            "queue {queue} paused: workers claim nothing from it until `dockhand resume {queue}`; running jobs go on"
        ),
        (true, false) => crate::outln!("queue {queue} was already paused"),
        (false, true) => crate::outln!("queue {queue} resumed"),
        (false, false) => crate::outln!("queue {queue} was not paused"),
    }
    Ok(0)
}

fn worker_json(worker: &WorkerRow) -> Value {
    json!({
        "id": worker.info.id,
        "host": worker.info.host,
        "pid": worker.info.pid,
        "queues": worker.info.queues,
        "concurrency": worker.info.concurrency,
        "phase": worker.phase,
        "started_at": time(worker.started_at),
        "heartbeat_at": time(worker.heartbeat_at),
        "lost": worker.lost,
        "lease_ms": worker.info.lease.as_millis() as u64,
        "docker": worker.docker,
        "running_jobs": worker.running_jobs,
    })
}

/// `status`.
pub async fn status(store: &AnyStore, args: StatusArgs) -> Result<i32, CliError> {
    let workers = store.workers(args.lease).await?;
    let paused: Vec<String> = store
        .queue_stats()
        .await?
        .into_iter()
        .filter(|q| q.paused)
        .map(|q| q.queue)
        .collect();
    if args.json {
        print_json(&json!({
            "workers": workers.iter().map(worker_json).collect::<Vec<_>>(),
            "paused_queues": paused,
        }))?;
        return Ok(0);
    }
    if !paused.is_empty() {
        crate::outln!("paused queues: {}", paused.join(", "));
    }
    if workers.is_empty() {
        crate::outln!("no workers");
        return Ok(0);
    }
    crate::outln!(
        "{:<36}  {:<10}  {:>7}  {:<24}  {:<11}  JOBS",
        "WORKER",
        "PHASE",
        "PID",
        "LAST HEARTBEAT",
        "DOCKER"
    );
    for worker in &workers {
        let phase = if worker.lost {
            "lost"
        } else {
            worker.phase.as_str()
        };
        let jobs: Vec<String> = worker
            .running_jobs
            .iter()
            .map(|id| id.to_string())
            .collect();
        crate::outln!(
            "{:<36}  {:<10}  {:>7}  {:<24}  {:<11}  {}",
            worker.info.id,
            phase,
            worker.info.pid,
            time(worker.heartbeat_at),
            worker.docker.as_deref().unwrap_or("-"),
            jobs.join(",")
        );
    }
    Ok(0)
}
