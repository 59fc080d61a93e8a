//! Container jobs against the real Docker engine, the real binary and a real
//! PostgreSQL. The image is built locally by `./scripts/test` (FROM scratch
//! with a static busybox); nothing is pulled. Every test ends by checking
//! that no container of its database is left.

mod support;

use std::time::{Duration, Instant};

use dockhand::job::{JobId, JobState};
use dockhand::store::Store;
use support::{containers_of, eventually, test_image, wait_state, Db};

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
            "echo \"$GREETING from $DOCKHAND_JOB_ID\"; echo oops >&2",
        ],
    );
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    let job = wait_state(&db, id, JobState::Succeeded).await;
    assert_eq!(job.exit_code, Some(0));
    let logs = String::from_utf8_lossy(&db.cli(&["logs", &id.to_string()]).stdout).into_owned();
    assert!(logs.contains(&format!("hello from {id}")), "{logs}");
    assert!(logs.contains("oops"), "{logs}");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_engine_image_jobs_fail_and_process_jobs_run() {
    let db = Db::postgres("docker_no_engine").await;
    let image_job = db.enqueue(
        &["--image", &test_image(), "--max-attempts", "1"],
        &["true"],
    );
    let process_job = db.enqueue(&[], &["true"]);
    let child = std::process::Command::new(support::bin())
        .args([
            "--database-url",
            &db.url,
            "worker",
            "--poll-interval",
            "100ms",
        ])
        .env(
            "DOCKER_HOST",
            format!("unix://{}", db.path("no-docker.sock")),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let job = wait_state(&db, image_job, JobState::Failed).await;
    let error = job.error.unwrap_or_default();
    assert!(error.contains("Docker engine unreachable"), "{error}");
    wait_state(&db, process_job, JobState::Succeeded).await;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("jobs with an image will fail until it is reachable"),
        "{stderr}"
    );
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
