//! The PostgreSQL server restarts in the middle of a run: the store reports
//! typed, transient errors while it is down and works again after, losing
//! nothing. Runs on its own cluster (`DOCKHAND_TEST_PG_RESTART`, set up by
//! `./scripts/test`) so the restart cannot disturb other tests.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dockhand::job::{Completion, JobState, NewJob, Outcome};
use dockhand::store::{ClaimRequest, JobFilter, PostgresStore, Store};

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with ./scripts/test"))
}

fn pg_ctl(action: &str) {
    let cluster = env("DOCKHAND_TEST_PG_RESTART_CLUSTER");
    let (version, name) = cluster.split_once(' ').expect("VERSION NAME");
    let status = Command::new("pg_ctlcluster")
        .args([version, name, action, "-m", "fast"])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster {action} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_survives_a_server_restart_losing_nothing() {
    const JOBS: usize = 600;
    let db = support::fresh_postgres_database_on(&env("DOCKHAND_TEST_PG_RESTART"), "restart").await;
    let url = db.url.clone();
    let store = PostgresStore::connect_with(&url, 3).await.unwrap();
    store.migrate().await.unwrap();
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|i| NewJob::new(vec!["echo".into(), i.to_string()]))
        .collect();
    store.enqueue_many(&jobs).await.unwrap();

    let done = Arc::new(AtomicU64::new(0));
    // The loop waits at 200 jobs until the server is down, so it must meet the outage.
    let stopped = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let lease = Duration::from_secs(2);
    let worker = {
        let (store, done, errors) = (store.clone(), done.clone(), errors.clone());
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let queues = vec!["default".to_string()];
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut pending: Vec<Completion> = Vec::new();
            while Instant::now() < deadline {
                if done.load(Ordering::Relaxed) >= 200 && !stopped.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                // Outcomes whose write failed are written again with the same lease.
                if !pending.is_empty() {
                    match store.record("restarter", &pending).await {
                        Ok(results) => {
                            done.fetch_add(results.len() as u64, Ordering::Relaxed);
                            pending.clear();
                        }
                        Err(error) => {
                            assert!(error.is_transient(), "unexpected error kind: {error}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    }
                }
                // A claim whose reply was lost leaves jobs leased to nobody who
                // knows: reaping after the lease brings them back.
                if let Err(error) = store.reap_expired().await {
                    assert!(error.is_transient(), "unexpected error kind: {error}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                match store
                    .claim(&ClaimRequest::new("restarter", &queues, 10, lease, 1))
                    .await
                {
                    Ok(claimed) if claimed.is_empty() => {
                        let left = store
                            .list(&JobFilter {
                                state: Some(JobState::Succeeded),
                                limit: Some(10_000),
                                ..JobFilter::default()
                            })
                            .await;
                        if left.map(|l| l.len() == JOBS).unwrap_or(false) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(claimed) => {
                        pending = claimed
                            .into_iter()
                            .map(|c| Completion {
                                lease: c.lease,
                                outcome: Outcome::Succeeded,
                                output: Vec::new(),
                            })
                            .collect();
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(error) => {
                        assert!(error.is_transient(), "unexpected error kind: {error}");
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            panic!("the run did not finish within 90s");
        })
    };
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pg_ctl("stop");
    stopped.store(true, Ordering::Relaxed);
    // While the server is down every call fails with a typed, transient error.
    let down = store
        .claim(&ClaimRequest::new(
            "probe",
            &["default".to_string()],
            1,
            lease,
            1,
        ))
        .await;
    match down {
        Err(error) => assert!(
            error.is_transient(),
            "expected a transient error, got: {error}"
        ),
        Ok(_) => panic!("a claim succeeded with the server stopped"),
    }
    // Keep the server down until the worker has met the outage: a call that
    // starts while it is down waits out the pool's acquire timeout (sqlx takes
    // "connection refused" for a server starting up), so a fixed pause could
    // end the outage before the worker's call gives up.
    let met = Instant::now() + Duration::from_secs(30);
    while errors.load(Ordering::Relaxed) == 0 && Instant::now() < met {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pg_ctl("start");
    worker.await.expect("worker task");

    assert!(
        errors.load(Ordering::Relaxed) > 0,
        "the worker never saw the outage"
    );
    let all = store
        .list(&JobFilter {
            limit: Some(10_000),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), JOBS);
    assert!(
        all.iter().all(|j| j.state == JobState::Succeeded),
        "every job succeeded"
    );
    // Each job succeeded exactly once: one `succeeded` event each.
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT job_id, count(*) FROM job_events WHERE kind = 'succeeded' GROUP BY job_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let counts: BTreeMap<i64, i64> = rows.into_iter().collect();
    assert_eq!(counts.len(), JOBS);
    assert!(counts.values().all(|n| *n == 1));
}

/// An outage longer than the lease (issue 13, item 2): a worker whose job
/// finished while the server was down must have that outcome accepted when
/// the server returns; it must not reap its own job first and run it again.
/// The real binary, a real server stop, `--lease 3s`, the server down 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_does_not_rerun_a_finished_job() {
    // Its own database on the restart cluster and a scratch directory the
    // job (run as `nobody`) can write to, both gone with `db`; the worker is
    // killed when `worker` goes, so a failed assertion leaves no worker on.
    let postgres =
        support::fresh_postgres_database_on(&env("DOCKHAND_TEST_PG_RESTART"), "outage").await;
    let db = support::Db {
        url: postgres.url.clone(),
        dir: support::job_dir(),
        postgres: Some(postgres),
    };
    let url = db.url.clone();
    let effects = db.path("effects");
    db.enqueue(
        &[],
        &[
            "sh",
            "-c",
            &format!("sleep 1; echo \"$DOCKHAND_JOB_ID\" >> {effects}"),
        ],
    );
    let mut worker = db.worker(&[
        "--lease",
        "3s",
        "--poll-interval",
        "200ms",
        "--shutdown-timeout",
        "2s",
    ]);
    let store = PostgresStore::connect_with(&url, 1).await.unwrap();
    let running = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = store.list(&JobFilter::default()).await.unwrap();
        if jobs.iter().any(|j| j.state == JobState::Running) {
            break;
        }
        assert!(Instant::now() < running, "the job never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.pool().close().await;
    // The job finishes about a second from now, while the server is down;
    // the server stays down for more than three leases.
    pg_ctl("stop");
    tokio::time::sleep(Duration::from_secs(10)).await;
    pg_ctl("start");
    let store = PostgresStore::connect_with(&url, 1).await.unwrap();
    let done = Instant::now() + Duration::from_secs(60);
    let job = loop {
        let jobs = store.list(&JobFilter::default()).await.unwrap();
        if let Some(job) = jobs.into_iter().find(|j| j.state.is_final()) {
            break job;
        }
        assert!(Instant::now() < done, "the job never reached a final state");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Give a wrongly requeued job the time to run again before judging.
    tokio::time::sleep(Duration::from_secs(3)).await;
    worker.signal(libc::SIGTERM);
    let code = worker.wait(Duration::from_secs(30));
    let stderr = worker.stderr();
    let events: Vec<(String,)> =
        sqlx::query_as("SELECT kind FROM job_events WHERE job_id = $1 ORDER BY id")
            .bind(job.id.0)
            .fetch_all(store.pool())
            .await
            .unwrap();
    let kinds: Vec<&str> = events.iter().map(|(k,)| k.as_str()).collect();
    let ran = std::fs::read_to_string(&effects).unwrap_or_default();
    assert_eq!(
        ran.lines().count(),
        1,
        "the job ran {} times; history {kinds:?}\n{stderr}",
        ran.lines().count()
    );
    let job = store.get(job.id).await.unwrap().unwrap();
    assert_eq!(
        (job.state, job.attempts, job.interruptions),
        (JobState::Succeeded, 1, 0),
        "history {kinds:?}\n{stderr}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "claimed").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(code, 0, "{stderr}");
}
