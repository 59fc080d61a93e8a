//! The real `dockhand` binary as a child process, real signals, a real
//! PostgreSQL (fresh database per test) and the embedded SQLite default.

mod support;

use std::time::{Duration, Instant};

use dockhand::job::{JobId, JobState};
use dockhand::store::{JobFilter, Store};
use support::{eventually, processes_exactly, processes_with, wait_state, wait_state_watching, Db};

const SIGTERM: i32 = libc::SIGTERM;
const SIGINT: i32 = libc::SIGINT;
const SIGKILL: i32 = libc::SIGKILL;
const SIGUSR1: i32 = libc::SIGUSR1;
const LONG: Duration = Duration::from_secs(30);

async fn state(db: &Db, id: i64) -> dockhand::store::Job {
    db.store()
        .await
        .get(JobId(id))
        .await
        .unwrap()
        .expect("job exists")
}

async fn history(db: &Db, id: i64) -> Vec<String> {
    let events = db.store().await.history(JobId(id)).await.unwrap();
    events.into_iter().map(|e| e.kind).collect()
}

/// A unique number of seconds: `sleep <it>` is a grandchild of the worker
/// (the job's shell forks it) that the test can find in /proc.
fn marker(db: &Db) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    db.dir.path().hash(&mut hasher);
    format!("sleep {}", 100_000_000 + hasher.finish() % 800_000_000)
}

async fn term_lets_running_jobs_finish(db: Db, signal: i32) {
    let a = db.enqueue(&[], &["sh", "-c", "sleep 1; echo a"]);
    let b = db.enqueue(&[], &["sh", "-c", "sleep 1.5; echo b"]);
    let mut worker = db.worker(&["--concurrency", "2", "--poll-interval", "100ms"]);
    wait_state(&db, a, JobState::Running).await;
    wait_state(&db, b, JobState::Running).await;
    worker.signal(signal);
    worker.wait_for_line("running -> draining", LONG);
    let late = db.enqueue(&[], &["echo", "late"]);
    let code = worker.wait(LONG);
    assert_eq!(code, 0, "{}", worker.stderr());
    assert_eq!(state(&db, a).await.state, JobState::Succeeded);
    assert_eq!(state(&db, b).await.state, JobState::Succeeded);
    assert_eq!(db.cli(&["logs", &a.to_string()]).stdout, b"a\n");
    let late_job = state(&db, late).await;
    assert_eq!(
        late_job.state,
        JobState::Queued,
        "a job enqueued after the signal is never claimed"
    );
    assert_eq!(history(&db, late).await, ["enqueued"]);
    let stderr = worker.stderr();
    assert!(stderr.contains("shutdown trace:"), "{stderr}");
    assert!(stderr.contains("draining -> stopped"), "{stderr}");
}

async fn stuck_job_is_killed_and_requeued(db: Db) {
    let mark = marker(&db);
    let script = format!("trap '' TERM; {mark} & wait");
    let id = db.enqueue(&[], &["sh", "-c", &script]);
    let mut worker = db.worker(&[
        "--shutdown-timeout",
        "1s",
        "--kill-grace",
        "1s",
        "--poll-interval",
        "100ms",
    ]);
    wait_state(&db, id, JobState::Running).await;
    eventually("the job's marker process", LONG, || async {
        (!processes_exactly(&mark).is_empty()).then_some(())
    })
    .await;
    let sent = Instant::now();
    worker.signal(SIGTERM);
    let code = worker.wait(LONG);
    let took = sent.elapsed();
    assert_eq!(code, 75, "{}", worker.stderr());
    // Design bound: shutdown_timeout + kill_grace + store grace (5s), plus process start/exit slack.
    assert!(
        took < Duration::from_secs(1 + 1 + 5 + 2),
        "exit took {took:?}"
    );
    let job = state(&db, id).await;
    assert_eq!(
        (job.state, job.interruptions, job.attempts),
        (JobState::Queued, 1, 0)
    );
    assert!(
        processes_with(&mark).is_empty(),
        "left behind: {:?}",
        processes_with(&mark)
    );
    let stderr = worker.stderr();
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    assert!(history(&db, id).await.contains(&"interrupted".to_string()));
}

async fn double_term_forces_and_triple_kills(db: Db) {
    // Double: a job that honours TERM stops at the second signal, long before the timeout.
    let id = db.enqueue(&[], &["sleep", "30"]);
    let mut worker = db.worker(&[
        "--shutdown-timeout",
        "60s",
        "--kill-grace",
        "30s",
        "--poll-interval",
        "100ms",
    ]);
    wait_state(&db, id, JobState::Running).await;
    worker.signal(SIGTERM);
    worker.wait_for_line("running -> draining", LONG);
    let sent = Instant::now();
    worker.signal(SIGTERM);
    assert_eq!(worker.wait(LONG), 75, "{}", worker.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "second TERM must force: {:?}",
        sent.elapsed()
    );
    assert_eq!(state(&db, id).await.interruptions, 1);

    // Triple: a job that ignores TERM dies at the third signal, long before kill_grace.
    let mark = marker(&db);
    let script = format!("trap '' TERM; {mark} & wait");
    let id = db.enqueue(&[], &["sh", "-c", &script]);
    let mut worker = db.worker(&[
        "--shutdown-timeout",
        "60s",
        "--kill-grace",
        "60s",
        "--poll-interval",
        "100ms",
    ]);
    wait_state(&db, id, JobState::Running).await;
    worker.signal(SIGTERM);
    worker.wait_for_line("running -> draining", LONG);
    worker.signal(SIGTERM);
    worker.wait_for_line("draining -> timed-out", LONG);
    let sent = Instant::now();
    worker.signal(SIGTERM);
    assert_eq!(worker.wait(LONG), 75, "{}", worker.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "third TERM must kill: {:?}",
        sent.elapsed()
    );
    assert!(processes_with(&mark).is_empty());
    assert_eq!(state(&db, id).await.interruptions, 1);
}

async fn usr1_reports_and_changes_nothing(db: Db) {
    let id = db.enqueue(&[], &["sh", "-c", "sleep 3"]);
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Running).await;
    // Claimed is not yet started: on a loaded machine the first report may
    // show the job "starting", so ask again until it shows it running.
    let running = format!("jobs=[{id} running");
    let line = eventually("a status line with the job running", LONG, || {
        let before = worker.stderr().matches("dockhand status:").count();
        worker.signal(SIGUSR1);
        let worker = &worker;
        let running = running.clone();
        async move {
            let start = Instant::now();
            while worker.stderr().matches("dockhand status:").count() == before
                && start.elapsed() < Duration::from_secs(5)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let stderr = worker.stderr();
            let line = stderr.lines().rfind(|l| l.contains("dockhand status:"))?;
            line.contains(&running).then(|| line.to_string())
        }
    })
    .await;
    assert!(line.contains("phase=running"), "{line}");
    assert!(line.contains("worker="), "{line}");
    wait_state(&db, id, JobState::Succeeded).await;
    let reports = worker.stderr().matches("dockhand status:").count();
    worker.signal(SIGUSR1);
    eventually("another status line", LONG, || {
        let n = worker.stderr().matches("dockhand status:").count();
        async move { (n > reports).then_some(()) }
    })
    .await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "USR1 must not stop the worker"
    );
    worker.signal(SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}

async fn sigkilled_worker_leaves_no_process_and_job_reruns(db: Db) {
    let mark = marker(&db);
    let flag = db.path("first-run-done");
    let script =
        format!("if [ -f {flag} ]; then echo second run; else touch {flag}; {mark} & wait; fi");
    let id = db.enqueue(&[], &["sh", "-c", &script]);
    let mut first = db.worker(&["--lease", "1s", "--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Running).await;
    eventually("the job's marker process", LONG, || async {
        (!processes_exactly(&mark).is_empty()).then_some(())
    })
    .await;
    first.signal(SIGKILL);
    let _ = first.child.wait();
    eventually(
        "job processes to die with the worker",
        Duration::from_secs(2),
        || async { processes_with(&mark).is_empty().then_some(()) },
    )
    .await;
    let mut second = db.worker(&["--lease", "1s", "--poll-interval", "100ms"]);
    let job = wait_state_watching(&db, id, JobState::Succeeded, &[&first, &second]).await;
    assert_eq!((job.interruptions, job.attempts), (1, 1));
    assert_eq!(db.cli(&["logs", &id.to_string()]).stdout, b"second run\n");
    assert!(history(&db, id)
        .await
        .contains(&"lease-expired".to_string()));
    second.signal(SIGTERM);
    assert_eq!(second.wait(LONG), 0);
}

async fn two_workers_run_every_job_exactly_once(db: Db) {
    let log = db.path("side-effects.log");
    let lines: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"command": ["sh", "-c", "echo {i} >> {log}"]}}"#))
        .collect();
    let file = db.path("jobs.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = db.cli(&["enqueue", "--from-file", &file]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 300);
    let mut a = db.worker(&["--concurrency", "8", "--poll-interval", "100ms"]);
    let mut b = db.worker(&["--concurrency", "8", "--poll-interval", "100ms"]);
    let store = db.store().await;
    eventually("all 300 jobs to succeed", Duration::from_secs(120), || {
        let store = store.clone();
        async move {
            let filter = JobFilter {
                state: Some(JobState::Succeeded),
                limit: Some(1000),
                ..JobFilter::default()
            };
            (store.list(&filter).await.unwrap().len() == 300).then_some(())
        }
    })
    .await;
    a.signal(SIGTERM);
    b.signal(SIGTERM);
    assert_eq!(a.wait(LONG), 0, "{}", a.stderr());
    assert_eq!(b.wait(LONG), 0, "{}", b.stderr());
    let effects = std::fs::read_to_string(&log).unwrap();
    let mut seen: Vec<u32> = effects.lines().map(|l| l.trim().parse().unwrap()).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..300).collect::<Vec<_>>(),
        "every job ran exactly once"
    );
}

async fn retries_timeouts_and_cancels(db: Db) {
    let failing = db.enqueue(
        &["--max-attempts", "2"],
        &[
            "sh",
            "-c",
            "echo \"boom on attempt $DOCKHAND_ATTEMPT\" >&2; exit 3",
        ],
    );
    let slow = db.enqueue(
        &["--timeout", "500ms", "--max-attempts", "1"],
        &["sleep", "30"],
    );
    let queued = db.enqueue(&["--delay", "1h"], &["echo", "never"]);
    let running = db.enqueue(&[], &["sleep", "30"]);
    let mut worker = db.worker(&[
        "--concurrency",
        "4",
        "--poll-interval",
        "100ms",
        "--lease",
        "1500ms",
    ]);
    let cancelled = db.cli(&["cancel", &queued.to_string()]);
    assert!(cancelled.status.success());
    assert_eq!(state(&db, queued).await.state, JobState::Cancelled);
    wait_state(&db, running, JobState::Running).await;
    let asked = Instant::now();
    let out = db.cli(&["cancel", &running.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_state(&db, running, JobState::Cancelled).await;
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );

    let job = wait_state(&db, slow, JobState::Failed).await;
    assert_eq!(job.error.as_deref(), Some("timed out after 500ms"));
    let job = wait_state(&db, failing, JobState::Failed).await;
    assert_eq!((job.attempts, job.exit_code), (2, Some(3)));
    assert_eq!(
        history(&db, failing)
            .await
            .iter()
            .filter(|k| *k == "retry-scheduled")
            .count(),
        1
    );
    // The output kept is the last attempt's, which was told its number.
    assert_eq!(
        String::from_utf8_lossy(&db.cli(&["logs", &failing.to_string()]).stdout),
        "boom on attempt 2\n"
    );
    let again = db.cli(&["cancel", &failing.to_string()]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "cancelling a failed job is refused"
    );
    worker.signal(SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
}

async fn secrets_never_shown(db: Db) {
    let out_file = db.path("seen-by-job");
    let script = format!("echo \"$API_TOKEN\" > {out_file}; sleep 1");
    let id = db.enqueue(
        &["--env", "API_TOKEN=s3cr3t-value-42", "--env", "MODE=fast"],
        &["sh", "-c", &script],
    );
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Running).await;
    worker.signal(SIGUSR1);
    worker.wait_for_line("dockhand status:", LONG);
    wait_state(&db, id, JobState::Succeeded).await;
    worker.signal(SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "s3cr3t-value-42\n",
        "the job gets the value"
    );
    let show = db.cli(&["show", &id.to_string()]);
    let show_json = db.cli(&["show", &id.to_string(), "--json"]);
    let jobs = db.cli(&["jobs", "--json"]);
    for (what, text) in [
        ("worker log", worker.stderr()),
        ("show", String::from_utf8_lossy(&show.stdout).into_owned()),
        (
            "show --json",
            String::from_utf8_lossy(&show_json.stdout).into_owned(),
        ),
        (
            "jobs --json",
            String::from_utf8_lossy(&jobs.stdout).into_owned(),
        ),
    ] {
        assert!(
            !text.contains("s3cr3t-value-42"),
            "{what} shows the secret:\n{text}"
        );
    }
    assert!(String::from_utf8_lossy(&show.stdout).contains("API_TOKEN=[redacted]"));
    assert!(String::from_utf8_lossy(&show.stdout).contains("MODE=fast"));
}

async fn bad_input_gets_one_line_and_changes_nothing(db: Db) {
    let ok = db.enqueue(&[], &["true"]);
    let bad_file = db.path("bad.jsonl");
    std::fs::write(
        &bad_file,
        "{\"command\": [\"echo\", \"1\"]}\n{\"command\": \"not a list\"}\n",
    )
    .unwrap();
    let unknown_key = db.path("unknown.jsonl");
    std::fs::write(
        &unknown_key,
        "{\"command\": [\"echo\"], \"colour\": \"red\"}\n",
    )
    .unwrap();
    let empty_command = db.path("empty.jsonl");
    std::fs::write(&empty_command, "{\"command\": []}\n").unwrap();
    // Docker reads a zero limit as "no limit": a zero must be refused, never
    // passed on.
    let zero_pids = db.path("zero_pids.jsonl");
    std::fs::write(
        &zero_pids,
        "{\"command\": [\"true\"], \"image\": \"x\", \"pids\": 0}\n",
    )
    .unwrap();
    let zero_cpus = db.path("zero_cpus.jsonl");
    std::fs::write(
        &zero_cpus,
        "{\"command\": [\"true\"], \"image\": \"x\", \"cpus\": 0}\n",
    )
    .unwrap();
    let zero_memory = db.path("zero_memory.jsonl");
    std::fs::write(
        &zero_memory,
        "{\"command\": [\"true\"], \"image\": \"x\", \"memory\": \"0\"}\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec!["worker".into(), "--lease".into(), "5x".into()],
            2,
            "invalid duration",
        ),
        (vec!["worker".into(), "--bogus".into()], 2, "--bogus"),
        (vec!["enqueue".into()], 2, "<CMD>"),
        (
            vec!["enqueue".into(), "--from-file".into(), bad_file.clone()],
            1,
            "bad.jsonl:2",
        ),
        (
            vec!["enqueue".into(), "--from-file".into(), unknown_key.clone()],
            1,
            "colour",
        ),
        (
            vec![
                "enqueue".into(),
                "--from-file".into(),
                empty_command.clone(),
            ],
            1,
            "a command is required",
        ),
        (
            vec![
                "enqueue".into(),
                "--timeout".into(),
                "soon".into(),
                "--".into(),
                "true".into(),
            ],
            2,
            "invalid duration",
        ),
        (
            vec!["worker".into(), "--concurrency".into(), "0".into()],
            2,
            "concurrency",
        ),
        (
            vec!["worker".into(), "--prefetch".into(), "5000".into()],
            2,
            "prefetch must be at most 1024",
        ),
        (vec!["show".into(), "999999".into()], 66, "not found"),
        (
            vec![
                "enqueue".into(),
                "--image".into(),
                "x".into(),
                "--pids".into(),
                "0".into(),
                "--".into(),
                "true".into(),
            ],
            2,
            "process limit",
        ),
        (
            vec![
                "enqueue".into(),
                "--image".into(),
                "x".into(),
                "--memory".into(),
                "0".into(),
                "--".into(),
                "true".into(),
            ],
            2,
            "memory limit",
        ),
        (
            vec![
                "enqueue".into(),
                "--image".into(),
                "x".into(),
                "--cpus".into(),
                "0".into(),
                "--".into(),
                "true".into(),
            ],
            2,
            "CPU count",
        ),
        (
            vec!["worker".into(), "--docker-pids".into(), "0".into()],
            2,
            "process limit",
        ),
        (
            vec!["worker".into(), "--docker-memory".into(), "0".into()],
            2,
            "memory limit",
        ),
        (
            vec!["worker".into(), "--docker-cpus".into(), "0".into()],
            2,
            "CPU count",
        ),
        (
            vec!["enqueue".into(), "--from-file".into(), zero_pids.clone()],
            1,
            "process limit",
        ),
        (
            vec!["enqueue".into(), "--from-file".into(), zero_cpus.clone()],
            1,
            "CPU count",
        ),
        (
            vec!["enqueue".into(), "--from-file".into(), zero_memory.clone()],
            1,
            "memory limit",
        ),
        (
            vec!["jobs".into(), "--state".into(), "done".into()],
            2,
            "done",
        ),
    ];
    for (args, code, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = db.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{args:?}: not one line:\n{stderr}"
        );
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    let all = db.store().await.list(&JobFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|j| j.id.0).collect::<Vec<_>>(),
        vec![ok],
        "bad input changed the database"
    );
}

#[test]
fn unreachable_database_is_one_line_without_the_password() {
    let out = std::process::Command::new(support::bin())
        .args([
            "--database-url",
            "postgres://dockhand:hunter2@127.0.0.1:1/nope",
            "jobs",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("database unreachable"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let out = std::process::Command::new(support::bin())
        .args(["--database-url", "mysql://x", "jobs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "a configuration error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid database URL"));
}

#[test]
fn idle_worker_exits_at_once_on_term() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("idle.db").display());
    let db = Db {
        url,
        dir,
        postgres: None,
    };
    let mut worker = db.worker(&[]);
    let sent = Instant::now();
    worker.signal(SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
    // Design: an idle worker exits at once (generous slack for a loaded CI machine).
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "idle exit took {:?}",
        sent.elapsed()
    );
    assert!(
        worker
            .stderr()
            .contains("draining -> stopped: idle; exit 0"),
        "{}",
        worker.stderr()
    );
}

/// `--prefetch`: a claim takes jobs beyond the free slots; those still
/// waiting at SIGTERM go back to the queue without starting, attempts
/// untouched, while the running job finishes.
async fn prefetched_jobs_go_back_unstarted_at_term(db: Db) {
    // Job a runs until the test lets it end, so the signal comes while it runs.
    let flag = db.dir.path().join("let-a-end");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; echo a",
        flag.display()
    );
    let a = db.enqueue(&[], &["sh", "-c", &script]);
    let b = db.enqueue(&[], &["sh", "-c", "echo b"]);
    let c = db.enqueue(&[], &["sh", "-c", "echo c"]);
    let mut worker = db.worker(&[
        "--concurrency",
        "1",
        "--prefetch",
        "2",
        "--poll-interval",
        "100ms",
    ]);
    // One claim of three: a runs, b and c wait in the worker, claimed.
    for id in [a, b, c] {
        wait_state(&db, id, JobState::Running).await;
    }
    worker.signal(SIGTERM);
    worker.wait_for_line("running -> draining", LONG);
    for (id, name) in [(b, "b"), (c, "c")] {
        let job = wait_state(&db, id, JobState::Queued).await;
        assert_eq!((job.attempts, job.interruptions), (0, 0), "job {name}");
        assert_eq!(
            history(&db, id).await,
            ["enqueued", "claimed", "handed-back"],
            "job {name}"
        );
        assert!(db.cli(&["logs", &id.to_string()]).stdout.is_empty());
    }
    // The running job was never stopped: it ends on its own.
    assert_eq!(state(&db, a).await.state, JobState::Running);
    std::fs::write(&flag, b"").unwrap();
    let code = worker.wait(LONG);
    assert_eq!(code, 0, "{}", worker.stderr());
    assert_eq!(db.cli(&["logs", &a.to_string()]).stdout, b"a\n");
    let stderr = worker.stderr();
    assert!(
        stderr.contains(&format!(
            "job {b}: prefetched, not started before the shutdown signal; handing it back"
        )),
        "{stderr}"
    );
}

macro_rules! on_both {
    ($($test:ident $(($($arg:expr),*))?),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = crate::support::Db::postgres(stringify!($test)).await;
                    super::$test(db $($(, $arg)*)?).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let db = crate::support::Db::sqlite(stringify!($test)).await;
                    super::$test(db $($(, $arg)*)?).await;
                }
            )*
        }
    };
}

async fn term_drains(db: Db) {
    term_lets_running_jobs_finish(db, SIGTERM).await
}

async fn int_drains(db: Db) {
    term_lets_running_jobs_finish(db, SIGINT).await
}

on_both! {
    term_drains,
    int_drains,
    stuck_job_is_killed_and_requeued,
    double_term_forces_and_triple_kills,
    usr1_reports_and_changes_nothing,
    sigkilled_worker_leaves_no_process_and_job_reruns,
    two_workers_run_every_job_exactly_once,
    retries_timeouts_and_cancels,
    secrets_never_shown,
    bad_input_gets_one_line_and_changes_nothing,
    prefetched_jobs_go_back_unstarted_at_term,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cancel_reaches_a_worker_with_the_default_lease_within_about_a_second() {
    let db = Db::sqlite("cancel_default_lease").await;
    let id = db.enqueue(&[], &["sleep", "60"]);
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Running).await;
    // Let the first heartbeat (at lease/3 = 5s) be far away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    assert!(db.cli(&["cancel", &id.to_string()]).status.success());
    wait_state(&db, id, JobState::Cancelled).await;
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "cancel took {:?}",
        asked.elapsed()
    );
    worker.signal(SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}
