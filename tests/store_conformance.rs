//! One conformance suite, run against every backend: in-memory, SQLite and a
//! real PostgreSQL (a fresh database per test, from `DOCKHAND_TEST_PG`, which
//! `./scripts/test` sets up). Without it the Postgres tests fail; they never skip.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use dockhand::job::{
    ClaimedJob, Completion, JobId, JobState, Lease, LeaseToken, NewJob, Outcome, RecordResult,
};
use dockhand::machine::Phase;
use dockhand::store::{
    AnyStore, BulkAction, BulkFilter, CancelResult, ClaimRequest, JobFilter, Store, StoreError,
    Wakeup, WorkerInfo, WorkerStop, KEEP_STOPS, MAX_STOP_TRACE,
};

const W1: &str = "worker-1";
const W2: &str = "worker-2";
const LEASE: Duration = Duration::from_secs(30);

fn queues() -> Vec<String> {
    vec!["default".to_string()]
}

fn job(cmd: &str) -> NewJob {
    NewJob::new(vec!["sh".into(), "-c".into(), cmd.into()])
}

fn done(lease: Lease, outcome: Outcome) -> Completion {
    Completion {
        lease,
        outcome,
        output: b"out\n".to_vec(),
    }
}

fn failed(code: i32) -> Outcome {
    Outcome::Failed {
        exit_code: Some(code),
        error: format!("exit code {code}"),
    }
}

async fn claim_one(store: &AnyStore, worker: &str) -> ClaimedJob {
    let mut claimed = store
        .claim(&ClaimRequest::new(worker, &queues(), 1, LEASE, 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "expected one job to claim");
    claimed.remove(0)
}

/// Record `outcome` of the run under `lease` and require it written, the
/// job left in `state`.
async fn record_as(
    store: &AnyStore,
    worker: &str,
    lease: Lease,
    outcome: Outcome,
    state: JobState,
) {
    let result = store.record(worker, &[done(lease, outcome)]).await.unwrap();
    assert_eq!(result, vec![(lease.job, RecordResult::Recorded { state })]);
}

async fn get(store: &AnyStore, id: JobId) -> dockhand::store::Job {
    store.get(id).await.unwrap().expect("job exists")
}

async fn kinds(store: &AnyStore, id: JobId) -> Vec<String> {
    store
        .history(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect()
}

async fn enqueue_and_read_back(store: AnyStore) {
    let mut new = job("echo hi");
    new.spec.env.insert("MODE".into(), "fast".into());
    new.spec.timeout_ms = Some(5000);
    new.priority = 7;
    new.max_attempts = 4;
    let ids = store.enqueue_many(&[new.clone()]).await.unwrap();
    let stored = get(&store, ids[0]).await;
    assert_eq!(stored.state, JobState::Queued);
    assert_eq!(stored.spec, new.spec);
    assert_eq!(
        (stored.priority, stored.max_attempts, stored.attempts),
        (7, 4, 0)
    );
    assert_eq!(kinds(&store, ids[0]).await, ["enqueued"]);
    let listed = store
        .list(&JobFilter {
            state: Some(JobState::Queued),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    assert!(store.get(JobId(999_999)).await.unwrap().is_none());
}

async fn bulk_enqueue_is_all_or_nothing(store: AnyStore) {
    let ok: Vec<NewJob> = (0..50).map(|i| job(&format!("echo {i}"))).collect();
    let ids = store.enqueue_many(&ok).await.unwrap();
    assert_eq!(ids.len(), 50);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids come back in input order"
    );
    let mut bad = ok.clone();
    bad[30].spec.command.clear();
    let err = store.enqueue_many(&bad).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidJob(_)), "{err}");
    assert!(err.to_string().contains("job #31"), "{err}");
    // A zero limit means "no limit" to Docker: an embedding application
    // that passes one is refused, like the command line.
    type Zero = fn(&mut dockhand::job::JobSpec);
    let zeros: [(&str, Zero); 3] = [
        ("process", |s| s.pids = Some(0)),
        ("memory", |s| s.memory_bytes = Some(0)),
        ("CPU", |s| s.cpu_millis = Some(0)),
    ];
    for (what, spec) in zeros {
        let mut zero = job("true");
        spec(&mut zero.spec);
        let err = store.enqueue_many(&[zero]).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidJob(m) if m.contains(what)),
            "{what}: {err}"
        );
    }
    let all = store.list(&JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 50, "a failed bulk enqueue must write nothing");
}

async fn claims_are_exclusive_under_concurrency(store: AnyStore) {
    const JOBS: usize = 10_000;
    let jobs: Vec<NewJob> = (0..JOBS).map(|i| job(&format!("echo {i}"))).collect();
    for chunk in jobs.chunks(2_500) {
        store.enqueue_many(chunk).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("claimer-{w}");
            let mut mine = Vec::new();
            loop {
                let claimed = store
                    .claim(&ClaimRequest::new(&worker, &queues(), 50, LEASE, 1))
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    return mine;
                }
                let completions: Vec<Completion> = claimed
                    .iter()
                    .map(|c| done(c.lease, Outcome::Succeeded))
                    .collect();
                let results = store.record(&worker, &completions).await.unwrap();
                assert!(results.iter().all(|(_, r)| r.is_recorded()));
                mine.extend(claimed.into_iter().map(|c| c.lease.job));
                // A job that succeeded is never claimed again: more claims
                // than jobs means outcomes send jobs back (fail now rather
                // than claim for ever).
                assert!(
                    mine.len() <= JOBS,
                    "{worker} claimed {} jobs of {JOBS}: recorded jobs come back",
                    mine.len()
                );
            }
        }));
    }
    let mut seen = BTreeMap::new();
    for task in tasks {
        for id in task.await.unwrap() {
            *seen.entry(id).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), JOBS, "every job claimed");
    assert!(seen.values().all(|n| *n == 1), "no job claimed twice");
    let left = store
        .list(&JobFilter {
            state: Some(JobState::Queued),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert!(left.is_empty());
}

async fn stale_and_foreign_leases_are_refused(store: AnyStore) {
    let ids = store.enqueue_many(&[job("true")]).await.unwrap();
    let claimed = claim_one(&store, W1).await;
    assert_eq!(claimed.lease.job, ids[0]);
    let stale = Lease {
        job: ids[0],
        token: LeaseToken(claimed.lease.token.0 - 1),
    };
    let refused = store
        .record(W1, &[done(stale, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(refused, vec![(ids[0], RecordResult::Refused)]);
    let foreign = store
        .record(W2, &[done(claimed.lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(foreign, vec![(ids[0], RecordResult::Refused)]);
    assert_eq!(
        get(&store, ids[0]).await.state,
        JobState::Running,
        "refused writes change nothing"
    );
    let hb = store
        .heartbeat(W2, Phase::Running, &[claimed.lease], LEASE, &[])
        .await
        .unwrap();
    assert_eq!(
        hb.lost,
        vec![ids[0]],
        "a foreign heartbeat does not extend the lease"
    );
    let ok = store
        .record(W1, &[done(claimed.lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(
        ok,
        vec![(
            ids[0],
            RecordResult::Recorded {
                state: JobState::Succeeded
            }
        )]
    );
    let again = store
        .record(W1, &[done(claimed.lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![(ids[0], RecordResult::Refused)],
        "an outcome is recorded once"
    );
    let stored = get(&store, ids[0]).await;
    assert_eq!(
        (stored.state, stored.attempts, stored.exit_code),
        (JobState::Succeeded, 1, Some(0))
    );
    assert_eq!(
        store.output(ids[0]).await.unwrap().as_deref(),
        Some(&b"out\n"[..])
    );
    let history = kinds(&store, ids[0]).await;
    assert_eq!(
        history
            .iter()
            .filter(|k| *k == "stale-write-refused")
            .count(),
        3,
        "{history:?}"
    );
}

async fn expired_leases_are_reaped_as_interruptions(store: AnyStore) {
    let ids = store.enqueue_many(&[job("sleep 100")]).await.unwrap();
    let first = store
        .claim(&ClaimRequest::new(
            W1,
            &queues(),
            1,
            Duration::from_millis(200),
            1,
        ))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        store.reap_expired().await.unwrap(),
        0,
        "a live lease is not reaped"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.reap_expired().await.unwrap(), 1);
    let stored = get(&store, ids[0]).await;
    assert_eq!(
        (stored.state, stored.interruptions, stored.attempts),
        (JobState::Queued, 1, 0)
    );
    let hb = store
        .heartbeat(W1, Phase::Running, &[first.lease], LEASE, &[])
        .await
        .unwrap();
    assert_eq!(hb.lost, vec![ids[0]]);
    let second = claim_one(&store, W2).await;
    assert_ne!(
        second.lease.token, first.lease.token,
        "every claim gets a new token"
    );
    assert_eq!(second.interruptions, 1);
    let late = store
        .record(W1, &[done(first.lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(
        late,
        vec![(ids[0], RecordResult::Refused)],
        "the old owner cannot write"
    );
    store
        .record(W2, &[done(second.lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(get(&store, ids[0]).await.state, JobState::Succeeded);
    assert!(kinds(&store, ids[0])
        .await
        .contains(&"lease-expired".to_string()));
}

async fn heartbeats_extend_leases(store: AnyStore) {
    store.enqueue_many(&[job("sleep 100")]).await.unwrap();
    let claimed = store
        .claim(&ClaimRequest::new(
            W1,
            &queues(),
            1,
            Duration::from_millis(300),
            1,
        ))
        .await
        .unwrap()
        .remove(0);
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let hb = store
            .heartbeat(
                W1,
                Phase::Draining,
                &[claimed.lease],
                Duration::from_millis(300),
                &[],
            )
            .await
            .unwrap();
        assert!(hb.lost.is_empty());
        assert_eq!(store.reap_expired().await.unwrap(), 0);
    }
}

async fn failures_retry_with_backoff_until_max_attempts(store: AnyStore) {
    let mut new = job("exit 3");
    new.max_attempts = 2;
    let ids = store.enqueue_many(&[new]).await.unwrap();
    let first = claim_one(&store, W1).await;
    let retried = store
        .record(W1, &[done(first.lease, failed(3))])
        .await
        .unwrap();
    assert_eq!(
        retried,
        vec![(
            ids[0],
            RecordResult::Recorded {
                state: JobState::Queued
            }
        )],
        "a failed attempt with attempts left is requeued"
    );
    let stored = get(&store, ids[0]).await;
    assert_eq!(
        (stored.state, stored.attempts, stored.exit_code),
        (JobState::Queued, 1, Some(3))
    );
    let now = stored.started_at.expect("started");
    let delay = stored.run_at - now;
    assert!(
        (700..=1400).contains(&delay),
        "first retry after about 1s, got {delay}ms"
    );
    assert!(
        store
            .claim(&ClaimRequest::new(W1, &queues(), 1, LEASE, 2))
            .await
            .unwrap()
            .is_empty(),
        "not before the backoff"
    );
    tokio::time::sleep(Duration::from_millis(1400)).await;
    let second = claim_one(&store, W1).await;
    let last = store
        .record(W1, &[done(second.lease, failed(4))])
        .await
        .unwrap();
    assert_eq!(
        last,
        vec![(
            ids[0],
            RecordResult::Recorded {
                state: JobState::Failed
            }
        )],
        "the last attempt fails the job"
    );
    let stored = get(&store, ids[0]).await;
    assert_eq!(
        (stored.state, stored.attempts, stored.exit_code),
        (JobState::Failed, 2, Some(4))
    );
    assert!(stored.finished_at.is_some());
    assert_eq!(
        kinds(&store, ids[0]).await.last().map(String::as_str),
        Some("failed")
    );
}

async fn interruptions_use_no_attempt_and_quarantine(store: AnyStore) {
    let ids = store.enqueue_many(&[job("sleep 100")]).await.unwrap();
    for round in 1..=3u32 {
        let claimed = claim_one(&store, W1).await;
        let reason = Outcome::Interrupted {
            reason: "worker shutdown".into(),
        };
        store
            .record(W1, &[done(claimed.lease, reason)])
            .await
            .unwrap();
        let stored = get(&store, ids[0]).await;
        assert_eq!(stored.attempts, 0, "interruptions use no attempt");
        assert_eq!(stored.interruptions, round);
        let expected = if round < 3 {
            JobState::Queued
        } else {
            JobState::Failed
        };
        assert_eq!(stored.state, expected, "round {round}");
    }
    let stored = get(&store, ids[0]).await;
    assert!(stored
        .error
        .unwrap_or_default()
        .contains("max_interruptions"));
    // The history says the job failed, not that it was interrupted a third
    // time: `dockhand show` and the dashboard read the last event.
    assert_eq!(
        kinds(&store, ids[0]).await.last().map(String::as_str),
        Some("failed")
    );
}

async fn hand_back_changes_no_counters(store: AnyStore) {
    let ids = store.enqueue_many(&[job("true")]).await.unwrap();
    let claimed = claim_one(&store, W1).await;
    store
        .record(W1, &[done(claimed.lease, Outcome::HandBack)])
        .await
        .unwrap();
    let stored = get(&store, ids[0]).await;
    assert_eq!(
        (stored.state, stored.attempts, stored.interruptions),
        (JobState::Queued, 0, 0)
    );
    let again = claim_one(&store, W2).await;
    assert_eq!(again.lease.job, ids[0], "claimable again at once");
    assert!(kinds(&store, ids[0])
        .await
        .contains(&"handed-back".to_string()));
    // A hand-back is a run that never happened: the last run's output
    // stays, and the job has no start time until it starts again.
    let interrupted = Completion {
        lease: again.lease,
        outcome: Outcome::Interrupted {
            reason: "worker shutdown".into(),
        },
        output: b"the last run\n".to_vec(),
    };
    store.record(W2, &[interrupted]).await.unwrap();
    let unstarted = claim_one(&store, W1).await;
    let handed_back = Completion {
        lease: unstarted.lease,
        outcome: Outcome::HandBack,
        output: Vec::new(),
    };
    store.record(W1, &[handed_back]).await.unwrap();
    let stored = get(&store, ids[0]).await;
    assert_eq!((stored.state, stored.started_at), (JobState::Queued, None));
    assert_eq!(
        store.output(ids[0]).await.unwrap().as_deref(),
        Some(&b"the last run\n"[..])
    );
}

async fn cancel_queued_and_running(store: AnyStore) {
    let ids = store
        .enqueue_many(&[job("sleep 100"), job("sleep 100")])
        .await
        .unwrap();
    assert_eq!(store.cancel(ids[1]).await.unwrap(), CancelResult::Cancelled);
    assert_eq!(get(&store, ids[1]).await.state, JobState::Cancelled);
    let running = claim_one(&store, W1).await;
    assert_eq!(running.lease.job, ids[0]);
    assert_eq!(store.cancel(ids[0]).await.unwrap(), CancelResult::Requested);
    let hb = store
        .heartbeat(W1, Phase::Running, &[running.lease], LEASE, &[])
        .await
        .unwrap();
    assert_eq!(hb.cancelled, vec![ids[0]]);
    store
        .record(W1, &[done(running.lease, Outcome::Cancelled)])
        .await
        .unwrap();
    assert_eq!(get(&store, ids[0]).await.state, JobState::Cancelled);
    assert_eq!(
        store.cancel(ids[0]).await.unwrap(),
        CancelResult::AlreadyFinal(JobState::Cancelled)
    );
    assert!(matches!(
        store.cancel(JobId(999_999)).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn retry_requeues_failed_and_cancelled(store: AnyStore) {
    let mut new = job("exit 1");
    new.max_attempts = 1;
    let ids = store.enqueue_many(&[new, job("true")]).await.unwrap();
    let claimed = claim_one(&store, W1).await;
    store
        .record(W1, &[done(claimed.lease, failed(1))])
        .await
        .unwrap();
    assert_eq!(get(&store, ids[0]).await.state, JobState::Failed);
    assert!(
        !store.retry(ids[1]).await.unwrap(),
        "a queued job is not retried"
    );
    assert!(store.retry(ids[0]).await.unwrap());
    let stored = get(&store, ids[0]).await;
    assert_eq!(stored.state, JobState::Queued);
    assert!(
        stored.max_attempts > stored.attempts,
        "a retried job may run again"
    );
    let again = store
        .claim(&ClaimRequest::new(W1, &queues(), 2, LEASE, 3))
        .await
        .unwrap();
    assert!(again.iter().any(|c| c.lease.job == ids[0]));
}

async fn priority_queue_and_delay_order_claims(store: AnyStore) {
    let mut low = job("low");
    low.priority = 1;
    let mut high = job("high");
    high.priority = 10;
    let mut later = job("later");
    later.priority = 100;
    later.delay = Duration::from_secs(3600);
    let mut other = job("other queue");
    other.queue = "other".into();
    let ids = store
        .enqueue_many(&[low, high, later, other])
        .await
        .unwrap();
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 10, LEASE, 1))
        .await
        .unwrap();
    let got: Vec<JobId> = claimed.iter().map(|c| c.lease.job).collect();
    assert_eq!(
        got,
        vec![ids[1], ids[0]],
        "higher priority first; delayed and other-queue jobs wait"
    );
    let other = store
        .claim(&ClaimRequest::new(W1, &["other".to_string()], 10, LEASE, 2))
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
}

/// Each worker is judged lost by the lease it announced (a worker that
/// announced none, by the caller's): a short-lease worker must not judge a
/// long-lease one lost between its heartbeats.
async fn workers_register_and_are_flagged_lost(store: AnyStore) {
    let info = |id: &str, lease: Duration| WorkerInfo {
        id: id.into(),
        host: "host".into(),
        pid: 42,
        queues: queues(),
        concurrency: 4,
        lease,
    };
    let lease = Duration::from_millis(200);
    store.register_worker(&info(W1, lease)).await.unwrap();
    store.register_worker(&info(W2, lease)).await.unwrap();
    store
        .register_worker(&info("patient", Duration::from_secs(60)))
        .await
        .unwrap();
    store
        .register_worker(&info("silent", Duration::ZERO))
        .await
        .unwrap();
    // Fifteen seconds silent below: one and a half of its leases, past
    // one lease but short of the lost bound (LOST_AFTER_LEASES = 2
    // leases): not lost. A bound of half a lease called it lost.
    store
        .register_worker(&info("halfway", Duration::from_secs(10)))
        .await
        .unwrap();
    store.enqueue_many(&[job("sleep 1")]).await.unwrap();
    let claimed = claim_one(&store, W1).await;
    let rows = store.workers(lease).await.unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|w| !w.lost));
    let w1 = rows.iter().find(|w| w.info.id == W1).unwrap();
    assert_eq!(w1.running_jobs, vec![claimed.lease.job]);
    support::time_passes(&store, Duration::from_secs(15)).await;
    store
        .heartbeat(W2, Phase::Draining, &[], lease, &[])
        .await
        .unwrap();
    let rows = store.workers(lease).await.unwrap();
    let lost: Vec<(&str, bool, &str)> = rows
        .iter()
        .map(|w| (w.info.id.as_str(), w.lost, w.phase.as_str()))
        .collect();
    assert!(lost.contains(&(W1, true, "running")), "{lost:?}");
    assert!(lost.contains(&(W2, false, "draining")), "{lost:?}");
    assert!(lost.contains(&("patient", false, "running")), "{lost:?}");
    assert!(lost.contains(&("silent", true, "running")), "{lost:?}");
    assert!(lost.contains(&("halfway", false, "running")), "{lost:?}");
    let leases: Vec<(&str, Duration)> = rows
        .iter()
        .map(|w| (w.info.id.as_str(), w.info.lease))
        .collect();
    assert!(
        leases.contains(&("patient", Duration::from_secs(60))),
        "{leases:?}"
    );
    assert!(leases.contains(&("silent", lease)), "{leases:?}");
    store
        .deregister_worker(&WorkerStop::new(W2, 75, "0.000s SIGTERM\n"))
        .await
        .unwrap();
    assert_eq!(store.workers(lease).await.unwrap().len(), 4);
    // How it stopped is kept, newest first, one record per worker.
    store
        .deregister_worker(&WorkerStop::new("patient", 0, ""))
        .await
        .unwrap();
    let stops = store.stops().await.unwrap();
    let seen: Vec<(&str, i32, &str)> = stops
        .iter()
        .map(|s| (s.worker_id.as_str(), s.exit_code, s.trace.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![("patient", 0, ""), (W2, 75, "0.000s SIGTERM\n")],
        "{stops:?}"
    );
    assert!(stops.iter().all(|s| s.stopped_at > 0), "{stops:?}");
}

/// At most the newest [`KEEP_STOPS`] stopped workers are kept, and a trace
/// is cut at [`MAX_STOP_TRACE`] bytes.
async fn stopped_workers_are_bounded(store: AnyStore) {
    for i in 0..KEEP_STOPS + 5 {
        let trace = if i == 0 {
            "x".repeat(MAX_STOP_TRACE * 2)
        } else {
            String::new()
        };
        store
            .deregister_worker(&WorkerStop::new(&format!("w{i:03}"), 0, &trace))
            .await
            .unwrap();
        // Distinct stop times keep "newest" well defined.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let stops = store.stops().await.unwrap();
    assert_eq!(stops.len(), KEEP_STOPS as usize);
    assert_eq!(stops[0].worker_id, format!("w{:03}", KEEP_STOPS + 4));
    assert!(stops.iter().all(|s| s.worker_id.as_str() >= "w005"));
    let cut = WorkerStop::new("w", 0, &"é".repeat(MAX_STOP_TRACE));
    assert!(
        cut.trace.len() <= MAX_STOP_TRACE + 20,
        "{}",
        cut.trace.len()
    );
    assert!(cut.trace.ends_with("[trace cut]\n"));
}

/// The dashboard's filters: text in the command, creation time, worker,
/// and keyset pages that never repeat or skip a job.
async fn list_filters_and_pages(store: AnyStore) {
    let mut specs = Vec::new();
    for i in 0..25 {
        specs.push(job(&format!("echo report-{i} 100%_done")));
    }
    specs.push(job("sleep 1"));
    let ids = store.enqueue_many(&specs).await.unwrap();
    let text = |t: &str| JobFilter {
        text: Some(t.into()),
        ..JobFilter::default()
    };
    assert_eq!(store.list(&text("REPORT-1")).await.unwrap().len(), 11);
    assert_eq!(store.list(&text("sh -c echo")).await.unwrap().len(), 25);
    // LIKE's wildcards in the text match themselves only.
    assert_eq!(store.list(&text("100%_d")).await.unwrap().len(), 25);
    assert_eq!(store.list(&text("100_")).await.unwrap().len(), 0);
    assert_eq!(store.list(&text("%")).await.unwrap().len(), 25);
    // Pages of ten, newest first, then the rest.
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list(&JobFilter {
                limit: Some(10),
                before,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|j| j.id);
        seen.extend(page.iter().map(|j| j.id));
        assert!(
            seen.len() <= ids.len(),
            "paging never ends: {} ids seen of {} jobs, pages repeat (cursor {before:?})",
            seen.len(),
            ids.len()
        );
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    // Creation time: nothing before the first job, everything from it.
    let first = get(&store, ids[0]).await.created_at;
    let created = |from: Option<i64>, until: Option<i64>| JobFilter {
        created_from: from,
        created_until: until,
        ..JobFilter::default()
    };
    assert_eq!(
        store.list(&created(None, Some(first))).await.unwrap().len(),
        0
    );
    assert_eq!(
        store.list(&created(Some(first), None)).await.unwrap().len(),
        26
    );
    assert_eq!(
        store
            .list(&created(Some(first + 3_600_000), None))
            .await
            .unwrap()
            .len(),
        0
    );
    // The jobs a worker holds or held.
    let claimed = claim_one(&store, W1).await;
    let held = store
        .list(&JobFilter {
            worker: Some(W1.into()),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        held.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![claimed.lease.job]
    );
}

/// Finished jobs are counted per minute of the span asked for.
async fn activity_counts_finished_jobs_per_minute(store: AnyStore) {
    let mut specs = vec![job("true"), job("true"), job("true")];
    specs[2].max_attempts = 1;
    store.enqueue_many(&specs).await.unwrap();
    assert!(store
        .activity(Duration::from_secs(3600))
        .await
        .unwrap()
        .is_empty());
    for outcome in [Outcome::Succeeded, Outcome::Succeeded, failed(1)] {
        let claimed = claim_one(&store, W1).await;
        assert!(matches!(
            store
                .record(W1, &[done(claimed.lease, outcome)])
                .await
                .unwrap()[0],
            (_, RecordResult::Recorded { .. })
        ));
    }
    let minutes = store.activity(Duration::from_secs(3600)).await.unwrap();
    let succeeded: u64 = minutes.iter().map(|m| m.succeeded).sum();
    let failed_jobs: u64 = minutes.iter().map(|m| m.failed).sum();
    assert_eq!((succeeded, failed_jobs), (2, 1), "{minutes:?}");
    assert!(
        minutes.iter().all(|m| m.minute_ms % 60_000 == 0),
        "{minutes:?}"
    );
    let now = dockhand::store::unix_ms_now();
    assert!(
        minutes
            .iter()
            .all(|m| m.minute_ms <= now && m.minute_ms > now - 120_000),
        "{minutes:?}"
    );
}

/// A heartbeat answers per lease: a stale token of a job the worker holds
/// again under a newer one is lost, the newer one is kept. (Found by the
/// three-store model test: PostgreSQL compared job ids only.)
async fn heartbeats_judge_each_lease_by_its_token(store: AnyStore) {
    store.enqueue_many(&[job("true")]).await.unwrap();
    let first = claim_one(&store, W1).await;
    store
        .record(W1, &[done(first.lease, Outcome::HandBack)])
        .await
        .unwrap();
    let second = claim_one(&store, W1).await;
    assert_eq!(first.lease.job, second.lease.job);
    let answer = store
        .heartbeat(W1, Phase::Running, &[first.lease, second.lease], LEASE, &[])
        .await
        .unwrap();
    assert_eq!(answer.lost, vec![first.lease.job]);
    let answer = store
        .heartbeat(W1, Phase::Running, &[second.lease], LEASE, &[])
        .await
        .unwrap();
    assert!(answer.lost.is_empty(), "{answer:?}");
    // A heartbeat naming only a stale lease extends nothing: the job's
    // current lease, short, runs out and is reaped.
    store
        .record(W1, &[done(second.lease, Outcome::HandBack)])
        .await
        .unwrap();
    let short = Duration::from_millis(200);
    let third = store
        .claim(&ClaimRequest::new(W1, &queues(), 1, short, 3))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(third.lease.job, first.lease.job);
    let answer = store
        .heartbeat(W1, Phase::Running, &[second.lease], LEASE, &[])
        .await
        .unwrap();
    assert_eq!(answer.lost, vec![first.lease.job]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        store.reap_expired().await.unwrap(),
        1,
        "a stale lease's heartbeat extended the current one"
    );
}

/// The backoff doubles from `RETRY_BASE` (1 s) and stops at `RETRY_CAP`
/// (600 s), with ±25 % jitter: the eleventh failure waits about 600 s, not
/// 1,024 s.
async fn the_backoff_doubles_up_to_its_cap(store: AnyStore) {
    let mut new = job("exit 1");
    new.max_attempts = 20;
    let id = store.enqueue_many(&[new]).await.unwrap()[0];
    let mut delays = Vec::new();
    for attempt in 1..=11 {
        let run = claim_one(&store, W1).await;
        store
            .record(W1, &[done(run.lease, failed(1))])
            .await
            .unwrap();
        let stored = get(&store, id).await;
        assert_eq!((stored.state, stored.attempts), (JobState::Queued, attempt));
        delays.push(stored.run_at - stored.started_at.expect("started"));
        support::time_passes(&store, Duration::from_secs(800)).await;
    }
    let (first, tenth, last) = (delays[0], delays[9], delays[10]);
    assert!((700..=1_400).contains(&first), "{delays:?}");
    assert!(
        (384_000..=641_000).contains(&tenth),
        "512 s ± 25 %: {delays:?}"
    );
    assert!(
        (450_000..=751_000).contains(&last),
        "the cap, 600 s ± 25 %: {delays:?}"
    );
}

/// What the last attempt said stays until another attempt says otherwise:
/// an interruption or a hand-back (no attempt) keeps its exit code and
/// error; a success clears the error and has exit code 0.
async fn the_last_attempts_exit_code_and_error_stay_until_another_attempt(store: AnyStore) {
    let mut new = job("flaky");
    new.max_attempts = 3;
    let id = store.enqueue_many(&[new]).await.unwrap()[0];
    let said = |job: &dockhand::store::Job| (job.exit_code, job.error.clone());
    let failed_said = (Some(3), Some("exit code 3".to_string()));
    let run = claim_one(&store, W1).await;
    store
        .record(W1, &[done(run.lease, failed(3))])
        .await
        .unwrap();
    assert_eq!(said(&get(&store, id).await), failed_said);
    support::time_passes(&store, Duration::from_secs(10)).await;
    let interrupted = Outcome::Interrupted {
        reason: "worker shutdown".into(),
    };
    for outcome in [interrupted, Outcome::HandBack] {
        let run = claim_one(&store, W1).await;
        store.record(W1, &[done(run.lease, outcome)]).await.unwrap();
        let stored = get(&store, id).await;
        assert_eq!(stored.state, JobState::Queued);
        assert_eq!(said(&stored), failed_said, "after no attempt");
    }
    let run = claim_one(&store, W1).await;
    store
        .record(W1, &[done(run.lease, Outcome::Succeeded)])
        .await
        .unwrap();
    let stored = get(&store, id).await;
    assert_eq!(
        (stored.state, said(&stored)),
        (JobState::Succeeded, (Some(0), None))
    );
}

/// A claim from several queues takes the highest priority first, whichever
/// queue holds it, then the oldest.
async fn a_claim_from_several_queues_takes_the_highest_priority_first(store: AnyStore) {
    let mut old_low = job("old, low");
    old_low.queue = "a".into();
    let id_old_low = store.enqueue_many(&[old_low]).await.unwrap()[0];
    let mut new_high = job("new, high");
    new_high.queue = "b".into();
    new_high.priority = 5;
    let id_new_high = store.enqueue_many(&[new_high]).await.unwrap()[0];
    let both = vec!["a".to_string(), "b".to_string()];
    let mut order = Vec::new();
    for claim in 1..=2 {
        let taken = store
            .claim(&ClaimRequest::new(W1, &both, 1, LEASE, claim))
            .await
            .unwrap();
        order.extend(taken.iter().map(|c| c.lease.job));
    }
    assert_eq!(order, vec![id_new_high, id_old_low]);
}

/// The outcome of a run whose lease expired and was reaped is still accepted
/// while nobody has claimed the job since: the run did happen, and running it
/// again would repeat it. The reap's interruption is undone.
async fn late_outcome_after_a_reap_is_accepted_until_the_job_is_claimed_again(store: AnyStore) {
    let ids = store
        .enqueue_many(&[job("sleep 3"), job("sleep 3"), job("sleep 3")])
        .await
        .unwrap();
    let short = Duration::from_millis(200);
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 3, short, 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.reap_expired().await.unwrap(), 3);
    for id in &ids {
        assert_eq!(get(&store, *id).await.interruptions, 1);
    }
    // Job 1: nobody claimed it since; its late success is accepted, once.
    record_as(
        &store,
        W1,
        claimed[0].lease,
        Outcome::Succeeded,
        JobState::Succeeded,
    )
    .await;
    let stored = get(&store, ids[0]).await;
    assert_eq!(
        (stored.state, stored.attempts, stored.interruptions),
        (JobState::Succeeded, 1, 0),
        "the reap's interruption is undone"
    );
    let history = store.history(ids[0]).await.unwrap();
    assert!(
        history.iter().any(|e| e.kind == "succeeded"
            && e.detail
                .as_deref()
                .unwrap_or("")
                .contains("after the lease expired")),
        "{history:?}"
    );
    let again = store
        .record(W1, &[done(claimed[0].lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![(ids[0], RecordResult::Refused)],
        "accepted once"
    );
    // Job 2: claimed again by another worker: the old lease is superseded.
    let second = claim_one(&store, W2).await;
    assert_eq!(second.lease.job, ids[1]);
    let superseded = store
        .record(W1, &[done(claimed[1].lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(superseded, vec![(ids[1], RecordResult::Refused)]);
    assert_eq!(get(&store, ids[1]).await.state, JobState::Running);
    // Job 3: a user cancelled it after the reap: the user's word stands.
    assert_eq!(store.cancel(ids[2]).await.unwrap(), CancelResult::Cancelled);
    let refused = store
        .record(W1, &[done(claimed[2].lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(refused, vec![(ids[2], RecordResult::Refused)]);
    assert_eq!(get(&store, ids[2]).await.state, JobState::Cancelled);
}

/// A cancel requested while a job runs is never lost: every outcome that
/// would requeue the job (a failure with attempts left, an interruption, a
/// hand-back, a reap) makes it `cancelled` instead; a success stays a success.
async fn a_pending_cancel_wins_over_every_requeue(store: AnyStore) {
    let outcomes = [
        failed(1),
        Outcome::Interrupted {
            reason: "worker shutdown".into(),
        },
        Outcome::HandBack,
        Outcome::Succeeded,
    ];
    let ids = store
        .enqueue_many(&[job("a"), job("b"), job("c"), job("d"), job("e")])
        .await
        .unwrap();
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 4, LEASE, 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 4);
    for c in &claimed {
        assert_eq!(
            store.cancel(c.lease.job).await.unwrap(),
            CancelResult::Requested
        );
    }
    let expected = [
        JobState::Cancelled,
        JobState::Cancelled,
        JobState::Cancelled,
        JobState::Succeeded,
    ];
    for ((c, outcome), state) in claimed.iter().zip(outcomes).zip(expected) {
        let result = store.record(W1, &[done(c.lease, outcome)]).await.unwrap();
        assert_eq!(
            result,
            vec![(c.lease.job, RecordResult::Recorded { state })]
        );
    }
    let states: Vec<JobState> = futures_states(&store, &ids[..4]).await;
    assert_eq!(
        states,
        [
            JobState::Cancelled,
            JobState::Cancelled,
            JobState::Cancelled,
            JobState::Succeeded
        ]
    );
    let failed_job = get(&store, ids[0]).await;
    assert_eq!(failed_job.attempts, 1, "the failed run still counts");
    assert!(failed_job.finished_at.is_some());
    // A reaped lease with a pending cancel: cancelled, no interruption.
    let last = store
        .claim(&ClaimRequest::new(
            W1,
            &queues(),
            1,
            Duration::from_millis(200),
            2,
        ))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(last.lease.job, ids[4]);
    store.cancel(ids[4]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.reap_expired().await.unwrap(), 1);
    let reaped = get(&store, ids[4]).await;
    assert_eq!(
        (reaped.state, reaped.interruptions),
        (JobState::Cancelled, 0)
    );
    // Its late outcome is still accepted (nobody claimed the job since),
    // and has no interruption to undo: the reap counted none.
    record_as(
        &store,
        W1,
        last.lease,
        Outcome::Succeeded,
        JobState::Succeeded,
    )
    .await;
    let after = get(&store, ids[4]).await;
    assert_eq!(
        (after.state, after.attempts, after.interruptions),
        (JobState::Succeeded, 1, 0)
    );
    // Nothing is left to claim: no cancelled job runs again.
    assert!(store
        .claim(&ClaimRequest::new(W2, &queues(), 10, LEASE, 3))
        .await
        .unwrap()
        .is_empty());
}

async fn futures_states(store: &AnyStore, ids: &[JobId]) -> Vec<JobState> {
    let mut states = Vec::new();
    for id in ids {
        states.push(get(store, *id).await.state);
    }
    states
}

/// Job output is arbitrary bytes and comes back exactly; error texts with a
/// NUL are stored (with U+FFFD in its place).
async fn output_is_stored_byte_for_byte(store: AnyStore) {
    let ids = store
        .enqueue_many(&[job("printf"), job("printf")])
        .await
        .unwrap();
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 2, LEASE, 1))
        .await
        .unwrap();
    let bytes: Vec<u8> = (0..=255u8).chain(*b"a\0b\xff\xfe\n").collect();
    let outcomes = vec![
        Completion {
            lease: claimed[0].lease,
            outcome: Outcome::Succeeded,
            output: bytes.clone(),
        },
        Completion {
            lease: claimed[1].lease,
            outcome: Outcome::Failed {
                exit_code: Some(2),
                error: "bad \0 byte".into(),
            },
            output: b"\0\0\0".to_vec(),
        },
    ];
    let results = store.record(W1, &outcomes).await.unwrap();
    assert!(results.iter().all(|(_, r)| r.is_recorded()));
    assert_eq!(store.output(ids[0]).await.unwrap(), Some(bytes));
    assert_eq!(
        store.output(ids[1]).await.unwrap(),
        Some(b"\0\0\0".to_vec())
    );
    assert_eq!(
        get(&store, ids[1]).await.error.as_deref(),
        Some("bad \u{fffd} byte")
    );
}

/// A NUL cannot reach exec or a text column: refused at enqueue, nothing written.
async fn nul_in_a_job_is_refused_at_enqueue(store: AnyStore) {
    let mut in_command = job("ok");
    in_command.spec.command.push("a\0b".into());
    let mut in_env = job("ok");
    in_env.spec.env.insert("K".into(), "v\0".into());
    let mut in_queue = job("ok");
    in_queue.queue = "q\0".into();
    for bad in [in_command, in_env, in_queue] {
        let err = store.enqueue_many(&[job("fine"), bad]).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::InvalidJob(m) if m.contains("NUL")),
            "{err}"
        );
    }
    assert!(store.list(&JobFilter::default()).await.unwrap().is_empty());
}

/// A claim whose reply was lost (it committed, the worker never heard) is
/// handed to the worker by its next heartbeat, by claim id; nobody else's.
async fn claims_whose_reply_was_lost_are_recovered_by_heartbeat(store: AnyStore) {
    let ids = store
        .enqueue_many(&[job("a"), job("b"), job("c")])
        .await
        .unwrap();
    let lost = store
        .claim(&ClaimRequest::new(W1, &queues(), 2, LEASE, 7))
        .await
        .unwrap();
    let other = store
        .claim(&ClaimRequest::new(W2, &queues(), 1, LEASE, 7))
        .await
        .unwrap();
    assert_eq!((lost.len(), other.len()), (2, 1));
    let none = store
        .heartbeat(W1, Phase::Running, &[], LEASE, &[8])
        .await
        .unwrap();
    assert!(none.recovered.is_empty(), "only the claims asked about");
    let hb = store
        .heartbeat(W1, Phase::Running, &[], LEASE, &[7])
        .await
        .unwrap();
    let mut recovered: Vec<Lease> = hb.recovered.iter().map(|j| j.lease).collect();
    recovered.sort();
    let mut expected: Vec<Lease> = lost.iter().map(|j| j.lease).collect();
    expected.sort();
    assert_eq!(recovered, expected, "W2's claim 7 is not W1's");
    assert!(hb
        .recovered
        .iter()
        .all(|j| j.spec.command[2] != "c" || ids.len() == 3));
    // The recovered leases work like any other.
    let results = store
        .record(W1, &[done(recovered[0], Outcome::Succeeded)])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![(
            recovered[0].job,
            RecordResult::Recorded {
                state: JobState::Succeeded
            }
        )]
    );
    // Asked again, only the claim's job that still runs comes back: the
    // finished one would run twice.
    let again = store
        .heartbeat(W1, Phase::Running, &[], LEASE, &[7])
        .await
        .unwrap();
    let again: Vec<Lease> = again.recovered.iter().map(|j| j.lease).collect();
    assert_eq!(again, vec![recovered[1]], "a finished job was recovered");
}

/// A worker sends its heartbeat and its outcome writes independently, so
/// the two may run at once over the same held jobs. On PostgreSQL both lock
/// many rows; taken in different orders they deadlocked, and the server
/// broke the tie after a second by failing one of them (seen under load:
/// `dockhand bench --concurrency 64 --prefetch 128`, about one heartbeat in
/// two). Neither call may fail (the server fails one of a deadlocked pair).
async fn a_workers_heartbeat_and_record_may_run_at_once(store: AnyStore) {
    const JOBS: usize = 400;
    for round in 0..6 {
        let jobs: Vec<NewJob> = (0..JOBS).map(|i| job(&format!("echo {i}"))).collect();
        store.enqueue_many(&jobs).await.unwrap();
        let mut held = Vec::new();
        while held.len() < JOBS {
            let claimed = store
                .claim(&ClaimRequest::new(W1, &queues(), 100, LEASE, round))
                .await
                .unwrap();
            assert!(!claimed.is_empty(), "round {round}: jobs left to claim");
            held.extend(claimed.into_iter().map(|c| c.lease));
        }
        // Opposite orders, as a worker's two calls may well list them.
        held.sort();
        let completions: Vec<Completion> =
            held.iter().map(|l| done(*l, Outcome::Succeeded)).collect();
        let mut leases = held.clone();
        leases.reverse();
        let (hb_store, rec_store) = (store.clone(), store.clone());
        let heartbeat = tokio::spawn(async move {
            hb_store
                .heartbeat(W1, Phase::Running, &leases, LEASE, &[])
                .await
        });
        let record = tokio::spawn(async move { rec_store.record(W1, &completions).await });
        let (heartbeat, record) = (heartbeat.await.unwrap(), record.await.unwrap());
        if let Err(e) = &heartbeat {
            panic!("round {round}: the heartbeat failed beside a record: {e}");
        }
        match &record {
            Err(e) => panic!("round {round}: the record failed beside a heartbeat: {e}"),
            Ok(results) => assert!(
                results.iter().all(|(_, r)| r.is_recorded()),
                "round {round}: every outcome recorded: {results:?}"
            ),
        }
    }
}

/// A worker whose engine is away (or who has none) claims only jobs without
/// an image, and the registry shows its engine's state.
async fn a_worker_without_an_engine_leaves_image_jobs(store: AnyStore) {
    let mut image_job = job("true");
    image_job.spec.image = Some("busybox".into());
    let ids = store
        .enqueue_many(&[image_job.clone(), job("true"), image_job])
        .await
        .unwrap();
    let no_images = ClaimRequest {
        images: false,
        ..ClaimRequest::new(W1, &queues(), 10, LEASE, 1)
    };
    let claimed = store.claim(&no_images).await.unwrap();
    let got: Vec<JobId> = claimed.iter().map(|c| c.lease.job).collect();
    assert_eq!(got, vec![ids[1]]);
    let claimed = store
        .claim(&ClaimRequest::new(W2, &queues(), 10, LEASE, 1))
        .await
        .unwrap();
    let mut got: Vec<JobId> = claimed.iter().map(|c| c.lease.job).collect();
    got.sort();
    assert_eq!(got, vec![ids[0], ids[2]]);
    assert_eq!(claimed[0].spec.image.as_deref(), Some("busybox"));

    let info = WorkerInfo {
        id: W1.into(),
        host: "host".into(),
        pid: 1,
        queues: queues(),
        concurrency: 1,
        lease: LEASE,
    };
    store.register_worker(&info).await.unwrap();
    let docker = |rows: Vec<dockhand::store::WorkerRow>| rows[0].docker.clone();
    assert_eq!(docker(store.workers(LEASE).await.unwrap()), None);
    store.report_engine(W1, "unreachable").await.unwrap();
    assert_eq!(
        docker(store.workers(LEASE).await.unwrap()).as_deref(),
        Some("unreachable")
    );
    store.report_engine(W1, "reachable").await.unwrap();
    assert_eq!(
        docker(store.workers(LEASE).await.unwrap()).as_deref(),
        Some("reachable")
    );
}

async fn migrate_twice_is_harmless(store: AnyStore) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.enqueue_many(&[job("true")]).await.unwrap();
}

fn keyed(cmd: &str, key: &str) -> NewJob {
    let mut new = job(cmd);
    new.unique_key = Some(key.to_string());
    new
}

async fn unique_keys_hold_while_a_job_is_live(store: AnyStore) {
    let first = store.enqueue(&[keyed("a", "k1")]).await.unwrap();
    assert!(!first[0].existed);
    // Again, and twice in one call beside a new key and a keyless job.
    let again = store
        .enqueue(&[
            keyed("a", "k1"),
            keyed("b", "k2"),
            job("c"),
            keyed("d", "k2"),
        ])
        .await
        .unwrap();
    assert_eq!(again[0].id, first[0].id);
    assert!(again[0].existed);
    assert!(!again[1].existed && !again[2].existed);
    assert_ne!(again[1].id, again[2].id);
    assert_eq!(
        again[3].id, again[1].id,
        "the second k2 of the call gets the first's id"
    );
    assert!(again[3].existed);
    let all = store.list(&JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3, "k1, k2 and the keyless job: {all:?}");
    assert_eq!(
        get(&store, first[0].id).await.unique_key.as_deref(),
        Some("k1")
    );
    // Still held while running.
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 10, LEASE, 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let running = store.enqueue(&[keyed("a", "k1")]).await.unwrap();
    assert_eq!(running[0].id, first[0].id);
    assert!(running[0].existed);
    // Free again once it finished.
    let k1 = claimed.iter().find(|c| c.lease.job == first[0].id).unwrap();
    store
        .record(W1, &[done(k1.lease, Outcome::Cancelled)])
        .await
        .unwrap();
    let later = store.enqueue(&[keyed("a", "k1")]).await.unwrap();
    assert!(!later[0].existed);
    assert_ne!(later[0].id, first[0].id);
    // The old, cancelled job cannot be retried beside the new live one.
    assert!(!store.retry(first[0].id).await.unwrap());
    assert_eq!(
        store
            .bulk(BulkAction::Retry, &BulkFilter::default(), false)
            .await
            .unwrap(),
        0
    );
    // A bad key writes nothing.
    let err = store.enqueue(&[keyed("x", "")]).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidJob(_)), "{err}");
}

async fn concurrent_enqueues_of_one_key_create_one_job(store: AnyStore) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.enqueue(&[keyed("race", "the-key")]).await.unwrap()[0]
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let created: Vec<_> = answers.iter().filter(|a| !a.existed).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    assert!(answers.iter().all(|a| a.id == created[0].id), "{answers:?}");
    assert_eq!(store.list(&JobFilter::default()).await.unwrap().len(), 1);
}

/// Two producers enqueue batches that share keys, listed in opposite
/// orders. On PostgreSQL each insert of a key another open transaction
/// holds waits for that transaction: without a common order the two waited
/// for each other and the server failed one with a deadlock.
async fn concurrent_batches_sharing_keys_both_succeed(store: AnyStore) {
    const KEYS: usize = 200;
    for round in 0..5 {
        let forward: Vec<NewJob> = (0..KEYS)
            .map(|i| keyed("k", &format!("r{round}-k{i}")))
            .collect();
        let mut backward = forward.clone();
        backward.reverse();
        let (a, b) = (store.clone(), store.clone());
        let first = tokio::spawn(async move { a.enqueue(&forward).await });
        let second = tokio::spawn(async move { b.enqueue(&backward).await });
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        let first = first.unwrap_or_else(|e| panic!("round {round}: the first batch failed: {e}"));
        let second =
            second.unwrap_or_else(|e| panic!("round {round}: the second batch failed: {e}"));
        // Each key made one job, and both answers name it.
        for i in 0..KEYS {
            let (x, y) = (&first[i], &second[KEYS - 1 - i]);
            assert_eq!(x.id, y.id, "round {round}: key {i} answered with two jobs");
            assert!(
                x.existed != y.existed,
                "round {round}: key {i}: {x:?} {y:?}"
            );
        }
    }
}

/// An operator's retry of failed keyed jobs (bulk, or one job per call)
/// while producers enqueue the same keys in the other order (one batch, or
/// one key per call). On PostgreSQL a requeued row enters the unique index
/// of live keys as an insert does: a bulk retry and a batch waited for each
/// other (a deadlock); a retry that found a key taken by an enqueue that
/// committed while it waited failed with a unique violation. Both sides
/// must succeed, and each key must end with exactly one live job.
async fn a_bulk_retry_racing_enqueues_of_the_same_keys_both_succeed(store: AnyStore) {
    const KEYS: usize = 150;
    for round in 0..8u64 {
        let (one_key_per_call, one_retry_per_call) = (round % 2 == 1, round % 4 >= 2);
        let queue = format!("retry-race-{round}");
        let keys: Vec<String> = (0..KEYS).map(|i| format!("r{round}-{i}")).collect();
        let jobs: Vec<NewJob> = keys
            .iter()
            .map(|key| {
                let mut new = keyed("first", key);
                new.queue = queue.clone();
                new.max_attempts = 1;
                new
            })
            .collect();
        store.enqueue_many(&jobs).await.unwrap();
        let mut claimed = Vec::new();
        while claimed.len() < KEYS {
            let more = store
                .claim(&ClaimRequest::new(
                    W1,
                    std::slice::from_ref(&queue),
                    100,
                    LEASE,
                    100 * round + claimed.len() as u64 + 1,
                ))
                .await
                .unwrap();
            assert!(!more.is_empty(), "round {round}: every job is claimable");
            claimed.extend(more);
        }
        let failures: Vec<_> = claimed.iter().map(|c| done(c.lease, failed(1))).collect();
        store.record(W1, &failures).await.unwrap();
        let batch: Vec<NewJob> = keys
            .iter()
            .rev()
            .map(|key| {
                let mut new = keyed("second", key);
                new.queue = queue.clone();
                new
            })
            .collect();
        let filter = BulkFilter {
            queue: Some(queue.clone()),
            ..BulkFilter::default()
        };
        let failed_ids: Vec<JobId> = claimed.iter().map(|c| c.lease.job).collect();
        let retrying = {
            let store = store.clone();
            tokio::spawn(async move {
                if !one_retry_per_call {
                    return store.bulk(BulkAction::Retry, &filter, false).await;
                }
                let mut retried = 0;
                for id in failed_ids {
                    retried += u64::from(store.retry(id).await?);
                }
                Ok(retried)
            })
        };
        let enqueuing = {
            let store = store.clone();
            tokio::spawn(async move {
                if !one_key_per_call {
                    return store.enqueue(&batch).await;
                }
                let mut answers = Vec::new();
                for new in batch {
                    answers.extend(store.enqueue(&[new]).await?);
                }
                Ok(answers)
            })
        };
        let retried = retrying
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: the retry failed: {e}"));
        let answers = enqueuing
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: the enqueue failed: {e}"));
        let created = answers.iter().filter(|a| !a.existed).count() as u64;
        assert_eq!(
            retried + created,
            KEYS as u64,
            "round {round}: each key is either retried or enqueued anew"
        );
        let rows = store
            .list(&JobFilter {
                queue: Some(queue.clone()),
                limit: Some(10_000),
                ..JobFilter::default()
            })
            .await
            .unwrap();
        let mut live: BTreeMap<String, u32> = BTreeMap::new();
        for row in rows.iter().filter(|r| !r.state.is_final()) {
            *live
                .entry(row.unique_key.clone().unwrap_or_default())
                .or_default() += 1;
        }
        assert_eq!(live.len(), KEYS, "round {round}: every key has a live job");
        assert!(
            live.values().all(|n| *n == 1),
            "round {round}: a key with two live jobs: {live:?}"
        );
    }
}

/// A stream of keyed jobs (`enqueue --from-file` of 60,000 lines, in
/// chunks of 10,000, one transaction): whatever orders concurrent keyed
/// batches must not grow with the keys. PostgreSQL's lock table holds a
/// few thousand locks in all with default settings: an advisory lock per
/// key failed here with "out of shared memory". The memory store found each
/// key's holder by scanning every job, so this took about 6 minutes there
/// (debug build); it keeps an index of keys now.
async fn a_stream_of_sixty_thousand_keys_is_one_enqueue(store: AnyStore) {
    const CHUNK: usize = 10_000;
    let mut sent = 0;
    let mut next = move || -> Result<Option<Vec<NewJob>>, StoreError> {
        if sent == 6 * CHUNK {
            return Ok(None);
        }
        let chunk = (sent..sent + CHUNK)
            .map(|i| keyed("k", &format!("many-{i}")))
            .collect();
        sent += CHUNK;
        Ok(Some(chunk))
    };
    let answers = store
        .enqueue_stream(&mut next)
        .await
        .unwrap_or_else(|e| panic!("60,000 keys in one stream: {e}"));
    assert_eq!(answers.len(), 6 * CHUNK);
    assert!(answers.iter().all(|a| !a.existed));
    // Every key is held by its own job: enqueued again, each is found.
    let again: Vec<NewJob> = [0, 31_337, 6 * CHUNK - 1]
        .iter()
        .map(|i| keyed("k", &format!("many-{i}")))
        .collect();
    let found = store.enqueue(&again).await.unwrap();
    assert!(found.iter().all(|a| a.existed), "{found:?}");
    assert_eq!(
        found.iter().map(|a| a.id).collect::<Vec<_>>(),
        vec![answers[0].id, answers[31_337].id, answers[6 * CHUNK - 1].id]
    );
}

async fn paused_queues_are_not_claimed(store: AnyStore) {
    let mut other = job("other");
    other.queue = "other".into();
    let ids = store.enqueue_many(&[job("a"), other]).await.unwrap();
    assert!(store.set_paused("default", true).await.unwrap());
    assert!(
        !store.set_paused("default", true).await.unwrap(),
        "already paused"
    );
    let both = vec!["default".to_string(), "other".to_string()];
    let claimed = store
        .claim(&ClaimRequest::new(W1, &both, 10, LEASE, 1))
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.lease.job).collect::<Vec<_>>(),
        vec![ids[1]],
        "only the queue that is not paused"
    );
    // Enqueue still works on a paused queue; stats show it paused.
    store.enqueue_many(&[job("b")]).await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    let default = stats.iter().find(|q| q.queue == "default").unwrap();
    assert!(default.paused);
    assert_eq!(default.ready, 2);
    let other = stats.iter().find(|q| q.queue == "other").unwrap();
    assert!(!other.paused);
    assert_eq!(other.running, 1);
    // A paused queue with no jobs is listed too.
    assert!(store.set_paused("empty", true).await.unwrap());
    let stats = store.queue_stats().await.unwrap();
    assert!(stats
        .iter()
        .any(|q| q.queue == "empty" && q.paused && q.ready == 0));
    assert!(store.set_paused("default", false).await.unwrap());
    assert!(
        !store.set_paused("default", false).await.unwrap(),
        "not paused"
    );
    assert!(!store.set_paused("never-paused", false).await.unwrap());
    let claimed = store
        .claim(&ClaimRequest::new(W1, &both, 10, LEASE, 2))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2, "resumed");
    assert!(store.set_paused("", true).await.is_err());
}

async fn queue_stats_count_every_state(store: AnyStore) {
    let mut later = job("later");
    later.delay = Duration::from_secs(3600);
    let mut at = job("at");
    at.run_at = Some(4_102_444_800_000); // 2100-01-01
    let mut fail = job("fail");
    fail.max_attempts = 1;
    let ids = store
        .enqueue_many(&[
            fail,
            job("ok"),
            job("cancel me"),
            job("run"),
            later,
            at,
            job("ready"),
        ])
        .await
        .unwrap();
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 3, LEASE, 1))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    store
        .record(
            W1,
            &[
                done(claimed[0].lease, failed(1)),
                done(claimed[1].lease, Outcome::Succeeded),
            ],
        )
        .await
        .unwrap();
    store.cancel(ids[3]).await.unwrap(); // queued: cancelled at once
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(stats.len(), 1);
    let q = &stats[0];
    assert_eq!(
        (
            q.ready,
            q.scheduled,
            q.running,
            q.succeeded,
            q.failed,
            q.cancelled
        ),
        (1, 2, 1, 1, 1, 1),
        "{q:?}"
    );
    assert!(q.oldest_ready_age_ms >= 10, "{q:?}");
    assert!(q.oldest_ready_age_ms < 600_000, "{q:?}");
    // `scheduled` lists the two due later, newest first.
    let scheduled = store
        .list(&JobFilter {
            state: Some(JobState::Queued),
            scheduled: Some(true),
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        scheduled.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![ids[5], ids[4]]
    );
    assert_eq!(get(&store, ids[5]).await.run_at, 4_102_444_800_000);
    let err = {
        let mut bad = job("x");
        bad.run_at = Some(-1);
        store.enqueue_many(&[bad]).await.unwrap_err()
    };
    assert!(matches!(err, StoreError::InvalidJob(_)), "{err}");
}

async fn bulk_cancel_and_retry_by_filter(store: AnyStore) {
    let mut jobs: Vec<NewJob> = (0..2_500).map(|i| job(&format!("bulk {i}"))).collect();
    for j in jobs.iter_mut().skip(2_000) {
        j.queue = "keep".into();
    }
    store.enqueue_many(&jobs).await.unwrap();
    let running = store
        .claim(&ClaimRequest::new(W1, &queues(), 5, LEASE, 1))
        .await
        .unwrap();
    assert_eq!(running.len(), 5);
    let filter = BulkFilter {
        queue: Some("default".into()),
        ..BulkFilter::default()
    };
    // A dry run counts and changes nothing.
    assert_eq!(
        store.bulk(BulkAction::Cancel, &filter, true).await.unwrap(),
        2_000
    );
    assert_eq!(store.queue_stats().await.unwrap()[0].cancelled, 0);
    // Over several batches: queued ones cancelled, running ones asked to stop.
    assert_eq!(
        store
            .bulk(BulkAction::Cancel, &filter, false)
            .await
            .unwrap(),
        2_000
    );
    assert_eq!(
        store
            .bulk(BulkAction::Cancel, &filter, false)
            .await
            .unwrap(),
        0
    );
    let stats = store.queue_stats().await.unwrap();
    let default = stats.iter().find(|q| q.queue == "default").unwrap();
    assert_eq!(
        (default.ready, default.running, default.cancelled),
        (0, 5, 1_995)
    );
    let keep = stats.iter().find(|q| q.queue == "keep").unwrap();
    assert_eq!(keep.ready, 500, "another queue is untouched");
    let answer = store
        .heartbeat(
            W1,
            Phase::Running,
            &running.iter().map(|c| c.lease).collect::<Vec<_>>(),
            LEASE,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(answer.cancelled.len(), 5, "running jobs are asked to stop");
    // Retry: the state must be one retry applies to.
    let wrong = BulkFilter {
        state: Some(JobState::Running),
        ..BulkFilter::default()
    };
    assert!(store.bulk(BulkAction::Retry, &wrong, true).await.is_err());
    // Older than an hour: none yet.
    let old = BulkFilter {
        state: Some(JobState::Cancelled),
        older_than: Some(Duration::from_secs(3600)),
        ..BulkFilter::default()
    };
    assert_eq!(store.bulk(BulkAction::Retry, &old, true).await.unwrap(), 0);
    let cancelled = BulkFilter {
        state: Some(JobState::Cancelled),
        ..BulkFilter::default()
    };
    assert_eq!(
        store
            .bulk(BulkAction::Retry, &cancelled, false)
            .await
            .unwrap(),
        1_995
    );
    let default = store.queue_stats().await.unwrap();
    assert_eq!(default[0].ready, 1_995);
    let history = kinds(&store, JobId(1)).await;
    assert!(
        history.ends_with(&["cancelled".to_string(), "retried".to_string()])
            || history.ends_with(&["cancel-requested".to_string()]),
        "{history:?}"
    );
}

async fn schedules_fire_each_slot_once(store: AnyStore) {
    let schedule = dockhand::store::Schedule {
        name: "nightly".into(),
        cron: "0 3 * * *".into(),
        job: job("echo nightly"),
        last_slot_ms: 1_000,
    };
    assert!(!store.put_schedule(&schedule).await.unwrap(), "added");
    assert_eq!(store.schedules().await.unwrap(), vec![schedule.clone()]);
    // Eight workers race for one slot: one job.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.fire_schedule("nightly", 5_000).await.unwrap()
        }));
    }
    let mut fired = Vec::new();
    for task in tasks {
        fired.extend(task.await.unwrap());
    }
    assert_eq!(fired.len(), 1, "{fired:?}");
    let made = get(&store, fired[0]).await;
    assert_eq!(made.spec.command, job("echo nightly").spec.command);
    assert_eq!(made.state, JobState::Queued);
    let history = store.history(fired[0]).await.unwrap();
    assert_eq!(
        history[0].detail.as_deref(),
        Some("schedule nightly slot 5000")
    );
    // The same or an older slot again: nothing.
    assert_eq!(store.fire_schedule("nightly", 5_000).await.unwrap(), None);
    assert_eq!(store.fire_schedule("nightly", 4_000).await.unwrap(), None);
    // Replacing keeps the last slot taken.
    let mut changed = schedule.clone();
    changed.cron = "0 4 * * *".into();
    changed.job.queue = "other".into();
    assert!(store.put_schedule(&changed).await.unwrap(), "replaced");
    let listed = store.schedules().await.unwrap();
    assert_eq!(listed[0].last_slot_ms, 5_000);
    assert_eq!(listed[0].cron, "0 4 * * *");
    assert_eq!(store.fire_schedule("nightly", 5_000).await.unwrap(), None);
    let next = store
        .fire_schedule("nightly", 9_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(get(&store, next).await.queue, "other");
    assert!(store.remove_schedule("nightly").await.unwrap());
    assert!(!store.remove_schedule("nightly").await.unwrap());
    assert_eq!(store.fire_schedule("nightly", 20_000).await.unwrap(), None);
    // A bad job is refused whole.
    let mut bad = schedule.clone();
    bad.job.spec.command.clear();
    assert!(store.put_schedule(&bad).await.is_err());
    assert!(store.schedules().await.unwrap().is_empty());
    // The template's delay, run time and unique key are not used: each
    // slot's job is due when its slot fires, and keyless.
    let mut later = schedule.clone();
    later.name = "later".into();
    later.job.delay = Duration::from_secs(3600);
    later.job.run_at = Some(4_102_444_800_000); // the year 2100
    later.job.unique_key = Some("later".into());
    store.put_schedule(&later).await.unwrap();
    let fired = store.fire_schedule("later", 5_000).await.unwrap().unwrap();
    let made = get(&store, fired).await;
    assert_eq!(made.unique_key, None);
    assert!(
        made.run_at - made.created_at < 60_000,
        "due at {} for a job made at {}",
        made.run_at,
        made.created_at
    );
}

async fn prune_deletes_old_finished_jobs_with_their_history(store: AnyStore) {
    let mut jobs: Vec<NewJob> = (0..1_200).map(|i| job(&format!("p {i}"))).collect();
    jobs[0].max_attempts = 1;
    let ids = store.enqueue_many(&jobs).await.unwrap();
    // 1,001 cancelled (more than one batch: a prune that stopped after a
    // full batch left the last one), one failed, one running, the rest
    // queued.
    let filter = BulkFilter::default();
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 2, LEASE, 1))
        .await
        .unwrap();
    store
        .record(W1, &[done(claimed[0].lease, failed(1))])
        .await
        .unwrap();
    let mut cancel: Vec<JobId> = ids[2..1_003].to_vec();
    cancel.sort();
    for id in &cancel {
        store.cancel(*id).await.unwrap();
    }
    assert!(store.bulk(BulkAction::Cancel, &filter, true).await.unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let all = [JobState::Succeeded, JobState::Failed, JobState::Cancelled];
    // Not old enough yet.
    assert_eq!(
        store
            .prune(&all, Duration::from_secs(3600), false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune(&[JobState::Cancelled], Duration::from_millis(10), true)
            .await
            .unwrap(),
        1_001,
        "dry run"
    );
    assert_eq!(
        store
            .prune(&[JobState::Cancelled], Duration::from_millis(10), false)
            .await
            .unwrap(),
        1_001
    );
    assert!(store.get(cancel[0]).await.unwrap().is_none());
    assert!(
        store.history(cancel[0]).await.unwrap().is_empty(),
        "history goes too"
    );
    assert_eq!(
        get(&store, ids[0]).await.state,
        JobState::Failed,
        "another state"
    );
    assert_eq!(
        store
            .prune(&all, Duration::from_millis(10), false)
            .await
            .unwrap(),
        1
    );
    // Live jobs stay, and cannot be asked for.
    assert_eq!(get(&store, ids[1]).await.state, JobState::Running);
    assert_eq!(store.queue_stats().await.unwrap()[0].ready, 197);
    assert!(store
        .prune(&[JobState::Running], Duration::ZERO, false)
        .await
        .is_err());
}

/// A retry of a finished keyed job is refused while a newer job holds the
/// key, and allowed once that newer job is pruned: the key's holder is the
/// newest job that still exists (the memory store keeps an index of keys
/// that pruning must keep true).
async fn a_pruned_newer_holder_of_a_key_no_longer_blocks_a_retry(store: AnyStore) {
    let old = store.enqueue(&[keyed("a", "k")]).await.unwrap()[0].id;
    assert_eq!(store.cancel(old).await.unwrap(), CancelResult::Cancelled);
    let newer = store.enqueue(&[keyed("b", "k")]).await.unwrap()[0];
    assert!(!newer.existed);
    let claimed = store
        .claim(&ClaimRequest::new(W1, &queues(), 1, LEASE, 1))
        .await
        .unwrap();
    assert_eq!(claimed[0].lease.job, newer.id);
    store
        .record(W1, &[done(claimed[0].lease, Outcome::Succeeded)])
        .await
        .unwrap();
    assert!(
        !store.retry(old).await.unwrap(),
        "the newer job holds the key"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store
            .prune(&[JobState::Succeeded], Duration::from_millis(10), false)
            .await
            .unwrap(),
        1
    );
    assert!(
        store.retry(old).await.unwrap(),
        "nothing newer holds the key"
    );
    assert_eq!(get(&store, old).await.state, JobState::Queued);
    let again = store.enqueue(&[keyed("c", "k")]).await.unwrap()[0];
    assert_eq!(
        (again.id, again.existed),
        (old, true),
        "the retried job holds it"
    );
}

/// The store's wake-ups: every backend pushes them.
async fn wakeups_of(store: &AnyStore) -> tokio::sync::mpsc::Receiver<Wakeup> {
    store
        .wakeups()
        .await
        .unwrap()
        .expect("every backend pushes wake-ups")
}

/// Wait (at most 10 s) for the wake-up `want`, passing over others; fail
/// with what came instead.
async fn wake_up(rx: &mut tokio::sync::mpsc::Receiver<Wakeup>, want: Wakeup, after: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(wakeup)) if wakeup == want => return,
            Ok(Some(other)) => seen.push(other),
            Ok(None) => {
                panic!(
                    "the wake-up channel closed waiting for {want:?} after {after}; saw {seen:?}"
                )
            }
            Err(_) => panic!("no {want:?} within 10 s after {after}; saw {seen:?}"),
        }
    }
}

/// Take what is pending until the channel has been quiet for 300 ms (at
/// most 5 s), so that the next wake-up awaited is the next write's.
async fn quiet(rx: &mut tokio::sync::mpsc::Receiver<Wakeup>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// A worker that sleeps until its next poll would leave a job waiting up
/// to a poll interval, so every write that makes a job claimable, or asks
/// a running job to stop, must be announced: whichever call made it.
async fn every_write_that_frees_a_job_or_stops_a_run_is_announced(store: AnyStore) {
    let mut rx = wakeups_of(&store).await;
    let mut one = job("sleep 100");
    one.max_attempts = 1;
    let mut chunks = vec![vec![one]].into_iter();
    let mut next = move || -> Result<Option<Vec<NewJob>>, StoreError> { Ok(chunks.next()) };
    quiet(&mut rx).await;
    let id = store.enqueue_stream(&mut next).await.unwrap()[0].id;
    wake_up(&mut rx, Wakeup::Jobs, "a streamed enqueue").await;

    let run = claim_one(&store, W1).await;
    quiet(&mut rx).await;
    let interrupted = Outcome::Interrupted {
        reason: "shutdown".into(),
    };
    store
        .record(W1, &[done(run.lease, interrupted)])
        .await
        .unwrap();
    wake_up(&mut rx, Wakeup::Jobs, "an interruption requeued").await;

    store
        .claim(&ClaimRequest::new(
            W1,
            &queues(),
            1,
            Duration::from_millis(200),
            1,
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    quiet(&mut rx).await;
    assert_eq!(store.reap_expired().await.unwrap(), 1);
    wake_up(&mut rx, Wakeup::Jobs, "a reap requeued").await;

    let run = claim_one(&store, W1).await;
    store
        .record(W1, &[done(run.lease, failed(1))])
        .await
        .unwrap();
    assert_eq!(get(&store, id).await.state, JobState::Failed);
    quiet(&mut rx).await;
    assert!(store.retry(id).await.unwrap());
    wake_up(&mut rx, Wakeup::Jobs, "a retry").await;

    let run = claim_one(&store, W1).await;
    quiet(&mut rx).await;
    let all = BulkFilter::default();
    assert_eq!(
        store.bulk(BulkAction::Cancel, &all, false).await.unwrap(),
        1
    );
    wake_up(
        &mut rx,
        Wakeup::Cancel(id),
        "a bulk cancel of a running job",
    )
    .await;
    store
        .record(W1, &[done(run.lease, Outcome::Cancelled)])
        .await
        .unwrap();
    quiet(&mut rx).await;
    assert_eq!(store.bulk(BulkAction::Retry, &all, false).await.unwrap(), 1);
    wake_up(&mut rx, Wakeup::Jobs, "a bulk retry").await;

    assert!(store.set_paused("default", true).await.unwrap());
    quiet(&mut rx).await;
    assert!(store.set_paused("default", false).await.unwrap());
    wake_up(&mut rx, Wakeup::Jobs, "a queue resumed").await;

    let schedule = dockhand::store::Schedule {
        name: "often".into(),
        cron: "* * * * *".into(),
        job: job("echo often"),
        last_slot_ms: 1_000,
    };
    store.put_schedule(&schedule).await.unwrap();
    quiet(&mut rx).await;
    assert!(store
        .fire_schedule("often", 60_000)
        .await
        .unwrap()
        .is_some());
    wake_up(&mut rx, Wakeup::Jobs, "a schedule fired").await;
}

/// No wake-up within half a second of `after` (a PostgreSQL notification
/// arrives in milliseconds; one held up longer lets this pass, never fail).
async fn nothing_announced(rx: &mut tokio::sync::mpsc::Receiver<Wakeup>, after: &str) {
    if let Ok(Some(wakeup)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        panic!("{wakeup:?} after {after}, which frees no job and stops no run");
    }
}

/// A wake-up makes every idle worker of the fleet ask for jobs at once, so
/// the stores that announce writes (not SQLite, whose watcher sees every
/// commit of another connection) announce only what frees a job or stops
/// a run: a bulk change that changed nothing, a cancel of a queued job, a
/// pause, or a resume of a queue that was not paused wakes nobody.
async fn writes_that_free_no_job_announce_nothing(store: AnyStore) {
    let mut rx = wakeups_of(&store).await;
    let ids = store.enqueue_many(&[job("one"), job("two")]).await.unwrap();
    wake_up(&mut rx, Wakeup::Jobs, "an enqueue").await;
    quiet(&mut rx).await;
    let all = BulkFilter::default();
    assert_eq!(store.bulk(BulkAction::Retry, &all, false).await.unwrap(), 0);
    nothing_announced(&mut rx, "a bulk retry of nothing").await;
    assert_eq!(store.cancel(ids[0]).await.unwrap(), CancelResult::Cancelled);
    nothing_announced(&mut rx, "a cancel of a queued job").await;
    assert_eq!(
        store.bulk(BulkAction::Cancel, &all, false).await.unwrap(),
        1
    );
    nothing_announced(&mut rx, "a bulk cancel of a queued job").await;
    assert!(store.set_paused("default", true).await.unwrap());
    nothing_announced(&mut rx, "a pause").await;
    assert!(store.set_paused("default", false).await.unwrap());
    wake_up(&mut rx, Wakeup::Jobs, "a resume").await;
    quiet(&mut rx).await;
    assert!(!store.set_paused("default", false).await.unwrap());
    nothing_announced(&mut rx, "a resume of a queue that was not paused").await;
}

/// A stream is one enqueue in chunks: the answers in input order across
/// chunks (a key given in an earlier chunk is found), and its bound counts
/// every chunk so far, not the last one: 6,401 jobs in chunks of 3,200
/// are far under it.
async fn a_stream_answers_across_its_chunks(store: AnyStore) {
    let mut chunks = vec![
        (0..3_200)
            .map(|i| job(&format!("s {i}")))
            .collect::<Vec<_>>(),
        (0..3_199)
            .map(|i| job(&format!("t {i}")))
            .chain([keyed("k", "stream-key")])
            .collect(),
        vec![keyed("k", "stream-key")],
    ]
    .into_iter();
    let mut next = move || -> Result<Option<Vec<NewJob>>, StoreError> { Ok(chunks.next()) };
    let answers = store
        .enqueue_stream(&mut next)
        .await
        .unwrap_or_else(|e| panic!("6,401 jobs in three chunks: {e}"));
    assert_eq!(answers.len(), 6_401);
    assert!(answers.windows(2).take(6_399).all(|w| w[0].id < w[1].id));
    assert!(answers[..6_400].iter().all(|a| !a.existed));
    assert_eq!(
        (answers[6_400].id, answers[6_400].existed),
        (answers[6_399].id, true),
        "the key of the second chunk holds in the third"
    );
    assert_eq!(store.queue_stats().await.unwrap()[0].ready, 6_400);
}

/// Every backend pushes wake-ups (the worker's latency rests on them): new
/// jobs, and a cancel asked of a running job, whoever wrote them.
async fn wakeups_announce_new_jobs_and_cancels_of_running_jobs(store: AnyStore) {
    let mut rx = wakeups_of(&store).await;
    // Nothing written, nothing announced: a wake-up is a claim by every
    // idle worker of the fleet.
    nothing_announced(&mut rx, "no write at all").await;
    let id = store.enqueue_many(&[job("sleep 100")]).await.unwrap()[0];
    wake_up(&mut rx, Wakeup::Jobs, "an enqueue").await;
    let running = claim_one(&store, W1).await;
    assert_eq!(running.lease.job, id);
    assert_eq!(store.cancel(id).await.unwrap(), CancelResult::Requested);
    wake_up(&mut rx, Wakeup::Cancel(id), "a cancel of a running job").await;
}

/// The instance id names one database (the Docker executor tells its own
/// containers from another deployment's by it): the same on every ask,
/// the backend's own through `AnyStore`, and another database's differs.
async fn the_instance_id_names_one_database(store: AnyStore) {
    let id = store.instance_id().await.unwrap();
    assert!(!id.is_empty());
    assert_eq!(store.instance_id().await.unwrap(), id);
    let (own, (other, _guard)) = match &store {
        AnyStore::Memory(s) => (s.instance_id().await, support::memory_store("other").await),
        AnyStore::Sqlite(s) => (s.instance_id().await, support::sqlite_store("other").await),
        AnyStore::Postgres(s) => (
            s.instance_id().await,
            support::postgres_store("the_instance_id_of_another").await,
        ),
    };
    assert_eq!(own.unwrap(), id);
    let other = other.instance_id().await.unwrap();
    assert!(!other.is_empty());
    assert_ne!(other, id, "two databases share an instance id");
}

/// Every conformance test's bound: each takes seconds (the longest, a
/// stream of 60,000 keys on PostgreSQL, 18 s here with a mutation run
/// sharing the machine; the rest under 4 s), so this is far past a loaded
/// machine's slowness and far short of for ever.
const TEST_BOUND_SECS: u64 = 90;

macro_rules! conformance {
    ($backend:ident, $open:path; $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let (store, _guard) = $open(stringify!($test)).await;
                    // A store call that loops for ever (a batch loop that
                    // never ends) fails here instead of hanging the suite.
                    let bound = std::time::Duration::from_secs(super::TEST_BOUND_SECS);
                    if tokio::time::timeout(bound, super::$test(store)).await.is_err() {
                        panic!(
                            "{} on {} did not finish within {} s",
                            stringify!($test),
                            stringify!($backend),
                            super::TEST_BOUND_SECS
                        );
                    }
                }
            )*
        }
    };
}

macro_rules! suite {
    ($($backend:ident => $open:path),* $(,)?) => {
        $(
            conformance!($backend, $open;
                enqueue_and_read_back,
                bulk_enqueue_is_all_or_nothing,
                claims_are_exclusive_under_concurrency,
                stale_and_foreign_leases_are_refused,
                expired_leases_are_reaped_as_interruptions,
                heartbeats_extend_leases,
                failures_retry_with_backoff_until_max_attempts,
                interruptions_use_no_attempt_and_quarantine,
                hand_back_changes_no_counters,
                cancel_queued_and_running,
                retry_requeues_failed_and_cancelled,
                priority_queue_and_delay_order_claims,
                workers_register_and_are_flagged_lost,
                late_outcome_after_a_reap_is_accepted_until_the_job_is_claimed_again,
                a_pending_cancel_wins_over_every_requeue,
                output_is_stored_byte_for_byte,
                nul_in_a_job_is_refused_at_enqueue,
                claims_whose_reply_was_lost_are_recovered_by_heartbeat,
                a_workers_heartbeat_and_record_may_run_at_once,
                a_worker_without_an_engine_leaves_image_jobs,
                migrate_twice_is_harmless,
                unique_keys_hold_while_a_job_is_live,
                concurrent_enqueues_of_one_key_create_one_job,
                concurrent_batches_sharing_keys_both_succeed,
                a_stream_of_sixty_thousand_keys_is_one_enqueue,
                a_bulk_retry_racing_enqueues_of_the_same_keys_both_succeed,
                paused_queues_are_not_claimed,
                queue_stats_count_every_state,
                bulk_cancel_and_retry_by_filter,
                schedules_fire_each_slot_once,
                prune_deletes_old_finished_jobs_with_their_history,
                a_pruned_newer_holder_of_a_key_no_longer_blocks_a_retry,
                stopped_workers_are_bounded,
                heartbeats_judge_each_lease_by_its_token,
                list_filters_and_pages,
                activity_counts_finished_jobs_per_minute,
                wakeups_announce_new_jobs_and_cancels_of_running_jobs,
                every_write_that_frees_a_job_or_stops_a_run_is_announced,
                the_backoff_doubles_up_to_its_cap,
                the_last_attempts_exit_code_and_error_stay_until_another_attempt,
                a_claim_from_several_queues_takes_the_highest_priority_first,
                a_stream_answers_across_its_chunks,
                the_instance_id_names_one_database,
            );
        )*
    };
}

suite! {
    memory => crate::support::memory_store,
    sqlite => crate::support::sqlite_store,
    postgres => crate::support::postgres_store,
}

// What only the stores that announce each write can promise (SQLite's
// watcher wakes on any commit of another connection).
conformance!(memory_announcing, crate::support::memory_store;
    writes_that_free_no_job_announce_nothing);
conformance!(postgres_announcing, crate::support::postgres_store;
    writes_that_free_no_job_announce_nothing);

/// A database migrated by a newer dockhand is refused with an error that says so.
async fn schema_too_new_is_refused(store: AnyStore) {
    match &store {
        AnyStore::Postgres(pg) => {
            sqlx::query("INSERT INTO dockhand_schema (version) VALUES (99)")
                .execute(pg.pool())
                .await
                .unwrap();
        }
        AnyStore::Sqlite(_) | AnyStore::Memory(_) => {
            unreachable!("only SQL backends have a schema")
        }
    }
    let err = store.migrate().await.unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade dockhand"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_too_new_is_refused() {
    let (store, _guard) = support::postgres_store("schema_too_new").await;
    schema_too_new_is_refused(store).await;
}

/// The test support's own promise: a test's database (and a role made for
/// it) is dropped when its guard goes, even with a store still connected,
/// so that a mutation run of hundreds of suites leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_tests_database_goes_with_its_guard() {
    let (store, guard) = support::postgres_store("goes_with_its_guard").await;
    let support::Guard::Postgres(mut database) = guard else {
        panic!("a PostgreSQL store's guard holds its database");
    };
    let name = database.name().to_string();
    let admin = dockhand::store::PostgresStore::connect_with(&support::postgres_base_url(), 1)
        .await
        .expect("connect to the test server");
    let role = format!("job_guard_{}", std::process::id());
    sqlx::query(&format!("CREATE ROLE {role}"))
        .execute(admin.pool())
        .await
        .expect("create role");
    database.drop_role_after(&role);
    let count = |sql: &'static str, of: String| {
        let pool = admin.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(of)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    let databases = "SELECT count(*) FROM pg_database WHERE datname = $1";
    let roles = "SELECT count(*) FROM pg_roles WHERE rolname = $1";
    assert_eq!(count(databases, name.clone()).await, 1);
    assert_eq!(count(roles, role.clone()).await, 1);
    drop(database);
    assert_eq!(count(databases, name).await, 0, "the database is dropped");
    assert_eq!(count(roles, role).await, 0, "the role is dropped");
    drop(store);
}

#[test]
fn sqlite_schema_too_new_is_refused_by_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    let url = format!("sqlite://{}", db.display());
    let bin = env!("CARGO_BIN_EXE_dockhand");
    assert!(std::process::Command::new(bin)
        .args(["--database-url", &url, "migrate"])
        .status()
        .unwrap()
        .success());
    let conn = std::process::Command::new("python3")
        .args(["-c", &format!("import sqlite3; c=sqlite3.connect({:?}); c.execute('insert into dockhand_schema values (99, 0)'); c.commit()", db.display().to_string())])
        .status()
        .unwrap();
    assert!(conn.success());
    let out = std::process::Command::new(bin)
        .args(["--database-url", &url, "jobs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(78),
        "a configuration error: {stderr}"
    );
    assert!(
        stderr.contains("schema is at version 99") && stderr.contains("upgrade dockhand"),
        "{stderr}"
    );
}

/// The store's reading of the error the statement `$sql` meets on `$on`.
macro_rules! refusal {
    ($on:expr, $sql:expr) => {
        StoreError::from(sqlx::query($sql).execute($on).await.expect_err($sql))
    };
}

/// What a worker does with a database error rests on its kind: a busy or
/// unreachable database is waited out, a statement the database refuses is
/// not repeated. Real errors from the server, through the store's own
/// conversion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_are_sorted_by_what_a_retry_can_do() {
    let (store, _guard) = support::postgres_store("postgres_errors_are_sorted").await;
    let AnyStore::Postgres(pg) = &store else {
        panic!("not a PostgreSQL store")
    };
    let pool = pg.pool();
    let refused = refusal!(pool, "SELECT 1 / 0");
    assert!(matches!(refused, StoreError::Database(_)), "{refused:?}");
    let duplicate = refusal!(
        pool,
        "INSERT INTO dockhand_instance (id) SELECT id FROM dockhand_instance"
    );
    assert!(
        matches!(duplicate, StoreError::Constraint(_)),
        "{duplicate:?}"
    );
    // Lock not available (55P03): another transaction holds the table.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let mut other = pool.begin().await.unwrap();
    let busy = refusal!(
        &mut *other,
        "LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE NOWAIT"
    );
    assert!(matches!(busy, StoreError::Temporary(_)), "{busy:?}");
    assert!(busy.is_transient() && !refused.is_transient() && !duplicate.is_transient());
}

/// A failed keyed job, its worker's run over: what an operator retries.
async fn failed_keyed(store: &AnyStore, key: &str) -> JobId {
    let mut new = keyed("keyed", key);
    new.max_attempts = 1;
    let id = store.enqueue_many(&[new]).await.unwrap()[0];
    let run = claim_one(store, W1).await;
    assert_eq!(run.lease.job, id);
    record_as(store, W1, run.lease, failed(1), JobState::Failed).await;
    id
}

/// Wait until one of this database's sessions waits on a lock (a retry
/// waiting on the unique index for another transaction's insert).
async fn a_session_waits_on_a_lock(pool: &sqlx::PgPool, what: &str) {
    support::eventually(what, Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
}

/// A retry (one job, or in bulk) finds a key's newest job by its snapshot;
/// an enqueue of that key by a transaction still open is not in it, so
/// the retry's update waits on the unique index for that transaction and,
/// once it commits, fails with a unique violation. The retry must then give
/// way as its guard would have had it seen the new job: one job refused,
/// a bulk retry taking the other keys. Deterministic: the enqueue is held
/// open until the retry is seen waiting on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_retry_that_waited_on_an_enqueue_of_its_key_gives_way() {
    let (store, _guard) = support::postgres_store("a_retry_that_waited").await;
    let AnyStore::Postgres(pg) = &store else {
        panic!("not a PostgreSQL store")
    };
    let pool = pg.pool().clone();
    let bound = Duration::from_secs(TEST_BOUND_SECS);
    let test = async {
        let one = failed_keyed(&store, "one").await;
        let taken = failed_keyed(&store, "taken").await;
        let free = failed_keyed(&store, "free").await;
        // Another producer's enqueue of a key, not yet committed (written
        // as the store writes a job, so only the key matters).
        let enqueue_of = |id: JobId| {
            let pool = pool.clone();
            async move {
                let mut tx = pool.begin().await.unwrap();
                let new: i64 = sqlx::query_scalar(
                    "INSERT INTO jobs (queue, spec, max_attempts, unique_key)
                     SELECT queue, spec, max_attempts, unique_key FROM jobs WHERE id = $1
                     RETURNING id",
                )
                .bind(id.0)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                (tx, JobId(new))
            }
        };

        let (open, newer) = enqueue_of(one).await;
        let retry = tokio::spawn({
            let store = store.clone();
            async move { store.retry(one).await }
        });
        a_session_waits_on_a_lock(&pool, "the retry to wait on the open enqueue").await;
        open.commit().await.unwrap();
        let answer = retry.await.unwrap();
        assert!(
            matches!(answer, Ok(false)),
            "a retry of a key a newer job took is refused, not an error: {answer:?}"
        );
        assert_eq!(get(&store, one).await.state, JobState::Failed);
        assert_eq!(get(&store, newer).await.state, JobState::Queued);

        let (open, newer) = enqueue_of(taken).await;
        let bulk = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .bulk(BulkAction::Retry, &BulkFilter::default(), false)
                    .await
            }
        });
        a_session_waits_on_a_lock(&pool, "the bulk retry to wait on the open enqueue").await;
        open.commit().await.unwrap();
        let answer = bulk.await.unwrap();
        assert!(
            matches!(answer, Ok(1)),
            "the bulk retry gives way on the taken key and retries the free one: {answer:?}"
        );
        assert_eq!(get(&store, taken).await.state, JobState::Failed);
        assert_eq!(get(&store, newer).await.state, JobState::Queued);
        assert_eq!(get(&store, free).await.state, JobState::Queued);
    };
    tokio::time::timeout(bound, test)
        .await
        .expect("the retries finish within the bound");
}

/// A change the database refuses for good (here a trigger that raises on
/// every update of a job) is an error for the caller, tried once: neither
/// taken for a lost key race (a refused retry) nor tried again batch after
/// batch. A sequence counts the tries, as its values outlive the rollbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_retry_the_database_refuses_is_an_error_tried_once() {
    let (store, _guard) = support::postgres_store("a_retry_the_database_refuses").await;
    let AnyStore::Postgres(pg) = &store else {
        panic!("not a PostgreSQL store")
    };
    let id = failed_keyed(&store, "refused").await;
    sqlx::raw_sql(
        "CREATE SEQUENCE tries;
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM nextval('tries'); RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    let tries = || async {
        let tries: i64 =
            sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM tries")
                .fetch_one(pg.pool())
                .await
                .unwrap();
        tries
    };
    let bound = Duration::from_secs(TEST_BOUND_SECS);
    let answer = tokio::time::timeout(bound, store.retry(id))
        .await
        .expect("a refused retry ends");
    assert!(matches!(answer, Err(StoreError::Database(_))), "{answer:?}");
    assert_eq!(tries().await, 1, "the retry was tried once");
    let all = BulkFilter::default();
    let answer = tokio::time::timeout(bound, store.bulk(BulkAction::Retry, &all, false))
        .await
        .expect("a refused bulk retry ends");
    assert!(matches!(answer, Err(StoreError::Database(_))), "{answer:?}");
    assert_eq!(tries().await, 2, "the bulk retry was tried once");
    assert_eq!(get(&store, id).await.state, JobState::Failed);
}

/// The same for SQLite: a write lock held by another connection (BUSY) is
/// waited out; a missing table or a duplicate key is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_errors_are_sorted_by_what_a_retry_can_do() {
    use sqlx::Connection;
    use std::str::FromStr;
    let (_store, guard) = support::sqlite_store("sqlite_errors_are_sorted").await;
    let support::Guard::Dir(dir) = &guard else {
        panic!("an SQLite store lives in a directory")
    };
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&url)
        .unwrap()
        .busy_timeout(Duration::ZERO);
    let mut first = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let mut second = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    let refused = refusal!(&mut first, "SELECT * FROM no_such_table");
    assert!(matches!(refused, StoreError::Database(_)), "{refused:?}");
    let duplicate = refusal!(
        &mut first,
        "INSERT INTO dockhand_instance (id) SELECT id FROM dockhand_instance"
    );
    assert!(
        matches!(duplicate, StoreError::Constraint(_)),
        "{duplicate:?}"
    );
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut first)
        .await
        .unwrap();
    let busy = refusal!(&mut second, "BEGIN IMMEDIATE");
    assert!(matches!(busy, StoreError::Temporary(_)), "{busy:?}");
    assert!(busy.is_transient() && !refused.is_transient() && !duplicate.is_transient());
}

/// An SQLite file holds every job's spec and output, so it is its owner's
/// alone (0600), whether the store made it or found it readable by others;
/// and a store that must find a database (read-only commands) refuses a
/// missing file with a one-line error instead of making an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_are_their_owners_alone_and_a_missing_one_is_not_made() {
    use dockhand::store::SqliteStore;
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.db");
    let err = SqliteStore::open_existing(&format!("sqlite://{}", missing.display()))
        .await
        .expect_err("a missing file is refused");
    assert!(matches!(err, StoreError::BadUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("no database file"), "{err}");
    assert!(!missing.exists(), "the refusal made the file");
    for memory in ["sqlite::memory:", "sqlite://:memory:"] {
        SqliteStore::open_existing(memory)
            .await
            .unwrap_or_else(|e| panic!("{memory} needs no file: {e}"));
    }

    let made = dir.path().join("made.db");
    let store = SqliteStore::open(&format!("sqlite://{}", made.display()))
        .await
        .expect("open makes the file");
    store.migrate().await.unwrap();
    assert_eq!(mode(&made), 0o600, "a new database file");
    SqliteStore::open_existing(&format!("sqlite://{}", made.display()))
        .await
        .expect("an existing file opens");

    // An empty file found with mode `before`: its mode once opened.
    let found_with = |name: &'static str, before: u32| {
        let path = dir.path().join(name);
        async move {
            std::fs::write(&path, b"").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(before)).unwrap();
            SqliteStore::open_existing(&format!("sqlite://{}", path.display()))
                .await
                .expect("an empty file is an empty database");
            mode(&path)
        }
    };
    assert_eq!(
        found_with("found.db", 0o644).await,
        0o600,
        "a database file others could read"
    );
    // Only others' access is taken away: a file already its owner's alone
    // keeps the mode its owner chose.
    assert_eq!(
        found_with("own.db", 0o700).await,
        0o700,
        "a database file only its owner could read"
    );
}
