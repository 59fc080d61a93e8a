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
use crate::machine::{Action, Counters, Event, Note, Phase, What};
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

/// Labels of the worker event counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// lost_lease, stale_refused, invalid_refused, superseded, late_reply, violation.
    pub event: String,
}

/// Labels of `dockhand_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version.
    pub version: String,
}

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
struct ProcessMetrics {
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    cpu_seen: Mutex<f64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = ProcessMetrics {
            cpu_seconds: Counter::default(),
            cpu_seen: Mutex::new(0.0),
            resident_bytes: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
        };
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            metrics.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            metrics.resident_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            metrics.virtual_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            metrics.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Most file descriptors the process may open",
            metrics.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the unix epoch, in seconds",
            metrics.start_time.clone(),
        );
        metrics
    }

    /// Read `/proc/self`; a value that cannot be read keeps its last one.
    fn refresh(&self) {
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
                libc::sysconf(libc::_SC_PAGESIZE).max(1),
            )
        };
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may hold spaces), from
            // field 3 on: utime is 14, stime 15, starttime 22, vsize 23.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if let (Some(user), Some(system)) = (field(14), field(15)) {
                let cpu = (user + system) as f64 / ticks;
                let mut seen = self.cpu_seen.lock().unwrap_or_else(|p| p.into_inner());
                if cpu > *seen {
                    self.cpu_seconds.inc_by(cpu - *seen);
                    *seen = cpu;
                }
            }
            if let Some(vsize) = field(23) {
                self.virtual_bytes
                    .set(i64::try_from(vsize).unwrap_or(i64::MAX));
            }
            if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                self.start_time.set(boot + start as f64 / ticks);
            }
        }
        if let Some(rss) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|m| m.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.resident_bytes.set(rss.saturating_mul(page));
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only into `limit`.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            self.max_fds
                .set(i64::try_from(limit.rlim_cur).unwrap_or(i64::MAX));
        }
    }
}

/// The system's boot time (unix seconds), from `/proc/stat`.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
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
    events: Family<EventLabels, Counter>,
    process: ProcessMetrics,
    queue_jobs: Family<QueueStateLabels, Gauge>,
    queue_oldest: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    queue_paused: Family<QueueLabels, Gauge>,
    /// The machine's counters already exported.
    seen: Mutex<Counters>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, all at zero.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let process = ProcessMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("dockhand");
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
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "worker_events",
            "What the worker met besides outcomes (the /status counters): lost_lease, stale_refused, invalid_refused, superseded, late_reply, violation",
            events.clone(),
        );
        registry.register(
            "build",
            "The dockhand version",
            prometheus_client::metrics::info::Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            }),
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
            registry: root,
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
            events,
            process,
            queue_jobs,
            queue_oldest,
            queue_paused,
            seen: Mutex::new(Counters::default()),
        };
        metrics.set_phase(Phase::Running);
        metrics
    }

    /// The exposition text (the process metrics read now).
    pub fn render(&self) -> String {
        self.process.refresh();
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

    /// The machine's state after an event: running jobs, phase, and the
    /// growth of its counters since the last call.
    pub fn on_state(&self, phase: Phase, alive: usize, counters: &Counters) {
        self.running.set(alive as i64);
        self.set_phase(phase);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        self.store_errors
            .inc_by(counters.store_errors.saturating_sub(seen.store_errors));
        for (event, now, then) in [
            ("lost_lease", counters.lost, seen.lost),
            ("stale_refused", counters.refused, seen.refused),
            ("invalid_refused", counters.invalid, seen.invalid),
            ("superseded", counters.superseded, seen.superseded),
            ("late_reply", counters.late_replies, seen.late_replies),
            ("violation", counters.violations, seen.violations),
        ] {
            if now > then {
                let labels = EventLabels {
                    event: event.to_string(),
                };
                self.events.get_or_create(&labels).inc_by(now - then);
            }
        }
        *seen = counters.clone();
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
        let counters = Counters {
            store_errors: 3,
            lost: 1,
            late_replies: 2,
            ..Counters::default()
        };
        metrics.on_state(Phase::Draining, 2, &counters);
        metrics.on_state(Phase::Draining, 2, &counters);
        let text = metrics.render();
        assert!(text.contains("dockhand_jobs_running 2"), "{text}");
        assert!(
            text.contains(r#"dockhand_worker_events_total{event="lost_lease"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dockhand_worker_events_total{event="late_reply"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                r#"dockhand_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
        assert!(!text.contains("dockhand_process_"), "{text}");
        assert!(
            text.contains("dockhand_phase{phase=\"draining\"} 1"),
            "{text}"
        );
        assert!(text.contains("dockhand_store_errors_total 3"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
