//! An application running dockhand in-process with its own async handlers.
//!
//! `cargo run --example embedded` — enqueues a few jobs in an embedded SQLite
//! file, runs them, drains on Ctrl-C (or after 3 seconds), and prints the
//! same shutdown trace as `dockhand worker`.

use std::time::Duration;

use dockhand::embed::WorkerBuilder;
use dockhand::job::NewJob;
use dockhand::store::{SqliteStore, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store =
        SqliteStore::open(&format!("sqlite://{}", dir.path().join("app.db").display())).await?;
    store.migrate().await?;
    let jobs: Vec<NewJob> = ["a.jpg", "b.jpg", "c.jpg"]
        .iter()
        .map(|photo| NewJob::new(vec!["resize".into(), photo.to_string()]))
        .collect();
    store.enqueue_many(&jobs).await?;

    let (worker, shutdown) = WorkerBuilder::new(store)
        .handler("resize", |mut job| async move {
            println!("resizing {} (attempt {})", job.args[0], job.attempt);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => Ok(()),
                _ = job.cancelled() => Err("stopped before finishing".to_string()),
            }
        })
        .build()?;
    let run = tokio::spawn(worker.run());
    tokio::time::sleep(Duration::from_secs(3)).await;
    shutdown.shutdown().await;
    let report = run.await?;
    println!("shutdown trace:\n{}", report.trace);
    std::process::exit(report.code);
}
