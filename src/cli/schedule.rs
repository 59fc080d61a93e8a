//! Periodic jobs: `dockhand schedule add|list|remove`, and the loop every
//! worker runs to enqueue due slots.
//!
//! A schedule is a cron expression (UTC) and a job. Every worker looks at
//! the schedules once a second; for each, the latest slot at or before now
//! is enqueued if no process enqueued it yet (`Store::fire_schedule` takes
//! the slot and inserts the job in one transaction). So each slot becomes
//! one job across the fleet, and after downtime only the latest missed slot
//! is enqueued: the ones before it are skipped, never replayed as a storm.

use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::enqueue::JobArgs;
use super::output::time;
use super::{json_text, CliError, EXIT_NOT_FOUND};
use crate::store::{unix_ms_now, AnyStore, Schedule, Store, StoreError};

/// How often a worker looks for due slots.
pub const SCHEDULE_POLL: Duration = Duration::from_secs(1);

/// `schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add a periodic job, or replace the one of that name. Any running
    /// worker enqueues it at each slot of the cron expression (UTC).
    Add(AddArgs),
    /// List the periodic jobs with their next slot.
    List(ListArgs),
    /// Remove a periodic job (jobs it already enqueued stay).
    Remove(RemoveArgs),
}

/// `schedule add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The schedule's name.
    pub name: String,
    /// A cron expression in UTC: five fields (minute hour day month
    /// weekday), an optional leading seconds field, or @hourly, @daily...
    #[arg(long, value_parser = parse_cron)]
    pub cron: CronText,
    /// The job each slot enqueues.
    #[command(flatten)]
    pub job: JobArgs,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD", required = true)]
    pub command: Vec<String>,
}

/// `schedule list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `schedule remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The schedule's name.
    pub name: String,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_764_493_200_000; // 2025-11-30T09:00:00Z

    #[test]
    fn slots_fall_on_whole_seconds_of_the_expression() {
        assert_eq!(latest_slot("*/5 * * * *", T + 299_999), Some(T));
        assert_eq!(latest_slot("*/5 * * * *", T + 300_000), Some(T + 300_000));
        assert_eq!(next_slot("*/5 * * * *", T + 1), Some(T + 300_000));
        assert_eq!(next_slot("*/2 * * * * *", T + 1_500), Some(T + 2_000));
        assert_eq!(latest_slot("@hourly", T + 3_599_999), Some(T));
    }

    #[test]
    fn after_downtime_only_the_latest_missed_slot_is_due() {
        // Last enqueued at T; a worker back after 3 hours sees one slot due.
        let latest = latest_slot("0 * * * *", T + 3 * 3_600_000 + 5_000);
        assert_eq!(latest, Some(T + 3 * 3_600_000));
    }

    #[test]
    fn bad_expressions_are_refused() {
        assert!(parse_cron("nope").is_err());
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("*/5 * * * *").is_ok());
    }
}

/// A cron expression that parsed.
#[derive(Clone, Debug)]
pub struct CronText(pub String);

/// Check a cron expression.
pub fn parse_cron(text: &str) -> Result<CronText, String> {
    croner::Cron::from_str(text.trim())
        .map_err(|e| format!("invalid cron expression {text:?}: {e}"))?;
    Ok(CronText(text.trim().to_string()))
}

/// A time in whole seconds (cron's finest grain): croner keeps the
/// fraction of its start time in the slots it finds.
fn utc(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms - ms.rem_euclid(1000))
}

/// The latest slot of `cron` at or before `now_ms`, if any.
pub fn latest_slot(cron: &str, now_ms: i64) -> Option<i64> {
    let cron = croner::Cron::from_str(cron).ok()?;
    let slot = cron.find_previous_occurrence(&utc(now_ms)?, true).ok()?;
    Some(slot.timestamp_millis())
}

/// The first slot of `cron` after `after_ms`, if any.
pub fn next_slot(cron: &str, after_ms: i64) -> Option<i64> {
    let cron = croner::Cron::from_str(cron).ok()?;
    let slot = cron.find_next_occurrence(&utc(after_ms)?, false).ok()?;
    Some(slot.timestamp_millis())
}

/// Run a `schedule` subcommand.
pub async fn run(store: &AnyStore, command: ScheduleCommand) -> Result<i32, CliError> {
    match command {
        ScheduleCommand::Add(args) => {
            let now = unix_ms_now();
            let schedule = Schedule {
                name: args.name,
                cron: args.cron.0,
                job: args.job.into_job(args.command),
                // Slots from before it was added are not its to enqueue.
                last_slot_ms: now,
            };
            let replaced = store.put_schedule(&schedule).await.map_err(|e| match e {
                StoreError::InvalidJob(why) => CliError::usage(why),
                other => other.into(),
            })?;
            let next = next_slot(&schedule.cron, now).map(time);
            if args.json {
                let value = json!({
                    "name": schedule.name,
                    "replaced": replaced,
                    "next_slot": next,
                });
                crate::outln!("{}", json_text(&value)?);
                return Ok(0);
            }
            let next = next.unwrap_or_else(|| "never".into());
            crate::outln!(
                "schedule {} {}: next slot {next}",
                schedule.name,
                if replaced { "replaced" } else { "added" }
            );
            Ok(0)
        }
        ScheduleCommand::List(args) => {
            let now = unix_ms_now();
            let schedules = store.schedules().await?;
            let rows: Vec<Value> = schedules
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "cron": s.cron,
                        "queue": s.job.queue,
                        "command": s.job.spec.command.iter().map(|a| crate::redact::redact_text(a)).collect::<Vec<_>>(),
                        "image": s.job.spec.image,
                        "next_slot": next_slot(&s.cron, now.max(s.last_slot_ms)).map(time),
                        "last_slot": time(s.last_slot_ms),
                    })
                })
                .collect();
            if args.json {
                crate::outln!("{}", json_text(&json!({ "schedules": rows }))?);
                return Ok(0);
            }
            if rows.is_empty() {
                crate::outln!("no schedules");
                return Ok(0);
            }
            crate::outln!(
                "{:<20}  {:<16}  {:<12}  {:<24}  COMMAND",
                "NAME",
                "CRON",
                "QUEUE",
                "NEXT SLOT"
            );
            for (s, row) in schedules.iter().zip(&rows) {
                let command: Vec<&str> = row["command"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                crate::outln!(
                    "{:<20}  {:<16}  {:<12}  {:<24}  {}",
                    s.name,
                    s.cron,
                    s.job.queue,
                    row["next_slot"].as_str().unwrap_or("never"),
                    command.join(" ")
                );
            }
            Ok(0)
        }
        ScheduleCommand::Remove(args) => {
            if store.remove_schedule(&args.name).await? {
                if args.json {
                    crate::outln!(
                        "{}",
                        json_text(&json!({ "name": args.name, "removed": true }))?
                    );
                } else {
                    crate::outln!("schedule {} removed", args.name);
                }
                Ok(0)
            } else {
                Err(CliError {
                    message: format!("schedule {} not found", args.name),
                    code: EXIT_NOT_FOUND,
                })
            }
        }
    }
}

/// Enqueue due slots until the task is dropped: what every worker runs
/// beside its loop. Errors are logged and tried again at the next look.
pub async fn enqueue_due(store: AnyStore, worker_id: String) {
    let mut ticker = tokio::time::interval(SCHEDULE_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let schedules = match store.schedules().await {
            Ok(schedules) => schedules,
            Err(e) => {
                tracing::debug!(worker_id = %worker_id, "schedules: {e}");
                continue;
            }
        };
        let now = unix_ms_now();
        for schedule in schedules {
            let Some(slot) = latest_slot(&schedule.cron, now) else {
                continue;
            };
            if slot <= schedule.last_slot_ms {
                continue;
            }
            match store.fire_schedule(&schedule.name, slot).await {
                Ok(Some(id)) => tracing::info!(
                    worker_id = %worker_id,
                    job_id = id.0,
                    "schedule {}: enqueued job {id} for the slot {}",
                    schedule.name,
                    time(slot)
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    worker_id = %worker_id,
                    "schedule {}: cannot enqueue: {e}",
                    schedule.name
                ),
            }
        }
    }
}
