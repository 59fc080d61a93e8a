//! Prometheus metrics of one worker, fed by the shell from the events and
//! actions it already handles (the machine stays pure).
//!
//! `dockhand_jobs_total{queue, outcome}` counts recorded outcomes:
//! `succeeded`, `failed` (a failed attempt; the store requeues it while
//! attempts remain), `interrupted` (requeued by a shutdown), `cancelled`,
//! `handed_back` (claimed after the signal, requeued unstarted).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::job::{JobId, RecordResult};
use crate::machine::{Action, Event, Phase};

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

/// What the shell must remember between an action and its reply.
#[derive(Debug, Default)]
struct Pending {
    /// Queue and start of every job held (bounded by concurrency).
    jobs: BTreeMap<JobId, (String, Instant)>,
    /// Outcome names of the record batch in flight, by request.
    records: BTreeMap<u64, Vec<(JobId, &'static str)>>,
    store_errors_seen: u64,
}

/// One worker's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    claimed: Family<QueueLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    running: Gauge,
    phase: Family<PhaseLabels, Gauge>,
    claim_batch: Histogram,
    pickup_latency: Histogram,
    job_duration: Histogram,
    shutdown_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    store_errors: Counter,
    pending: Mutex<Pending>,
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
        let claim_batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        let pickup_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 20));
        let job_duration = Histogram::new(exponential_buckets(0.001, 2.0, 24));
        let shutdown_duration = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let store_errors = Counter::default();
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
            claim_batch,
            pickup_latency,
            job_duration,
            shutdown_duration,
            store_errors,
            pending: Mutex::new(Pending::default()),
        };
        metrics.set_phase(Phase::Running);
        metrics
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
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
        match action {
            Action::Start { job } => {
                let queue = job.queue.clone();
                self.claimed
                    .get_or_create(&QueueLabels {
                        queue: queue.clone(),
                    })
                    .inc();
                self.pickup_latency.observe(job.waited.as_secs_f64());
                self.pending()
                    .jobs
                    .insert(job.lease.job, (queue, Instant::now()));
            }
            Action::Record {
                request,
                completions,
            } => {
                let names = completions
                    .iter()
                    .map(|c| (c.lease.job, outcome_label(c.outcome.name())))
                    .collect();
                self.pending().records.insert(*request, names);
            }
            _ => {}
        }
    }

    /// An event about to be handed to the machine.
    pub fn on_event(&self, event: &Event) {
        match event {
            Event::ClaimReply {
                result: Ok(jobs), ..
            } => self.claim_batch.observe(jobs.len() as f64),
            Event::JobExited { lease, .. } => {
                if let Some((_, started)) = self.pending().jobs.get(&lease.job) {
                    self.job_duration.observe(started.elapsed().as_secs_f64());
                }
            }
            Event::RecordReply { request, result } => {
                let mut pending = self.pending();
                let Some(sent) = pending.records.remove(request) else {
                    return;
                };
                let Ok(results) = result else { return };
                for (job, result) in results {
                    let name = sent.iter().find(|(id, _)| id == job).map(|(_, name)| *name);
                    let queue = pending.jobs.remove(job).map(|(queue, _)| queue);
                    if let (RecordResult::Recorded, Some(outcome)) = (result, name) {
                        let queue = queue.unwrap_or_else(|| "unknown".to_string());
                        let labels = OutcomeLabels {
                            queue,
                            outcome: outcome.to_string(),
                        };
                        self.outcomes.get_or_create(&labels).inc();
                    }
                }
            }
            _ => {}
        }
    }

    /// The machine's state after an event.
    pub fn on_state(&self, phase: Phase, alive: usize, store_errors: u64) {
        self.running.set(alive as i64);
        self.set_phase(phase);
        let mut pending = self.pending();
        if store_errors > pending.store_errors_seen {
            self.store_errors
                .inc_by(store_errors - pending.store_errors_seen);
            pending.store_errors_seen = store_errors;
        }
    }

    /// Forget jobs the machine no longer holds. A job whose lease was lost is
    /// never recorded, so without this its entry would stay for good.
    pub fn retain_jobs(&self, held: &[JobId]) {
        self.pending().jobs.retain(|id, _| held.contains(id));
    }

    /// The worker decided to exit, this long after the first signal.
    pub fn on_exit(&self, since_signal: Option<Duration>) {
        if let Some(took) = since_signal {
            self.shutdown_duration.set(took.as_secs_f64());
        }
        self.set_phase(Phase::Stopped);
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

fn outcome_label(name: &'static str) -> &'static str {
    if name == "handed back" {
        "handed_back"
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_no_longer_held_are_forgotten() {
        use crate::job::{ClaimedJob, JobSpec, Lease, LeaseToken};
        let metrics = Metrics::new();
        for id in 1..=3 {
            let job = ClaimedJob {
                lease: Lease {
                    job: JobId(id),
                    token: LeaseToken(1),
                },
                queue: "default".into(),
                spec: JobSpec::default(),
                attempts: 0,
                interruptions: 0,
                waited: Duration::ZERO,
            };
            metrics.on_action(&Action::Start { job });
        }
        // Job 2's lease was lost: it is never recorded, and the machine lets go of it.
        metrics.retain_jobs(&[JobId(1), JobId(3)]);
        let held: Vec<JobId> = metrics.pending().jobs.keys().copied().collect();
        assert_eq!(held, vec![JobId(1), JobId(3)]);
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
