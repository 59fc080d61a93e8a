//! Container jobs against the real Docker engine, the real binary and a real
//! PostgreSQL. The image is built locally by `./scripts/test` (FROM scratch
//! with a static busybox); nothing is pulled. Every test ends by checking
//! that no container of its database is left.

mod support;

use std::time::{Duration, Instant};

use dockhand::job::{JobId, JobState};
use dockhand::store::Store;
use support::engine::EngineProxy;
use support::{containers_of, eventually, http_get, test_image, wait_state, Db};

const LONG: Duration = Duration::from_secs(60);

async fn store_id(db: &Db) -> String {
    db.store().await.instance_id().await.unwrap()
}

/// The worker removes the container of every job whose outcome it recorded
/// before it exits: none may be left the moment it is gone, however loaded
/// the machine (this failed under load when removal was fire-and-forget).
async fn assert_no_containers_at_exit(db: &Db) {
    let left = containers_of(&store_id(db).await);
    assert!(left.is_empty(), "containers left at exit: {left:?}");
}

async fn assert_no_containers_left(db: &Db) {
    let id = store_id(db).await;
    let left = eventually("containers to be removed", Duration::from_secs(15), || {
        let left = containers_of(&id);
        async move { left.is_empty().then_some(()) }
    })
    .await;
    let () = left;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_job_succeeds_with_its_logs() {
    let db = Db::postgres("docker_logs").await;
    let image = test_image();
    let id = db.enqueue(
        &["--image", &image, "--env", "GREETING=hello"],
        &[
            "sh",
            "-c",
            "echo \"$GREETING from $DOCKHAND_JOB_ID, attempt $DOCKHAND_ATTEMPT\"; echo oops >&2",
        ],
    );
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    let job = wait_state(&db, id, JobState::Succeeded).await;
    assert_eq!(job.exit_code, Some(0));
    let logs = String::from_utf8_lossy(&db.cli(&["logs", &id.to_string()]).stdout).into_owned();
    assert!(
        logs.contains(&format!("hello from {id}, attempt 1")),
        "{logs}"
    );
    assert!(logs.contains("oops"), "{logs}");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    // The job's first claim: no container of an earlier one to remove.
    assert!(
        !worker.stderr().contains("earlier claim"),
        "{}",
        worker.stderr()
    );
    assert_no_containers_at_exit(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_lets_running_containers_finish() {
    let db = Db::postgres("docker_drain").await;
    let image = test_image();
    let a = db.enqueue(&["--image", &image], &["sh", "-c", "sleep 2; echo a"]);
    let b = db.enqueue(&["--image", &image], &["sh", "-c", "sleep 2.5; echo b"]);
    let mut worker = db.worker(&["--poll-interval", "100ms", "--concurrency", "2"]);
    wait_state(&db, a, JobState::Running).await;
    wait_state(&db, b, JobState::Running).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    for id in [a, b] {
        assert_eq!(
            db.store()
                .await
                .get(JobId(id))
                .await
                .unwrap()
                .unwrap()
                .state,
            JobState::Succeeded
        );
    }
    assert_no_containers_at_exit(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_ignoring_term_is_killed_and_requeued() {
    let db = Db::postgres("docker_stuck").await;
    let image = test_image();
    let id = db.enqueue(
        &["--image", &image],
        &["sh", "-c", "trap '' TERM; sleep 60 & wait"],
    );
    let mut worker = db.worker(&[
        "--poll-interval",
        "100ms",
        "--shutdown-timeout",
        "1s",
        "--kill-grace",
        "1s",
    ]);
    wait_state(&db, id, JobState::Running).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = Instant::now();
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 75, "{}", worker.stderr());
    assert!(
        sent.elapsed() < Duration::from_secs(1 + 1 + 5 + 5),
        "exit took {:?}",
        sent.elapsed()
    );
    let job = db.store().await.get(JobId(id)).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.interruptions, job.attempts),
        (JobState::Queued, 1, 0)
    );
    assert!(
        worker.stderr().contains("killed (SIGKILL)"),
        "{}",
        worker.stderr()
    );
    assert_no_containers_left(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_timeout_and_cancel() {
    let db = Db::postgres("docker_timeout_cancel").await;
    let image = test_image();
    let slow = db.enqueue(
        &["--image", &image, "--timeout", "1s", "--max-attempts", "1"],
        &["sleep", "30"],
    );
    let cancel = db.enqueue(&["--image", &image], &["sleep", "30"]);
    let mut worker = db.worker(&["--poll-interval", "100ms", "--kill-grace", "2s"]);
    let job = wait_state(&db, slow, JobState::Failed).await;
    assert_eq!(job.error.as_deref(), Some("timed out after 1s"));
    wait_state(&db, cancel, JobState::Running).await;
    let asked = Instant::now();
    assert!(db.cli(&["cancel", &cancel.to_string()]).status.success());
    wait_state(&db, cancel, JobState::Cancelled).await;
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        asked.elapsed()
    );
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    assert_no_containers_left(&db).await;
}

/// The configuration the engine holds for job `id`'s container
/// (`docker inspect`), while it runs.
async fn container_config(db: &Db, id: i64) -> support::serde_json::Value {
    let store = store_id(db).await;
    let name = eventually("the job's container", LONG, || {
        let out = std::process::Command::new("docker")
            .args(["ps", "-q", "--filter"])
            .arg(format!("label=dockhand.store={store}"))
            .arg("--filter")
            .arg(format!("label=dockhand.job_id={id}"))
            .output()
            .expect("docker ps");
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        async move { (!name.is_empty()).then_some(name) }
    })
    .await;
    let out = std::process::Command::new("docker")
        .args(["inspect", &name])
        .output()
        .expect("docker inspect");
    assert!(out.status.success(), "{out:?}");
    let all: support::serde_json::Value = support::serde_json::from_slice(&out.stdout).unwrap();
    all[0].clone()
}

/// A container job is other people's code: its container gets the job's
/// limits (or the worker's defaults), swap no more than its memory, no
/// privileges, NET_RAW and SYS_ADMIN dropped, no way to gain privileges,
/// an init as PID 1, and no terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_is_confined_by_its_limits() {
    let db = Db::postgres("docker_confined").await;
    let image = test_image();
    let own = db.enqueue(
        &[
            "--image", &image, "--memory", "64m", "--cpus", "0.5", "--pids", "50",
        ],
        &["sleep", "30"],
    );
    let defaults = db.enqueue(&["--image", &image], &["sleep", "30"]);
    let mut worker = db.worker(&[
        "--poll-interval",
        "100ms",
        "--concurrency",
        "2",
        "--docker-memory",
        "96m",
        "--docker-cpus",
        "0.25",
        "--docker-pids",
        "40",
    ]);
    for (id, memory, nano_cpus, pids) in [
        (own, 64 << 20, 500_000_000, 50),
        (defaults, 96 << 20, 250_000_000, 40),
    ] {
        wait_state(&db, id, JobState::Running).await;
        let config = container_config(&db, id).await;
        let host = &config["HostConfig"];
        let limits = (
            host["Memory"].as_i64(),
            host["MemorySwap"].as_i64(),
            host["NanoCpus"].as_i64(),
            host["PidsLimit"].as_i64(),
        );
        assert_eq!(
            limits,
            (Some(memory), Some(memory), Some(nano_cpus), Some(pids)),
            "job {id}: {host}"
        );
        assert_eq!(host["Privileged"], false, "{host}");
        assert_eq!(host["Init"], true, "{host}");
        let dropped: Vec<&str> = host["CapDrop"]
            .as_array()
            .map(|caps| caps.iter().filter_map(|c| c.as_str()).collect())
            .unwrap_or_default();
        assert!(
            dropped.contains(&"NET_RAW") && dropped.contains(&"SYS_ADMIN"),
            "{host}"
        );
        assert!(
            host["SecurityOpt"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o == "no-new-privileges")),
            "{host}"
        );
        assert_eq!(config["Config"]["Tty"], false, "{config}");
        assert!(db.cli(&["cancel", &id.to_string()]).status.success());
        wait_state(&db, id, JobState::Cancelled).await;
    }
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    assert_no_containers_left(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_worker_leaves_an_orphan_that_the_next_worker_removes() {
    let db = Db::postgres("docker_orphan").await;
    let image = test_image();
    let id = db.enqueue(
        &["--image", &image],
        &["sh", "-c", "sleep 6; echo finished"],
    );
    let mut first = db.worker(&["--poll-interval", "100ms", "--lease", "1s"]);
    wait_state(&db, id, JobState::Running).await;
    let store_id = store_id(&db).await;
    eventually("the container to run", LONG, || {
        let running = containers_of(&store_id).iter().any(|c| c.contains(" Up "));
        async move { running.then_some(()) }
    })
    .await;
    first.signal(libc::SIGKILL);
    let _ = first.child.wait();
    // The container outlives its worker: the watchdog guards processes, not containers.
    let orphan = containers_of(&store_id);
    assert_eq!(orphan.len(), 1, "{orphan:?}");
    let mut second = db.worker(&["--poll-interval", "100ms", "--lease", "1s"]);
    // Once the lease expires the job runs again; the orphan goes before the new container starts.
    eventually("the orphan to be removed", LONG, || {
        let names = containers_of(&store_id);
        let gone = !names
            .iter()
            .any(|n| n.starts_with(orphan[0].split(' ').next().unwrap_or("")));
        async move { gone.then_some(()) }
    })
    .await;
    let job = wait_state(&db, id, JobState::Succeeded).await;
    assert_eq!((job.interruptions, job.attempts), (1, 1));
    second.signal(libc::SIGTERM);
    assert_eq!(second.wait(LONG), 0, "{}", second.stderr());
    assert_no_containers_left(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_clearly_and_the_worker_goes_on() {
    let db = Db::postgres("docker_missing").await;
    let missing = db.enqueue(
        &[
            "--image",
            "dockhand-no-such-image:v0",
            "--max-attempts",
            "1",
        ],
        &["true"],
    );
    let fine = db.enqueue(&[], &["true"]);
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    let job = wait_state(&db, missing, JobState::Failed).await;
    let error = job.error.unwrap_or_default();
    assert!(
        error.contains("dockhand-no-such-image:v0") && error.contains("not present"),
        "{error}"
    );
    wait_state(&db, fine, JobState::Succeeded).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
    assert_no_containers_left(&db).await;
}

/// A worker whose engine is away leaves image jobs to a worker that has one
/// (before, it claimed them and failed them, using up their attempts), still
/// runs process jobs, and shows its engine's state on `/readyz`, `/status`,
/// `/metrics` and in `dockhand status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_an_engine_leaves_image_jobs_to_one_that_has_one() {
    let db = Db::postgres("docker_no_engine").await;
    let image_job = db.enqueue(
        &["--image", &test_image(), "--max-attempts", "1"],
        &["true"],
    );
    let process_job = db.enqueue(&[], &["true"]);
    let mut without = db.worker_with_env(
        &["--poll-interval", "100ms", "--http", "127.0.0.1:0"],
        &[(
            "DOCKER_HOST",
            &format!("unix://{}", db.path("no-docker.sock")),
        )],
    );
    wait_state(&db, process_job, JobState::Succeeded).await;
    // Many polls later, the image job is still untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = db
        .store()
        .await
        .get(JobId(image_job))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));
    // Not even claimed and handed back: the claim itself leaves it out.
    let kinds: Vec<String> = db
        .store()
        .await
        .history(JobId(image_job))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["enqueued"], "the engineless worker claimed it");
    let addr = without.http_addr();
    let (code, body) = http_get(&addr, "/readyz");
    assert_eq!((code, body.as_str()), (200, "ready\ndocker: unreachable\n"));
    let (_, status) = http_get(&addr, "/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["docker"], "unreachable", "{status}");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("dockhand_docker_engine{state=\"unreachable\"} 1"),
        "{metrics}"
    );
    let fleet = eventually("the registry to show the engine", LONG, || {
        let out = db.cli(&["status", "--json"]);
        let fleet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        async move { (fleet["workers"][0]["docker"] == "unreachable").then_some(fleet) }
    })
    .await;
    assert_eq!(fleet["workers"][0]["pid"], without.pid(), "{fleet}");

    let mut with = db.worker(&["--poll-interval", "100ms"]);
    let job = wait_state(&db, image_job, JobState::Succeeded).await;
    assert_eq!(job.attempts, 1);
    let table = String::from_utf8_lossy(&db.cli(&["status"]).stdout).into_owned();
    assert!(
        table.contains("DOCKER") && table.contains("unreachable"),
        "{table}"
    );
    assert!(table.contains("reachable"), "{table}");
    for worker in [&mut without, &mut with] {
        worker.signal(libc::SIGTERM);
        assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    }
    assert!(
        without
            .stderr()
            .contains("jobs with an image are left to other workers"),
        "{}",
        without.stderr()
    );
    assert_no_containers_left(&db).await;
}

/// A worker started while its engine is away uses it once it answers,
/// without a restart; meanwhile image jobs wait unclaimed, their attempts
/// untouched. Before, the engine was connected once: the job failed with
/// "Docker engine unreachable" within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_comes_back_is_used_without_a_restart() {
    let db = Db::postgres("docker_engine_back").await;
    let mut engine = EngineProxy::new();
    let id = db.enqueue(
        &["--image", &test_image(), "--max-attempts", "1"],
        &["sh", "-c", "echo ran"],
    );
    let mut worker = db.worker_with_env(
        &["--poll-interval", "100ms", "--http", "127.0.0.1:0"],
        &[("DOCKER_HOST", &engine.host())],
    );
    let addr = worker.http_addr();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let job = db.store().await.get(JobId(id)).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));
    assert_eq!(http_get(&addr, "/readyz").1, "ready\ndocker: unreachable\n");

    engine.up();
    let job = wait_state(&db, id, JobState::Succeeded).await;
    assert_eq!(job.attempts, 1);
    let logs = String::from_utf8_lossy(&db.cli(&["logs", &id.to_string()]).stdout).into_owned();
    assert!(logs.contains("ran"), "{logs}");
    assert_eq!(http_get(&addr, "/readyz").1, "ready\ndocker: reachable\n");
    eventually("the registry to show the engine back", LONG, || {
        let out = db.cli(&["status", "--json"]);
        let fleet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        async move { (fleet["workers"][0]["docker"] == "reachable").then_some(()) }
    })
    .await;
    // The operator is told of each change once, not of every ping.
    let log = worker.stderr();
    let told = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    assert_eq!(
        (
            told("jobs with an image are left to other workers"),
            told("Docker engine reachable")
        ),
        (1, 1),
        "{log}"
    );
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    assert_no_containers_at_exit(&db).await;
}

/// An engine that answers pings but drops container creations: every start
/// fails for want of the engine, and the job goes back to the queue without
/// using an attempt (before, its only attempt was used up at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_loses_the_engine_hands_the_job_back() {
    let db = Db::postgres("docker_hand_back").await;
    let mut engine = EngineProxy::new();
    engine.up();
    engine.refuse_creates(true);
    let id = db.enqueue(
        &["--image", &test_image(), "--max-attempts", "1"],
        &["sh", "-c", "echo ran"],
    );
    let mut worker = db.worker_with_env(
        &["--poll-interval", "100ms"],
        &[("DOCKER_HOST", &engine.host())],
    );
    worker.wait_for_line("handed back", LONG);
    let job = db.store().await.get(JobId(id)).await.unwrap().unwrap();
    assert_eq!(job.attempts, 0, "{job:?}");
    assert!(
        matches!(job.state, JobState::Queued | JobState::Running),
        "{job:?}"
    );
    engine.refuse_creates(false);
    let job = wait_state(&db, id, JobState::Succeeded).await;
    assert_eq!((job.attempts, job.interruptions), (1, 0));
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    assert_no_containers_at_exit(&db).await;
}

/// The engine goes away while two containers run (as when `dockerd`
/// restarts): their wait streams break. One container exits during the
/// outage, the other runs on after it. Neither may be recorded as exited
/// until it has: the worker looks at each again once the engine answers.
/// Before, both were recorded at once as failed, "exit status unknown".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_wait_never_records_a_running_container_as_exited() {
    let db = Db::postgres("docker_broken_wait").await;
    let mut engine = EngineProxy::new();
    engine.up();
    let image = test_image();
    let short = db.enqueue(
        &["--image", &image, "--max-attempts", "1"],
        &["sh", "-c", "sleep 2; echo short done"],
    );
    let long = db.enqueue(
        &["--image", &image, "--max-attempts", "1"],
        &["sh", "-c", "sleep 9; echo long done"],
    );
    let mut worker = db.worker_with_env(
        &["--poll-interval", "100ms", "--concurrency", "2"],
        &[("DOCKER_HOST", &engine.host())],
    );
    let store_id = store_id(&db).await;
    eventually("both containers to run", LONG, || {
        let up = containers_of(&store_id)
            .iter()
            .filter(|c| c.contains(" Up "))
            .count();
        async move { (up == 2).then_some(()) }
    })
    .await;
    engine.down();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for id in [short, long] {
        let job = db.store().await.get(JobId(id)).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Running, "{job:?}");
    }
    engine.up();
    for (id, said) in [(short, "short done"), (long, "long done")] {
        let job = wait_state(&db, id, JobState::Succeeded).await;
        assert_eq!((job.attempts, job.exit_code), (1, Some(0)));
        let logs = String::from_utf8_lossy(&db.cli(&["logs", &id.to_string()]).stdout).into_owned();
        assert!(logs.contains(said), "{logs}");
    }
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    assert_no_containers_at_exit(&db).await;
}

/// Reconciliation judges each worker by the lease it announced: a worker
/// with a 1 s lease must not remove the live container of a worker with a
/// 30 s lease between its heartbeats (10 s apart). Before, it judged every
/// worker by its own lease and killed the container within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lease_worker_leaves_a_long_lease_workers_containers() {
    let db = Db::postgres("docker_lease_judge").await;
    let id = db.enqueue(&["--image", &test_image()], &["sleep", "60"]);
    let mut patient = db.worker(&[
        "--lease",
        "30s",
        "--poll-interval",
        "100ms",
        "--shutdown-timeout",
        "1s",
    ]);
    wait_state(&db, id, JobState::Running).await;
    let store_id = store_id(&db).await;
    eventually("the container to run", LONG, || {
        let up = containers_of(&store_id).iter().any(|c| c.contains(" Up "));
        async move { up.then_some(()) }
    })
    .await;
    // Reconciles every second, on another queue: it only judges.
    let mut hasty = db.worker(&["--lease", "1s", "--queue", "elsewhere"]);
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(13) {
        let found = containers_of(&store_id);
        assert!(
            found.len() == 1 && found[0].contains(" Up "),
            "the long-lease worker's container was touched after {:?}: {found:?}\n{}",
            watched.elapsed(),
            hasty.stderr()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let job = db.store().await.get(JobId(id)).await.unwrap().unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Running, 0));
    for worker in [&mut hasty, &mut patient] {
        worker.signal(libc::SIGTERM);
        let code = worker.wait(LONG);
        assert!(code == 0 || code == 75, "{code}: {}", worker.stderr());
    }
    assert_no_containers_left(&db).await;
}

/// A worker that loses a container job's lease (it was paused past the lease;
/// meanwhile the job was cancelled and reaped, so nobody runs it again)
/// kills its container and removes it at once, while it keeps running.
/// Before the machine said when a run is over, the shell released a
/// container only on a record reply, and a lost lease is never recorded:
/// the container stayed until the worker exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_releases_its_container_while_the_worker_runs() {
    let db = Db::postgres("docker_lost_lease").await;
    let image = test_image();
    let id = db.enqueue(
        &["--image", &image],
        &["sh", "-c", "trap '' TERM; sleep 300 & wait"],
    );
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
    let store_id = store_id(&db).await;
    eventually("A's container", LONG, || {
        let found = containers_of(&store_id);
        async move { (found.len() == 1).then_some(()) }
    })
    .await;
    a.signal(libc::SIGSTOP);
    assert!(db.cli(&["cancel", &id.to_string()]).status.success());
    // A worker of another queue, without an engine (so it reconciles no
    // container), only reaps: the pending cancel makes the job final.
    let mut reaper = db.worker_with_env(
        &["--queue", "elsewhere", "--poll-interval", "100ms"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    wait_state(&db, id, JobState::Cancelled).await;
    a.signal(libc::SIGCONT);
    eventually(
        "A's container to be removed while A runs",
        Duration::from_secs(15),
        || {
            let left = containers_of(&store_id);
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
    assert!(a.child.try_wait().unwrap().is_none(), "A is still running");
    a.signal(libc::SIGTERM);
    assert_eq!(a.wait(LONG), 0, "{}", a.stderr());
    reaper.signal(libc::SIGTERM);
    assert_eq!(reaper.wait(LONG), 0);
}

/// Reconciliation keeps a container only while its worker is alive *and*
/// its job still runs under that worker and token; either one gone, the
/// container goes. (cargo-mutants: `state == Running && worker == ...`
/// turned into `||` survived every test: a finished job's container whose
/// worker lives on was never judged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_keeps_a_container_only_while_its_worker_and_lease_both_live() {
    use dockhand::executor::docker::{
        reconcile, LABEL_JOB, LABEL_MANAGED, LABEL_STORE, LABEL_TOKEN, LABEL_WORKER,
    };
    use dockhand::job::NewJob;
    use dockhand::store::{ClaimRequest, WorkerInfo};

    let db = Db::postgres("docker_reconcile_rules").await;
    let store = db.store().await;
    store.migrate().await.unwrap();
    let store_id = store.instance_id().await.unwrap();
    let lease = Duration::from_secs(30);
    let queues = vec!["default".to_string()];
    store
        .register_worker(&WorkerInfo {
            id: "alive".into(),
            host: "test".into(),
            pid: 1,
            queues: queues.clone(),
            concurrency: 3,
            lease,
        })
        .await
        .unwrap();
    let jobs = vec![NewJob::new(vec!["true".into()]); 4];
    store.enqueue_many(&jobs).await.unwrap();
    let mine = store
        .claim(&ClaimRequest::new("alive", &queues, 3, lease, 1))
        .await
        .unwrap();
    // "gone" never registered (or was deregistered): not alive.
    let theirs = store
        .claim(&ClaimRequest::new("gone", &queues, 1, lease, 1))
        .await
        .unwrap();
    assert_eq!((mine.len(), theirs.len()), (3, 1));
    // The third of "alive"'s jobs is over: it succeeded under its lease.
    let done = dockhand::job::Completion {
        lease: mine[2].lease,
        outcome: dockhand::job::Outcome::Succeeded,
        output: Vec::new(),
    };
    store.record("alive", &[done]).await.unwrap();
    let run = |name: &str, worker: &str, job: i64, token: i64| {
        let out = std::process::Command::new("docker")
            .args(["run", "-d", "--name", name])
            .args(["--label", &format!("{LABEL_MANAGED}=true")])
            .args(["--label", &format!("{LABEL_STORE}={store_id}")])
            .args(["--label", &format!("{LABEL_WORKER}={worker}")])
            .args(["--label", &format!("{LABEL_JOB}={job}")])
            .args(["--label", &format!("{LABEL_TOKEN}={token}")])
            .args([test_image().as_str(), "sleep", "300"])
            .output()
            .expect("docker run");
        assert!(
            out.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let pid = std::process::id();
    let (kept, stale, finished, orphan) = (
        format!("dh-rec-{pid}-kept"),
        format!("dh-rec-{pid}-stale"),
        format!("dh-rec-{pid}-finished"),
        format!("dh-rec-{pid}-orphan"),
    );
    // Worker alive, lease alive: kept.
    run(&kept, "alive", mine[0].lease.job.0, mine[0].lease.token.0);
    // Worker alive, but the job no longer runs under that token: removed.
    run(
        &stale,
        "alive",
        mine[1].lease.job.0,
        mine[1].lease.token.0 + 5,
    );
    // Worker alive, same worker and token, but the job is over: removed.
    run(
        &finished,
        "alive",
        mine[2].lease.job.0,
        mine[2].lease.token.0,
    );
    // The lease still stands, but its worker is not alive: removed.
    run(
        &orphan,
        "gone",
        theirs[0].lease.job.0,
        theirs[0].lease.token.0,
    );
    let docker = bollard::Docker::connect_with_local_defaults().expect("a Docker client");
    let removed = reconcile(&docker, &store, "judge", lease).await.unwrap();
    let left = containers_of(&store_id);
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &kept, &stale, &finished, &orphan])
        .output();
    assert_eq!(removed, 3, "left: {left:?}");
    assert!(
        left.len() == 1 && left[0].starts_with(&format!("{kept} ")),
        "only the live worker's live lease keeps its container: {left:?}"
    );
    assert_no_containers_left(&db).await;
}
