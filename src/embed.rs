//! Run a worker inside your own application, with async job handlers, under
//! the same machine, leases and shutdown guarantees as `dockhand worker`.
//!
//! ```no_run
//! use std::time::Duration;
//! use dockhand::embed::WorkerBuilder;
//! use dockhand::store::MemoryStore;
//!
//! # async fn example() {
//! let store = MemoryStore::new();
//! let (worker, shutdown) = WorkerBuilder::new(store)
//!     .handler("resize", |mut job| async move {
//!         tokio::select! {
//!             _ = tokio::time::sleep(Duration::from_secs(1)) => Ok(()),
//!             // The worker is shutting down and asked this job to stop.
//!             _ = job.cancelled() => Err("stopped before finishing".to_string()),
//!         }
//!     })
//!     .build()
//!     .expect("valid configuration");
//! let run = tokio::spawn(worker.run());
//! // ... later, e.g. on SIGTERM: first call drains, second forces, third kills.
//! shutdown.shutdown().await;
//! let report = run.await.expect("worker task");
//! println!("{}", report.trace);
//! std::process::exit(report.code);
//! # }
//! ```
//!
//! A job is routed by its kind, the first word of its command
//! (`dockhand enqueue -- resize photo.jpg` runs the `resize` handler with
//! `args = ["photo.jpg"]`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::executor::inprocess::{Handler, HandlerResult, InProcessExecutor, JobContext};
use crate::machine::{Config, ConfigError, Signal};
use crate::shell::{self, ExitReport, NoObserver, Observer, ShellConfig};
use crate::store::{Store, WorkerInfo};

/// Builds an embedded worker.
pub struct WorkerBuilder<S> {
    store: S,
    handlers: BTreeMap<String, Handler>,
    config: Config,
    queues: Vec<String>,
    worker_id: Option<String>,
    store_timeout: Duration,
    observer: Arc<dyn Observer>,
}

impl<S: Store + Clone> WorkerBuilder<S> {
    /// A worker on `store`, with the default configuration and the `default` queue.
    pub fn new(store: S) -> Self {
        WorkerBuilder {
            store,
            handlers: BTreeMap::new(),
            config: Config::default(),
            queues: vec!["default".to_string()],
            worker_id: None,
            store_timeout: Duration::from_secs(5),
            observer: Arc::new(NoObserver),
        }
    }

    /// Run jobs of `kind` with `handler`.
    pub fn handler<F, Fut>(mut self, kind: &str, handler: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job| Box::pin(handler(job)));
        self.handlers.insert(kind.to_string(), handler);
        self
    }

    /// The machine's timing and limits.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Queues to claim from.
    pub fn queues(mut self, queues: &[&str]) -> Self {
        self.queues = queues.iter().map(|q| q.to_string()).collect();
        self
    }

    /// The id in the workers table (default: `embedded-PID-RANDOM`).
    pub fn worker_id(mut self, id: &str) -> Self {
        self.worker_id = Some(id.to_string());
        self
    }

    /// Who watches the worker: with the `http` feature, an
    /// [`http::Monitor`](crate::http::Monitor) gives the same Prometheus
    /// metrics, `/healthz`, `/readyz` and `/status` as `dockhand worker
    /// --http` (serve it with [`http::serve`](crate::http::serve), or
    /// render `monitor.metrics` into the application's own endpoint).
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// Check the configuration and make the worker and its shutdown handle.
    pub fn build(self) -> Result<(Worker<S>, ShutdownHandle), ConfigError> {
        self.config.validate()?;
        let (tx, rx) = mpsc::channel(16);
        let pid = std::process::id();
        let id = self
            .worker_id
            .unwrap_or_else(|| format!("embedded-{pid}-{:08x}", fastrand::u32(..)));
        let shell = ShellConfig {
            worker: WorkerInfo {
                id,
                host: "embedded".to_string(),
                pid,
                queues: self.queues.clone(),
                concurrency: self.config.concurrency,
                lease: self.config.lease,
            },
            queues: self.queues,
            machine: self.config,
            store_timeout: self.store_timeout,
            observer: self.observer,
            status_to_stderr: false,
        };
        let worker = Worker {
            store: self.store,
            executor: InProcessExecutor::new(self.handlers),
            signals: rx,
            shell,
        };
        Ok((worker, ShutdownHandle { tx }))
    }
}

/// An embedded worker, ready to run.
pub struct Worker<S> {
    store: S,
    executor: InProcessExecutor,
    signals: mpsc::Receiver<Signal>,
    shell: ShellConfig,
}

impl<S: Store + Clone> Worker<S> {
    /// Run until stopped; the report carries the exit code (0 or 75) and the
    /// shutdown trace, exactly as the binary prints them.
    pub async fn run(self) -> ExitReport {
        shell::run(self.store, self.executor, self.signals, self.shell).await
    }
}

/// Stops an embedded worker, like signals stop the binary.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    tx: mpsc::Sender<Signal>,
}

impl ShutdownHandle {
    /// First call: drain. Second: stop jobs now (cancel, then abort after
    /// the kill grace). Third: abort at once.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Signal::Term).await;
    }

    /// Ask for a status report in the log (like SIGUSR1).
    pub async fn report_status(&self) {
        let _ = self.tx.send(Signal::Usr1).await;
    }
}
