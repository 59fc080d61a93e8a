//! The shell: turns I/O into machine events and performs the machine's
//! actions. It decides nothing — when to claim, stop, kill, requeue,
//! heartbeat or exit is the machine's call.
//!
//! ```text
//! loop {
//!     drain notes (log them) and actions (perform them)
//!     if Stopped: break
//!     wait for: a signal | a store reply or job event | a wake-up | poll_timeout()
//!     machine.handle(event, now)
//! }
//! ```
//!
//! Generic over the [`Store`], the [`Executor`] and the signal source (a
//! channel), so the simulation runs this same loop with simulated parts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use crate::executor::{EngineState, ExecEvent, Executor};
use crate::job::Lease;
use crate::machine::trace::{NoteText, StatusText, Trace};
use crate::machine::{
    Action, Config, Event, Instant, Machine, Note, NoteKind, Phase, Signal, Status, StoreFailure,
};
use crate::store::{ClaimRequest, Store, StoreError, Wakeup, WorkerInfo, WorkerStop};

/// Most internal events waiting for the loop (store replies, job events).
const EVENT_CAPACITY: usize = 4096;
/// How long deregistering may take at exit.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Whoever watches the worker from outside (metrics, health endpoints): the
/// shell tells it every action it performs, every event it feeds the machine,
/// every note the machine makes, and the machine's state after each turn.
/// Every method does nothing by default.
pub trait Observer: Send + Sync + std::fmt::Debug + 'static {
    /// An action about to be performed.
    fn on_action(&self, _action: &Action) {}
    /// An event about to be fed to the machine.
    fn on_event(&self, _event: &Event) {}
    /// A note the machine made.
    fn on_note(&self, _note: &Note) {}
    /// The machine after a turn of the loop. Returns when the shell must
    /// call again though nothing happens (a throttled publish falls due).
    fn publish(&self, _machine: &Machine) -> Option<TokioInstant> {
        None
    }
    /// The loop ended: the exit was decided this long after the first
    /// signal (if there was one).
    fn on_exit(&self, _since_signal: Option<Duration>) {}
    /// The executor's container engine changed state (or was first seen).
    fn on_engine(&self, _state: EngineState) {}
}

/// Tells the observer and the worker registry the engine's state: the
/// observer at once, the registry on a change (one write in flight; a
/// failed one is tried again with the next heartbeat).
#[derive(Default)]
struct EngineReport {
    shown: Option<EngineState>,
    stored: Arc<Mutex<Option<EngineState>>>,
    busy: Arc<AtomicBool>,
    /// The machine asked for a heartbeat since the last check.
    heartbeat: bool,
}

impl EngineReport {
    /// Notes an action the machine asked for: a heartbeat is the moment a
    /// registry write that failed, or was skipped while another was in
    /// flight, is tried again.
    fn saw(&mut self, action: &Action) {
        self.heartbeat |= matches!(action, Action::Heartbeat { .. });
    }

    fn check<S: Store + Clone>(
        &mut self,
        state: Option<EngineState>,
        observer: &Arc<dyn Observer>,
        store: &S,
        config: &ShellConfig,
    ) {
        let heartbeat = std::mem::take(&mut self.heartbeat);
        let Some(state) = state else { return };
        let changed = self.shown != Some(state);
        if changed {
            observer.on_engine(state);
            self.shown = Some(state);
        }
        let stored = *self.stored.lock().unwrap_or_else(|p| p.into_inner());
        if stored == Some(state)
            || !(changed || heartbeat)
            || self.busy.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (store, worker, limit) = (
            store.clone(),
            config.worker.id.clone(),
            config.store_timeout,
        );
        let (stored, busy) = (self.stored.clone(), self.busy.clone());
        tokio::spawn(async move {
            if timed(limit, store.report_engine(&worker, state.as_str()))
                .await
                .is_ok()
            {
                *stored.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
            }
            busy.store(false, Ordering::Release);
        });
    }
}

/// An observer that watches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// What the shell needs besides the machine's config.
#[derive(Clone, Debug)]
pub struct ShellConfig {
    /// The worker as announced in the registry.
    pub worker: WorkerInfo,
    /// Queues to claim from.
    pub queues: Vec<String>,
    /// The machine's timing.
    pub machine: Config,
    /// Longest wait for any one store call before it counts as failed.
    pub store_timeout: Duration,
    /// Who watches from outside (e.g. [`crate::http::Monitor`] for metrics
    /// and health endpoints).
    pub observer: Arc<dyn Observer>,
    /// Write the SIGUSR1 report on stderr (the binary); otherwise it goes to
    /// the log only (the simulation).
    pub status_to_stderr: bool,
}

/// How the worker ended.
#[derive(Clone, Debug)]
pub struct ExitReport {
    /// Process exit code: 0, 75, or 1 for a fatal error.
    pub code: i32,
    /// The shutdown trace: transitions and job outcomes since the first signal.
    pub trace: String,
    /// Final counters.
    pub status: Status,
    /// Set when the worker could not start or run (exit code 1).
    pub fatal: Option<String>,
    /// Leases given up without an outcome: those jobs run again elsewhere
    /// once their lease expires.
    pub abandoned: Vec<Lease>,
}

/// Run one worker until it stops. Signals arrive on `signals`.
pub async fn run<S, E>(
    store: S,
    mut executor: E,
    mut signals: mpsc::Receiver<Signal>,
    config: ShellConfig,
) -> ExitReport
where
    S: Store + Clone,
    E: Executor,
{
    if let Err(error) = config.machine.validate() {
        return fatal(format!("invalid worker configuration: {error}"));
    }
    let worker_id = config.worker.id.clone();
    let monitor = config.observer.clone();
    if let Err(error) = timed(config.store_timeout, store.register_worker(&config.worker)).await {
        return fatal(format!("cannot register worker: {error}"));
    }
    let mut wakeups = match timed(config.store_timeout, store.wakeups()).await {
        Ok(wakeups) => wakeups,
        Err(error) => {
            tracing::warn!(worker_id = %worker_id, %error, "no wake-ups from the store; polling only");
            None
        }
    };
    // Made once registered and subscribed: the machine stamps its first
    // claim with the time it is made, and a lease counted from before a slow
    // registration would run out early (jobs stopped while their leases
    // still hold).
    let origin = TokioInstant::now();
    let now = move || Instant::from_origin(origin.elapsed());
    let mut machine = match Machine::new(config.machine.clone(), now()) {
        Ok(machine) => machine,
        Err(error) => return fatal(format!("invalid worker configuration: {error}")),
    };
    tracing::info!(worker_id = %worker_id, queues = ?config.queues, concurrency = config.machine.concurrency, "worker started");

    // A signal that arrived while registering is handled before the first
    // claim goes out.
    while let Ok(signal) = signals.try_recv() {
        machine.handle(Event::Signal(signal), now());
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_CAPACITY);
    let (exec_tx, mut exec_events) = mpsc::channel::<ExecEvent>(EVENT_CAPACITY);
    let mut trace: Option<Trace> = None;
    let mut publish_due: Option<TokioInstant> = None;
    let mut signals_open = true;
    let mut engine = EngineReport::default();
    let code = loop {
        take_notes(&mut machine, &monitor, &worker_id, &mut trace);
        let mut exit = None;
        while let Some(action) = machine.poll_action() {
            match action {
                Action::Exit { code } => exit = Some(code),
                action => {
                    engine.saw(&action);
                    monitor.on_action(&action);
                    perform(
                        action,
                        &store,
                        &mut executor,
                        &exec_tx,
                        &events_tx,
                        &config,
                        &worker_id,
                    )
                }
            }
        }
        engine.check(executor.engine(), &monitor, &store, &config);
        if let Some(code) = exit {
            // Notes made by the last event.
            take_notes(&mut machine, &monitor, &worker_id, &mut trace);
            break code;
        }
        let deadline = machine
            .poll_timeout()
            .and_then(|at| origin.checked_add(at.since_origin()))
            .unwrap_or_else(|| TokioInstant::now() + Duration::from_secs(3600));
        let event = tokio::select! {
            biased;
            signal = signals.recv(), if signals_open => match signal {
                Some(signal) => Event::Signal(signal),
                None => { signals_open = false; continue; }
            },
            Some(event) = events.recv() => event,
            Some(event) = exec_events.recv() => exec_event(event),
            wakeup = recv_wakeup(&mut wakeups) => match wakeup {
                Some(Wakeup::Jobs) => Event::Wake,
                Some(Wakeup::Cancel(job)) => Event::CancelRequested { job },
                None => { wakeups = None; continue; }
            },
            _ = tokio::time::sleep_until(publish_due.unwrap_or(deadline)),
                if publish_due.is_some_and(|due| due < deadline) =>
            {
                publish_due = monitor.publish(&machine);
                continue;
            }
            _ = tokio::time::sleep_until(deadline) => Event::TimerFired,
        };
        feed(&mut machine, &monitor, event, now());
        // Take whatever else is already waiting, so replies and exits that
        // arrived together are handled before acting (outcomes batch up).
        for _ in 0..EVENT_CAPACITY {
            let next = match (events.try_recv(), exec_events.try_recv()) {
                (Ok(a), Ok(b)) => {
                    feed(&mut machine, &monitor, a, now());
                    exec_event(b)
                }
                (Ok(a), Err(_)) => a,
                (Err(_), Ok(b)) => exec_event(b),
                (Err(_), Err(_)) => break,
            };
            feed(&mut machine, &monitor, next, now());
        }
        publish_due = monitor.publish(&machine);
    };
    let since_signal = machine
        .first_signal_at()
        .map(|at| now().saturating_since(at));
    monitor.on_exit(since_signal);
    executor.kill_all().await;
    let trace = trace.map(|t| t.render()).unwrap_or_default();
    let stop = WorkerStop::new(&worker_id, code, &trace);
    if let Err(error) = timed(DEREGISTER_TIMEOUT, store.deregister_worker(&stop)).await {
        tracing::warn!(worker_id = %worker_id, %error, "could not deregister; the registry will show this worker as lost");
    }
    let status = machine.status();
    tracing::info!(worker_id = %worker_id, code, "worker stopped");
    ExitReport {
        code,
        trace,
        status,
        fatal: None,
        abandoned: machine.abandoned().copied().collect(),
    }
}

fn fatal(message: String) -> ExitReport {
    ExitReport {
        code: 1,
        trace: String::new(),
        status: Status {
            phase: Phase::Stopped,
            signals: 0,
            jobs: Vec::new(),
            counters: Default::default(),
        },
        fatal: Some(message),
        abandoned: Vec::new(),
    }
}

async fn recv_wakeup(wakeups: &mut Option<mpsc::Receiver<Wakeup>>) -> Option<Wakeup> {
    match wakeups {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Hand one event to the machine, after the metrics have seen it.
fn feed(machine: &mut Machine, monitor: &Arc<dyn Observer>, event: Event, now: Instant) {
    monitor.on_event(&event);
    machine.handle(event, now);
}

fn exec_event(event: ExecEvent) -> Event {
    match event {
        ExecEvent::Started { lease } => Event::JobStarted { lease },
        ExecEvent::StartFailed {
            lease,
            error,
            transient,
        } => Event::StartFailed {
            lease,
            error,
            transient,
        },
        ExecEvent::Exited {
            lease,
            exit,
            output,
        } => Event::JobExited {
            lease,
            exit,
            output,
        },
    }
}

async fn timed<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unreachable(format!(
            "no answer within {}ms",
            limit.as_millis()
        ))),
    }
}

fn failure(error: StoreError) -> StoreFailure {
    StoreFailure {
        transient: error.is_transient(),
        message: error.to_string(),
    }
}

/// Perform one action; store calls run as tasks that answer on `events`.
fn perform<S: Store + Clone, E: Executor>(
    action: Action,
    store: &S,
    executor: &mut E,
    exec_tx: &mpsc::Sender<ExecEvent>,
    events: &mpsc::Sender<Event>,
    config: &ShellConfig,
    worker_id: &str,
) {
    let limit = config.store_timeout;
    let lease = config.machine.lease;
    match action {
        Action::Claim { request, max } => {
            // The request id is the claim's id in the store: a claim whose
            // reply is lost can be recovered by a heartbeat.
            let claim = ClaimRequest {
                images: executor.runs_images(),
                ..ClaimRequest::new(worker_id, &config.queues, max, lease, request)
            };
            let (store, events) = (store.clone(), events.clone());
            tokio::spawn(async move {
                let result = timed(limit, store.claim(&claim)).await.map_err(failure);
                let _ = events.send(Event::ClaimReply { request, result }).await;
            });
        }
        Action::Start { job } => {
            tracing::info!(worker_id, job_id = %job.lease.job, queue = %job.queue, "job started");
            executor.start(job, exec_tx.clone());
        }
        Action::Signal { job, signal } => {
            tracing::info!(worker_id, job_id = %job, %signal, "signalling job");
            executor.signal(job, signal);
        }
        Action::Release { lease } => executor.release(lease),
        Action::Record {
            request,
            completions,
        } => {
            let (store, events, worker) = (store.clone(), events.clone(), worker_id.to_string());
            tokio::spawn(async move {
                let result = timed(limit, store.record(&worker, &completions))
                    .await
                    .map_err(failure);
                let _ = events.send(Event::RecordReply { request, result }).await;
            });
        }
        Action::Heartbeat {
            request,
            phase,
            leases,
            recover,
        } => {
            let (store, events, worker) = (store.clone(), events.clone(), worker_id.to_string());
            tokio::spawn(async move {
                let call = store.heartbeat(&worker, phase, &leases, lease, &recover);
                let result = timed(limit, call).await.map_err(failure);
                let _ = events.send(Event::HeartbeatReply { request, result }).await;
            });
        }
        Action::Reap { request } => {
            let (store, events, worker) = (store.clone(), events.clone(), worker_id.to_string());
            tokio::spawn(async move {
                let result = timed(limit, store.reap_expired()).await;
                if let Ok(n @ 1..) = result {
                    tracing::warn!(worker_id = %worker, requeued = n, "requeued jobs whose worker lost its lease");
                }
                let result = result.map_err(failure);
                let _ = events.send(Event::ReapReply { request, result }).await;
            });
        }
        Action::ReportStatus(status) => {
            // One line on stderr, whatever the log format: operators grep it.
            let line = format!(
                "dockhand status: worker={worker_id} {}",
                StatusText(&status)
            );
            if config.status_to_stderr {
                // A closed stderr drops the line; it never stops the worker.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{line}");
            } else {
                tracing::info!(worker_id, "{line}");
            }
        }
        Action::Exit { .. } => {}
    }
}

/// Hand every pending note to the metrics and the log; keep those since the
/// first shutdown signal for the shutdown trace printed at exit.
fn take_notes(
    machine: &mut Machine,
    monitor: &Arc<dyn Observer>,
    worker_id: &str,
    trace: &mut Option<Trace>,
) {
    while let Some(note) = machine.poll_note() {
        monitor.on_note(&note);
        log_note(worker_id, machine.phase(), &note);
        if let Some(signal_at) = machine.first_signal_at() {
            if note.at >= signal_at {
                trace
                    .get_or_insert_with(|| Trace::new(signal_at))
                    .note(&note);
            }
        }
    }
}

fn log_note(worker_id: &str, phase: Phase, note: &Note) {
    if !note.shown() {
        return;
    }
    let phase = phase.as_str();
    let text = NoteText(note);
    match note.kind() {
        NoteKind::Phase => tracing::info!(worker_id, phase, kind = "phase", "{text}"),
        NoteKind::Job => tracing::info!(worker_id, phase, kind = "job", "{text}"),
        NoteKind::Store => tracing::warn!(worker_id, phase, kind = "store", "{text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// Records every engine state it is shown.
    #[derive(Debug, Default)]
    struct Engines(Mutex<Vec<EngineState>>);

    impl Observer for Engines {
        fn on_engine(&self, state: EngineState) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(state);
        }
    }

    /// An `EngineReport` and what its `check` needs around it.
    struct Harness {
        report: EngineReport,
        observer: Arc<dyn Observer>,
        store: MemoryStore,
        config: ShellConfig,
    }

    impl Harness {
        fn new(observer: Arc<dyn Observer>) -> Self {
            let config = ShellConfig {
                worker: WorkerInfo {
                    id: "w1".into(),
                    host: "host".into(),
                    pid: 1,
                    queues: vec!["default".into()],
                    concurrency: 1,
                    lease: Duration::from_secs(30),
                },
                queues: vec!["default".into()],
                machine: Config::default(),
                store_timeout: Duration::from_secs(1),
                observer: observer.clone(),
                status_to_stderr: false,
            };
            Harness {
                report: EngineReport::default(),
                observer,
                store: MemoryStore::new(),
                config,
            }
        }

        /// The engine is seen in `state`, after the machine asked for a
        /// heartbeat or not.
        fn check(&mut self, state: Option<EngineState>, heartbeat: bool) {
            let Harness {
                report,
                observer,
                store,
                config,
            } = self;
            report.saw(&Action::Reap { request: 1 });
            if heartbeat {
                report.saw(&Action::Heartbeat {
                    request: 2,
                    phase: Phase::Running,
                    leases: Vec::new(),
                    recover: Vec::new(),
                });
            }
            report.check(state, observer, store, config);
        }

        /// A registry write is in flight.
        fn writing(&self) -> bool {
            self.report.busy.load(Ordering::Acquire)
        }

        fn stored(&self) -> Option<EngineState> {
            *self.report.stored.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// Wait (bounded) for the spawned registry write to finish.
        async fn settled(&self) {
            for _ in 0..1000 {
                if !self.writing() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            panic!("the registry write never finished");
        }
    }

    #[tokio::test]
    async fn the_registry_is_written_on_a_change_and_not_again_once_stored() {
        let mut h = Harness::new(Arc::new(NoObserver));

        h.check(Some(EngineState::Reachable), false);
        assert!(h.writing(), "a change is written");
        h.settled().await;
        assert_eq!(h.stored(), Some(EngineState::Reachable));
        h.check(Some(EngineState::Reachable), true);
        assert!(!h.writing(), "stored already: a heartbeat writes nothing");
        h.check(Some(EngineState::Unreachable), false);
        assert!(h.writing(), "the next change is written");
        h.settled().await;
        assert_eq!(h.stored(), Some(EngineState::Unreachable));
    }

    #[tokio::test]
    async fn a_change_met_while_a_write_is_in_flight_is_written_with_the_next_heartbeat() {
        let mut h = Harness::new(Arc::new(NoObserver));

        h.check(Some(EngineState::Reachable), false);
        assert!(h.writing());
        // The engine goes away before that write lands: one write at a
        // time, so this change is not written now.
        h.check(Some(EngineState::Unreachable), false);
        h.settled().await;
        assert_eq!(h.stored(), Some(EngineState::Reachable));
        h.check(Some(EngineState::Unreachable), false);
        assert!(!h.writing(), "no change and no heartbeat: nothing written");
        h.check(Some(EngineState::Unreachable), true);
        assert!(h.writing(), "the heartbeat writes what the registry lacks");
        h.settled().await;
        assert_eq!(h.stored(), Some(EngineState::Unreachable));
    }

    #[tokio::test]
    async fn the_observer_sees_each_engine_state_once_per_change() {
        let engines = Arc::new(Engines::default());
        let mut h = Harness::new(engines.clone());
        let seen = || engines.0.lock().unwrap_or_else(|p| p.into_inner()).clone();

        h.check(None, true);
        assert_eq!(seen(), vec![], "no state known yet: nothing to show");
        h.check(Some(EngineState::Reachable), false);
        assert_eq!(seen(), vec![EngineState::Reachable], "first sight is shown");
        h.check(Some(EngineState::Reachable), true);
        assert_eq!(seen(), vec![EngineState::Reachable], "no change, no repeat");
        h.check(Some(EngineState::Unreachable), false);
        assert_eq!(
            seen(),
            vec![EngineState::Reachable, EngineState::Unreachable],
            "a change is shown at once"
        );
    }
}
