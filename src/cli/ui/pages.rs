//! The dashboard's pages as HTML. maud escapes every value it inserts, so
//! a job's command, output or error shows as text, whatever bytes it holds.
//! Elements marked `data-live` are replaced by the script every second.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use maud::{html, Markup, DOCTYPE};

use super::{BulkQuery, JobsQuery, Overview, PageContext, PAGE};
use crate::cli::output::{command_line, shown_state, time};
use crate::job::JobState;
use crate::machine::fmt_duration;
use crate::redact::{is_secret_key, redact_text, redacted_env, REDACTED};
use crate::store::{unix_ms_now, BulkAction, BulkFilter, Job, JobEvent, WorkerRow, WorkerStop};

/// Most output shown on a job's page (its tail).
const MAX_OUTPUT_SHOWN: usize = 64 * 1024;
/// Widest command in a table.
const COMMAND_WIDTH: usize = 80;

/// A value for a URL's query string.
pub fn query_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A path segment (a queue or worker name in a URL).
fn path_escape(text: &str) -> String {
    query_escape(text)
}

/// The `<head>` of every page; `live` adds the refreshing script.
fn head(title: &str, live: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · dockhand" }
            link rel="stylesheet" href="/static/app.css";
            @if live { script src="/static/app.js" defer {} }
        }
    }
}

fn layout(context: &PageContext<'_>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                header {
                    nav {
                        a.brand href="/" { "dockhand" }
                        a href="/" { "Overview" }
                        a href="/jobs" { "Jobs" }
                        a href="/jobs?state=failed" { "Failed" }
                    }
                    @if context.locked {
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(context.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(notice) = &context.notice {
                        p.notice role="status" { (notice) }
                    }
                    (body)
                }
                footer { "database " (context.database) }
            }
        }
    }
}

/// A page with a title and one line (errors, refusals).
pub fn message(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, false))
            body {
                main {
                    h1 { (title) }
                    p.error { (text) }
                    p { a href="/" { "Back to the overview" } }
                }
            }
        }
    }
}

/// The login form.
pub fn login(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in", false))
            body {
                main.narrow {
                    h1 { "dockhand" }
                    @if let Some(error) = error {
                        p.error role="alert" { (error) }
                    }
                    form method="post" action="/login" {
                        label for="token" { "Access token" }
                        input #token type="password" name="token" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

fn age(ms: i64) -> String {
    fmt_duration(Duration::from_millis(ms.max(0) as u64))
}

fn csrf_field(context: &PageContext<'_>) -> Markup {
    html! { input type="hidden" name="csrf" value=(context.csrf); }
}

/// The phase a person reads: lost outranks what the worker last said.
fn worker_phase(worker: &WorkerRow) -> &str {
    if worker.lost {
        "lost"
    } else {
        &worker.phase
    }
}

/// The overview: queues, the last hour, the fleet.
pub fn overview(context: &PageContext<'_>, figures: &Overview) -> Markup {
    let now = unix_ms_now();
    let body = html! {
        section #queues data-live {
            h2 { "Queues" }
            @if figures.queues.is_empty() {
                p.empty { "No queues yet: enqueue a job with " code { "dockhand enqueue" } "." }
            } @else {
                div.scroll { table {
                    thead { tr {
                        th { "Queue" } th.num { "Ready" } th.num { "Scheduled" } th.num { "Running" }
                        th.num { "Failed" } th { "Oldest ready" } th { "State" } th {}
                    } }
                    tbody {
                        @for queue in &figures.queues {
                            tr data-queue=(queue.queue) {
                                td { a href={ "/jobs?queue=" (query_escape(&queue.queue)) } { (queue.queue) } }
                                td.num { (queue.ready) }
                                td.num { (queue.scheduled) }
                                td.num { (queue.running) }
                                td.num { a href={ "/jobs?state=failed&queue=" (query_escape(&queue.queue)) } { (queue.failed) } }
                                td { @if queue.ready > 0 { (age(queue.oldest_ready_age_ms as i64)) } @else { "–" } }
                                td { @if queue.paused { span.badge.paused { "paused" } } @else { span.badge.running { "active" } } }
                                td {
                                    @let verb = if queue.paused { "resume" } else { "pause" };
                                    form.inline method="post" action={ "/queues/" (path_escape(&queue.queue)) "/" (verb) } {
                                        (csrf_field(context))
                                        button type="submit" name="do" value=(verb) { @if queue.paused { "Resume" } @else { "Pause" } }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
        section #activity data-live {
            h2 { "Last hour" }
            @let succeeded: u64 = figures.activity.iter().map(|m| m.succeeded).sum();
            @let failed: u64 = figures.activity.iter().map(|m| m.failed).sum();
            p {
                span.figure #succeeded-hour { (succeeded) } " succeeded, "
                span.figure #failed-hour { (failed) } " failed"
            }
            (chart(&figures.activity, now))
        }
        section #workers data-live {
            h2 { "Workers" }
            @if figures.workers.is_empty() {
                p.empty { "No worker is running." }
            } @else {
                div.scroll { table {
                    thead { tr {
                        th { "Worker" } th { "Phase" } th.num { "Held jobs" } th.num { "Slots" }
                        th { "Queues" } th { "Last heartbeat" }
                    } }
                    tbody {
                        @for worker in &figures.workers {
                            tr data-worker=(worker.info.id) {
                                td { a href={ "/workers/" (path_escape(&worker.info.id)) } { (worker.info.id) } }
                                td { span class={ "badge " (worker_phase(worker)) } { (worker_phase(worker)) } }
                                td.num { (worker.running_jobs.len()) }
                                td.num { (worker.info.concurrency) }
                                td { (worker.info.queues.join(", ")) }
                                td { (age(now - worker.heartbeat_at)) " ago" }
                            }
                        }
                    }
                } }
            }
            @if !figures.stops.is_empty() {
                h3 { "Stopped lately" }
                ul.stops {
                    @for stop in figures.stops.iter().take(10) {
                        li {
                            a href={ "/workers/" (path_escape(&stop.worker_id)) } { (stop.worker_id) }
                            " exited " (stop.exit_code) ", " (age(now - stop.stopped_at)) " ago"
                        }
                    }
                }
            }
        }
    };
    layout(context, "Overview", body)
}

/// Jobs finished per minute over the last hour, as bars (inline SVG: no
/// script, no image request).
fn chart(minutes: &[crate::store::Activity], now: i64) -> Markup {
    let start = (now - 3_600_000).div_euclid(60_000) * 60_000;
    let peak = minutes
        .iter()
        .map(|m| m.succeeded + m.failed)
        .max()
        .unwrap_or(0)
        .max(1);
    let height = 40.0;
    html! {
        svg.chart viewBox="0 0 610 40" preserveAspectRatio="none" role="img" aria-label="jobs finished per minute, last hour" {
            @for minute in minutes {
                @let slot = (minute.minute_ms - start).div_euclid(60_000).clamp(0, 60) as f64;
                @let ok = minute.succeeded as f64 / peak as f64 * height;
                @let bad = minute.failed as f64 / peak as f64 * height;
                rect.ok x=(format!("{:.1}", slot * 10.0)) y=(format!("{:.1}", height - ok - bad)) width="8" height=(format!("{ok:.1}")) {}
                rect.bad x=(format!("{:.1}", slot * 10.0)) y=(format!("{:.1}", height - bad)) width="8" height=(format!("{bad:.1}")) {}
            }
        }
    }
}

fn short_command(job: &Job) -> String {
    let line = command_line(job);
    if line.chars().count() <= COMMAND_WIDTH {
        return line;
    }
    let mut cut: String = line.chars().take(COMMAND_WIDTH - 1).collect();
    cut.push('…');
    cut
}

fn jobs_table(jobs: &[Job], now: i64) -> Markup {
    html! {
        div.scroll { table.jobs {
            thead { tr {
                th.num { "ID" } th { "State" } th { "Queue" } th.num { "Attempts" } th { "Command" } th { "Created" }
            } }
            tbody {
                @for job in jobs {
                    @let state = shown_state(job, now);
                    tr data-job=(job.id) {
                        td.num { a href={ "/jobs/" (job.id) } { (job.id) } }
                        td { span class={ "badge " (state) } { (state) } }
                        td { (job.queue) }
                        td.num { (job.attempts) "/" (job.max_attempts) }
                        td.command { code { (short_command(job)) } }
                        td { time { (time(job.created_at)) } }
                    }
                }
            }
        } }
    }
}

const STATES: [&str; 6] = [
    "queued",
    "scheduled",
    "running",
    "succeeded",
    "failed",
    "cancelled",
];

/// The jobs list with its filters.
pub fn jobs(
    context: &PageContext<'_>,
    query: &JobsQuery,
    found: &[Job],
    more: bool,
    error: Option<&str>,
) -> Markup {
    let now = unix_ms_now();
    let field = |value: &Option<String>| value.clone().unwrap_or_default();
    let state = field(&query.state);
    let queue = field(&query.queue);
    // The same filters, for the next page and the bulk links.
    let base = format!(
        "state={}&queue={}&q={}&from={}&until={}",
        query_escape(&state),
        query_escape(&queue),
        query_escape(&field(&query.q)),
        query_escape(&field(&query.from)),
        query_escape(&field(&query.until)),
    );
    let bulk_for = |action: BulkAction| {
        let selected = match state.as_str() {
            "" => true,
            "scheduled" => action == BulkAction::Cancel,
            other => other
                .parse::<JobState>()
                .is_ok_and(|s| action.states().contains(&s)),
        };
        (selected && (!state.is_empty() || !queue.is_empty())).then(|| {
            format!(
                "/bulk?action={}&state={}&queue={}",
                action.verb(),
                query_escape(&state),
                query_escape(&queue)
            )
        })
    };
    let body = html! {
        form.filters #filters method="get" action="/jobs" {
            label { "State "
                select name="state" {
                    option value="" selected[state.is_empty()] { "any" }
                    @for s in STATES { option value=(s) selected[state == s] { (s) } }
                }
            }
            label { "Queue " input type="text" name="queue" value=(queue) maxlength="200"; }
            label { "Command contains " input type="search" name="q" value=(field(&query.q)) maxlength="200"; }
            label { "Created from " input type="datetime-local" name="from" value=(field(&query.from)); }
            label { "until " input type="datetime-local" name="until" value=(field(&query.until)); }
            button type="submit" { "Filter" }
            " " a href="/jobs" { "Clear" }
        }
        @if let Some(error) = error {
            p.error role="alert" { (error) }
        }
        @let retry_link = bulk_for(BulkAction::Retry);
        @let cancel_link = bulk_for(BulkAction::Cancel);
        @if retry_link.is_some() || cancel_link.is_some() {
            p.bulk {
                "Every job of this state and queue (times and text do not narrow a bulk action): "
                @if let Some(link) = retry_link { a.button #bulk-retry href=(link) { "Retry all…" } " " }
                @if let Some(link) = cancel_link { a.button #bulk-cancel href=(link) { "Cancel all…" } }
            }
        }
        section #jobs-list data-live {
            @if found.is_empty() {
                p.empty { "No job matches." }
            } @else {
                (jobs_table(found, now))
            }
            nav.pages {
                @if query.before.is_some() { a href={ "/jobs?" (base) } { "« Newest" } " " }
                @if more {
                    @if let Some(last) = found.last() {
                        a #older href={ "/jobs?" (base) "&before=" (last.id) } { "Older " (PAGE) " »" }
                    }
                }
            }
        }
    };
    layout(context, "Jobs", body)
}

/// A job's output as text a person can read: invalid UTF-8 shown as �,
/// URL passwords and the values of its secret-looking variables hidden.
fn shown_output(env: &BTreeMap<String, String>, output: &[u8]) -> (String, bool) {
    let cut = output.len() > MAX_OUTPUT_SHOWN;
    let tail = &output[output.len() - output.len().min(MAX_OUTPUT_SHOWN)..];
    let mut text = redact_text(&String::from_utf8_lossy(tail));
    for (key, value) in env {
        // A short value would hide ordinary words; such a secret is weak
        // anyway, and the CLI's `logs` shows output as it is.
        if is_secret_key(key) && value.len() >= 4 {
            text = text.replace(value.as_str(), REDACTED);
        }
    }
    (text, cut)
}

/// One job: spec, state, history, output, and what can be done to it.
pub fn job(
    context: &PageContext<'_>,
    job: &Job,
    history: &[JobEvent],
    output: Option<&[u8]>,
    container: Option<&str>,
) -> Markup {
    let now = unix_ms_now();
    let state = shown_state(job, now);
    let can_retry = matches!(job.state, JobState::Failed | JobState::Cancelled);
    let can_cancel =
        matches!(job.state, JobState::Queued | JobState::Running) && !job.cancel_requested;
    let body = html! {
        div.actions {
            @if can_retry {
                form.inline method="post" action={ "/jobs/" (job.id) "/retry" } {
                    (csrf_field(context))
                    button #retry type="submit" { "Retry" }
                }
            }
            @if can_cancel {
                form.inline method="post" action={ "/jobs/" (job.id) "/cancel" } {
                    (csrf_field(context))
                    button #cancel.danger type="submit" { "Cancel" }
                }
            }
        }
        section #job-state data-live {
            dl.fields {
                dt { "State" } dd { span #state class={ "badge " (state) } { (state) }
                    @if job.cancel_requested && job.state == JobState::Running { " (cancel requested)" } }
                dt { "Queue" } dd { (job.queue) }
                dt { "Attempts" } dd { (job.attempts) " of " (job.max_attempts) }
                dt { "Interruptions" } dd { (job.interruptions) " of " (job.max_interruptions) }
                @if let Some(code) = job.exit_code { dt { "Exit code" } dd { (code) } }
                @if let Some(error) = &job.error { dt { "Error" } dd.error { (redact_text(error)) } }
                @if let Some(worker) = &job.worker_id {
                    dt { "Worker" } dd { a href={ "/workers/" (path_escape(worker)) } { (worker) } " (lease " (job.lease_token) ")" }
                }
                @if let Some(name) = container { dt { "Container" } dd { code { (name) } } }
                dt { "Created" } dd { (time(job.created_at)) }
                @if job.state == JobState::Queued { dt { "Runs at" } dd { (time(job.run_at)) } }
                @if let Some(at) = job.started_at { dt { "Started" } dd { (time(at)) } }
                @if let Some(at) = job.finished_at { dt { "Finished" } dd { (time(at)) } }
            }
            h2 { "History" }
            ol.timeline {
                @for event in history {
                    li class={ "event " (event.kind) } {
                        time { (time(event.at)) } " "
                        strong { (event.kind) }
                        @if let Some(worker) = &event.worker_id { " by " a href={ "/workers/" (path_escape(worker)) } { (worker) } }
                        @if let Some(token) = event.lease_token { " (lease " (token) ")" }
                        @if let Some(detail) = &event.detail { ": " (redact_text(detail)) }
                    }
                }
            }
            h2 { "Output" }
            @match output {
                Some(bytes) if !bytes.is_empty() => {
                    @let (text, cut) = shown_output(&job.spec.env, bytes);
                    @if cut { p.note { "The last " (MAX_OUTPUT_SHOWN / 1024) " KiB; " code { "dockhand logs " (job.id) } " prints all that was kept." } }
                    pre #output { (text) }
                }
                _ => { p.empty { "No output captured." } }
            }
        }
        h2 { "Spec" }
        dl.fields {
            dt { "Command" } dd { code #command { (command_line(job)) } }
            @if let Some(image) = &job.spec.image { dt { "Image" } dd { code { (image) } } }
            @for (key, value) in redacted_env(&job.spec.env) {
                dt { "env" } dd { code { (key) "=" (value) } }
            }
            @if let Some(timeout) = job.spec.timeout() { dt { "Timeout" } dd { (fmt_duration(timeout)) } }
            @if let Some(bytes) = job.spec.memory_bytes { dt { "Memory" } dd { (bytes / (1024 * 1024)) " MiB" } }
            @if let Some(cpu) = job.spec.cpu_millis { dt { "CPU" } dd { (format!("{:.2}", f64::from(cpu) / 1000.0)) } }
            @if let Some(pids) = job.spec.pids { dt { "Processes" } dd { (pids) } }
            dt { "Priority" } dd { (job.priority) }
            @if let Some(key) = &job.unique_key { dt { "Unique key" } dd { code { (key) } } }
        }
    };
    layout(context, &format!("Job {}", job.id), body)
}

/// One worker: live, or stopped lately, or both (a restart under the same
/// id is unlikely: ids carry 32 random bits).
pub fn worker(
    context: &PageContext<'_>,
    id: &str,
    live: Option<&WorkerRow>,
    stop: Option<&WorkerStop>,
    jobs: &[Job],
) -> Markup {
    let now = unix_ms_now();
    let body = html! {
        section #worker-state data-live {
            @if let Some(worker) = live {
                dl.fields {
                    dt { "Phase" } dd { span #phase class={ "badge " (worker_phase(worker)) } { (worker_phase(worker)) } }
                    dt { "Host" } dd { (worker.info.host) " (pid " (worker.info.pid) ")" }
                    dt { "Queues" } dd { (worker.info.queues.join(", ")) }
                    dt { "Slots" } dd { (worker.info.concurrency) }
                    dt { "Lease" } dd { (fmt_duration(worker.info.lease)) }
                    dt { "Last heartbeat" } dd { (age(now - worker.heartbeat_at)) " ago" }
                    dt { "Started" } dd { (time(worker.started_at)) }
                    @if let Some(docker) = &worker.docker { dt { "Docker" } dd { (docker) } }
                    dt { "Held jobs" } dd {
                        @for (i, job) in worker.running_jobs.iter().enumerate() {
                            @if i > 0 { ", " }
                            a href={ "/jobs/" (job) } { (job) }
                        }
                        @if worker.running_jobs.is_empty() { "none" }
                    }
                }
            } @else {
                p { span #phase.badge.stopped { "stopped" } }
            }
            @if let Some(stop) = stop {
                h2 { "How it stopped" }
                p { "Exit code " strong #exit-code { (stop.exit_code) } ", " (age(now - stop.stopped_at)) " ago (" (time(stop.stopped_at)) ")." }
                @if stop.trace.is_empty() {
                    p.empty { "No shutdown trace: it stopped without a signal." }
                } @else {
                    pre #trace { (redact_text(&stop.trace)) }
                }
            }
            h2 { "Its jobs" }
            @if jobs.is_empty() { p.empty { "None." } } @else { (jobs_table(jobs, now)) }
        }
    };
    layout(context, &format!("Worker {id}"), body)
}

/// The count of a bulk action and the button that does it.
pub fn bulk_confirm(
    context: &PageContext<'_>,
    query: &BulkQuery,
    action: BulkAction,
    filter: &BulkFilter,
    count: u64,
) -> Markup {
    let states: Vec<&str> = action
        .select(filter)
        .unwrap_or_default()
        .iter()
        .map(|s| s.as_str())
        .collect();
    let verb = action.verb();
    let body = html! {
        p #bulk-count {
            (count) " job(s) selected: " (states.join(" or "))
            @if let Some(queue) = &filter.queue { " in queue " strong { (queue) } }
            "."
        }
        @if count == 0 {
            p { a href="/jobs" { "Back to the jobs" } }
        } @else {
            form method="post" action="/bulk" {
                (csrf_field(context))
                input type="hidden" name="action" value=(verb);
                input type="hidden" name="state" value=(query.state.clone().unwrap_or_default());
                input type="hidden" name="queue" value=(query.queue.clone().unwrap_or_default());
                button #confirm.danger type="submit" {
                    @if action == BulkAction::Retry { "Retry " } @else { "Cancel " }
                    (count) " job(s)"
                }
                " " a href="/jobs" { "Back" }
            }
            p.note { "Jobs that enter these states after this count are included too." }
        }
    };
    let title = if action == BulkAction::Retry {
        "Retry jobs"
    } else {
        "Cancel jobs"
    };
    layout(context, title, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(query_escape("emails-2"), "emails-2");
    }

    #[test]
    fn a_jobs_output_is_shown_whole_up_to_64_kib_then_its_tail() {
        let env = BTreeMap::from([("API_TOKEN".to_string(), "s3cr3t".to_string())]);
        let mut output = b"first line, token s3cr3t\n".to_vec();
        output.resize(64 * 1024, b'x');
        let redacted_len = 64 * 1024 - "s3cr3t".len() + "[redacted]".len();
        let (text, cut) = shown_output(&env, &output);
        assert!(!cut);
        assert!(
            text.starts_with("first line, token [redacted]\n"),
            "{}",
            &text[..40]
        );
        assert_eq!(text.len(), redacted_len);
        // One byte more: the first goes.
        output.push(b'y');
        let (text, cut) = shown_output(&env, &output);
        assert!(cut);
        assert!(
            text.starts_with("irst line, token [redacted]\n"),
            "{}",
            &text[..40]
        );
        assert!(text.ends_with("xy"));
        assert_eq!(text.len(), redacted_len);
    }
}
