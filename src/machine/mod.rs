//! The worker's whole decision logic, as a pure state machine.
//!
//! ```text
//!                 first TERM/INT                shutdown_timeout passed
//!   +---------+  (recv_shutdown)  +----------+  or second TERM/INT      +----------+
//!   | Running | ----------------> | Draining | -----------------------> | TimedOut |
//!   +---------+                   +----------+  (deadline / force)      +----------+
//!     claims while                  no claims; jobs go on;               TERM to every job,
//!     slots are free                heartbeats go on                     KILL after kill_grace,
//!        |                               |                               third TERM/INT: KILL now
//!        |                               | every job done and recorded       |
//!        |                               v                                   |
//!        |  first TERM/INT, idle    +---------+   every job done and recorded |
//!        +------------------------> | Stopped | <-----------------------------+
//!                                   +---------+   or exit deadline passed with the
//!                                     exit 0/75   store unreachable (leases left to expire)
//! ```
//!
//! The machine never reads a clock and never does I/O. The driver (the shell,
//! the simulation, a test) feeds it [`Event`]s with the current [`Instant`],
//! then drains [`Machine::poll_action`] until it returns `None`, performs each
//! action, and sleeps until [`Machine::poll_timeout`] or the next event:
//!
//! ```text
//! loop {
//!     while let Some(action) = machine.poll_action() { perform(action) }
//!     if machine.phase() == Phase::Stopped { break }
//!     let event = next_event_or(machine.poll_timeout());   // TimerFired on timeout
//!     machine.handle(event, now());
//! }
//! ```
//!
//! Every decision about when to claim, stop, kill, requeue, heartbeat and exit
//! is made here and only here. Invariants that the machine alone can keep are
//! asserted here, in production builds too.

mod config;
mod time;
pub mod trace;

#[doc(hidden)]
pub mod harness;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

pub use config::{Config, ConfigError, MAX_BATCH, MAX_CONCURRENCY, MIN_LEASE, MIN_POLL_INTERVAL};
pub use time::{Fired, Instant, JobTimer, Timer, TimerTable};

use crate::job::{
    tail, ClaimedJob, Completion, Exit, JobId, Lease, Outcome, RecordResult, OUTPUT_LIMIT,
};
use crate::planted::{self, Bug};

/// Most abandoned leases remembered.
pub const MAX_ABANDONED: usize = 1024;

/// Most trace notes kept undrained before the oldest are dropped.
pub const MAX_NOTES: usize = 10_000;

/// Exit code when every job running at the signal finished on its own.
pub const EXIT_OK: i32 = 0;
/// Exit code (EX_TEMPFAIL) when any job was interrupted or left to its lease.
pub const EXIT_INTERRUPTED: i32 = 75;

/// A signal delivered to the worker process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: first drains, second forces, third kills.
    Term,
    /// SIGINT (Ctrl-C): the same as TERM.
    Int,
    /// SIGUSR1: one status report, nothing else changes.
    Usr1,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Usr1 => "SIGUSR1",
        })
    }
}

/// A signal the machine sends to one job (its process group or container).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum JobSignal {
    /// Ask it to stop.
    Term,
    /// Make it stop.
    Kill,
}

impl fmt::Display for JobSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobSignal::Term => "SIGTERM",
            JobSignal::Kill => "SIGKILL",
        })
    }
}

/// The worker's phase, as reported to the outside.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Phase {
    /// Claiming and running jobs.
    Running,
    /// Shutdown requested: no claims, running jobs go on.
    Draining,
    /// Drain over: jobs are being stopped.
    TimedOut,
    /// Done; the worker exits.
    Stopped,
}

impl Phase {
    /// Lower-case name, as in logs, the workers table and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::TimedOut => "timed-out",
            Phase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store call that failed (unreachable, timed out, refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFailure(pub String);

/// The store's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatAnswer {
    /// Jobs whose lease we no longer hold (reaped, or claimed by another).
    pub lost: Vec<JobId>,
    /// Jobs a user asked to cancel.
    pub cancelled: Vec<JobId>,
}

/// Something that happened, fed to [`Machine::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A signal reached the worker.
    Signal(Signal),
    /// The deadline from [`Machine::poll_timeout`] was reached.
    TimerFired,
    /// The answer to [`Action::Claim`].
    ClaimReply {
        /// The `request` of the claim answered.
        request: u64,
        /// The jobs, or why not.
        result: Result<Vec<ClaimedJob>, StoreFailure>,
    },
    /// The executor started the job.
    JobStarted {
        /// The job.
        job: JobId,
    },
    /// The executor could not start the job.
    StartFailed {
        /// The job.
        job: JobId,
        /// Why, in words.
        error: String,
    },
    /// The job's process or container ended.
    JobExited {
        /// The job.
        job: JobId,
        /// How it ended.
        exit: Exit,
        /// Tail of its captured output.
        output: String,
    },
    /// The answer to [`Action::Record`].
    RecordReply {
        /// The `request` of the record answered.
        request: u64,
        /// Per job, or why none.
        result: Result<Vec<(JobId, RecordResult)>, StoreFailure>,
    },
    /// The answer to [`Action::Heartbeat`].
    HeartbeatReply {
        /// The `request` of the heartbeat answered.
        request: u64,
        /// Lost leases and cancels, or why not.
        result: Result<HeartbeatAnswer, StoreFailure>,
    },
    /// We no longer hold this job's lease.
    LeaseLost {
        /// The job.
        job: JobId,
    },
    /// A user asked to cancel this running job.
    CancelRequested {
        /// The job.
        job: JobId,
    },
    /// The store cannot be reached (e.g. the notification connection broke).
    StoreUnreachable,
    /// The store can be reached again.
    StoreReachable,
    /// New jobs may be ready (a notification): look now rather than at the next poll.
    Wake,
}

/// Something the driver must do, pulled with [`Machine::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Claim up to `max` ready jobs; answer with [`Event::ClaimReply`].
    Claim {
        /// Echoed in the reply, so a late or repeated reply is recognised.
        request: u64,
        /// Never more than the free slots nor the batch limit.
        max: u32,
    },
    /// Start the job; answer with [`Event::JobStarted`] or [`Event::StartFailed`],
    /// then [`Event::JobExited`] when it ends.
    Start {
        /// The claimed job.
        job: ClaimedJob,
    },
    /// Send a signal to the job.
    Signal {
        /// The job.
        job: JobId,
        /// TERM or KILL.
        signal: JobSignal,
    },
    /// Write these outcomes, fenced by their leases; answer with [`Event::RecordReply`].
    Record {
        /// Echoed in the reply.
        request: u64,
        /// At most `batch_max` of them.
        completions: Vec<Completion>,
    },
    /// Extend these leases and report the phase; answer with [`Event::HeartbeatReply`].
    Heartbeat {
        /// Echoed in the reply.
        request: u64,
        /// The phase to report.
        phase: Phase,
        /// Every lease the worker holds.
        leases: Vec<Lease>,
    },
    /// Requeue jobs whose lease expired (any worker's); no reply needed.
    Reap,
    /// Write this status report (SIGUSR1).
    ReportStatus(Status),
    /// Exit the process with this code.
    Exit {
        /// 0 or 75.
        code: i32,
    },
}

/// What kind of thing a trace note tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// A phase transition.
    Phase,
    /// Something that happened to one job.
    Job,
    /// The store went away or came back, or outcomes were given up.
    Store,
}

/// One line of the worker's own story: transitions and job outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// When.
    pub at: Instant,
    /// About what.
    pub kind: NoteKind,
    /// What, in words an operator can follow.
    pub text: String,
}

/// Running totals, reported by SIGUSR1 and at exit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Jobs accepted from claims.
    pub claimed: u64,
    /// Outcomes recorded as succeeded.
    pub succeeded: u64,
    /// Outcomes recorded as failed attempts.
    pub failed: u64,
    /// Outcomes recorded as interrupted (requeued).
    pub interrupted: u64,
    /// Outcomes recorded as cancelled.
    pub cancelled: u64,
    /// Jobs claimed after the signal and handed back unstarted.
    pub handed_back: u64,
    /// Jobs stopped because their lease was lost; nothing recorded.
    pub lost: u64,
    /// Outcomes the store refused (stale lease).
    pub refused: u64,
    /// Store calls that failed.
    pub store_errors: u64,
}

/// One job in a status report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStatus {
    /// The job.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// starting, running, stopping or recording.
    pub state: &'static str,
    /// Time since it was claimed.
    pub elapsed: Duration,
}

/// The SIGUSR1 report: phase, every job held, counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Current phase.
    pub phase: Phase,
    /// Shutdown signals received so far.
    pub signals: u32,
    /// Jobs held, by id.
    pub jobs: Vec<JobStatus>,
    /// Totals.
    pub counters: Counters,
}

/// Why the machine is stopping a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    /// Worker shutdown: the job is requeued.
    Shutdown,
    /// The job's own timeout: a failed attempt.
    Timeout(Duration),
    /// A user cancelled it.
    Cancel,
    /// Our lease is gone: another worker may run it; record nothing.
    LeaseLost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Start sent, not yet confirmed.
    Starting,
    /// Its process or container is alive.
    Running,
    /// Ended (or never started); its outcome waits to be recorded.
    Done,
}

/// One claimed job, from the claim reply until its outcome is recorded.
#[derive(Clone, Debug)]
struct Slot {
    job: ClaimedJob,
    state: SlotState,
    claimed_at: Instant,
    stop: Option<StopReason>,
    /// Strongest signal we want it to have had (applied once it runs).
    want: Option<JobSignal>,
    /// Strongest signal actually sent.
    sent: Option<JobSignal>,
    outcome: Option<Completion>,
    /// Part of the record batch in flight.
    sending: bool,
}

impl Slot {
    fn alive(&self) -> bool {
        matches!(self.state, SlotState::Starting | SlotState::Running)
    }
}

/// The private phase, with the data each phase needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Running,
    Draining,
    TimedOut,
    Stopped { code: i32 },
}

/// The worker's state machine. See the module docs for the driving loop.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    inner: Inner,
    now: Instant,
    slots: BTreeMap<JobId, Slot>,
    timers: TimerTable,
    actions: VecDeque<Action>,
    notes: VecDeque<Note>,
    notes_dropped: u64,
    /// Request id, `max` and send time of the claim in flight.
    claim_in_flight: Option<(u64, u32, Instant)>,
    next_request: u64,
    claim_wanted: bool,
    /// The last claim came back full: more jobs are probably waiting.
    backlog: bool,
    records_in_flight: Option<(u64, Vec<JobId>)>,
    record_failures: u32,
    record_blocked: bool,
    heartbeat_in_flight: Option<(u64, Instant, Vec<JobId>)>,
    store_up: bool,
    signals: u32,
    first_signal_at: Option<Instant>,
    interrupted: bool,
    gave_up: usize,
    abandoned: VecDeque<Lease>,
    counters: Counters,
}

impl Machine {
    /// A machine in `Running`, about to claim. Refuses an invalid config.
    pub fn new(config: Config, now: Instant) -> Result<Machine, ConfigError> {
        config.validate()?;
        let mut machine = Machine {
            inner: Inner::Running,
            now,
            slots: BTreeMap::new(),
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            notes: VecDeque::new(),
            notes_dropped: 0,
            claim_in_flight: None,
            next_request: 1,
            claim_wanted: true,
            backlog: false,
            records_in_flight: None,
            record_failures: 0,
            record_blocked: false,
            heartbeat_in_flight: None,
            store_up: true,
            signals: 0,
            first_signal_at: None,
            interrupted: false,
            gave_up: 0,
            abandoned: VecDeque::new(),
            counters: Counters::default(),
            config,
        };
        machine
            .timers
            .set(Timer::Poll, now + machine.config.poll_interval);
        machine
            .timers
            .set(Timer::Heartbeat, now + machine.config.heartbeat_interval());
        let text = format!(
            "running (concurrency {}, shutdown timeout {}, kill grace {}, lease {})",
            machine.config.concurrency,
            fmt_duration(machine.config.shutdown_timeout),
            fmt_duration(machine.config.kill_grace),
            fmt_duration(machine.config.lease),
        );
        machine.note(NoteKind::Phase, text);
        machine.drive();
        Ok(machine)
    }

    /// The configuration the machine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match self.inner {
            Inner::Running => Phase::Running,
            Inner::Draining => Phase::Draining,
            Inner::TimedOut => Phase::TimedOut,
            Inner::Stopped { .. } => Phase::Stopped,
        }
    }

    /// The exit code, once `Stopped`.
    pub fn exit_code(&self) -> Option<i32> {
        match self.inner {
            Inner::Stopped { code } => Some(code),
            _ => None,
        }
    }

    /// When the first TERM/INT arrived.
    pub fn first_signal_at(&self) -> Option<Instant> {
        self.first_signal_at
    }

    /// Leases given up without recording an outcome (lost, expired, or left
    /// at the exit deadline), most recent last; the store's lease expiry
    /// hands those jobs to another worker. Keeps the last [`MAX_ABANDONED`].
    pub fn abandoned(&self) -> impl Iterator<Item = &Lease> {
        self.abandoned.iter()
    }

    fn abandon(&mut self, lease: Lease) {
        if self.abandoned.len() >= MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(lease);
    }

    /// Totals so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Jobs held: claimed and not yet recorded (at most twice the concurrency).
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// Jobs whose process or container may be alive.
    pub fn alive(&self) -> usize {
        self.slots.values().filter(|slot| slot.alive()).count()
    }

    /// The next action to perform, until `None`.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next trace note, until `None`.
    pub fn poll_note(&mut self) -> Option<Note> {
        self.notes.pop_front()
    }

    /// Notes dropped because nobody drained them (bounded memory).
    pub fn notes_dropped(&self) -> u64 {
        self.notes_dropped
    }

    /// When to deliver [`Event::TimerFired`] if nothing else happens first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The status report, as SIGUSR1 would emit it.
    pub fn status(&self) -> Status {
        let jobs = self
            .slots
            .values()
            .map(|slot| JobStatus {
                id: slot.job.lease.job,
                queue: slot.job.queue.clone(),
                state: match (slot.state, slot.sent.is_some()) {
                    (SlotState::Starting, _) => "starting",
                    (SlotState::Running, false) => "running",
                    (SlotState::Running, true) => "stopping",
                    (SlotState::Done, _) => "recording",
                },
                elapsed: self.now.saturating_since(slot.claimed_at),
            })
            .collect();
        Status {
            phase: self.phase(),
            signals: self.signals,
            jobs,
            counters: self.counters.clone(),
        }
    }

    /// Feed one event that happened at `now`.
    pub fn handle(&mut self, event: Event, now: Instant) {
        // Time never goes backwards for the machine, whatever the driver does.
        self.now = self.now.max(now);
        if matches!(self.inner, Inner::Stopped { .. }) {
            return;
        }
        match event {
            Event::Signal(Signal::Usr1) => {
                let status = self.status();
                self.actions.push_back(Action::ReportStatus(status));
            }
            Event::Signal(signal) => self.recv_shutdown_signal(signal),
            Event::TimerFired => self.on_timers(),
            Event::ClaimReply { request, result } => self.recv_claim_reply(request, result),
            Event::JobStarted { job } => self.recv_job_started(job),
            Event::StartFailed { job, error } => {
                self.recv_job_ended(job, Ended::StartFailed(error))
            }
            Event::JobExited { job, exit, output } => {
                self.recv_job_ended(job, Ended::Exited(exit, output))
            }
            Event::RecordReply { request, result } => self.recv_record_reply(request, result),
            Event::HeartbeatReply { request, result } => self.recv_heartbeat_reply(request, result),
            Event::LeaseLost { job } => self.lose_lease(job),
            Event::CancelRequested { job } => self.cancel(job),
            Event::StoreUnreachable => self.store_down("store unreachable"),
            Event::StoreReachable => self.store_reachable(),
            Event::Wake => {
                if self.inner == Inner::Running {
                    self.claim_wanted = true;
                }
            }
        }
        self.drive();
        self.check_invariants();
    }

    // ----- signals and phase transitions -----------------------------------

    fn recv_shutdown_signal(&mut self, signal: Signal) {
        self.signals += 1;
        match self.inner {
            Inner::Running => self.begin_drain(signal),
            Inner::Draining => {
                self.force_timeout(format!("{signal} #{}: forcing the stop", self.signals))
            }
            Inner::TimedOut => self.kill_now(signal),
            Inner::Stopped { .. } => {}
        }
    }

    fn begin_drain(&mut self, signal: Signal) {
        let now = self.now;
        self.inner = Inner::Draining;
        self.first_signal_at = Some(now);
        self.claim_wanted = false;
        if !planted::active(Bug::ClaimWhileDraining) {
            self.timers.stop(Timer::Poll);
        }
        self.timers
            .set(Timer::ShutdownDeadline, now + self.config.shutdown_timeout);
        self.timers
            .set(Timer::ExitDeadline, now + self.config.exit_bound());
        // A claim queued but not yet polled was never issued: withdraw it
        // (the signal arrived before the driver performed it).
        if let Some(pos) = self
            .actions
            .iter()
            .position(|a| matches!(a, Action::Claim { .. }))
        {
            self.actions.remove(pos);
            self.claim_in_flight = None;
        }
        let alive = self.alive();
        let mut text = format!(
            "running -> draining: {signal} received; {alive} job{} running, no new claims, drain deadline in {}",
            plural(alive),
            fmt_duration(self.config.shutdown_timeout)
        );
        if self.claim_in_flight.is_some() {
            text.push_str("; the claim in flight will be handed back");
        }
        text.push_str(" (a second signal stops jobs now)");
        self.note(NoteKind::Phase, text);
    }

    fn force_timeout(&mut self, cause: String) {
        let now = self.now;
        self.inner = Inner::TimedOut;
        self.timers.stop(Timer::ShutdownDeadline);
        self.timers
            .set(Timer::KillGrace, now + self.config.kill_grace);
        let alive = self.alive();
        self.note(
            NoteKind::Phase,
            format!(
                "draining -> timed-out: {cause}; sending SIGTERM to {alive} job{}, SIGKILL in {}",
                plural(alive),
                fmt_duration(self.config.kill_grace)
            ),
        );
        let ids: Vec<JobId> = self.slots.keys().copied().collect();
        for id in ids {
            self.stop_job(id, StopReason::Shutdown, JobSignal::Term);
        }
    }

    fn kill_now(&mut self, signal: Signal) {
        let alive = self.alive();
        self.note(
            NoteKind::Phase,
            format!(
                "timed-out: {signal} #{}: sending SIGKILL to {alive} job{} now",
                self.signals,
                plural(alive)
            ),
        );
        let ids: Vec<JobId> = self.slots.keys().copied().collect();
        for id in ids {
            self.stop_job(id, StopReason::Shutdown, JobSignal::Kill);
        }
    }

    fn stop(&mut self, cause: String) {
        let code = if self.interrupted || self.gave_up > 0 {
            EXIT_INTERRUPTED
        } else {
            EXIT_OK
        };
        let from = self.phase();
        self.inner = Inner::Stopped { code };
        self.timers = TimerTable::default();
        self.claim_wanted = false;
        self.note(
            NoteKind::Phase,
            format!("{from} -> stopped: {cause}; exit {code}"),
        );
        self.actions.push_back(Action::Exit { code });
    }

    // ----- timers -----------------------------------------------------------

    fn on_timers(&mut self) {
        let now = self.now;
        for fired in self.timers.take_expired(now) {
            match fired {
                Fired::Worker(Timer::Poll) => {
                    if self.inner == Inner::Running || self.planted_claims() {
                        self.actions.push_back(Action::Reap);
                        self.claim_wanted = true;
                        self.timers
                            .set(Timer::Poll, now + self.config.poll_interval);
                    }
                }
                Fired::Worker(Timer::Heartbeat) => {
                    let skip = planted::active(Bug::NoHeartbeatWhileDraining)
                        && self.inner != Inner::Running;
                    if !skip {
                        self.send_heartbeat();
                    }
                    self.timers
                        .set(Timer::Heartbeat, now + self.config.heartbeat_interval());
                }
                Fired::Worker(Timer::ShutdownDeadline) => {
                    if self.inner == Inner::Draining {
                        let cause = format!(
                            "shutdown timeout ({}) passed",
                            fmt_duration(self.config.shutdown_timeout)
                        );
                        self.force_timeout(cause);
                    }
                }
                Fired::Worker(Timer::KillGrace) => {
                    let ids: Vec<JobId> = self.slots.keys().copied().collect();
                    for id in ids {
                        self.stop_job(id, StopReason::Shutdown, JobSignal::Kill);
                    }
                }
                Fired::Worker(Timer::StoreRetry) => self.record_blocked = false,
                Fired::Worker(Timer::ExitDeadline) => self.give_up(),
                Fired::Job(id, JobTimer::Timeout) => {
                    if let Some(timeout) = self.slots.get(&id).and_then(|s| s.job.spec.timeout()) {
                        self.stop_job(id, StopReason::Timeout(timeout), JobSignal::Term);
                    }
                }
                Fired::Job(id, JobTimer::Kill) => {
                    if let Some(reason) = self.slots.get(&id).and_then(|s| s.stop) {
                        self.stop_job(id, reason, JobSignal::Kill);
                    }
                }
                Fired::Job(id, JobTimer::LeaseExpiry) => {
                    if self.slots.get(&id).is_some_and(Slot::alive) {
                        self.note_job(id, "lease expired without a heartbeat; stopping it, another worker may run it".into());
                        self.stop_job(id, StopReason::LeaseLost, JobSignal::Term);
                    }
                }
            }
        }
    }

    /// The store stayed unreachable past the exit bound: leave what is not
    /// recorded to lease expiry, so another worker runs those jobs again.
    fn give_up(&mut self) {
        if matches!(self.inner, Inner::Stopped { .. }) {
            return;
        }
        let ids: Vec<JobId> = self.slots.keys().copied().collect();
        self.gave_up = ids.len();
        let leases: Vec<Lease> = self.slots.values().map(|slot| slot.job.lease).collect();
        for lease in leases {
            self.abandon(lease);
        }
        for id in &ids {
            let alive = self.slots.get(id).is_some_and(Slot::alive);
            let text = if alive {
                "still alive at the exit deadline; left to its lease".to_string()
            } else {
                "outcome not recorded by the exit deadline; left to its lease".to_string()
            };
            self.note_job(*id, text);
        }
        self.slots.clear();
        self.claim_in_flight = None;
        let cause = format!(
            "exit deadline ({}) passed with {} job{} unrecorded",
            fmt_duration(self.config.exit_bound()),
            ids.len(),
            plural(ids.len())
        );
        self.stop(cause);
    }

    // ----- claims and starts -------------------------------------------------

    fn recv_claim_reply(&mut self, request: u64, reply: Result<Vec<ClaimedJob>, StoreFailure>) {
        let in_flight = self.claim_in_flight.filter(|(id, _, _)| *id == request);
        let Some((_, max, sent_at)) = in_flight else {
            // A late or duplicate reply: jobs in it that we do not hold are
            // handed back so they do not wait for lease expiry.
            if let Ok(jobs) = reply {
                for job in jobs.into_iter().take(self.config.batch_max as usize) {
                    if !self.slots.contains_key(&job.lease.job) {
                        self.hand_back(job, self.now);
                    }
                }
            }
            return;
        };
        self.claim_in_flight = None;
        let jobs = match reply {
            Ok(jobs) => jobs,
            Err(StoreFailure(error)) => {
                self.counters.store_errors += 1;
                self.store_down(&format!("claim failed: {error}"));
                return;
            }
        };
        self.store_up();
        self.backlog = jobs.len() >= max as usize;
        let mut accepted = 0u32;
        for job in jobs.into_iter().take(max as usize) {
            let id = job.lease.job;
            if self.slots.contains_key(&id) {
                continue;
            }
            if self.inner != Inner::Running {
                self.hand_back(job, sent_at);
                continue;
            }
            accepted += 1;
            self.counters.claimed += 1;
            self.slots.insert(
                id,
                Slot {
                    job: job.clone(),
                    state: SlotState::Starting,
                    claimed_at: self.now,
                    stop: None,
                    want: None,
                    sent: None,
                    outcome: None,
                    sending: false,
                },
            );
            // The store started the lease no earlier than we sent the claim.
            self.timers
                .set_job(id, JobTimer::LeaseExpiry, sent_at + self.config.lease);
            self.actions.push_back(Action::Start { job });
        }
        if self.backlog && accepted > 0 {
            self.claim_wanted = true;
        }
    }

    fn hand_back(&mut self, job: ClaimedJob, claimed_at: Instant) {
        let id = job.lease.job;
        self.note_job(
            id,
            "claimed after the shutdown signal; handing it back unstarted".into(),
        );
        self.slots.insert(
            id,
            Slot {
                outcome: Some(Completion {
                    lease: job.lease,
                    outcome: Outcome::HandBack,
                    output: String::new(),
                }),
                job,
                state: SlotState::Done,
                claimed_at,
                stop: None,
                want: None,
                sent: None,
                sending: false,
            },
        );
    }

    fn recv_job_started(&mut self, id: JobId) {
        let now = self.now;
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.state != SlotState::Starting {
            return;
        }
        slot.state = SlotState::Running;
        if let Some(timeout) = slot.job.spec.timeout() {
            self.timers.set_job(id, JobTimer::Timeout, now + timeout);
        }
        self.apply_signals(id);
    }

    // ----- stopping jobs ------------------------------------------------------

    /// Ask for `signal` on a job for `reason`: TERM arms the kill timer, KILL
    /// goes at once. The first reason sticks, except that a lost lease (we may
    /// no longer record anything) and a cancel (better than a requeue) win
    /// over a shutdown.
    fn stop_job(&mut self, id: JobId, reason: StopReason, signal: JobSignal) {
        let now = self.now;
        let kill_grace = self.config.kill_grace;
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if !slot.alive() {
            return;
        }
        slot.stop = match (slot.stop, reason) {
            (None, reason) => Some(reason),
            (_, StopReason::LeaseLost) => Some(StopReason::LeaseLost),
            (Some(StopReason::Shutdown), StopReason::Cancel) => Some(StopReason::Cancel),
            (existing, _) => existing,
        };
        if slot.want.is_none_or(|want| want < signal) {
            slot.want = Some(signal);
        }
        if signal == JobSignal::Term {
            self.timers
                .set_job_earliest(id, JobTimer::Kill, now + kill_grace);
        }
        self.timers.stop_job(id, JobTimer::Timeout);
        self.apply_signals(id);
    }

    /// Send what a running job should have had and has not.
    fn apply_signals(&mut self, id: JobId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.state != SlotState::Running {
            return;
        }
        if let Some(want) = slot.want {
            if slot.sent.is_none_or(|sent| sent < want) {
                slot.sent = Some(want);
                self.actions.push_back(Action::Signal {
                    job: id,
                    signal: want,
                });
                if want == JobSignal::Kill {
                    self.timers.stop_job(id, JobTimer::Kill);
                }
            }
        }
    }

    fn cancel(&mut self, id: JobId) {
        if self.slots.get(&id).is_some_and(Slot::alive) {
            self.note_job(id, "cancel requested; stopping it".into());
            self.stop_job(id, StopReason::Cancel, JobSignal::Term);
        }
    }

    fn lose_lease(&mut self, id: JobId) {
        if self.slots.get(&id).is_some_and(Slot::alive) {
            self.note_job(
                id,
                "lease lost; stopping it, another worker may run it".into(),
            );
            self.stop_job(id, StopReason::LeaseLost, JobSignal::Term);
        }
    }

    fn recv_job_ended(&mut self, id: JobId, ended: Ended) {
        let now = self.now;
        let phase = self.phase();
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if !slot.alive() {
            return;
        }
        let elapsed = now.saturating_since(slot.claimed_at);
        // A stop reason only applies if a signal actually reached the job;
        // otherwise it finished on its own.
        let reason = if slot.sent.is_some() || slot.stop == Some(StopReason::LeaseLost) {
            slot.stop
        } else {
            None
        };
        let (outcome, output, how) = match ended {
            Ended::StartFailed(error) => {
                let outcome = match reason {
                    Some(StopReason::Cancel) => Outcome::Cancelled,
                    _ => Outcome::Failed {
                        exit_code: None,
                        error: format!("could not start: {error}"),
                    },
                };
                (outcome, String::new(), format!("could not start: {error}"))
            }
            Ended::Exited(exit, output) => {
                let outcome = match reason {
                    // Exit 0 is the job saying its work is done, even after a
                    // TERM (a job that ignored it and finished in the grace
                    // period): requeueing it would run a finished job's side
                    // effects again. A job that stops early on TERM and wants
                    // to run again exits non-zero (143 by convention). (With
                    // the lease lost nothing is recorded at all, below.)
                    _ if exit.success() => Outcome::Succeeded,
                    None => Outcome::Failed {
                        exit_code: exit.code(),
                        error: exit.to_string(),
                    },
                    Some(StopReason::Timeout(limit)) => Outcome::Failed {
                        exit_code: exit.code(),
                        error: format!("timed out after {}", fmt_duration(limit)),
                    },
                    Some(StopReason::Shutdown) | Some(StopReason::LeaseLost) => {
                        Outcome::Interrupted {
                            reason: "worker shutdown".to_string(),
                        }
                    }
                    Some(StopReason::Cancel) => Outcome::Cancelled,
                };
                (
                    outcome,
                    tail(&output, OUTPUT_LIMIT).to_string(),
                    exit.to_string(),
                )
            }
        };
        slot.state = SlotState::Done;
        let lease = slot.job.lease;
        self.timers.forget_job(id);
        if (matches!(outcome, Outcome::Interrupted { .. }) || reason == Some(StopReason::LeaseLost))
            && phase != Phase::Running
        {
            self.interrupted = true;
        }
        if reason == Some(StopReason::LeaseLost) {
            self.slots.remove(&id);
            self.counters.lost += 1;
            self.abandon(lease);
            self.note_job(
                id,
                format!(
                    "{how} after {}; lease lost, nothing recorded",
                    fmt_duration(elapsed)
                ),
            );
            return;
        }
        let text = format!(
            "{how} after {} -> {}",
            fmt_duration(elapsed),
            outcome.name()
        );
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.outcome = Some(Completion {
                lease,
                outcome,
                output,
            });
        }
        self.note_job(id, text);
    }

    // ----- store replies -------------------------------------------------------

    fn recv_record_reply(
        &mut self,
        request: u64,
        reply: Result<Vec<(JobId, RecordResult)>, StoreFailure>,
    ) {
        if !matches!(self.records_in_flight, Some((id, _)) if id == request) {
            return;
        }
        let Some((_, sent)) = self.records_in_flight.take() else {
            return;
        };
        match reply {
            Ok(results) => {
                self.store_up();
                self.record_failures = 0;
                let results: BTreeMap<JobId, RecordResult> = results.into_iter().collect();
                for id in sent {
                    match results.get(&id) {
                        Some(RecordResult::Recorded) => self.recorded(id),
                        Some(RecordResult::Refused) => {
                            if self.slots.remove(&id).is_some() {
                                self.counters.refused += 1;
                                self.note_job(id, "outcome refused by the store: stale lease, another worker owns the job".into());
                            }
                        }
                        None => {
                            if let Some(slot) = self.slots.get_mut(&id) {
                                slot.sending = false;
                            }
                        }
                    }
                }
                if self.backlog && self.inner == Inner::Running {
                    self.claim_wanted = true;
                }
            }
            Err(StoreFailure(error)) => {
                self.counters.store_errors += 1;
                for id in sent {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.sending = false;
                    }
                }
                self.record_failures = self.record_failures.saturating_add(1);
                self.record_blocked = true;
                let backoff = store_backoff(self.record_failures, self.config.max_store_backoff);
                self.timers.set(Timer::StoreRetry, self.now + backoff);
                self.store_down(&format!("recording outcomes failed: {error}"));
            }
        }
    }

    fn recorded(&mut self, id: JobId) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        let Some(completion) = slot.outcome else {
            return;
        };
        match completion.outcome {
            Outcome::Succeeded => self.counters.succeeded += 1,
            Outcome::Failed { .. } => self.counters.failed += 1,
            Outcome::Interrupted { .. } => self.counters.interrupted += 1,
            Outcome::Cancelled => self.counters.cancelled += 1,
            Outcome::HandBack => self.counters.handed_back += 1,
        }
        if self.inner != Inner::Running {
            self.note_job(id, format!("recorded: {}", completion.outcome.name()));
        }
    }

    fn send_heartbeat(&mut self) {
        if self.heartbeat_in_flight.is_some() {
            return;
        }
        let leases: Vec<Lease> = self.slots.values().map(|slot| slot.job.lease).collect();
        let ids = leases.iter().map(|lease| lease.job).collect();
        let request = self.request_id();
        self.heartbeat_in_flight = Some((request, self.now, ids));
        self.actions.push_back(Action::Heartbeat {
            request,
            phase: self.phase(),
            leases,
        });
    }

    fn recv_heartbeat_reply(&mut self, request: u64, reply: Result<HeartbeatAnswer, StoreFailure>) {
        if !matches!(self.heartbeat_in_flight, Some((id, _, _)) if id == request) {
            return;
        }
        let Some((_, sent_at, ids)) = self.heartbeat_in_flight.take() else {
            return;
        };
        match reply {
            Ok(answer) => {
                self.store_up();
                for id in ids {
                    if answer.lost.contains(&id) {
                        continue;
                    }
                    if self.slots.get(&id).is_some_and(Slot::alive) {
                        self.timers
                            .set_job(id, JobTimer::LeaseExpiry, sent_at + self.config.lease);
                    }
                }
                for id in answer.lost {
                    self.lose_lease(id);
                }
                for id in answer.cancelled {
                    self.cancel(id);
                }
            }
            Err(StoreFailure(error)) => {
                self.counters.store_errors += 1;
                self.store_down(&format!("heartbeat failed: {error}"));
            }
        }
    }

    fn store_down(&mut self, why: &str) {
        if self.store_up {
            self.store_up = false;
            self.note(NoteKind::Store, why.to_string());
        }
    }

    fn store_up(&mut self) {
        if !self.store_up {
            self.store_up = true;
            self.note(NoteKind::Store, "store reachable again".into());
        }
    }

    fn store_reachable(&mut self) {
        self.store_up();
        self.record_blocked = false;
        self.timers.stop(Timer::StoreRetry);
    }

    // ----- after every event ------------------------------------------------------

    /// Issue whatever the state now calls for: a claim, an outcome batch, the exit.
    fn drive(&mut self) {
        if matches!(self.inner, Inner::Stopped { .. }) {
            return;
        }
        // Slots count live jobs: a finished job waiting for its outcome write
        // does not hold one, so claims overlap with writes. Held jobs stay
        // bounded at twice the concurrency.
        let concurrency = self.config.concurrency as usize;
        let alive = self.alive();
        let free = concurrency
            .saturating_sub(alive)
            .min((2 * concurrency).saturating_sub(self.slots.len()));
        // Claim in worthwhile batches: when a quarter of the slots (up to the
        // batch limit) are free, or when nothing runs at all.
        let low_water = (concurrency / 4).clamp(1, self.config.batch_max as usize);
        let free = if free >= low_water || alive == 0 {
            free
        } else {
            0
        };
        if (self.inner == Inner::Running || self.planted_claims())
            && self.claim_wanted
            && self.claim_in_flight.is_none()
            && free > 0
        {
            let max = (free as u32).min(self.config.batch_max);
            // Invariant 1: no claim after the first shutdown signal.
            assert!(
                self.first_signal_at.is_none() || self.planted_claims(),
                "claim after a shutdown signal"
            );
            let request = self.request_id();
            self.claim_in_flight = Some((request, max, self.now));
            self.claim_wanted = false;
            self.actions.push_back(Action::Claim { request, max });
        }
        if self.records_in_flight.is_none() && !self.record_blocked {
            let mut completions = Vec::new();
            let mut ids = Vec::new();
            for (id, slot) in self.slots.iter_mut() {
                if completions.len() >= self.config.batch_max as usize {
                    break;
                }
                if let (Some(completion), false) = (&slot.outcome, slot.sending) {
                    slot.sending = true;
                    completions.push(completion.clone());
                    ids.push(*id);
                }
            }
            if !completions.is_empty() {
                let request = self.request_id();
                self.records_in_flight = Some((request, ids));
                self.actions.push_back(Action::Record {
                    request,
                    completions,
                });
            }
        }
        if matches!(self.inner, Inner::Draining | Inner::TimedOut)
            && self.slots.is_empty()
            && self.claim_in_flight.is_none()
        {
            let cause = if self.counters.claimed == 0 && self.counters.handed_back == 0 {
                "idle".to_string()
            } else {
                "every job finished or stopped, every outcome recorded".to_string()
            };
            self.stop(cause);
        }
    }

    /// A planted bug (tests only, see [`crate::planted`]): claims go on while Draining.
    fn planted_claims(&self) -> bool {
        self.inner == Inner::Draining && planted::active(Bug::ClaimWhileDraining)
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    fn check_invariants(&self) {
        // Invariant 2: running jobs never exceed concurrency.
        assert!(
            self.slots.values().filter(|slot| slot.alive()).count()
                <= self.config.concurrency as usize,
            "more jobs alive than concurrency allows"
        );
        assert!(self.slots.len() <= (2 * self.config.concurrency + self.config.batch_max) as usize);
        if let Inner::Stopped { code } = self.inner {
            // Invariant 5: exit only once every job is done and recorded (or given up).
            assert!(self.slots.is_empty(), "stopped while holding jobs");
            // Invariant 8: 0 only if nothing was interrupted.
            assert!(
                code != EXIT_OK || (!self.interrupted && self.gave_up == 0),
                "exit 0 after an interruption"
            );
        }
        if self.first_signal_at.is_some() {
            assert!(
                self.inner != Inner::Running,
                "running after a shutdown signal"
            );
        }
    }

    // ----- notes ------------------------------------------------------------------

    fn note(&mut self, kind: NoteKind, text: String) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.pop_front();
            self.notes_dropped += 1;
        }
        self.notes.push_back(Note {
            at: self.now,
            kind,
            text,
        });
    }

    fn note_job(&mut self, id: JobId, text: String) {
        self.note(NoteKind::Job, format!("job {id}: {text}"));
    }
}

enum Ended {
    StartFailed(String),
    Exited(Exit, String),
}

/// Wait before retrying a failed outcome write: 100ms, doubling, capped.
fn store_backoff(failures: u32, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_millis(100u64 << exp).min(cap)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1.5s`, `30s`, `250ms`, `2m` — short and exact enough for traces.
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}.{:01}s", ms / 1000, (ms % 1000) / 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let cap = Duration::from_secs(2);
        assert_eq!(store_backoff(1, cap), Duration::from_millis(100));
        assert_eq!(store_backoff(2, cap), Duration::from_millis(200));
        assert_eq!(store_backoff(5, cap), Duration::from_millis(1600));
        assert_eq!(store_backoff(6, cap), cap);
        assert_eq!(store_backoff(u32::MAX, cap), cap);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_secs(30)), "30s");
        assert_eq!(fmt_duration(Duration::from_secs(120)), "2m");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn idle_worker_stops_at_once_on_term() {
        let mut m = Machine::new(Config::default(), Instant::ZERO).unwrap();
        assert_eq!(m.poll_action(), Some(Action::Claim { request: 1, max: 4 }));
        m.handle(
            Event::ClaimReply {
                request: 1,
                result: Ok(vec![]),
            },
            Instant::from_millis(5),
        );
        m.handle(Event::Signal(Signal::Term), Instant::from_millis(10));
        assert_eq!(m.phase(), Phase::Stopped);
        assert_eq!(m.poll_action(), Some(Action::Exit { code: 0 }));
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn invalid_config_is_refused() {
        let config = Config {
            concurrency: 0,
            ..Config::default()
        };
        assert_eq!(
            Machine::new(config, Instant::ZERO).err(),
            Some(ConfigError::Concurrency(0))
        );
    }
}
