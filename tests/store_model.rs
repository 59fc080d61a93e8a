//! One model, three stores: random sequences of store operations run
//! against the in-memory, SQLite and PostgreSQL stores side by side; every
//! answer and the final rows must agree. The simulation runs on the
//! in-memory store, so this is what makes its verdicts hold for the SQL
//! stores too.
//!
//! Time: the stores read their own clocks, so the sequence never depends on
//! a wall-clock boundary. Leases last an hour and a retry's backoff is at
//! least 0.75 s (and a case takes a fraction of that); time passes only
//! through `Advance`, which moves every store's clock two hours on (the SQL
//! stores' timestamps are moved back instead), past every lease and backoff.
//! Claims take every due job of their queues (a case enqueues at most
//! `MAX_JOBS`), so the random jitter of backoffs never decides which job a
//! claim picks; the claim order itself is the conformance suite's business.
//!
//! A failure prints the shrunk sequence of operations; replay it with
//! `PROPTEST_CASES=1` and the seed proptest prints.

mod support;

use std::cell::RefCell;
use std::time::Duration;

use dockhand::job::{Completion, JobId, Lease, NewJob, Outcome};
use dockhand::machine::Phase;
use dockhand::store::{AnyStore, ClaimRequest, MemoryStore, Store, WorkerInfo};
use proptest::prelude::*;

/// Most jobs a case enqueues.
const MAX_JOBS: usize = 8;
/// Every claim asks for this many: more than a case ever holds.
const CLAIM_ALL: u32 = 16;
const LEASE: Duration = Duration::from_secs(3600);
/// How far `Advance` moves time: past any lease and any backoff.
const JUMP: Duration = Duration::from_secs(2 * 3600);
const QUEUES: [&str; 2] = ["alpha", "beta"];
const WORKERS: [&str; 2] = ["w0", "w1"];

#[derive(Clone, Debug)]
enum Kind {
    Succeeded,
    Failed,
    Interrupted,
    Cancelled,
    HandBack,
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        queue: usize,
        priority: i32,
        max_attempts: u32,
    },
    /// `enqueue_stream` in `chunks` chunks, each a job holding unique key
    /// `key` (only the first may create a job) and the first with a
    /// keyless job too.
    Stream {
        queue: usize,
        key: usize,
        chunks: usize,
    },
    /// Claim from queue 0, 1 or both (2).
    Claim {
        worker: usize,
        queues: usize,
    },
    Heartbeat {
        worker: usize,
    },
    /// Record an outcome for the `lease`-th lease ever handed out (maybe
    /// stale), as `worker` (maybe not its holder).
    Record {
        worker: usize,
        lease: usize,
        kind: Kind,
    },
    Reap,
    Cancel {
        job: usize,
    },
    Retry {
        job: usize,
    },
    Pause {
        queue: usize,
        paused: bool,
    },
    Advance,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(Kind::Succeeded),
        Just(Kind::Failed),
        Just(Kind::Interrupted),
        Just(Kind::Cancelled),
        Just(Kind::HandBack),
    ];
    prop_oneof![
        3 => (0..2usize, -1..=1i32, 1..=3u32).prop_map(|(queue, priority, max_attempts)| Op::Enqueue { queue, priority, max_attempts }),
        1 => (0..2usize, 0..2usize, 1..=3usize).prop_map(|(queue, key, chunks)| Op::Stream { queue, key, chunks }),
        3 => (0..2usize, 0..3usize).prop_map(|(worker, queues)| Op::Claim { worker, queues }),
        1 => (0..2usize).prop_map(|worker| Op::Heartbeat { worker }),
        4 => (0..2usize, 0..12usize, kind).prop_map(|(worker, lease, kind)| Op::Record { worker, lease, kind }),
        1 => Just(Op::Reap),
        1 => (0..MAX_JOBS).prop_map(|job| Op::Cancel { job }),
        1 => (0..MAX_JOBS).prop_map(|job| Op::Retry { job }),
        1 => (0..2usize, any::<bool>()).prop_map(|(queue, paused)| Op::Pause { queue, paused }),
        1 => Just(Op::Advance),
    ]
}

/// The three stores, emptied before each case.
struct Stores {
    memory: MemoryStore,
    sqlite: AnyStore,
    sqlite_url: String,
    postgres: AnyStore,
    postgres_url: String,
    _postgres_db: support::PgDatabase,
    _dir: tempfile::TempDir,
}

impl Stores {
    async fn open() -> Stores {
        let dir = tempfile::tempdir().expect("temp dir");
        let sqlite_url = format!("sqlite://{}", dir.path().join("model.db").display());
        let sqlite = AnyStore::open(&sqlite_url).await.expect("sqlite");
        sqlite.migrate().await.expect("migrate sqlite");
        let postgres_db = support::fresh_postgres_database("store_model").await;
        let postgres_url = postgres_db.url.clone();
        let postgres = AnyStore::open(&postgres_url).await.expect("postgres");
        postgres.migrate().await.expect("migrate postgres");
        Stores {
            memory: MemoryStore::new(),
            sqlite,
            sqlite_url,
            postgres,
            postgres_url,
            _postgres_db: postgres_db,
            _dir: dir,
        }
    }

    /// Empty every store, ids starting at 1 again.
    async fn reset(&mut self) {
        self.memory = MemoryStore::new();
        sql(
            &self.postgres_url,
            "TRUNCATE jobs, job_events, workers, queues, worker_stops RESTART IDENTITY CASCADE",
        )
        .await;
        sql(
            &self.sqlite_url,
            "DELETE FROM job_events; DELETE FROM jobs; DELETE FROM workers; DELETE FROM queues;
             DELETE FROM sqlite_sequence WHERE name IN ('jobs', 'job_events')",
        )
        .await;
        for worker in WORKERS {
            let info = WorkerInfo {
                id: worker.into(),
                host: "model".into(),
                pid: 1,
                queues: QUEUES.iter().map(|q| q.to_string()).collect(),
                concurrency: CLAIM_ALL,
                lease: LEASE,
            };
            self.memory.register_worker(&info).await.expect("register");
            self.sqlite.register_worker(&info).await.expect("register");
            self.postgres
                .register_worker(&info)
                .await
                .expect("register");
        }
    }

    /// Time passes: every store's clock is `JUMP` later.
    async fn advance(&self) {
        self.memory.advance(JUMP);
        support::time_passes(&self.sqlite, JUMP).await;
        support::time_passes(&self.postgres, JUMP).await;
    }
}

/// Run statements on a database through a connection of its own.
async fn sql(url: &str, statements: &str) {
    use sqlx::Connection;
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(statements)
            .execute(&mut conn)
            .await
            .expect("statements");
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(statements)
            .execute(&mut conn)
            .await
            .expect("statements");
    }
}

fn outcome(kind: &Kind) -> Outcome {
    match kind {
        Kind::Succeeded => Outcome::Succeeded,
        Kind::Failed => Outcome::Failed {
            exit_code: Some(1),
            error: "exit code 1".into(),
        },
        Kind::Interrupted => Outcome::Interrupted {
            reason: "worker shutdown".into(),
        },
        Kind::Cancelled => Outcome::Cancelled,
        Kind::HandBack => Outcome::HandBack,
    }
}

/// What one store answered to one operation, in a form all three share,
/// and the leases a claim handed out.
async fn apply<S: Store>(
    store: &S,
    op: &Op,
    leases: &[(usize, Lease)],
    jobs: usize,
) -> (String, Vec<Lease>) {
    if let Op::Claim { worker, queues } = op {
        let names: Vec<String> = match queues {
            0 | 1 => vec![QUEUES[*queues].to_string()],
            _ => QUEUES.iter().map(|q| q.to_string()).collect(),
        };
        let request = ClaimRequest::new(WORKERS[*worker], &names, CLAIM_ALL, LEASE, 1);
        return match store.claim(&request).await {
            Ok(claimed) => {
                let mut got: Vec<Lease> = claimed.iter().map(|c| c.lease).collect();
                got.sort_by_key(|l| (l.job, l.token.0));
                (format!("claimed {got:?}"), got)
            }
            Err(e) => (format!("error {e}"), Vec::new()),
        };
    }
    (answer(store, op, leases, jobs).await, Vec::new())
}

async fn answer<S: Store>(store: &S, op: &Op, leases: &[(usize, Lease)], jobs: usize) -> String {
    match op {
        Op::Enqueue {
            queue,
            priority,
            max_attempts,
        } => {
            if jobs >= MAX_JOBS {
                return "skipped".into();
            }
            let mut job = NewJob::new(vec!["true".into()]);
            job.queue = QUEUES[*queue].into();
            job.priority = *priority;
            job.max_attempts = *max_attempts;
            format!("{:?}", store.enqueue(&[job]).await)
        }
        Op::Stream { queue, key, chunks } => {
            if jobs + 2 > MAX_JOBS {
                return "skipped".into();
            }
            let job = |key: Option<&str>| {
                let mut job = NewJob::new(vec!["true".into()]);
                job.queue = QUEUES[*queue].into();
                job.unique_key = key.map(str::to_string);
                job
            };
            let key = ["k0", "k1"][*key];
            let mut parts = (0..*chunks).map(|c| {
                if c == 0 {
                    vec![job(None), job(Some(key))]
                } else {
                    vec![job(Some(key))]
                }
            });
            let mut next = || Ok(parts.next());
            format!("{:?}", store.enqueue_stream(&mut next).await)
        }
        Op::Heartbeat { worker } => {
            let held: Vec<Lease> = leases
                .iter()
                .filter(|(w, _)| w == worker)
                .map(|(_, l)| *l)
                .collect();
            match store
                .heartbeat(WORKERS[*worker], Phase::Running, &held, LEASE, &[])
                .await
            {
                Ok(mut answer) => {
                    answer.lost.sort();
                    answer.lost.dedup();
                    answer.cancelled.sort();
                    answer.cancelled.dedup();
                    format!("lost {:?} cancelled {:?}", answer.lost, answer.cancelled)
                }
                Err(e) => format!("error {e}"),
            }
        }
        Op::Record {
            worker,
            lease,
            kind,
        } => {
            let Some((_, lease)) = leases.get(*lease % leases.len().max(1)) else {
                return "no lease yet".into();
            };
            let completion = Completion {
                lease: *lease,
                outcome: outcome(kind),
                // Each record's own bytes, so the rows show whose output
                // a job kept.
                output: format!("{kind:?} by {} under {}", WORKERS[*worker], lease.token.0)
                    .into_bytes(),
            };
            format!("{:?}", store.record(WORKERS[*worker], &[completion]).await)
        }
        Op::Reap => format!("{:?}", store.reap_expired().await),
        Op::Cancel { job } => {
            format!("{:?}", store.cancel(JobId(*job as i64 + 1)).await)
        }
        Op::Retry { job } => format!("{:?}", store.retry(JobId(*job as i64 + 1)).await),
        Op::Pause { queue, paused } => {
            format!("{:?}", store.set_paused(QUEUES[*queue], *paused).await)
        }
        Op::Advance => "advanced".into(),
        Op::Claim { .. } => unreachable!("claims are answered by apply"),
    }
}

/// The rows as all three stores must hold them.
async fn rows<S: Store>(store: &S) -> String {
    let mut out = String::new();
    let jobs = store
        .list(&dockhand::store::JobFilter::default())
        .await
        .expect("list");
    for job in jobs.iter().rev() {
        let output = store.output(job.id).await.expect("output");
        out.push_str(&format!(
            "#{} {} {} prio={} att={}/{} int={}/{} cancel={} exit={:?} error={:?} token={} worker={:?} key={:?}\n",
            job.id,
            job.queue,
            job.state.as_str(),
            job.priority,
            job.attempts,
            job.max_attempts,
            job.interruptions,
            job.max_interruptions,
            job.cancel_requested,
            job.exit_code,
            job.error,
            job.lease_token,
            job.worker_id,
            job.unique_key,
        ));
        // Times are each store's own clock; whether a job has them is not.
        out.push_str(&format!(
            "  started={} finished={} output={:?}\n",
            job.started_at.is_some(),
            job.finished_at.is_some(),
            output.as_deref().map(String::from_utf8_lossy),
        ));
        // The history's kinds, holders, tokens and details (times are each
        // store's own clock).
        for event in store.history(job.id).await.expect("history") {
            out.push_str(&format!(
                "  {} {:?} {:?} {:?}\n",
                event.kind, event.worker_id, event.lease_token, event.detail
            ));
        }
    }
    let mut stats = store.queue_stats().await.expect("stats");
    stats.sort_by(|a, b| a.queue.cmp(&b.queue));
    for q in stats {
        out.push_str(&format!(
            "{} ready={} scheduled={} running={} succeeded={} failed={} cancelled={} paused={}\n",
            q.queue, q.ready, q.scheduled, q.running, q.succeeded, q.failed, q.cancelled, q.paused
        ));
    }
    out
}

async fn run_case(stores: &mut Stores, ops: &[Op]) -> Result<(), TestCaseError> {
    stores.reset().await;
    let mut leases: Vec<(usize, Lease)> = Vec::new();
    let mut jobs = 0usize;
    let mut log = String::new();
    for (step, op) in ops.iter().enumerate() {
        if let Op::Advance = op {
            stores.advance().await;
        }
        let (memory, claimed) = apply(&stores.memory, op, &leases, jobs).await;
        let (sqlite, _) = apply(&stores.sqlite, op, &leases, jobs).await;
        let (postgres, _) = apply(&stores.postgres, op, &leases, jobs).await;
        log.push_str(&format!("{step}: {op:?} -> {memory}\n"));
        prop_assert!(
            memory == sqlite && memory == postgres,
            "the stores disagree at step {step} ({op:?}):\n  memory:   {memory}\n  sqlite:   {sqlite}\n  postgres: {postgres}\nsteps so far:\n{log}"
        );
        if memory.starts_with("Ok") {
            match op {
                Op::Enqueue { .. } => jobs += 1,
                Op::Stream { .. } => jobs += 2,
                _ => {}
            }
        }
        if let Op::Claim { worker, .. } = op {
            // Every store answered alike: the memory store's leases are theirs.
            leases.extend(claimed.into_iter().map(|lease| (*worker, lease)));
        }
    }
    let memory = rows(&stores.memory).await;
    let sqlite = rows(&stores.sqlite).await;
    let postgres = rows(&stores.postgres).await;
    prop_assert!(
        memory == sqlite && memory == postgres,
        "the final rows differ:\nmemory:\n{memory}\nsqlite:\n{sqlite}\npostgres:\n{postgres}\nsteps:\n{log}"
    );
    Ok(())
}

#[test]
fn three_stores_agree_on_every_answer() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stores = RefCell::new(runtime.block_on(Stores::open()));
    let config = ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(96),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest::test_runner::TestRunner::new(config)
        .run(&proptest::collection::vec(op(), 1..40), |ops| {
            runtime.block_on(run_case(&mut stores.borrow_mut(), &ops))
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
