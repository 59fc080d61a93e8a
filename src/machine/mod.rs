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

pub use config::{
    Config, ConfigError, MAX_BATCH, MAX_CONCURRENCY, MAX_SHUTDOWN_TIMEOUT, MAX_TIMING, MIN_LEASE,
    MIN_POLL_INTERVAL,
};
pub use time::{Fired, Instant, JobTimer, Timer, TimerTable};

use crate::job::{
    tail, ClaimedJob, Completion, Exit, JobId, Lease, Outcome, RecordResult, OUTPUT_LIMIT,
};
pub use crate::job::{HeartbeatAnswer, JobSignal, Phase};
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

/// A store call that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFailure {
    /// Why, in words.
    pub message: String,
    /// An outage or a busy database: the same call may succeed later. A
    /// permanent failure means the store refused this request as it is, so
    /// repeating it unchanged would fail again.
    pub transient: bool,
}

impl StoreFailure {
    /// A failure that may pass (unreachable, timed out, busy).
    pub fn transient(message: impl Into<String>) -> Self {
        StoreFailure {
            message: message.into(),
            transient: true,
        }
    }

    /// The store refused the request itself (invalid data, a constraint).
    pub fn permanent(message: impl Into<String>) -> Self {
        StoreFailure {
            message: message.into(),
            transient: false,
        }
    }
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
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
        /// The run: the job and the lease it was started under.
        lease: Lease,
    },
    /// The executor could not start the job.
    StartFailed {
        /// The run: the job and the lease it was started under.
        lease: Lease,
        /// Why, in words.
        error: String,
    },
    /// The job's process or container ended.
    JobExited {
        /// The run: the job and the lease it was started under.
        lease: Lease,
        /// How it ended.
        exit: Exit,
        /// Tail of its captured output, as bytes.
        output: Vec<u8>,
    },
    /// The answer to [`Action::Record`].
    RecordReply {
        /// The `request` of the record answered.
        request: u64,
        /// Per job, or why none.
        result: Result<Vec<(JobId, RecordResult)>, StoreFailure>,
    },
    /// The answer to [`Action::Reap`].
    ReapReply {
        /// The `request` of the reap answered.
        request: u64,
        /// How many expired leases were requeued, or why not.
        result: Result<u64, StoreFailure>,
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
        /// Echoed in the reply, so a late or repeated reply is recognised;
        /// also the claim's id in the store, so that a claim whose reply is
        /// lost can be recovered by a later heartbeat.
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
        /// Ids of claims whose reply never arrived (they may have committed):
        /// the store hands over the jobs they took.
        recover: Vec<u64>,
    },
    /// The run under this lease is over for this worker (recorded, refused,
    /// superseded, lost or given up): the executor may let go of what it
    /// keeps for it (e.g. remove its container). Never answered.
    Release {
        /// The run.
        lease: Lease,
    },
    /// Requeue jobs whose lease expired (any worker's); answer with
    /// [`Event::ReapReply`]. At most one is in flight.
    Reap {
        /// Echoed in the reply.
        request: u64,
    },
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
    /// Outcomes the store refused as invalid, recorded as failed instead,
    /// or (if even that was refused) left to their lease.
    pub invalid: u64,
    /// Outcomes dropped because a newer claim of the same job arrived (our
    /// lease had been reaped and the job claimed again).
    pub superseded: u64,
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
    /// A write of its outcome failed transiently: it is flushed before any
    /// new claim or reap, so that our own reap or claim cannot supersede an
    /// outcome the store would still accept.
    record_failed: bool,
    /// The store refused a batch holding this outcome as invalid: it is
    /// written on its own, to find which one the store refuses.
    solo: bool,
    /// The store refused this outcome as invalid: it was replaced by a
    /// failure without output. Refused again, it is left to its lease.
    degraded: bool,
    /// When the store may consider our lease expired (by the time we sent
    /// the call that set it; the store applied it later).
    lease_deadline: Instant,
    /// A newer claim of this job (and when it was sent) that arrived while
    /// this superseded run was still alive: it starts once the old process
    /// is gone.
    next: Option<(ClaimedJob, Instant)>,
}

impl Slot {
    fn new(
        job: ClaimedJob,
        state: SlotState,
        claimed_at: Instant,
        lease_deadline: Instant,
    ) -> Slot {
        Slot {
            job,
            state,
            claimed_at,
            stop: None,
            want: None,
            sent: None,
            outcome: None,
            sending: false,
            record_failed: false,
            solo: false,
            degraded: false,
            lease_deadline,
            next: None,
        }
    }

    fn alive(&self) -> bool {
        matches!(self.state, SlotState::Starting | SlotState::Running)
    }

    fn waiting_to_record(&self) -> bool {
        self.outcome.is_some() && !self.sending
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

/// Most claims whose reply was lost that the machine tries to recover;
/// beyond that, their jobs return to the queue when their lease expires.
pub const MAX_UNCERTAIN_CLAIMS: usize = 16;

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
    /// The record batch in flight, by lease (a newer claim of the same job
    /// must not be mistaken for the one recorded).
    records_in_flight: Option<(u64, Vec<Lease>)>,
    /// Consecutive transient failures of outcome writes (sets the backoff).
    record_failures: u32,
    /// Outcome writes wait for the retry timer (or any store success).
    record_blocked: bool,
    /// A reap is due (poll timer) but not yet sent.
    reap_wanted: bool,
    reap_in_flight: Option<u64>,
    /// Request id, send time, leases and recovered claim ids of the heartbeat in flight.
    heartbeat_in_flight: Option<(u64, Instant, Vec<JobId>, Vec<u64>)>,
    /// A heartbeat fell due while one was in flight: it goes as soon as that
    /// one is answered, not a whole interval later (slow round trips would
    /// otherwise let leases run short).
    heartbeat_due: bool,
    /// Claims whose reply never arrived (timed out or connection lost):
    /// they may have committed, so the next heartbeat asks for their jobs.
    uncertain: VecDeque<u64>,
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
            reap_wanted: false,
            reap_in_flight: None,
            heartbeat_in_flight: None,
            heartbeat_due: false,
            uncertain: VecDeque::new(),
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
            Event::JobStarted { lease } => self.recv_job_started(lease),
            Event::StartFailed { lease, error } => {
                self.recv_job_ended(lease, Ended::StartFailed(error))
            }
            Event::JobExited {
                lease,
                exit,
                output,
            } => self.recv_job_ended(lease, Ended::Exited(exit, output)),
            Event::RecordReply { request, result } => self.recv_record_reply(request, result),
            Event::ReapReply { request, result } => self.recv_reap_reply(request, result),
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
        self.reap_wanted = false;
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
        if !self.uncertain.is_empty() {
            text.push_str("; claims whose reply was lost will be recovered and handed back");
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
                        self.reap_wanted = true;
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
                    let Some(deadline) = self
                        .slots
                        .get(&id)
                        .filter(|slot| slot.alive())
                        .map(|slot| slot.lease_deadline)
                    else {
                        continue;
                    };
                    self.note_job(
                        id,
                        format!(
                            "no heartbeat has extended its lease, which may expire in {}; stopping it (SIGKILL then) before another worker can run it",
                            fmt_duration(deadline.saturating_since(now))
                        ),
                    );
                    self.stop_job(id, StopReason::LeaseLost, JobSignal::Term);
                    // Dead before the store can hand the job to anyone else.
                    self.timers.set_job_earliest(id, JobTimer::Kill, deadline);
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
        self.gave_up += ids.len();
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
        for id in ids.iter().copied() {
            match self.slots.get(&id).map(|slot| (slot.state, slot.sent)) {
                // Still alive: it must not run on beside the copy another
                // worker will start once the lease expires.
                Some((SlotState::Running, sent)) => {
                    if sent != Some(JobSignal::Kill) {
                        self.actions.push_back(Action::Signal {
                            job: id,
                            signal: JobSignal::Kill,
                        });
                    }
                    self.slots.remove(&id);
                }
                // Not yet started: the executor's exit clean-up stops it.
                Some((SlotState::Starting, _)) => {
                    self.slots.remove(&id);
                }
                _ => {
                    self.release(id);
                }
            }
        }
        self.claim_in_flight = None;
        self.uncertain.clear();
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
            Err(failure) => {
                self.counters.store_errors += 1;
                if failure.transient {
                    // It may have committed before the reply was lost.
                    self.remember_uncertain(request);
                }
                self.store_down(&format!("claim failed: {failure}"));
                return;
            }
        };
        self.store_up();
        self.backlog = jobs.len() >= max as usize;
        let mut accepted = 0u32;
        for job in jobs.into_iter().take(max as usize) {
            if self.take_claimed(job, sent_at) {
                accepted += 1;
            }
        }
        if self.backlog && accepted > 0 {
            self.claim_wanted = true;
        }
    }

    fn remember_uncertain(&mut self, claim: u64) {
        if self.uncertain.len() >= MAX_UNCERTAIN_CLAIMS {
            self.uncertain.pop_front();
        }
        self.uncertain.push_back(claim);
    }

    /// A job handed to us (by a claim sent at `sent_at`, or recovered):
    /// start it if we run and a slot is free, else hand it back. Returns
    /// whether it was accepted to run.
    fn take_claimed(&mut self, job: ClaimedJob, sent_at: Instant) -> bool {
        let id = job.lease.job;
        let lease_deadline = sent_at + self.config.lease;
        if let Some(slot) = self.slots.get_mut(&id) {
            if job.lease.token <= slot.job.lease.token {
                // The same claim again (or an older one): already ours.
                return false;
            }
            // A newer claim of a job we still hold: the store reaped our
            // lease and the job was claimed again (by us). The old run's
            // outcome can never be recorded; the new claim must run.
            let old = slot.job.lease.token;
            if slot.alive() {
                if let Some((previous, previous_at)) = slot.next.replace((job, sent_at)) {
                    self.hand_back(previous, previous_at);
                }
                self.note_job(
                    id,
                    format!("claimed again while its run under lease {old} is still alive: that run is killed, the new one starts after it"),
                );
                self.stop_job(id, StopReason::LeaseLost, JobSignal::Kill);
                return true;
            }
            self.release(id);
            self.counters.superseded += 1;
            self.note_job(
                id,
                format!("claimed again: the unrecorded outcome of lease {old} is superseded and dropped"),
            );
        }
        // A recovered claim may have taken a slot since this claim was sized.
        let room =
            self.alive() < self.config.concurrency as usize && self.slots.len() < self.max_held();
        if self.inner != Inner::Running || !room {
            self.hand_back(job, sent_at);
            return false;
        }
        if self.now >= self.lease_stop_at(lease_deadline) {
            // The reply came so late that the lease is about to expire: the
            // job would have to be stopped at once, and may already be
            // another worker's. Give it back instead.
            self.note_job(
                id,
                "its claim was answered too late to run within the lease; handing it back".into(),
            );
            self.hand_back_quietly(job, sent_at);
            return false;
        }
        self.counters.claimed += 1;
        self.slots.insert(
            id,
            Slot::new(job.clone(), SlotState::Starting, self.now, lease_deadline),
        );
        self.arm_lease_timer(id, lease_deadline);
        self.actions.push_back(Action::Start { job });
        true
    }

    /// When a job must be sent TERM so that it is dead (KILL at the
    /// deadline) before its lease can expire in the store: a quarter lease
    /// before the deadline.
    fn lease_stop_at(&self, deadline: Instant) -> Instant {
        let margin = self.config.lease / 4;
        Instant::from_origin(deadline.since_origin().saturating_sub(margin))
    }

    fn arm_lease_timer(&mut self, id: JobId, deadline: Instant) {
        let at = self.lease_stop_at(deadline);
        self.timers.set_job(id, JobTimer::LeaseExpiry, at);
    }

    fn hand_back(&mut self, job: ClaimedJob, claimed_at: Instant) {
        self.note_job(
            job.lease.job,
            "claimed after the shutdown signal; handing it back unstarted".into(),
        );
        self.hand_back_quietly(job, claimed_at);
    }

    /// Record a hand-back (requeued, no counter changes) for a claim we will
    /// not run.
    fn hand_back_quietly(&mut self, job: ClaimedJob, claimed_at: Instant) {
        let id = job.lease.job;
        if self.slots.contains_key(&id) || self.slots.len() >= self.max_held() {
            // Its slot is taken by another run of the same job (or no slot is
            // left at all): the store's lease expiry will hand it back.
            self.abandon(job.lease);
            return;
        }
        let mut slot = Slot::new(
            job,
            SlotState::Done,
            claimed_at,
            claimed_at + self.config.lease,
        );
        slot.outcome = Some(Completion {
            lease: slot.job.lease,
            outcome: Outcome::HandBack,
            output: Vec::new(),
        });
        self.slots.insert(id, slot);
    }

    fn recv_job_started(&mut self, lease: Lease) {
        let now = self.now;
        let id = lease.job;
        let Some(slot) = self.slot_of(lease) else {
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

    /// The store says our lease is gone: another worker may already run the
    /// job, so it is killed at once rather than given a grace period.
    fn lose_lease(&mut self, id: JobId) {
        if self.slots.get(&id).is_some_and(Slot::alive) {
            self.note_job(
                id,
                "lease lost; killing it now, another worker may run it".into(),
            );
            self.stop_job(id, StopReason::LeaseLost, JobSignal::Kill);
        }
    }

    fn recv_job_ended(&mut self, lease: Lease, ended: Ended) {
        let now = self.now;
        let phase = self.phase();
        let id = lease.job;
        let Some(slot) = self.slot_of(lease) else {
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
                (outcome, Vec::new(), format!("could not start: {error}"))
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
                let mut output = output;
                if output.len() > OUTPUT_LIMIT {
                    output = tail(&output, OUTPUT_LIMIT).to_vec();
                }
                (outcome, output, exit.to_string())
            }
        };
        slot.state = SlotState::Done;
        self.timers.forget_job(id);
        if (matches!(outcome, Outcome::Interrupted { .. }) || reason == Some(StopReason::LeaseLost))
            && phase != Phase::Running
        {
            self.interrupted = true;
        }
        if reason == Some(StopReason::LeaseLost) {
            let next = self.release(id).and_then(|slot| slot.next);
            self.counters.lost += 1;
            self.abandon(lease);
            self.note_job(
                id,
                format!(
                    "{how} after {}; lease lost, nothing recorded",
                    fmt_duration(elapsed)
                ),
            );
            if let Some((next, sent_at)) = next {
                // The newer claim waited for this run to be gone.
                self.take_claimed(next, sent_at);
            }
            return;
        }
        let text = format!(
            "{how} after {} -> {}",
            fmt_duration(elapsed),
            outcome.name()
        );
        let store_down = !self.store_up || self.record_blocked;
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.outcome = Some(Completion {
                lease,
                outcome,
                output,
            });
            // An outcome that meets a store we know to be down is flushed
            // before any claim or reap once it is back.
            slot.record_failed = store_down;
        }
        self.note_job(id, text);
    }

    // ----- store replies -------------------------------------------------------

    /// Let go of a job's slot, telling the executor its run is over.
    fn release(&mut self, id: JobId) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        self.actions.push_back(Action::Release {
            lease: slot.job.lease,
        });
        Some(slot)
    }

    /// The slot holding exactly this lease (not a newer claim of the job).
    fn slot_of(&mut self, lease: Lease) -> Option<&mut Slot> {
        self.slots
            .get_mut(&lease.job)
            .filter(|slot| slot.job.lease == lease)
    }

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
                for lease in sent {
                    let Some(slot) = self.slot_of(lease) else {
                        continue;
                    };
                    match results.get(&lease.job) {
                        Some(RecordResult::Recorded) => self.recorded(lease.job),
                        Some(RecordResult::Refused) => {
                            self.release(lease.job);
                            self.counters.refused += 1;
                            self.note_job(lease.job, "outcome refused by the store: stale lease, another worker owns the job".into());
                        }
                        None => slot.sending = false,
                    }
                }
                if self.backlog && self.inner == Inner::Running {
                    self.claim_wanted = true;
                }
            }
            Err(failure) if failure.transient => {
                self.counters.store_errors += 1;
                for lease in &sent {
                    if let Some(slot) = self.slot_of(*lease) {
                        slot.sending = false;
                    }
                }
                // Every outcome now waiting is flushed before any claim or
                // reap, not only this batch.
                for slot in self.slots.values_mut() {
                    if slot.outcome.is_some() {
                        slot.record_failed = true;
                    }
                }
                self.record_failures = self.record_failures.saturating_add(1);
                self.record_blocked = true;
                let backoff = store_backoff(self.record_failures, self.config.max_store_backoff);
                self.timers.set(Timer::StoreRetry, self.now + backoff);
                self.store_down(&format!("recording outcomes failed: {failure}"));
            }
            Err(failure) => {
                // The store is up but refused the batch as invalid: repeating
                // it would fail forever. Find the bad outcome by writing them
                // one by one, then record it as failed without its output.
                self.counters.store_errors += 1;
                if sent.len() > 1 {
                    for lease in &sent {
                        if let Some(slot) = self.slot_of(*lease) {
                            slot.sending = false;
                            slot.solo = true;
                        }
                    }
                    self.note(
                        NoteKind::Store,
                        format!(
                            "the store refused a batch of {} outcomes ({failure}); writing them one by one",
                            sent.len()
                        ),
                    );
                    return;
                }
                for lease in sent {
                    self.refused_as_invalid(lease, &failure);
                }
            }
        }
    }

    /// The store refused this one outcome as invalid.
    fn refused_as_invalid(&mut self, lease: Lease, failure: &StoreFailure) {
        let Some(slot) = self.slot_of(lease) else {
            return;
        };
        slot.sending = false;
        slot.solo = true;
        let degradable = matches!(
            slot.outcome.as_ref().map(|c| &c.outcome),
            Some(Outcome::Succeeded | Outcome::Failed { .. } | Outcome::Cancelled)
        );
        if degradable && !slot.degraded {
            let exit_code = match slot.outcome.as_ref().map(|c| &c.outcome) {
                Some(Outcome::Failed { exit_code, .. }) => *exit_code,
                Some(Outcome::Succeeded) => Some(0),
                _ => None,
            };
            slot.degraded = true;
            slot.outcome = Some(Completion {
                lease,
                outcome: Outcome::Failed {
                    exit_code,
                    error: format!(
                        "the store refused this job's outcome ({}); recorded as failed without its output",
                        failure.message
                    ),
                },
                output: Vec::new(),
            });
            self.counters.invalid += 1;
            self.note_job(
                lease.job,
                format!(
                    "the store refused its outcome ({failure}); recording it as failed instead"
                ),
            );
            return;
        }
        // Even the plainest outcome is refused: leave the job to its lease,
        // so the store's reaper gives it to a worker again.
        self.release(lease.job);
        self.gave_up += 1;
        self.abandon(lease);
        self.note_job(
            lease.job,
            format!("the store refused its outcome ({failure}); left to its lease"),
        );
    }

    fn recorded(&mut self, id: JobId) {
        let Some(slot) = self.release(id) else {
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

    fn recv_reap_reply(&mut self, request: u64, reply: Result<u64, StoreFailure>) {
        if self.reap_in_flight != Some(request) {
            return;
        }
        self.reap_in_flight = None;
        match reply {
            Ok(_) => self.store_up(),
            Err(failure) => {
                self.counters.store_errors += 1;
                self.store_down(&format!("reaping expired leases failed: {failure}"));
            }
        }
    }

    fn send_heartbeat(&mut self) {
        if self.heartbeat_in_flight.is_some() {
            self.heartbeat_due = true;
            return;
        }
        self.heartbeat_due = false;
        // Finished jobs waiting for their outcome write keep their lease too.
        let leases: Vec<Lease> = self.slots.values().map(|slot| slot.job.lease).collect();
        let ids = leases.iter().map(|lease| lease.job).collect();
        let recover: Vec<u64> = self.uncertain.iter().copied().collect();
        let request = self.request_id();
        self.heartbeat_in_flight = Some((request, self.now, ids, recover.clone()));
        self.actions.push_back(Action::Heartbeat {
            request,
            phase: self.phase(),
            leases,
            recover,
        });
    }

    fn recv_heartbeat_reply(&mut self, request: u64, reply: Result<HeartbeatAnswer, StoreFailure>) {
        if !matches!(self.heartbeat_in_flight, Some((id, _, _, _)) if id == request) {
            return;
        }
        let Some((_, sent_at, ids, recover)) = self.heartbeat_in_flight.take() else {
            return;
        };
        match reply {
            Ok(answer) => {
                self.store_up();
                let deadline = sent_at + self.config.lease;
                for id in ids {
                    if answer.lost.contains(&id) {
                        continue;
                    }
                    let Some(slot) = self.slots.get_mut(&id) else {
                        continue;
                    };
                    if slot.alive() && slot.stop != Some(StopReason::LeaseLost) {
                        slot.lease_deadline = deadline;
                        self.arm_lease_timer(id, deadline);
                    }
                }
                for id in answer.lost {
                    self.lose_lease(id);
                }
                for id in answer.cancelled {
                    self.cancel(id);
                }
                // Every claim asked about is answered, found or not.
                self.uncertain.retain(|claim| !recover.contains(claim));
                for job in answer.recovered {
                    let id = job.lease.job;
                    self.note_job(id, "recovered from a claim whose reply was lost".into());
                    self.take_claimed(job, sent_at);
                }
            }
            Err(failure) => {
                self.counters.store_errors += 1;
                if self.inner != Inner::Running && !recover.is_empty() {
                    // Shutting down: do not wait for the store to recover
                    // these; their jobs return when their lease expires.
                    self.uncertain.retain(|claim| !recover.contains(claim));
                    self.note(
                        NoteKind::Store,
                        format!(
                            "could not recover {} claim{} whose reply was lost; their jobs return to the queue when their lease expires",
                            recover.len(),
                            plural(recover.len())
                        ),
                    );
                }
                self.store_down(&format!("heartbeat failed: {failure}"));
            }
        }
        if self.heartbeat_due {
            self.send_heartbeat();
        }
    }

    fn store_down(&mut self, why: &str) {
        if self.store_up {
            self.store_up = false;
            self.note(NoteKind::Store, why.to_string());
        }
    }

    /// A store call succeeded: outcome writes waiting for their retry timer
    /// go now (the store is back, and they are flushed before any claim).
    fn store_up(&mut self) {
        if !self.store_up {
            self.store_up = true;
            self.note(NoteKind::Store, "store reachable again".into());
        }
        if self.record_blocked {
            self.record_blocked = false;
            self.timers.stop(Timer::StoreRetry);
        }
    }

    fn store_reachable(&mut self) {
        self.store_up();
    }

    // ----- after every event ------------------------------------------------------

    /// Outcomes whose write failed are waiting: until they are written, no
    /// claim and no reap goes out (either could supersede them).
    fn flushing(&self) -> bool {
        self.slots
            .values()
            .any(|slot| slot.record_failed && slot.outcome.is_some())
    }

    /// Issue whatever the state now calls for: a claim, an outcome batch, a
    /// reap, a recovery, the exit.
    fn drive(&mut self) {
        if matches!(self.inner, Inner::Stopped { .. }) {
            return;
        }
        let flushing = self.flushing();
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
            && !flushing
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
        if self.inner == Inner::Running
            && self.reap_wanted
            && self.reap_in_flight.is_none()
            && !flushing
        {
            let request = self.request_id();
            self.reap_wanted = false;
            self.reap_in_flight = Some(request);
            self.actions.push_back(Action::Reap { request });
        }
        if self.records_in_flight.is_none() && !self.record_blocked {
            self.send_record_batch();
        }
        // Shutting down with claims whose reply was lost: ask the store now
        // for their jobs, to hand them back before exiting.
        if self.inner != Inner::Running && !self.uncertain.is_empty() {
            self.send_heartbeat();
        }
        if matches!(self.inner, Inner::Draining | Inner::TimedOut)
            && self.slots.is_empty()
            && self.claim_in_flight.is_none()
            && self.uncertain.is_empty()
        {
            let cause = if self.counters.claimed == 0 && self.counters.handed_back == 0 {
                "idle".to_string()
            } else {
                "every job finished or stopped, every outcome recorded".to_string()
            };
            self.stop(cause);
        }
    }

    /// One record action: an outcome the store refused in a batch goes
    /// alone; otherwise up to `batch_max` outcomes at once.
    fn send_record_batch(&mut self) {
        let solo = self
            .slots
            .values()
            .find(|slot| slot.solo && slot.waiting_to_record())
            .map(|slot| slot.job.lease.job);
        let mut completions = Vec::new();
        let mut leases = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            if completions.len() >= self.config.batch_max as usize {
                break;
            }
            if solo.is_some_and(|only| only != *id) || (solo.is_none() && slot.solo) {
                continue;
            }
            if let (Some(completion), false) = (&slot.outcome, slot.sending) {
                slot.sending = true;
                completions.push(completion.clone());
                leases.push(slot.job.lease);
            }
        }
        if !completions.is_empty() {
            let request = self.request_id();
            self.records_in_flight = Some((request, leases));
            self.actions.push_back(Action::Record {
                request,
                completions,
            });
        }
    }

    /// A planted bug (tests only, see [`crate::planted`]): claims go on while Draining.
    fn planted_claims(&self) -> bool {
        self.inner == Inner::Draining && planted::active(Bug::ClaimWhileDraining)
    }

    /// Most jobs held at once: running, finished and waiting for their
    /// write, or being handed back. Claims are sized to stay within twice the
    /// concurrency; recovered and late claims may add a batch or two.
    fn max_held(&self) -> usize {
        (2 * (self.config.concurrency + self.config.batch_max)) as usize
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
        assert!(self.slots.len() <= self.max_held());
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
    Exited(Exit, Vec<u8>),
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
