//! The embedding API keeps the worker's shutdown guarantees with in-process
//! handlers: drain, forced stop through cancellation (requeued, no attempt
//! used), abort of a handler that ignores cancellation, exit codes 0 / 75.

use std::time::Duration;

use dockhand::embed::WorkerBuilder;
use dockhand::job::{JobId, JobState, NewJob};
use dockhand::machine::Config;
use dockhand::store::{MemoryStore, Store};

fn config() -> Config {
    Config {
        concurrency: 2,
        poll_interval: Duration::from_millis(20),
        shutdown_timeout: Duration::from_millis(400),
        kill_grace: Duration::from_millis(300),
        lease: Duration::from_secs(3),
        ..Config::default()
    }
}

fn job(kind: &str) -> NewJob {
    NewJob::new(vec![kind.to_string(), "arg".to_string()])
}

async fn wait_running(store: &MemoryStore, id: JobId) {
    for _ in 0..200 {
        if store.get(id).await.unwrap().unwrap().state == JobState::Running {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never ran");
}

#[tokio::test]
async fn drain_lets_handlers_finish() {
    let store = MemoryStore::new();
    let ids = store.enqueue_many(&[job("work")]).await.unwrap();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config())
        .handler("work", |job| async move {
            assert_eq!(job.args, ["arg"]);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        })
        .build()
        .unwrap();
    let run = tokio::spawn(worker.run());
    wait_running(&store, ids[0]).await;
    shutdown.shutdown().await;
    let report = run.await.unwrap();
    assert_eq!(report.code, 0, "{}", report.trace);
    assert_eq!(
        store.get(ids[0]).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
    assert!(
        report.trace.contains("running -> draining"),
        "{}",
        report.trace
    );
}

#[tokio::test]
async fn forced_stop_cancels_handlers_and_requeues() {
    let store = MemoryStore::new();
    let ids = store.enqueue_many(&[job("long")]).await.unwrap();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config())
        .handler("long", |mut job| async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
                _ = job.cancelled() => Err("stopped".to_string()),
            }
        })
        .build()
        .unwrap();
    let run = tokio::spawn(worker.run());
    wait_running(&store, ids[0]).await;
    shutdown.shutdown().await;
    shutdown.shutdown().await;
    let report = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("forced stop is quick")
        .unwrap();
    assert_eq!(report.code, 75, "{}", report.trace);
    let stored = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.interruptions, stored.attempts),
        (JobState::Queued, 1, 0)
    );
}

#[tokio::test]
async fn a_handler_ignoring_cancellation_is_aborted_after_the_grace() {
    let store = MemoryStore::new();
    let ids = store
        .enqueue_many(&[job("stubborn"), job("quick")])
        .await
        .unwrap();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config())
        .handler("stubborn", |_job| async move {
            tokio::time::sleep(Duration::from_secs(600)).await;
            Ok(())
        })
        .handler("quick", |_job| async move { Ok(()) })
        .build()
        .unwrap();
    let run = tokio::spawn(worker.run());
    wait_running(&store, ids[0]).await;
    let started = tokio::time::Instant::now();
    shutdown.shutdown().await;
    let report = run.await.unwrap();
    let took = started.elapsed();
    assert_eq!(report.code, 75, "{}", report.trace);
    // shutdown_timeout + kill_grace, and well before the handler would end.
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(
        report.trace.contains("killed (SIGKILL)"),
        "{}",
        report.trace
    );
    let stored = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!((stored.state, stored.interruptions), (JobState::Queued, 1));
    assert_eq!(
        store.get(ids[1]).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
}

#[tokio::test]
async fn unknown_kinds_and_handler_errors_are_failed_attempts() {
    let store = MemoryStore::new();
    let mut unknown = job("nobody");
    unknown.max_attempts = 1;
    let mut failing = job("fails");
    failing.max_attempts = 1;
    let ids = store.enqueue_many(&[unknown, failing]).await.unwrap();
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config())
        .handler("fails", |_job| async move { Err("bad input".to_string()) })
        .build()
        .unwrap();
    let run = tokio::spawn(worker.run());
    for id in &ids {
        for _ in 0..200 {
            if store.get(*id).await.unwrap().unwrap().state == JobState::Failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    shutdown.shutdown().await;
    assert_eq!(run.await.unwrap().code, 0);
    let unknown = store.get(ids[0]).await.unwrap().unwrap();
    assert!(unknown
        .error
        .unwrap_or_default()
        .contains("no handler for job kind \"nobody\""));
    assert_eq!(
        store.output(ids[1]).await.unwrap().as_deref(),
        Some(&b"bad input"[..])
    );
}

/// An embedded worker gets the same metrics as `dockhand worker --http`.
#[tokio::test]
async fn an_embedded_worker_has_metrics() {
    let store = MemoryStore::new();
    let ids = store
        .enqueue_many(&[job("work"), job("fail")])
        .await
        .unwrap();
    let monitor = dockhand::http::Monitor::new("embedded-metrics", Duration::from_secs(1));
    let (worker, shutdown) = WorkerBuilder::new(store.clone())
        .config(config())
        .observer(std::sync::Arc::new(monitor.clone()))
        .handler("work", |_| async move { Ok(()) })
        .handler("fail", |_| async move { Err("no".into()) })
        .build()
        .unwrap();
    let run = tokio::spawn(worker.run());
    for _ in 0..200 {
        let done = store.get(ids[0]).await.unwrap().unwrap().state == JobState::Succeeded;
        let retried = store.history(ids[1]).await.unwrap().len() > 2;
        if done && retried {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.shutdown().await;
    let report = run.await.unwrap();
    assert_eq!(report.code, 0, "{}", report.trace);
    let text = monitor.metrics.render();
    assert!(
        text.contains(r#"dockhand_jobs_total{queue="default",outcome="succeeded"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"outcome="retried"}"#),
        "a failed attempt with attempts left: {text}"
    );
    assert!(
        text.contains("dockhand_phase{phase=\"stopped\"} 1"),
        "{text}"
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");
}
