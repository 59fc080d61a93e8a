//! Listing and one-job commands: `jobs`, `show`, `logs`, `cancel`, `retry`, `status`.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{CliError, IdArg, JobsArgs, ShowArgs, StatusArgs};
use crate::job::JobId;
use crate::machine::fmt_duration;
use crate::redact::{redact_text, redacted_env};
use crate::store::{
    AnyStore, CancelResult, Job, JobEvent, JobFilter, Store, StoreError, WorkerRow,
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
fn command_line(job: &Job) -> String {
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

/// A job as JSON: the keys of the CLI contract, secrets redacted.
pub fn job_json(job: &Job) -> Value {
    json!({
        "id": job.id,
        "queue": job.queue,
        "state": job.state,
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
    let filter = JobFilter {
        state: args.state,
        queue: args.queue,
        limit: Some(args.limit),
    };
    let jobs = store.list(&filter).await?;
    if args.json {
        print_json(&Value::Array(jobs.iter().map(job_json).collect()))?;
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
            job.state.as_str(),
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
    if args.json {
        let mut value = job_json(&job);
        value["history"] = Value::Array(history.iter().map(event_json).collect());
        print_json(&value)?;
        return Ok(0);
    }
    let mut text = String::new();
    let mut line = |key: &str, value: String| {
        text.push_str(&format!("{key:<14} {value}\n"));
    };
    line("id", job.id.to_string());
    line("state", job.state.to_string());
    line("queue", job.queue.clone());
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

/// `cancel`.
pub async fn cancel(store: &AnyStore, args: IdArg) -> Result<i32, CliError> {
    match store.cancel(JobId(args.id)).await? {
        CancelResult::Cancelled => {
            crate::outln!("job {} cancelled", args.id);
            Ok(0)
        }
        CancelResult::Requested => {
            crate::outln!(
                "job {} is running: its worker will stop it and record it cancelled",
                args.id
            );
            Ok(0)
        }
        CancelResult::AlreadyFinal(state) => Err(CliError::fatal(format!(
            "job {} is already {state}; nothing to cancel",
            args.id
        ))),
    }
}

/// `retry`.
pub async fn retry(store: &AnyStore, args: IdArg) -> Result<i32, CliError> {
    if store.retry(JobId(args.id)).await? {
        crate::outln!("job {} queued again", args.id);
        return Ok(0);
    }
    let job = find(store, args.id).await?;
    Err(CliError::fatal(format!(
        "job {} is {}; only failed or cancelled jobs can be retried",
        args.id, job.state
    )))
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
    if args.json {
        print_json(&json!({ "workers": workers.iter().map(worker_json).collect::<Vec<_>>() }))?;
        return Ok(0);
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
