//! `worker --http ADDR`: `/healthz`, `/readyz`, `/metrics`, `/status`.
//!
//! The shell publishes its state to a [`Monitor`]; the HTTP tasks only read
//! it, so a slow scraper can never slow the worker down.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::executor::EngineState;
use crate::machine::{Action, Event, Machine, Note, Phase, Status};
use crate::metrics::Metrics;
use crate::shell::Observer;
use crate::store::{AnyStore, Store};

/// Publish at most this often, except on a phase change.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What the shell last published.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The worker.
    pub worker_id: String,
    /// Its phase.
    pub phase: Phase,
    /// Its status report.
    pub status: Option<Status>,
    /// False once the shell's loop has ended.
    pub alive: bool,
    /// When the loop last went round.
    pub updated: Instant,
    /// Its Docker engine's state, if it has one.
    pub engine: Option<EngineState>,
}

/// The shell's window to the outside: metrics and a state snapshot.
#[derive(Clone, Debug)]
pub struct Monitor {
    /// The worker's metrics.
    pub metrics: Arc<Metrics>,
    tx: Arc<watch::Sender<Snapshot>>,
    /// The loop goes round at least every heartbeat; `/healthz` fails when
    /// it has not for this long.
    stale_after: Duration,
    /// Where the queue gauges come from, if anywhere.
    queues: Option<Arc<QueueSource>>,
}

/// The queue gauges' source: the store, asked at most once per `every`,
/// and only when someone scrapes (so a fleet of idle workers puts no load
/// on the database unless it is watched).
#[derive(Debug)]
struct QueueSource {
    store: AnyStore,
    every: Duration,
    /// When the store was last asked; the lock also makes concurrent
    /// scrapes share one query.
    last: tokio::sync::Mutex<Option<Instant>>,
}

/// Longest a scrape waits for the queue query: the worker's own metrics
/// are served either way.
const QUEUE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Monitor {
    /// A monitor for `worker_id`, whose loop turns at least every `heartbeat`.
    pub fn new(worker_id: &str, heartbeat: Duration) -> Self {
        let snapshot = Snapshot {
            worker_id: worker_id.to_string(),
            phase: Phase::Running,
            status: None,
            alive: true,
            updated: Instant::now(),
            engine: None,
        };
        Monitor {
            metrics: Arc::new(Metrics::new()),
            tx: Arc::new(watch::channel(snapshot).0),
            stale_after: (heartbeat * 3).max(Duration::from_secs(5)),
            queues: None,
        }
    }

    /// Export the fleet's queue gauges (`dockhand_queue_jobs`, ...) from
    /// `store`, refreshed at most once per `every` (the poll interval).
    pub fn with_queue_stats(mut self, store: AnyStore, every: Duration) -> Self {
        self.queues = Some(Arc::new(QueueSource {
            store,
            every,
            last: tokio::sync::Mutex::new(None),
        }));
        self
    }

    /// Refresh the queue gauges if they are due.
    async fn refresh_queues(&self) {
        let Some(source) = &self.queues else {
            return;
        };
        let mut last = source.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < source.every) {
            return;
        }
        *last = Some(Instant::now());
        match tokio::time::timeout(QUEUE_QUERY_TIMEOUT, source.store.queue_stats()).await {
            Ok(Ok(queues)) => self.metrics.set_queues(&queues),
            Ok(Err(e)) => tracing::warn!("queue metrics: {e}"),
            Err(_) => tracing::warn!("queue metrics: the query took over {QUEUE_QUERY_TIMEOUT:?}"),
        }
    }

    /// Called by the shell after every event. Returns when a skipped
    /// publish falls due: the shell must call again then, so the last state
    /// before an idle spell is always published.
    pub fn publish(&self, machine: &Machine) -> Option<Instant> {
        let phase = machine.phase();
        let counters = machine.counters();
        self.metrics.on_state(phase, machine.alive(), counters);
        let now = Instant::now();
        let mut due = None;
        self.tx.send_if_modified(|snapshot| {
            let next = snapshot.updated + PUBLISH_EVERY;
            if snapshot.phase == phase && now < next {
                due = Some(next);
                return false;
            }
            snapshot.phase = phase;
            snapshot.status = Some(machine.status());
            snapshot.updated = now;
            true
        });
        due
    }

    /// The loop has ended.
    pub fn finish(&self) {
        self.tx.send_modify(|snapshot| {
            snapshot.alive = false;
            snapshot.phase = Phase::Stopped;
        });
    }
}

impl Observer for Monitor {
    fn on_action(&self, action: &Action) {
        self.metrics.on_action(action);
    }

    fn on_event(&self, event: &Event) {
        self.metrics.on_event(event);
    }

    fn on_note(&self, note: &Note) {
        self.metrics.on_note(note);
    }

    fn publish(&self, machine: &Machine) -> Option<Instant> {
        Monitor::publish(self, machine)
    }

    fn on_exit(&self, since_signal: Option<Duration>) {
        self.metrics.on_exit(since_signal);
        self.finish();
    }

    fn on_engine(&self, state: EngineState) {
        self.metrics.on_engine(state);
        self.tx
            .send_modify(|snapshot| snapshot.engine = Some(state));
    }
}

impl Monitor {
    fn snapshot(&self) -> Snapshot {
        self.tx.borrow().clone()
    }
}

/// The `/status` document (the same content as the SIGUSR1 line, and the
/// Docker engine's state: `reachable`, `unreachable`, or null without one).
pub fn status_json(worker_id: &str, status: &Status, engine: Option<EngineState>) -> Value {
    let c = &status.counters;
    json!({
        "worker_id": worker_id,
        "phase": status.phase.as_str(),
        "docker": engine.map(EngineState::as_str),
        "signals": status.signals,
        "jobs": status.jobs.iter().map(|job| json!({
            "id": job.id,
            "queue": job.queue,
            "state": job.state,
            "elapsed_ms": job.elapsed.as_millis() as u64,
        })).collect::<Vec<_>>(),
        "counters": {
            "claimed": c.claimed,
            "succeeded": c.succeeded,
            "failed": c.failed,
            "interrupted": c.interrupted,
            "cancelled": c.cancelled,
            "handed_back": c.handed_back,
            "lost": c.lost,
            "refused": c.refused,
            "store_errors": c.store_errors,
        },
    })
}

/// Serve until the process exits.
pub async fn serve(listener: TcpListener, monitor: Monitor) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(monitor);
    axum::serve(listener, app).await
}

async fn healthz(State(monitor): State<Monitor>) -> Response {
    let snapshot = monitor.snapshot();
    // Only a loop that has not turned for a long while is unhealthy: an idle
    // loop still turns for every heartbeat.
    let stale = snapshot.updated.elapsed() > monitor.stale_after;
    if snapshot.alive && !stale {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response()
    }
}

/// Ready while running. The Docker engine's state is shown but does not make
/// the worker unready: it still runs every job without an image, and leaves
/// image jobs to others until its engine answers.
async fn readyz(State(monitor): State<Monitor>) -> Response {
    let snapshot = monitor.snapshot();
    let engine = match snapshot.engine {
        Some(state) => format!("docker: {state}\n"),
        None => String::new(),
    };
    if snapshot.alive && snapshot.phase == Phase::Running {
        (StatusCode::OK, format!("ready\n{engine}")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n{engine}", snapshot.phase),
        )
            .into_response()
    }
}

async fn metrics(State(monitor): State<Monitor>) -> Response {
    monitor.refresh_queues().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        monitor.metrics.render(),
    )
        .into_response()
}

async fn status(State(monitor): State<Monitor>) -> Response {
    let snapshot = monitor.snapshot();
    let Some(status) = snapshot.status else {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response();
    };
    Json(status_json(&snapshot.worker_id, &status, snapshot.engine)).into_response()
}
