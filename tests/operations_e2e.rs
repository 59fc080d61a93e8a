//! Operating the queue with the real binary, on PostgreSQL and SQLite, with
//! real workers running: `queues`, `pause`/`resume`, bulk `cancel`/`retry`,
//! scheduled jobs (`--at`, `--delay`) and unique jobs (`--unique-key`).

mod support;

use std::process::Output;
use std::time::Duration;

use dockhand::job::{JobId, JobState};
use dockhand::store::Store;
use support::{eventually, http_get, wait_state, Db};

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Run a command that must succeed; its stdout.
fn ok(db: &Db, args: &[&str]) -> String {
    let out = db.cli(args);
    assert!(
        out.status.success(),
        "{args:?} exited {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

fn json(db: &Db, args: &[&str]) -> serde_json::Value {
    let text = ok(db, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

fn queue<'a>(queues: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == name)
        .unwrap_or_else(|| panic!("no queue {name} in {queues}"))
}

/// The value of one sample in a Prometheus text exposition.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn state_of(db: &Db, id: i64) -> JobState {
    db.store()
        .await
        .get(JobId(id))
        .await
        .unwrap()
        .expect("job exists")
        .state
}

async fn pause_stops_claims_and_resume_restarts_them(db: Db) {
    let mut worker = db.worker(&[
        "--queue",
        "default",
        "--queue",
        "mail",
        "--concurrency",
        "4",
        "--poll-interval",
        "200ms",
        "--http",
        "127.0.0.1:0",
    ]);
    let addr = worker.http_addr();
    let marker = db.path("long-done");
    let long = db.enqueue(
        &["--queue", "mail"],
        &["sh", "-c", &format!("sleep 2; touch {marker}")],
    );
    wait_state(&db, long, JobState::Running).await;
    let out = ok(&db, &["pause", "mail"]);
    assert!(out.contains("queue mail paused"), "{out}");
    assert!(ok(&db, &["pause", "mail"]).contains("already paused"));
    // Enqueue still works on a paused queue; the other queue still runs.
    let held = db.enqueue(&["--queue", "mail"], &["true"]);
    let other = db.enqueue(&[], &["true"]);
    wait_state(&db, other, JobState::Succeeded).await;
    // The running job is untouched by the pause.
    wait_state(&db, long, JobState::Succeeded).await;
    assert!(std::path::Path::new(&marker).exists());
    // Many poll intervals later, the paused queue's job is still waiting.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(state_of(&db, held).await, JobState::Queued);
    let queues = json(&db, &["queues", "--json"]);
    let mail = queue(&queues, "mail");
    assert_eq!(mail["paused"], true, "{queues}");
    assert_eq!(mail["ready"], 1, "{queues}");
    assert_eq!(mail["succeeded"], 1, "{queues}");
    assert!(
        mail["oldest_ready_age_ms"].as_u64().unwrap() >= 1000,
        "{queues}"
    );
    assert_eq!(queue(&queues, "default")["paused"], false);
    let table = ok(&db, &["queues"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("mail") && l.contains("yes")),
        "{table}"
    );
    let status = json(&db, &["status", "--json"]);
    assert_eq!(
        status["paused_queues"],
        serde_json::json!(["mail"]),
        "{status}"
    );
    assert!(ok(&db, &["status"]).contains("paused queues: mail"));
    // The worker's /metrics carries the fleet's backlog for autoscalers.
    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &metrics,
            "dockhand_queue_jobs{queue=\"mail\",state=\"ready\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "dockhand_queue_paused{queue=\"mail\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "dockhand_queue_oldest_ready_age_seconds{queue=\"mail\"}"
        )
        .is_some_and(|age| age >= 1.0),
        "{metrics}"
    );
    // Resume: the worker takes the job without a restart.
    assert!(ok(&db, &["resume", "mail"]).contains("queue mail resumed"));
    assert!(ok(&db, &["resume", "mail"]).contains("was not paused"));
    wait_state(&db, held, JobState::Succeeded).await;
    // Refreshed at most once per poll interval: a later scrape sees it.
    let metrics = eventually(
        "the queue gauges to refresh",
        Duration::from_secs(10),
        || {
            let addr = addr.clone();
            async move {
                let (_, metrics) = http_get(&addr, "/metrics");
                (sample(&metrics, "dockhand_queue_paused{queue=\"mail\"}") == Some(0.0))
                    .then_some(metrics)
            }
        },
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "dockhand_queue_jobs{queue=\"mail\",state=\"succeeded\"}"
        ),
        Some(2.0),
        "{metrics}"
    );
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(Duration::from_secs(30)), 0);
}

async fn bulk_cancel_and_retry_while_a_worker_runs(db: Db) {
    // Slow jobs on a worker that can run two at a time: some are running,
    // most are queued, when the bulk cancel comes.
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(db.enqueue(&[], &["sleep", "30"]));
    }
    let keep = db.enqueue(&["--queue", "keep"], &["true"]);
    let mut worker = db.worker(&["--concurrency", "2", "--poll-interval", "200ms"]);
    wait_state(&db, ids[0], JobState::Running).await;
    let dry = ok(&db, &["cancel", "--queue", "default", "--dry-run"]);
    assert!(dry.contains("would cancel 12 job(s)"), "{dry}");
    let store = db.store().await;
    let cancelled_before = store
        .list(&dockhand::store::JobFilter {
            state: Some(JobState::Cancelled),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(cancelled_before.is_empty(), "a dry run changes nothing");
    let done = json(&db, &["cancel", "--queue", "default", "--json"]);
    assert_eq!(done["count"], 12, "{done}");
    assert_eq!(done["dry_run"], false, "{done}");
    // The running ones are stopped by their worker and end cancelled too.
    for id in &ids {
        wait_state(&db, *id, JobState::Cancelled).await;
    }
    assert_eq!(state_of(&db, keep).await, JobState::Queued, "another queue");
    // Retry by filter: older than an hour selects none; all of them otherwise.
    let none = ok(
        &db,
        &["retry", "--state", "cancelled", "--older-than", "1h"],
    );
    assert!(none.contains("queued 0 job(s) again"), "{none}");
    // Several ids: every one is tried, the exit code is the first failure's.
    let out = db.cli(&["cancel", &ids[0].to_string(), "999999", &ids[1].to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already cancelled"),
        "{}",
        stderr(&out)
    );
    let out = db.cli(&["retry", &ids[0].to_string(), &ids[1].to_string(), "999999"]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert_eq!(
        stdout(&out)
            .lines()
            .filter(|l| l.contains("queued again"))
            .count(),
        2,
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("job 999999 not found"));
    // The worker picks the retried ones up again; cancel them by filter.
    wait_state(&db, ids[0], JobState::Running).await;
    let done = ok(&db, &["cancel", "--state", "running"]);
    assert!(done.contains("cancelled 2 job(s)"), "{done}");
    wait_state(&db, ids[0], JobState::Cancelled).await;
    wait_state(&db, ids[1], JobState::Cancelled).await;
    let retried = ok(
        &db,
        &["retry", "--state", "cancelled", "--queue", "default"],
    );
    assert!(retried.contains("queued 12 job(s) again"), "{retried}");
    // A filter that names a state the action does not apply to is a usage error.
    let out = db.cli(&["retry", "--state", "running"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim_end().lines().count(), 1);
    let out = db.cli(&["cancel"]);
    assert_eq!(out.status.code(), Some(2), "no id and no filter");
    ok(&db, &["cancel", "--queue", "default"]);
    for id in &ids {
        wait_state(&db, *id, JobState::Cancelled).await;
    }
    // Nothing ran when the TERM came: a clean exit.
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(Duration::from_secs(60)), 0);
}

async fn scheduled_and_unique_jobs(db: Db) {
    // Scheduled: --at (any offset) and --delay show as `scheduled`.
    let at = db.enqueue(&["--at", "2099-01-01T01:00:00+01:00"], &["true"]);
    let delayed = db.enqueue(&["--delay", "1h"], &["true"]);
    let now = db.enqueue(&[], &["true"]);
    let shown = db.show(at);
    assert_eq!(shown["state"], "scheduled", "{shown}");
    assert_eq!(shown["run_at"], "2099-01-01T00:00:00.000Z", "{shown}");
    assert_eq!(db.show(delayed)["state"], "scheduled");
    assert_eq!(db.show(now)["state"], "queued");
    let text = ok(&db, &["show", &at.to_string()]);
    assert!(text.contains("scheduled"), "{text}");
    assert!(text.contains("2099-01-01T00:00:00.000Z"), "{text}");
    let listed = json(&db, &["jobs", "--state", "scheduled", "--json"]);
    let listed: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, vec![delayed, at]);
    let table = ok(&db, &["jobs"]);
    assert_eq!(
        table.lines().filter(|l| l.contains("scheduled")).count(),
        2,
        "{table}"
    );
    let queues = json(&db, &["queues", "--json"]);
    assert_eq!(queue(&queues, "default")["scheduled"], 2, "{queues}");
    // A worker leaves them alone.
    let mut worker = db.worker(&["--poll-interval", "200ms"]);
    wait_state(&db, now, JobState::Succeeded).await;
    assert_eq!(state_of(&db, at).await, JobState::Queued);

    // Unique: a second enqueue of a live key creates nothing.
    let first = db.cli(&["enqueue", "--unique-key", "report-7", "--", "sleep", "2"]);
    assert!(first.status.success());
    assert_eq!(stderr(&first), "");
    let id: i64 = stdout(&first).trim().parse().unwrap();
    let again = db.cli(&["enqueue", "--unique-key", "report-7", "--", "sleep", "2"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(stdout(&again).trim(), id.to_string());
    assert!(
        stderr(&again).contains(&format!("job {id} already exists")),
        "{}",
        stderr(&again)
    );
    assert_eq!(db.show(id)["unique_key"], "report-7");
    // Once it finished, the key is free again.
    wait_state(&db, id, JobState::Succeeded).await;
    // Several processes at once: one job (on a queue no worker serves, so
    // it stays live while they race).
    let children: Vec<_> = (0..6)
        .map(|_| {
            std::process::Command::new(support::bin())
                .args(["--database-url", &db.url])
                .args([
                    "enqueue",
                    "--queue",
                    "idle",
                    "--unique-key",
                    "report-7",
                    "--",
                    "true",
                ])
                .current_dir(db.dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert!(outs.iter().all(|o| o.status.success()));
    let ids: std::collections::BTreeSet<String> =
        outs.iter().map(|o| stdout(o).trim().to_string()).collect();
    assert_eq!(ids.len(), 1, "one job for one key: {ids:?}");
    assert_ne!(ids.first().unwrap(), &id.to_string(), "a new job");
    assert_eq!(
        outs.iter().filter(|o| stderr(o).is_empty()).count(),
        1,
        "exactly one process created it"
    );
    // JSON lines take "unique_key" and "at" too.
    let file = db.path("jobs.jsonl");
    std::fs::write(
        &file,
        "{\"command\": [\"true\"], \"unique_key\": \"nightly\", \"at\": \"2099-06-01T00:00:00Z\"}\n\
         {\"command\": [\"true\"], \"unique_key\": \"nightly\"}\n",
    )
    .unwrap();
    let out = db.cli(&["enqueue", "--from-file", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], lines[1], "the second line holds the same key");
    assert_eq!(db.show(lines[0].parse().unwrap())["state"], "scheduled");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(Duration::from_secs(30)), 0);
}

/// The slots of the jobs a schedule enqueued (from their history).
async fn slots_of(db: &Db, name: &str) -> Vec<i64> {
    let store = db.store().await;
    let jobs = store
        .list(&dockhand::store::JobFilter::default())
        .await
        .unwrap();
    let mut slots = Vec::new();
    let prefix = format!("schedule {name} slot ");
    for job in jobs {
        let history = store.history(job.id).await.unwrap();
        if let Some(slot) = history[0]
            .detail
            .as_deref()
            .and_then(|d| d.strip_prefix(&prefix))
        {
            slots.push(slot.parse().unwrap());
        }
    }
    slots.sort();
    slots
}

async fn periodic_jobs_run_once_per_slot_across_workers(db: Db) {
    let marker = db.path("ticks");
    let out = ok(
        &db,
        &[
            "schedule",
            "add",
            "tick",
            "--cron",
            "*/2 * * * * *",
            "--",
            "sh",
            "-c",
            &format!("echo $DOCKHAND_JOB_ID >> {marker}"),
        ],
    );
    assert!(out.contains("schedule tick added: next slot"), "{out}");
    let list = json(&db, &["schedule", "list", "--json"]);
    assert_eq!(list["schedules"][0]["cron"], "*/2 * * * * *", "{list}");
    // Two workers, both looking every second.
    let mut a = db.worker(&["--poll-interval", "200ms"]);
    let mut b = db.worker(&["--poll-interval", "200ms"]);
    eventually("four slots run", Duration::from_secs(30), || {
        let marker = marker.clone();
        async move {
            let ran = std::fs::read_to_string(&marker).unwrap_or_default();
            (ran.lines().count() >= 4).then_some(())
        }
    })
    .await;
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    assert_eq!(a.wait(Duration::from_secs(30)), 0);
    assert_eq!(b.wait(Duration::from_secs(30)), 0);
    let slots = slots_of(&db, "tick").await;
    let distinct: std::collections::BTreeSet<_> = slots.iter().collect();
    assert_eq!(
        distinct.len(),
        slots.len(),
        "a slot enqueued twice: {slots:?}"
    );
    assert!(
        slots
            .windows(2)
            .all(|w| w[1] - w[0] >= 2_000 && w[0] % 2_000 == 0),
        "slots on the expression's seconds: {slots:?}"
    );
    // Each one ran once.
    let ran = std::fs::read_to_string(&marker).unwrap();
    let lines: Vec<&str> = ran.lines().collect();
    let once: std::collections::BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(once.len(), lines.len(), "a job ran twice: {lines:?}");
    assert!(slots.len() >= lines.len(), "{slots:?} {lines:?}");
    assert!(ok(&db, &["schedule", "remove", "tick"]).contains("removed"));
    let out = db.cli(&["schedule", "remove", "tick"]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
}

async fn after_downtime_only_the_latest_missed_slot_runs(db: Db) {
    ok(
        &db,
        &[
            "schedule",
            "add",
            "tock",
            "--cron",
            "*/2 * * * * *",
            "--",
            "true",
        ],
    );
    // No worker for three slots and more.
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    assert!(slots_of(&db, "tock").await.is_empty());
    let started = dockhand::store::unix_ms_now();
    let mut worker = db.worker(&["--poll-interval", "200ms"]);
    let first = eventually("a slot enqueued", Duration::from_secs(20), || {
        let db = &db;
        async move { slots_of(db, "tock").await.first().copied() }
    })
    .await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(Duration::from_secs(30)), 0);
    // The first slot enqueued is the latest one before the worker came:
    // the missed ones before it were skipped, not replayed.
    assert!(
        first > started - 2_000,
        "first slot {first}, worker started at {started}"
    );
    let slots = slots_of(&db, "tock").await;
    let ended = dockhand::store::unix_ms_now();
    assert!(
        slots.len() as i64 <= (ended - started) / 2_000 + 2,
        "a storm of missed slots: {slots:?}"
    );
}

/// Rows in the job tables, and finished jobs that finished more than
/// `stale` ago, read directly (`list` is capped).
async fn table_rows(db: &Db, stale: Duration) -> (i64, i64, i64) {
    const FINISHED: &str = "state IN ('succeeded', 'failed', 'cancelled')";
    let stale_ms = stale.as_millis() as i64;
    match db.store().await {
        dockhand::store::AnyStore::Postgres(pg) => {
            let pool = pg.pool();
            let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
                .fetch_one(pool)
                .await
                .unwrap();
            let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
                .fetch_one(pool)
                .await
                .unwrap();
            let old: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM jobs WHERE {FINISHED}
                 AND finished_at < now() - $1 * interval '1 millisecond'"
            ))
            .bind(stale_ms)
            .fetch_one(pool)
            .await
            .unwrap();
            (jobs, events, old)
        }
        _ => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
                .fetch_one(&pool)
                .await
                .unwrap();
            let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
                .fetch_one(&pool)
                .await
                .unwrap();
            let old: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM jobs WHERE {FINISHED} AND finished_at < ?"
            ))
            .bind(dockhand::store::unix_ms_now() - stale_ms)
            .fetch_one(&pool)
            .await
            .unwrap();
            (jobs, events, old)
        }
    }
}

async fn retention_keeps_the_tables_bounded_under_load(db: Db) {
    let mut worker = db.worker(&[
        "--concurrency",
        "8",
        "--poll-interval",
        "100ms",
        "--retain",
        "2s",
        "--retain-failed",
        "2s",
    ]);
    let file = db.path("batch.jsonl");
    let batch: String = (0..20)
        .map(|i| {
            if i % 10 == 0 {
                "{\"command\": [\"false\"], \"max_attempts\": 1}\n".to_string()
            } else {
                "{\"command\": [\"true\"]}\n".to_string()
            }
        })
        .collect();
    std::fs::write(&file, batch).unwrap();
    // Sustained load: 20 jobs every 200 ms for 8 s (800 jobs). With 2 s of
    // retention and a pruning round every second, no finished job outlives
    // its retention by more than a round (6 s leaves slack for a loaded
    // machine), whatever the backlog.
    let stale = Duration::from_secs(6);
    let mut finished_then = 0;
    for round in 0..40 {
        ok(&db, &["enqueue", "--from-file", &file]);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (jobs, _, old) = table_rows(&db, stale).await;
        assert_eq!(
            old, 0,
            "round {round}: {old} finished jobs past retention ({jobs} rows)"
        );
        finished_then = finished_then.max(jobs);
    }
    // Once the load stops, everything finished goes, with its history.
    eventually("the tables to empty", Duration::from_secs(60), || {
        let db = &db;
        async move { (table_rows(db, stale).await == (0, 0, 0)).then_some(()) }
    })
    .await;
    assert!(finished_then > 0);
    let out = ok(&db, &["prune", "--older-than", "1s", "--dry-run"]);
    assert!(out.contains("would delete 0 job(s)"), "{out}");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(Duration::from_secs(30)), 0);
}

async fn prune_by_hand(db: Db) {
    let ids: Vec<i64> = (0..3).map(|_| db.enqueue(&[], &["true"])).collect();
    ok(&db, &["cancel", &ids[0].to_string(), &ids[1].to_string()]);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let out = ok(
        &db,
        &["prune", "--older-than", "1s", "--state", "succeeded"],
    );
    assert!(out.contains("deleted 0 job(s)"), "{out}");
    let out = json(&db, &["prune", "--older-than", "1s", "--dry-run", "--json"]);
    assert_eq!(out["count"], 2, "{out}");
    let out = ok(
        &db,
        &["prune", "--older-than", "1s", "--state", "cancelled"],
    );
    assert!(out.contains("deleted 2 job(s) and their history"), "{out}");
    let gone = db.cli(&["show", &ids[0].to_string()]);
    assert_eq!(gone.status.code(), Some(66));
    assert_eq!(db.show(ids[2])["state"], "queued");
}

/// Bad values get one line and change nothing.
async fn bad_operations_input(db: Db) {
    let cases: [(&[&str], i32, &str); 10] = [
        (
            &["prune", "--older-than", "1d", "--state", "running"],
            2,
            "not running",
        ),
        (&["worker", "--retain", "10ms"], 2, "off"),
        (
            &["schedule", "add", "x", "--cron", "nope", "--", "true"],
            2,
            "cron",
        ),
        (&["schedule", "add", "x", "--cron", "* * * * *"], 2, "CMD"),
        (
            &["enqueue", "--at", "tomorrow", "--", "true"],
            2,
            "RFC 3339",
        ),
        (
            &[
                "enqueue",
                "--at",
                "2099-01-01T00:00:00Z",
                "--delay",
                "1s",
                "--",
                "true",
            ],
            2,
            "--delay",
        ),
        (
            &["enqueue", "--unique-key", "", "--", "true"],
            1,
            "unique key",
        ),
        (&["pause", ""], 2, "queue name"),
        (&["cancel", "--state", "scheduled"], 2, "--state queued"),
        (&["jobs", "--state", "later"], 2, "scheduled"),
    ];
    for (args, code, needle) in cases {
        let out = db.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let jobs = db
        .store()
        .await
        .list(&dockhand::store::JobFilter::default())
        .await
        .unwrap();
    assert!(jobs.is_empty(), "bad input wrote {jobs:?}");
}

/// A file larger than one chunk (`enqueue --from-file` streams 10,000
/// lines at a time) goes in as one transaction: unique keys hold across
/// chunks, and a bad last line leaves nothing of the lines before it.
async fn a_file_of_many_chunks_is_enqueued_all_or_nothing(db: Db) {
    let store = db.store().await;
    let ready = |queue: &'static str| {
        let store = store.clone();
        async move {
            let stats = store.queue_stats().await.unwrap();
            stats
                .into_iter()
                .find(|q| q.queue == queue)
                .map_or(0, |q| q.ready)
        }
    };
    let good = db.path("good.jsonl");
    let mut lines = String::new();
    for i in 1..=25_000 {
        let key = match i {
            3 | 15_000 => r#", "unique_key": "nightly""#,
            _ => "",
        };
        lines.push_str(&format!(
            "{{\"command\": [\"true\"], \"queue\": \"bulk\"{key}}}\n"
        ));
        if i == 20_000 {
            lines.push('\n');
        }
    }
    std::fs::write(&good, &lines).unwrap();
    let out = db.cli(&["enqueue", "--from-file", &good]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let ids: Vec<&str> = text.lines().collect();
    assert_eq!(ids.len(), 25_000);
    assert_eq!(ids[14_999], ids[2], "the key holds across chunks");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("\"nightly\""), "{}", stderr(&out));
    assert_eq!(ready("bulk").await, 24_999);

    let bad = db.path("bad.jsonl");
    lines = lines.replace("\"bulk\"", "\"bad\"");
    lines.push_str("{\"command\": []}\n");
    std::fs::write(&bad, &lines).unwrap();
    let out = db.cli(&["enqueue", "--from-file", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("bad.jsonl:25002:"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty(), "{}", stdout(&out));
    assert_eq!(ready("bad").await, 0, "a bad line left rows behind");

    // --json keeps its shape.
    let small = db.path("small.jsonl");
    std::fs::write(
        &small,
        "{\"command\": [\"true\"], \"queue\": \"json\"}\n{\"command\": [\"true\"], \"queue\": \"json\", \"unique_key\": \"nightly\"}\n",
    )
    .unwrap();
    let out = db.cli(&["enqueue", "--from-file", &small, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let jobs = value["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["existed"], false);
    assert_eq!(jobs[1]["existed"], true);
    assert_eq!(jobs[1]["id"].to_string(), ids[2]);
}

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = crate::support::Db::postgres(stringify!($test)).await;
                    super::$test(db).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = crate::support::Db::sqlite(stringify!($test)).await;
                    super::$test(db).await;
                }
            )*
        }
    };
}

on_both! {
    pause_stops_claims_and_resume_restarts_them,
    bulk_cancel_and_retry_while_a_worker_runs,
    scheduled_and_unique_jobs,
    bad_operations_input,
    periodic_jobs_run_once_per_slot_across_workers,
    after_downtime_only_the_latest_missed_slot_runs,
    retention_keeps_the_tables_bounded_under_load,
    prune_by_hand,
    a_file_of_many_chunks_is_enqueued_all_or_nothing,
}
