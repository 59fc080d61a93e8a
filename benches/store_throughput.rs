//! Claim + complete throughput of a store, by batch size.
//!
//! `DOCKHAND_BENCH_URL=postgres://… cargo bench --bench store_throughput`
//! (default: a temporary SQLite file). Jobs are no-ops: only the store is
//! measured. Each round enqueues fresh jobs, then `TASKS` claimers claim a
//! batch and record it as succeeded until the queue is empty.

use std::time::{Duration, Instant};

use dockhand::job::{Completion, NewJob, Outcome};
use dockhand::store::{AnyStore, ClaimRequest, Store};

const TASKS: usize = 4;

async fn round(store: &AnyStore, batch: u32, jobs: usize) -> f64 {
    let new: Vec<NewJob> = (0..jobs)
        .map(|i| NewJob::new(vec!["true".into(), i.to_string()]))
        .collect();
    for chunk in new.chunks(10_000) {
        store.enqueue_many(chunk).await.expect("enqueue");
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("bench-{t}");
            let queues = vec!["default".to_string()];
            loop {
                let claimed = store
                    .claim(&ClaimRequest::new(
                        &worker,
                        &queues,
                        batch,
                        Duration::from_secs(60),
                        1,
                    ))
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    return;
                }
                let done: Vec<Completion> = claimed
                    .iter()
                    .map(|c| Completion {
                        lease: c.lease,
                        outcome: Outcome::Succeeded,
                        output: Vec::new(),
                    })
                    .collect();
                store.record(&worker, &done).await.expect("record");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    jobs as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = std::env::var("DOCKHAND_BENCH_URL")
            .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
        let store = AnyStore::open(&url).await.expect("open");
        store.migrate().await.expect("migrate");
        println!("store: {}", dockhand::store::redact_url(&url));
        println!("{:>6}  {:>8}  {:>10}", "batch", "jobs", "jobs/s");
        for (batch, jobs) in [(1u32, 2_000usize), (10, 10_000), (100, 30_000)] {
            let rate = round(&store, batch, jobs).await;
            println!("{batch:>6}  {jobs:>8}  {rate:>10.0}");
        }
    });
}
