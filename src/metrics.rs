//! Prometheus metrics of one worker, fed by the shell with what the machine
//! says: the actions it asks for and the notes it keeps. Nothing here infers
//! a job's lifecycle or reads a clock of its own.
//!
//! `dockhand_jobs_total{queue, outcome}` counts recorded outcomes:
//! `succeeded`, `retried` (a failed attempt the store requeued for a retry),
//! `failed` (the last attempt failed: the job is failed), `interrupted`
//! (requeued by a shutdown or a lost lease), `cancelled`, `handed_back`
//! (claimed after the signal, requeued unstarted).

use std::sync::Mutex;
use std::time::Duration;

use crate::executor::EngineState;
use crate::job::JobState;
use crate::machine::{Action, Event, Note, Phase, What};
use crate::store::QueueStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-queue counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Queue name.
    pub queue: String,
}

/// Labels of outcome counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Queue name.
    pub queue: String,
    /// succeeded, failed, interrupted, cancelled, handed_back.
    pub outcome: String,
}

/// Labels of the phase gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// running, draining, timed-out, stopped.
    pub phase: String,
}

/// Labels of the per-queue backlog gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueStateLabels {
    /// Queue name.
    pub queue: String,
    /// ready, scheduled, running, succeeded, failed, cancelled.
    pub state: String,
}

/// Labels of the Docker engine gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabels {
    /// reachable, unreachable.
    pub state: String,
}

/// One worker's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    claimed: Family<QueueLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    running: Gauge,
    phase: Family<PhaseLabels, Gauge>,
    engine: Family<EngineLabels, Gauge>,
    claim_batch: Histogram,
    pickup_latency: Histogram,
    job_duration: Histogram,
    shutdown_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    store_errors: Counter,
    queue_jobs: Family<QueueStateLabels, Gauge>,
    queue_oldest: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    queue_paused: Family<QueueLabels, Gauge>,
    /// The machine's store error count already exported.
    store_errors_seen: Mutex<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, all at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dockhand");
        let claimed = Family::<QueueLabels, Counter>::default();
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        let running = Gauge::default();
        let phase = Family::<PhaseLabels, Gauge>::default();
        let engine = Family::<EngineLabels, Gauge>::default();
        let claim_batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        let pickup_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 20));
        let job_duration = Histogram::new(exponential_buckets(0.001, 2.0, 24));
        let shutdown_duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let store_errors = Counter::default();
        let queue_jobs = Family::<QueueStateLabels, Gauge>::default();
        let queue_oldest =
            Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let queue_paused = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_jobs",
            "Jobs in the database by queue and state (whole fleet; ready and scheduled are both queued)",
            queue_jobs.clone(),
        );
        registry.register(
            "queue_oldest_ready_age_seconds",
            "How long the oldest ready job of each queue has waited (0 when none is ready)",
            queue_oldest.clone(),
        );
        registry.register(
            "queue_paused",
            "1 for a queue an operator paused",
            queue_paused.clone(),
        );
        registry.register("jobs_claimed", "Jobs claimed, by queue", claimed.clone());
        registry.register(
            "jobs",
            "Job outcomes recorded, by queue and outcome",
            outcomes.clone(),
        );
        registry.register(
            "jobs_running",
            "Jobs whose process or container may be alive",
            running.clone(),
        );
        registry.register("phase", "1 for the worker's current phase", phase.clone());
        registry.register(
            "docker_engine",
            "1 for the state of the worker's Docker engine (absent without one)",
            engine.clone(),
        );
        registry.register(
            "claim_batch_size",
            "Jobs per claim reply",
            claim_batch.clone(),
        );
        registry.register(
            "pickup_latency_seconds",
            "Time a job waited ready before it was claimed",
            pickup_latency.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time from start to exit",
            job_duration.clone(),
        );
        registry.register(
            "shutdown_duration_seconds",
            "Time from the first shutdown signal to the exit decision",
            shutdown_duration.clone(),
        );
        registry.register(
            "store_errors",
            "Store calls that failed",
            store_errors.clone(),
        );
        let metrics = Metrics {
            registry,
            claimed,
            outcomes,
            running,
            phase,
            engine,
            claim_batch,
            pickup_latency,
            job_duration,
            shutdown_duration,
            store_errors,
            queue_jobs,
            queue_oldest,
            queue_paused,
            store_errors_seen: Mutex::new(0),
        };
        metrics.set_phase(Phase::Running);
        metrics
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// An action the shell is about to perform.
    pub fn on_action(&self, action: &Action) {
        if let Action::Start { job } = action {
            let labels = QueueLabels {
                queue: job.queue.clone(),
            };
            self.claimed.get_or_create(&labels).inc();
            self.pickup_latency.observe(job.waited.as_secs_f64());
        }
    }

    /// An event about to be handed to the machine (the store's answers).
    pub fn on_event(&self, event: &Event) {
        if let Event::ClaimReply {
            result: Ok(jobs), ..
        } = event
        {
            self.claim_batch.observe(jobs.len() as f64);
        }
    }

    /// A note the machine made.
    pub fn on_note(&self, note: &Note) {
        match &note.what {
            What::JobEnded { ran_for, .. } => self.job_duration.observe(ran_for.as_secs_f64()),
            What::Recorded {
                queue,
                outcome,
                state,
                ..
            } => {
                let outcome = match (*outcome, state) {
                    ("failed", JobState::Queued) => "retried",
                    ("handed back", _) => "handed_back",
                    (name, _) => name,
                };
                let labels = OutcomeLabels {
                    queue: queue.clone(),
                    outcome: outcome.to_string(),
                };
                self.outcomes.get_or_create(&labels).inc();
            }
            _ => {}
        }
    }

    /// The machine's state after an event.
    pub fn on_state(&self, phase: Phase, alive: usize, store_errors: u64) {
        self.running.set(alive as i64);
        self.set_phase(phase);
        let mut seen = self
            .store_errors_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if store_errors > *seen {
            self.store_errors.inc_by(store_errors - *seen);
            *seen = store_errors;
        }
    }

    /// The worker decided to exit, this long after the first signal.
    pub fn on_exit(&self, since_signal: Option<Duration>) {
        if let Some(took) = since_signal {
            self.shutdown_duration.set(took.as_secs_f64());
        }
        self.set_phase(Phase::Stopped);
    }

    /// The fleet's queues as the database counts them now; queues that
    /// no longer exist disappear from the export.
    pub fn set_queues(&self, queues: &[QueueStats]) {
        self.queue_jobs.clear();
        self.queue_oldest.clear();
        self.queue_paused.clear();
        for q in queues {
            for (state, count) in [
                ("ready", q.ready),
                ("scheduled", q.scheduled),
                ("running", q.running),
                ("succeeded", q.succeeded),
                ("failed", q.failed),
                ("cancelled", q.cancelled),
            ] {
                let labels = QueueStateLabels {
                    queue: q.queue.clone(),
                    state: state.to_string(),
                };
                self.queue_jobs
                    .get_or_create(&labels)
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            let labels = QueueLabels {
                queue: q.queue.clone(),
            };
            self.queue_oldest
                .get_or_create(&labels)
                .set(q.oldest_ready_age_ms as f64 / 1000.0);
            self.queue_paused
                .get_or_create(&labels)
                .set(i64::from(q.paused));
        }
    }

    /// The Docker engine changed state.
    pub fn on_engine(&self, current: EngineState) {
        for state in [EngineState::Reachable, EngineState::Unreachable] {
            let labels = EngineLabels {
                state: state.as_str().to_string(),
            };
            self.engine
                .get_or_create(&labels)
                .set(i64::from(state == current));
        }
    }

    fn set_phase(&self, current: Phase) {
        for phase in [
            Phase::Running,
            Phase::Draining,
            Phase::TimedOut,
            Phase::Stopped,
        ] {
            let labels = PhaseLabels {
                phase: phase.as_str().to_string(),
            };
            self.phase
                .get_or_create(&labels)
                .set(i64::from(phase == current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_tell_a_retried_attempt_from_a_final_failure() {
        use crate::machine::Instant;
        let metrics = Metrics::new();
        let recorded = |state| Note {
            at: Instant::ZERO,
            what: What::Recorded {
                job: crate::job::JobId(1),
                queue: "q".into(),
                outcome: "failed",
                state,
                quiet: true,
            },
        };
        metrics.on_note(&recorded(JobState::Queued));
        metrics.on_note(&recorded(JobState::Queued));
        metrics.on_note(&recorded(JobState::Failed));
        let text = metrics.render();
        assert!(
            text.contains(r#"dockhand_jobs_total{queue="q",outcome="retried"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dockhand_jobs_total{queue="q",outcome="failed"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn renders_registered_metrics() {
        let metrics = Metrics::new();
        metrics.on_state(Phase::Draining, 2, 3);
        let text = metrics.render();
        assert!(text.contains("dockhand_jobs_running 2"), "{text}");
        assert!(
            text.contains("dockhand_phase{phase=\"draining\"} 1"),
            "{text}"
        );
        assert!(text.contains("dockhand_store_errors_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
