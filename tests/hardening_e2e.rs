//! Issue 13 end to end, on the real binary: odd bytes in job output, an
//! outcome the database refuses, secrets in URLs, signals during start-up,
//! closed pipes and absurd values. (The outage longer than a lease is in
//! `postgres_restart.rs`, which owns a server it may stop.)

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dockhand::job::{JobId, JobState};
use dockhand::store::{AnyStore, Store};
use support::{bin, wait_state, Db};

const LONG: Duration = Duration::from_secs(30);

/// A job that prints a NUL byte (and every other byte) is recorded with its
/// output byte for byte, and the worker goes on: the other job succeeds and
/// TERM exits 0 at once.
async fn nul_and_binary_output_is_recorded_faithfully(db: Db) {
    let binary = db.enqueue(&[], &["sh", "-c", r"printf 'a\000b\377\376end'"]);
    let plain = db.enqueue(&[], &["echo", "ok"]);
    let mut worker = db.worker(&["--concurrency", "2", "--poll-interval", "100ms"]);
    wait_state(&db, binary, JobState::Succeeded).await;
    wait_state(&db, plain, JobState::Succeeded).await;
    let logs = db.cli(&["logs", &binary.to_string()]);
    assert!(logs.status.success());
    assert_eq!(
        logs.stdout, b"a\0b\xff\xfeend",
        "logs shows the job's bytes"
    );
    let sent = Instant::now();
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "an idle worker exits at once, took {:?}",
        sent.elapsed()
    );
    assert!(
        !worker.stderr().contains("recording outcomes failed"),
        "{}",
        worker.stderr()
    );
}

/// PostgreSQL refuses one outcome (a trigger raises a data error for output
/// holding POISON): that outcome is isolated and recorded as failed without
/// its output; the others in the same batch are recorded; the worker is
/// never stuck and never retries the refusal as if it were an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_the_database_refuses_is_isolated() {
    let db = Db::postgres("refused_outcome").await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    let AnyStore::Postgres(pg) = &store else {
        unreachable!("a PostgreSQL database")
    };
    for statement in [
        "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$
         BEGIN
           IF NEW.output IS NOT NULL AND position('POISON'::bytea in NEW.output) > 0 THEN
             RAISE EXCEPTION 'poisoned output refused' USING ERRCODE = '22023';
           END IF;
           RETURN NEW;
         END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER refuse_poison BEFORE UPDATE ON jobs
         FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
    ] {
        sqlx::query(statement).execute(pg.pool()).await.unwrap();
    }
    // All four finish together, so their outcomes go out as one batch.
    let gate = db.path("gate");
    let wait = format!("while [ ! -e {gate} ]; do sleep 0.05; done");
    let fine: Vec<i64> = (0..3)
        .map(|i| db.enqueue(&[], &["sh", "-c", &format!("{wait}; echo fine {i}")]))
        .collect();
    let poison = db.enqueue(
        &["--max-attempts", "1"],
        &["sh", "-c", &format!("{wait}; echo POISON")],
    );
    let mut worker = db.worker(&["--concurrency", "4", "--poll-interval", "100ms"]);
    for id in fine.iter().chain([&poison]) {
        wait_state(&db, *id, JobState::Running).await;
    }
    std::fs::write(&gate, "").unwrap();
    for id in &fine {
        let job = wait_state(&db, *id, JobState::Succeeded).await;
        assert_eq!(job.attempts, 1);
    }
    let refused = wait_state(&db, poison, JobState::Failed).await;
    let error = refused.error.unwrap_or_default();
    assert!(
        error.contains("refused") && error.contains("poisoned output refused"),
        "{error}"
    );
    let logs = db.cli(&["logs", &poison.to_string()]);
    assert!(logs.stdout.is_empty(), "the refused output is not kept");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    let stderr = worker.stderr();
    assert!(
        !stderr.contains("store reachable again"),
        "a refusal is not an outage:\n{stderr}"
    );
}

/// Passwords never appear, whatever the URL looks like: a `/` or `@` in the
/// password, `?password=`, a URL inside a job's env value or command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_passwords_never_appear() {
    // 78: a URL that cannot be used; 1: a database that cannot be reached.
    for (url, code) in [
        ("postgres://u:ab/cd@127.0.0.1:1/db", 78),
        ("postgres://u:p@ss@127.0.0.1:1/db", 1),
        ("postgres://u@127.0.0.1:1/db?password=hunter2x", 1),
        (
            "postgres://u@127.0.0.1:1/db?sslmode=disable&password=hunter2x",
            1,
        ),
    ] {
        let out = Command::new(bin())
            .args(["--database-url", url, "jobs"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{url}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{url}: {stderr}");
        for secret in ["ab/cd", "cd@", "p@ss", "ss@", "hunter2x"] {
            assert!(!stderr.contains(secret), "{url} leaks {secret}: {stderr}");
        }
    }
    let db = Db::sqlite("url_in_env").await;
    let id = db.enqueue(
        &["--env", "UPSTREAM=postgres://app:hunter2x@db.internal/app"],
        &["psql", "postgres://app:hunter2x@db.internal/app"],
    );
    for args in [vec!["show", "--json"], vec!["show"], vec!["jobs", "--json"]] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        if args[0] == "show" {
            args.insert(1, id.to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = db.cli(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(!text.contains("hunter2x"), "{args:?} leaks:\n{text}");
        assert!(
            text.contains("postgres://app:***@db.internal/app"),
            "{text}"
        );
    }
}

/// A TCP port that accepts connections and never answers: a database that
/// hangs while the worker connects.
fn silent_server() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, format!("postgres://u:p@127.0.0.1:{port}/db"))
}

/// Signals that arrive while the worker connects are handled: USR1 reports
/// "starting", TERM exits 0 at once. (Before the fix USR1 killed it: 138.)
#[test]
fn signals_during_start_up_are_handled() {
    let (_server, url) = silent_server();
    let child = Command::new(bin())
        .args(["--database-url", &url, "worker"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed if the test fails: it would keep calling the silent server.
    let mut worker = support::Worker::adopt(child);
    std::thread::sleep(Duration::from_millis(500));
    worker.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "USR1 killed the worker"
    );
    let sent = Instant::now();
    worker.signal(libc::SIGTERM);
    let code = worker.wait(LONG);
    let stderr = worker.stderr();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("phase=starting"), "{stderr}");
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "TERM while starting took {:?}",
        sent.elapsed()
    );
}

/// `dockhand jobs --json | head -c1`: the closed pipe ends the command
/// quietly, no panic, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_not_a_panic() {
    let db = Db::sqlite("closed_stdout").await;
    let file = db.path("many.jsonl");
    let lines: String = (0..2000)
        .map(|i| format!("{{\"command\": [\"echo\", \"{i}\"]}}\n"))
        .collect();
    std::fs::write(&file, lines).unwrap();
    assert!(db.cli(&["enqueue", "--from-file", &file]).status.success());
    for command in ["jobs --json --limit 2000", "jobs --limit 2000", "show 1"] {
        let script = format!(
            "'{}' --database-url '{}' {command} | head -c1 >/dev/null; echo \"${{PIPESTATUS[0]}}\"",
            bin(),
            db.url
        );
        let out = Command::new("bash").args(["-c", &script]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{command}: {stderr}");
        assert!(stderr.is_empty(), "{command}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0",
            "{command}"
        );
    }
}

/// A worker whose stderr is closed keeps working and exits with its true
/// code (not 101 from a panic on a log line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_closed_stderr_keeps_working() {
    let db = Db::sqlite("closed_stderr").await;
    let id = db.enqueue(&[], &["sh", "-c", "sleep 0.5; echo done"]);
    let mut child = Command::new(bin())
        .args([
            "--database-url",
            &db.url,
            "worker",
            "--poll-interval",
            "100ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let mut worker = support::Worker::adopt(child);
    wait_state(&db, id, JobState::Succeeded).await;
    worker.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(200));
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
    let job = db.store().await.get(JobId(id)).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
}

/// Absurd values get a one-line error at parse time, never a panic later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_values_are_refused_up_front() {
    let db = Db::sqlite("absurd").await;
    let jsonl = db.path("absurd.jsonl");
    std::fs::write(
        &jsonl,
        "{\"command\": [\"true\"], \"timeout\": \"99999999999999h\"}\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["worker", "--shutdown-timeout", "18446744073709551600s"],
            2,
            "too long",
        ),
        (vec!["worker", "--lease", "2h"], 2, "lease must be at most"),
        (
            vec!["worker", "--kill-grace", "400d"],
            2,
            "kill grace must be at most",
        ),
        (
            vec!["worker", "--concurrency", "99999999999"],
            2,
            "concurrency",
        ),
        (
            vec!["worker", "--docker-memory", "99999999t"],
            2,
            "too large",
        ),
        (
            vec!["enqueue", "--timeout", "400d", "--", "true"],
            1,
            "at most 30 days",
        ),
        (vec!["enqueue", "--from-file", &jsonl], 1, "absurd.jsonl:1"),
        (
            vec!["enqueue", "--delay", "20000d", "--", "true"],
            2,
            "too long",
        ),
    ];
    for (args, code, needle) in cases {
        let out = db.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let jobs = db.cli(&["jobs", "--json"]);
    assert_eq!(String::from_utf8_lossy(&jobs.stdout).trim(), "[]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_output_on_postgres() {
    nul_and_binary_output_is_recorded_faithfully(Db::postgres("nul_output").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_output_on_sqlite() {
    nul_and_binary_output_is_recorded_faithfully(Db::sqlite("nul_output").await).await;
}

/// Issue 13, item 4: a worker paused past its lease (SIGSTOP, a GC pause, a
/// frozen VM) finds on waking that another worker runs its job. Its own copy
/// must die at once, not after the 20 s kill grace: the two copies overlap
/// only for as long as the paused worker takes to notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_kills_its_copy_at_once() {
    let db = Db::postgres("paused_past_lease").await;
    let pids = db.path("pids");
    // The job's parent is its shim; the shim's parent is the worker.
    let script = format!(
        "echo \"$$ $(cut -d' ' -f4 /proc/$PPID/stat)\" >> {pids}; trap '' TERM; while :; do sleep 0.1; done"
    );
    let id = db.enqueue(&["--max-attempts", "1"], &["sh", "-c", &script]);
    let fast = [
        "--lease",
        "2s",
        "--poll-interval",
        "100ms",
        "--kill-grace",
        "20s",
    ];
    let mut a = db.worker(&fast);
    wait_state(&db, id, JobState::Running).await;
    let copy_of = |worker: i32| {
        std::fs::read_to_string(&pids)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(_, parent)| parent.parse() == Ok(worker))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
    };
    let a_copy =
        support::eventually("A's copy to start", LONG, || async { copy_of(a.pid()) }).await;
    a.signal(libc::SIGSTOP);
    let mut b = db.worker(&fast);
    support::eventually("B to take over the job", LONG, || async {
        copy_of(b.pid())
    })
    .await;
    let woke = Instant::now();
    a.signal(libc::SIGCONT);
    support::eventually(
        "A's copy to be killed (it ignores TERM)",
        Duration::from_secs(20),
        || async { (!std::path::Path::new(&format!("/proc/{a_copy}")).exists()).then_some(()) },
    )
    .await;
    let overlap = woke.elapsed();
    assert!(
        overlap < Duration::from_secs(5),
        "A's copy lived {overlap:?} after A woke; the kill grace is 20s"
    );
    assert!(
        a.stderr().contains("job 1:") && a.stderr().contains("SIGKILL"),
        "{}",
        a.stderr()
    );
    // B keeps its copy: it holds the live lease.
    let b_copy = copy_of(b.pid()).expect("B's copy");
    assert!(std::path::Path::new(&format!("/proc/{b_copy}")).exists());
    for worker in [&a, &b] {
        worker.signal(libc::SIGKILL);
    }
    let _ = a.child.wait();
    let _ = b.child.wait();
}
