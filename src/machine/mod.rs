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
//! Each job the machine holds is a slot whose run moves through
//!
//! ```text
//!   claim reply ──> Starting ──JobStarted──> Running ──JobExited──> Done ──recorded──> (released)
//!                      └──────StartFailed─────────────────────────────^   └─refused / lost / given up─^
//!   late claim, claim after a signal ──────────────────────────────> Done (hand-back)
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
//!     while let Some(note) = machine.poll_note() { log(note) }
//!     if machine.phase() == Phase::Stopped { break }
//!     let event = next_event_or(machine.poll_timeout());   // TimerFired on timeout
//!     machine.handle(event, now());
//! }
//! ```
//!
//! Every decision about when to claim, stop, kill, requeue, heartbeat, release
//! and exit is made here and only here; `docs/ARCHITECTURE.md` says where each
//! invariant is enforced and tested. Invariants that the machine alone can
//! keep are asserted here, in production builds too.

mod config;
mod io;
mod time;
pub mod trace;

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

pub use config::{
    Config, ConfigError, MAX_BATCH, MAX_CONCURRENCY, MAX_SHUTDOWN_TIMEOUT, MAX_TIMING, MIN_LEASE,
    MIN_POLL_INTERVAL,
};
pub use io::{
    Action, Counters, Event, JobStatus, Note, NoteKind, RunEnd, Signal, Status, StopCause,
    StoreCall, StoreFailure, TimeoutCause, What,
};
pub use time::Instant;
pub(crate) use time::{Fired, JobTimer, Timer, TimerTable};

use crate::job::{
    tail, ClaimedJob, Completion, Exit, JobId, Lease, Outcome, RecordResult, OUTPUT_LIMIT,
};
pub use crate::job::{HeartbeatAnswer, JobSignal, Phase};

/// Most abandoned leases remembered.
pub const MAX_ABANDONED: usize = 1024;

/// Most notes kept undrained before the oldest are dropped.
pub const MAX_NOTES: usize = 10_000;

/// Most claims whose reply was lost that the machine tries to recover;
/// beyond that, their jobs return to the queue when their lease expires.
pub const MAX_UNCERTAIN_CLAIMS: usize = 16;

/// Exit code when every job running at the signal finished on its own.
pub const EXIT_OK: i32 = 0;
/// Exit code (EX_TEMPFAIL) when any job was interrupted or left to its lease.
pub const EXIT_INTERRUPTED: i32 = 75;

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

/// What the machine knows and wants of a run that may be alive.
#[derive(Clone, Debug)]
struct Live {
    /// When the store may consider our lease expired (by the time we sent
    /// the call that set it; the store applied it later).
    lease_deadline: Instant,
    /// Why it is being stopped, if it is.
    stop: Option<StopReason>,
    /// Strongest signal we want it to have had (applied once it runs).
    want: Option<JobSignal>,
    /// Strongest signal actually sent.
    sent: Option<JobSignal>,
    /// A newer claim of this job (and when it was sent) that arrived while
    /// this superseded run was still alive: it starts once this one is gone.
    next: Option<(ClaimedJob, Instant)>,
}

/// An outcome waiting to be written.
#[derive(Clone, Debug)]
struct Pending {
    completion: Completion,
    /// Part of the record batch in flight.
    sending: bool,
    /// Met a store known to be down (or waited behind a failed write): it
    /// is written before any new claim or reap, so that our own reap or
    /// claim cannot supersede an outcome the store would still accept.
    must_flush: bool,
    /// The store refused a batch holding it as invalid: written alone.
    solo: bool,
    /// The store refused it as invalid: it was replaced by a failure
    /// without output. Refused again, it is left to its lease.
    degraded: bool,
}

/// Where a held job's run is.
#[derive(Clone, Debug)]
enum Run {
    /// Prefetched: claimed, waiting for a slot; never started. Its lease is
    /// heartbeated like a running job's.
    Queued { lease_deadline: Instant },
    /// Start sent, not yet confirmed; signals wait until it runs.
    Starting(Live),
    /// Its process or container is alive.
    Running(Live),
    /// Ended, or never started (a hand-back): its outcome waits to be written.
    Done(Pending),
}

/// One claimed job, from the claim reply until the machine lets it go.
#[derive(Clone, Debug)]
struct Slot {
    job: ClaimedJob,
    claimed_at: Instant,
    run: Run,
}

impl Live {
    /// A run just started (or about to be), under a lease valid until
    /// `lease_deadline`, with nothing asked of it yet.
    fn new(lease_deadline: Instant) -> Live {
        Live {
            lease_deadline,
            stop: None,
            want: None,
            sent: None,
            next: None,
        }
    }
}

impl Slot {
    fn live(&self) -> Option<&Live> {
        match &self.run {
            Run::Starting(live) | Run::Running(live) => Some(live),
            Run::Queued { .. } | Run::Done(_) => None,
        }
    }

    fn live_mut(&mut self) -> Option<&mut Live> {
        match &mut self.run {
            Run::Starting(live) | Run::Running(live) => Some(live),
            Run::Queued { .. } | Run::Done(_) => None,
        }
    }

    fn queued(&self) -> bool {
        matches!(self.run, Run::Queued { .. })
    }

    fn pending(&self) -> Option<&Pending> {
        match &self.run {
            Run::Done(pending) => Some(pending),
            _ => None,
        }
    }

    fn pending_mut(&mut self) -> Option<&mut Pending> {
        match &mut self.run {
            Run::Done(pending) => Some(pending),
            _ => None,
        }
    }

    fn alive(&self) -> bool {
        self.live().is_some()
    }

    fn waiting_to_record(&self) -> bool {
        self.pending().is_some_and(|p| !p.sending)
    }
}

/// The phase, with the data each phase needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Running,
    Draining { signal_at: Instant },
    TimedOut { signal_at: Instant },
    Stopped { signal_at: Instant, code: i32 },
}

/// The claim side: at most one claim in flight, two with a prefetch.
#[derive(Clone, Debug, Default)]
struct Claims {
    /// Request id, `max` and send time of each claim in flight, oldest first.
    in_flight: VecDeque<(u64, u32, Instant)>,
    /// Look for jobs at the next chance (poll, wake-up, a full batch).
    wanted: bool,
    /// The last claim came back full: more jobs are probably waiting.
    backlog: bool,
    /// Claims whose reply never arrived (timed out, connection lost): they
    /// may have committed, so the next heartbeat asks for their jobs.
    uncertain: VecDeque<u64>,
}

/// The outcome writes: at most one batch in flight.
#[derive(Clone, Debug, Default)]
struct Records {
    /// The batch in flight, by lease (a newer claim of the same job must not
    /// be mistaken for the one written).
    in_flight: Option<(u64, Vec<Lease>)>,
    /// Consecutive transient failures (sets the backoff).
    failures: u32,
    /// Writes wait for the retry timer (or any store success).
    blocked: bool,
}

/// The heartbeat: at most one in flight.
#[derive(Clone, Debug, Default)]
struct Heartbeats {
    /// Request id, send time, jobs and recovered claim ids in flight.
    in_flight: Option<(u64, Instant, Vec<JobId>, Vec<u64>)>,
    /// One fell due while another was in flight: it goes as soon as that
    /// one is answered, not a whole interval later (slow round trips would
    /// otherwise let leases run short).
    due: bool,
}

/// The worker's state machine. See the module docs for the driving loop.
#[derive(Debug)]
pub struct Machine {
    config: Config,
    inner: Inner,
    now: Instant,
    slots: BTreeMap<JobId, Slot>,
    /// Prefetched jobs in claim order (the store's priority order): exactly
    /// the slots in [`Run::Queued`].
    queued: VecDeque<JobId>,
    timers: TimerTable,
    actions: VecDeque<Action>,
    notes: VecDeque<Note>,
    notes_dropped: u64,
    next_request: u64,
    claims: Claims,
    records: Records,
    heartbeats: Heartbeats,
    /// A reap is due (poll timer) but not yet sent; one in flight at most.
    reap_wanted: bool,
    reap_in_flight: Option<u64>,
    store_up: bool,
    signals: u32,
    /// A job running at the signal was stopped (exit code 75).
    interrupted: bool,
    /// Jobs left to their lease (exit code 75).
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
            queued: VecDeque::new(),
            timers: TimerTable::default(),
            actions: VecDeque::new(),
            notes: VecDeque::new(),
            notes_dropped: 0,
            next_request: 1,
            claims: Claims {
                wanted: true,
                ..Claims::default()
            },
            records: Records::default(),
            heartbeats: Heartbeats::default(),
            reap_wanted: false,
            reap_in_flight: None,
            store_up: true,
            signals: 0,
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
        let what = What::Started {
            concurrency: machine.config.concurrency,
            prefetch: machine.config.prefetch,
            shutdown_timeout: machine.config.shutdown_timeout,
            kill_grace: machine.config.kill_grace,
            lease: machine.config.lease,
        };
        machine.note(what);
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
            Inner::Draining { .. } => Phase::Draining,
            Inner::TimedOut { .. } => Phase::TimedOut,
            Inner::Stopped { .. } => Phase::Stopped,
        }
    }

    /// The exit code, once `Stopped`.
    pub fn exit_code(&self) -> Option<i32> {
        match self.inner {
            Inner::Stopped { code, .. } => Some(code),
            _ => None,
        }
    }

    /// When the first TERM/INT arrived.
    pub fn first_signal_at(&self) -> Option<Instant> {
        match self.inner {
            Inner::Running => None,
            Inner::Draining { signal_at }
            | Inner::TimedOut { signal_at }
            | Inner::Stopped { signal_at, .. } => Some(signal_at),
        }
    }

    /// Leases given up without recording an outcome (lost, expired, or left
    /// at the exit deadline), most recent last; the store's lease expiry
    /// hands those jobs to another worker. Keeps the last [`MAX_ABANDONED`].
    pub fn abandoned(&self) -> impl Iterator<Item = &Lease> {
        self.abandoned.iter()
    }

    /// Totals so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Jobs held: claimed and not yet let go of (bounded by [`Machine::max_held`]).
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

    /// The next note, until `None`.
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
                state: match &slot.run {
                    Run::Queued { .. } => "queued",
                    Run::Starting(_) => "starting",
                    Run::Running(live) if live.sent.is_none() => "running",
                    Run::Running(_) => "stopping",
                    Run::Done(_) => "recording",
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

    /// Most jobs held at once: prefetched, running, finished and waiting
    /// for their write, or being handed back. Claims are sized to stay within
    /// twice the concurrency plus the prefetch; recovered and late claims may
    /// add a batch or two.
    pub fn max_held(&self) -> usize {
        (2 * (self.config.concurrency + self.config.batch_max) + self.config.prefetch) as usize
    }

    /// Prefetched jobs waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.len()
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
            Event::StartFailed {
                lease,
                error,
                transient,
            } => self.recv_run_end(lease, RunEnd::StartFailed { error, transient }, Vec::new()),
            Event::JobExited {
                lease,
                exit,
                output,
            } => self.recv_run_end(lease, RunEnd::Exited(exit), output),
            Event::RecordReply { request, result } => self.recv_record_reply(request, result),
            Event::ReapReply { request, result } => self.recv_reap_reply(request, result),
            Event::HeartbeatReply { request, result } => self.recv_heartbeat_reply(request, result),
            Event::CancelRequested { job } => self.cancel(job),
            Event::Wake => {
                if self.inner == Inner::Running {
                    self.claims.wanted = true;
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
            Inner::Draining { signal_at } => {
                self.force_timeout(signal_at, TimeoutCause::Signal(signal, self.signals))
            }
            Inner::TimedOut { .. } => self.kill_now(signal),
            Inner::Stopped { .. } => {}
        }
    }

    fn begin_drain(&mut self, signal: Signal) {
        let now = self.now;
        self.inner = Inner::Draining { signal_at: now };
        self.claims.wanted = false;
        self.reap_wanted = false;
        self.timers.stop(Timer::Poll);
        self.timers
            .set(Timer::ShutdownDeadline, now + self.config.shutdown_timeout);
        self.timers
            .set(Timer::ExitDeadline, now + self.config.exit_bound());
        // Claims queued but not yet polled were never issued: withdraw them
        // (the signal arrived before the driver performed them).
        let withdrawn: Vec<u64> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Claim { request, .. } => Some(*request),
                _ => None,
            })
            .collect();
        if !withdrawn.is_empty() {
            self.actions.retain(|a| !matches!(a, Action::Claim { .. }));
            self.claims
                .in_flight
                .retain(|(request, _, _)| !withdrawn.contains(request));
        }
        // Prefetched jobs never start once a signal has come: they go back
        // to the queue now, for a worker that is not stopping.
        let prefetched: Vec<JobId> = self.queued.drain(..).collect();
        for id in prefetched {
            self.requeue_prefetched(id, true);
        }
        let what = What::Draining {
            signal,
            alive: self.alive(),
            shutdown_timeout: self.config.shutdown_timeout,
            claim_in_flight: !self.claims.in_flight.is_empty(),
            uncertain_claims: !self.claims.uncertain.is_empty(),
        };
        self.note(what);
        self.announce_phase();
    }

    /// Tell the registry the new phase now rather than at the next
    /// heartbeat (up to a third of a lease away), so an operator sees a
    /// worker drain within a moment. Nothing to announce without jobs: the
    /// worker exits and deregisters at once.
    fn announce_phase(&mut self) {
        if self.alive() > 0 {
            self.send_heartbeat();
        }
    }

    fn force_timeout(&mut self, signal_at: Instant, cause: TimeoutCause) {
        let now = self.now;
        self.inner = Inner::TimedOut { signal_at };
        self.timers.stop(Timer::ShutdownDeadline);
        self.timers
            .set(Timer::KillGrace, now + self.config.kill_grace);
        let what = What::TimedOut {
            cause,
            alive: self.alive(),
            kill_grace: self.config.kill_grace,
        };
        self.note(what);
        self.stop_all(JobSignal::Term);
        self.announce_phase();
    }

    fn kill_now(&mut self, signal: Signal) {
        let what = What::KillNow {
            signal,
            count: self.signals,
            alive: self.alive(),
        };
        self.note(what);
        self.stop_all(JobSignal::Kill);
    }

    fn stop_all(&mut self, signal: JobSignal) {
        let ids: Vec<JobId> = self.slots.keys().copied().collect();
        for id in ids {
            self.stop_job(id, StopReason::Shutdown, signal);
        }
    }

    fn stop(&mut self, cause: StopCause) {
        let Some(signal_at) = self.first_signal_at() else {
            return;
        };
        let code = if self.interrupted || self.gave_up > 0 {
            EXIT_INTERRUPTED
        } else {
            EXIT_OK
        };
        let from = self.phase();
        self.inner = Inner::Stopped { signal_at, code };
        self.timers = TimerTable::default();
        self.claims.wanted = false;
        self.note(What::Stopped { from, cause, code });
        self.actions.push_back(Action::Exit { code });
    }

    // ----- timers -----------------------------------------------------------

    fn on_timers(&mut self) {
        let now = self.now;
        for fired in self.timers.take_expired(now) {
            match fired {
                Fired::Worker(Timer::Poll) => {
                    if self.inner == Inner::Running {
                        self.reap_wanted = true;
                        self.claims.wanted = true;
                        self.timers
                            .set(Timer::Poll, now + self.config.poll_interval);
                    }
                }
                Fired::Worker(Timer::Heartbeat) => {
                    self.send_heartbeat();
                    self.timers
                        .set(Timer::Heartbeat, now + self.config.heartbeat_interval());
                }
                Fired::Worker(Timer::ShutdownDeadline) => {
                    if let Inner::Draining { signal_at } = self.inner {
                        let cause = TimeoutCause::Deadline(self.config.shutdown_timeout);
                        self.force_timeout(signal_at, cause);
                    }
                }
                Fired::Worker(Timer::KillGrace) => self.stop_all(JobSignal::Kill),
                Fired::Worker(Timer::StoreRetry) => self.records.blocked = false,
                Fired::Worker(Timer::ExitDeadline) => self.give_up(),
                Fired::Job(id, JobTimer::Timeout) => {
                    if let Some(timeout) = self.slots.get(&id).and_then(|s| s.job.spec.timeout()) {
                        self.stop_job(id, StopReason::Timeout(timeout), JobSignal::Term);
                    }
                }
                Fired::Job(id, JobTimer::Kill) => {
                    if let Some(reason) = self.slots.get(&id).and_then(|s| s.live()?.stop) {
                        self.stop_job(id, reason, JobSignal::Kill);
                    }
                }
                Fired::Job(id, JobTimer::LeaseExpiry) => self.lease_running_out(id),
            }
        }
    }

    /// No heartbeat extended a running job's lease: stop it so that it is
    /// dead (KILL at the deadline) before the store can hand it to another.
    fn lease_running_out(&mut self, id: JobId) {
        if self.slots.get(&id).is_some_and(Slot::queued) {
            // Not started and no heartbeat kept its lease: give it back while
            // the store would still take it from us.
            self.requeue_prefetched(id, false);
            return;
        }
        let Some(deadline) = self
            .slots
            .get(&id)
            .and_then(|slot| Some(slot.live()?.lease_deadline))
        else {
            return;
        };
        let expires_in = deadline.saturating_since(self.now);
        self.note(What::LeaseRunningOut {
            job: id,
            expires_in,
        });
        self.stop_job(id, StopReason::LeaseLost, JobSignal::Term);
        self.timers.set_job_earliest(id, JobTimer::Kill, deadline);
    }

    /// The store stayed unreachable past the exit bound: leave what is not
    /// recorded to lease expiry, so another worker runs those jobs again.
    fn give_up(&mut self) {
        if matches!(self.inner, Inner::Stopped { .. }) {
            return;
        }
        let ids: Vec<JobId> = self.slots.keys().copied().collect();
        self.gave_up += ids.len();
        for id in ids.iter().copied() {
            let Some(slot) = self.slots.get(&id) else {
                continue;
            };
            let lease = slot.job.lease;
            // Still alive: it must not run on beside the copy another worker
            // will start once the lease expires. Not yet started: the
            // executor's exit clean-up stops it. Done: released.
            let kill = match &slot.run {
                Run::Running(live) => Some(live.sent != Some(JobSignal::Kill)),
                Run::Starting(_) => Some(false),
                Run::Queued { .. } | Run::Done(_) => None,
            };
            self.abandon(lease);
            self.note(What::LeftToLease {
                job: id,
                alive: kill.is_some(),
            });
            match kill {
                Some(send) => {
                    if send {
                        self.actions.push_back(Action::Signal {
                            job: id,
                            signal: JobSignal::Kill,
                        });
                    }
                    self.slots.remove(&id);
                }
                None => {
                    self.release(id);
                }
            }
        }
        self.claims.in_flight.clear();
        self.claims.uncertain.clear();
        self.stop(StopCause::ExitDeadline {
            bound: self.config.exit_bound(),
            unrecorded: ids.len(),
        });
    }

    // ----- claims and starts -------------------------------------------------

    fn recv_claim_reply(&mut self, request: u64, reply: Result<Vec<ClaimedJob>, StoreFailure>) {
        let position = self
            .claims
            .in_flight
            .iter()
            .position(|(id, _, _)| *id == request);
        let Some((_, max, sent_at)) = position.and_then(|at| self.claims.in_flight.remove(at))
        else {
            // A late or duplicate reply: jobs in it that we do not hold are
            // handed back so they do not wait for lease expiry.
            self.counters.late_replies += 1;
            if let Ok(jobs) = reply {
                for job in jobs.into_iter().take(self.config.batch_max as usize) {
                    if !self.slots.contains_key(&job.lease.job) {
                        self.hand_back(job, self.now);
                    }
                }
            }
            return;
        };
        let jobs = match reply {
            Ok(jobs) => jobs,
            Err(failure) => {
                if failure.transient {
                    // It may have committed before the reply was lost.
                    if self.claims.uncertain.len() >= MAX_UNCERTAIN_CLAIMS {
                        self.claims.uncertain.pop_front();
                    }
                    self.claims.uncertain.push_back(request);
                }
                self.store_failed(StoreCall::Claim, failure);
                return;
            }
        };
        self.store_ok();
        self.claims.backlog = jobs.len() >= max as usize;
        let mut accepted = 0u32;
        for job in jobs.into_iter().take(max as usize) {
            if self.take_claimed(job, sent_at) {
                accepted += 1;
            }
        }
        if self.claims.backlog && accepted > 0 {
            self.claims.wanted = true;
        }
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
            if let Some(live) = slot.live_mut() {
                let previous = live.next.replace((job, sent_at));
                self.note(What::ClaimedAgain {
                    job: id,
                    old,
                    alive: true,
                });
                if let Some((previous, at)) = previous {
                    self.hand_back_quietly(previous, at);
                }
                self.stop_job(id, StopReason::LeaseLost, JobSignal::Kill);
                return true;
            }
            self.release(id);
            self.counters.superseded += 1;
            self.note(What::ClaimedAgain {
                job: id,
                old,
                alive: false,
            });
        }
        // A recovered claim may have taken a slot since this claim was sized.
        // Prefetched jobs wait only while every slot is busy (drive starts
        // them as slots free), so a free slot means nothing waits ahead.
        let start = self.alive() < self.config.concurrency as usize;
        let wait = !start && self.queued.len() < self.config.prefetch as usize;
        if self.inner != Inner::Running || !(start || wait) || self.slots.len() >= self.max_held() {
            self.hand_back(job, sent_at);
            return false;
        }
        if self.now >= self.lease_stop_at(lease_deadline) {
            // The reply came so late that the lease is about to expire: the
            // job would have to be stopped at once, and may already be
            // another worker's. Give it back instead.
            self.note(What::ClaimTooLate { job: id });
            self.hand_back_quietly(job, sent_at);
            return false;
        }
        self.counters.claimed += 1;
        self.arm_lease_timer(id, lease_deadline);
        if wait {
            self.slots.insert(
                id,
                Slot {
                    job,
                    claimed_at: self.now,
                    run: Run::Queued { lease_deadline },
                },
            );
            self.queued.push_back(id);
            return true;
        }
        self.slots.insert(
            id,
            Slot {
                job: job.clone(),
                claimed_at: self.now,
                run: Run::Starting(Live::new(lease_deadline)),
            },
        );
        self.actions.push_back(Action::Start { job });
        true
    }

    /// Start prefetched jobs while slots are free, in claim order. One whose
    /// lease is about to run out is handed back instead, like a late claim.
    fn start_step(&mut self) {
        // Only while running: the first signal hands every prefetched job
        // back (`begin_drain`), so none is left to start after it.
        if self.queued.is_empty() {
            return;
        }
        debug_assert!(self.inner == Inner::Running);
        let mut alive = self.alive();
        while alive < self.config.concurrency as usize {
            let Some(id) = self.queued.pop_front() else {
                return;
            };
            let now = self.now;
            // The list holds exactly the prefetched slots (asserted).
            let Some(Run::Queued { lease_deadline }) = self.slots.get(&id).map(|slot| &slot.run)
            else {
                continue;
            };
            let lease_deadline = *lease_deadline;
            if now >= self.lease_stop_at(lease_deadline) {
                self.requeue_prefetched(id, false);
                continue;
            }
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            // Times in the trace and the status count from the start, as for
            // a job started at its claim.
            slot.claimed_at = now;
            slot.run = Run::Starting(Live::new(lease_deadline));
            self.actions.push_back(Action::Start {
                job: slot.job.clone(),
            });
            alive += 1;
        }
    }

    /// A prefetched job goes back to the queue, never started: the first
    /// signal came (`signal`), or its lease ran short while it waited.
    fn requeue_prefetched(&mut self, id: JobId, signal: bool) {
        if self.settle_prefetched(id, Outcome::HandBack) {
            self.note(What::PrefetchReturned { job: id, signal });
        }
    }

    /// A prefetched job leaves the list with `outcome` to write, never
    /// started. Whether `id` was a prefetched job.
    fn settle_prefetched(&mut self, id: JobId, outcome: Outcome) -> bool {
        self.queued.retain(|queued| *queued != id);
        let Some(slot) = self.slots.get_mut(&id).filter(|slot| slot.queued()) else {
            return false;
        };
        slot.run = Run::Done(unstarted(slot.job.lease, outcome));
        self.timers.forget_job(id);
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
        self.note(What::HandedBack { job: job.lease.job });
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
        let pending = unstarted(job.lease, Outcome::HandBack);
        self.slots.insert(
            id,
            Slot {
                job,
                claimed_at,
                run: Run::Done(pending),
            },
        );
    }

    fn recv_job_started(&mut self, lease: Lease) {
        let now = self.now;
        let id = lease.job;
        let Some(slot) = self.slot_of(lease) else {
            self.violation();
            return;
        };
        let Run::Starting(live) = &slot.run else {
            self.violation();
            return;
        };
        slot.run = Run::Running(live.clone());
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
        let Some(live) = self.slots.get_mut(&id).and_then(Slot::live_mut) else {
            return;
        };
        live.stop = match (live.stop, reason) {
            (None, reason) => Some(reason),
            (_, StopReason::LeaseLost) => Some(StopReason::LeaseLost),
            (Some(StopReason::Shutdown), StopReason::Cancel) => Some(StopReason::Cancel),
            (existing, _) => existing,
        };
        if live.want.is_none_or(|want| want < signal) {
            live.want = Some(signal);
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
        let Some(Run::Running(live)) = self.slots.get_mut(&id).map(|slot| &mut slot.run) else {
            return;
        };
        let Some(want) = live.want else {
            return;
        };
        if live.sent.is_none_or(|sent| sent < want) {
            live.sent = Some(want);
            self.actions.push_back(Action::Signal {
                job: id,
                signal: want,
            });
            if want == JobSignal::Kill {
                self.timers.stop_job(id, JobTimer::Kill);
            }
        }
    }

    fn cancel(&mut self, id: JobId) {
        // Never started: nothing to stop, the cancel is its outcome.
        if self.settle_prefetched(id, Outcome::Cancelled) {
            self.note(What::CancelledUnstarted { job: id });
            return;
        }
        if self.slots.get(&id).is_some_and(Slot::alive) {
            self.note(What::CancelRequested { job: id });
            self.stop_job(id, StopReason::Cancel, JobSignal::Term);
        }
    }

    /// The store says our lease is gone: another worker may already run the
    /// job, so it is killed at once rather than given a grace period.
    fn lose_lease(&mut self, id: JobId) {
        if self.slots.get(&id).is_some_and(Slot::queued) {
            // Never started: let it go; whoever holds it now runs it.
            if let Some(slot) = self.release(id) {
                self.timers.forget_job(id);
                self.counters.lost += 1;
                self.abandon(slot.job.lease);
                self.note(What::LeaseLost { job: id });
            }
            return;
        }
        if self.slots.get(&id).is_some_and(Slot::alive) {
            self.note(What::LeaseLost { job: id });
            self.stop_job(id, StopReason::LeaseLost, JobSignal::Kill);
        }
    }

    /// A run ended (or never started): decide its outcome.
    fn recv_run_end(&mut self, lease: Lease, end: RunEnd, output: Vec<u8>) {
        let now = self.now;
        let running = self.inner == Inner::Running;
        let id = lease.job;
        let Some(slot) = self.slot_of(lease) else {
            self.violation();
            return;
        };
        let Some(live) = slot.live().cloned() else {
            self.violation();
            return;
        };
        let ran_for = now.saturating_since(slot.claimed_at);
        let queue = slot.job.queue.clone();
        // A stop reason only applies if a signal actually reached the job;
        // otherwise it finished on its own.
        let reason = if live.sent.is_some() || live.stop == Some(StopReason::LeaseLost) {
            live.stop
        } else {
            None
        };
        let outcome = match &end {
            // Nothing ran, so no signal was needed for a stop to apply: a
            // cancel asked while the job was starting is the answer (the
            // job used no attempt).
            RunEnd::StartFailed { error, transient } => match live.stop {
                Some(StopReason::Cancel) => Outcome::Cancelled,
                // Nothing of the job ran: another worker (or this one, once
                // its engine is back) runs it, without using an attempt.
                _ if *transient => Outcome::HandBack,
                _ => Outcome::Failed {
                    exit_code: None,
                    error: format!("could not start: {error}"),
                },
            },
            RunEnd::Exited(exit) => decide(*exit, reason),
        };
        self.timers.forget_job(id);
        if (matches!(outcome, Outcome::Interrupted { .. }) || reason == Some(StopReason::LeaseLost))
            && !running
        {
            self.interrupted = true;
        }
        if reason == Some(StopReason::LeaseLost) {
            self.release(id);
            self.counters.lost += 1;
            self.abandon(lease);
            self.note(What::JobEnded {
                job: id,
                queue,
                end,
                ran_for,
                outcome: None,
            });
            if let Some((next, sent_at)) = live.next {
                // The newer claim waited for this run to be gone.
                self.take_claimed(next, sent_at);
            }
            return;
        }
        let name = outcome.name();
        let must_flush = !self.store_up || self.records.blocked;
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.run = Run::Done(Pending {
                completion: Completion {
                    lease,
                    outcome,
                    output: if output.len() > OUTPUT_LIMIT {
                        tail(&output, OUTPUT_LIMIT).to_vec()
                    } else {
                        output
                    },
                },
                sending: false,
                // An outcome that meets a store we know to be down is
                // flushed before any claim or reap once it is back.
                must_flush,
                solo: false,
                degraded: false,
            });
        }
        self.note(What::JobEnded {
            job: id,
            queue,
            end,
            ran_for,
            outcome: Some(name),
        });
    }

    // ----- store replies -------------------------------------------------------

    /// Let go of a job's slot, telling the executor its run is over.
    fn release(&mut self, id: JobId) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if slot.queued() {
            self.queued.retain(|queued| *queued != id);
        }
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
        let sent = match self.records.in_flight.take() {
            Some((id, sent)) if id == request => sent,
            other => {
                self.records.in_flight = other;
                self.counters.late_replies += 1;
                return;
            }
        };
        match reply {
            Ok(results) => {
                self.store_ok();
                self.records.failures = 0;
                let results: BTreeMap<JobId, RecordResult> = results.into_iter().collect();
                for lease in sent {
                    match results.get(&lease.job) {
                        Some(RecordResult::Recorded { state }) => self.recorded(lease, *state),
                        Some(RecordResult::Refused) => {
                            if self.slot_of(lease).is_some() {
                                self.release(lease.job);
                                self.counters.refused += 1;
                                self.note(What::OutcomeRefused { job: lease.job });
                            }
                        }
                        None => {
                            if let Some(pending) = self.slot_of(lease).and_then(Slot::pending_mut) {
                                pending.sending = false;
                            }
                        }
                    }
                }
                if self.claims.backlog && self.inner == Inner::Running {
                    self.claims.wanted = true;
                }
            }
            Err(failure) if failure.transient => {
                // Every outcome now waiting is flushed before any claim or
                // reap, not only this batch.
                for slot in self.slots.values_mut() {
                    if let Some(pending) = slot.pending_mut() {
                        if sent.contains(&pending.completion.lease) {
                            pending.sending = false;
                        }
                        pending.must_flush = true;
                    }
                }
                self.records.failures = self.records.failures.saturating_add(1);
                self.records.blocked = true;
                let backoff = store_backoff(self.records.failures, self.config.max_store_backoff);
                self.timers.set(Timer::StoreRetry, self.now + backoff);
                self.store_failed(StoreCall::Record, failure);
            }
            Err(failure) => {
                // The store is up but refused the batch as invalid: repeating
                // it would fail forever. Find the bad outcome by writing them
                // one by one, then record it as failed without its output.
                self.store_ok();
                self.counters.store_errors += 1;
                if sent.len() > 1 {
                    for lease in &sent {
                        if let Some(pending) = self.slot_of(*lease).and_then(Slot::pending_mut) {
                            pending.sending = false;
                            pending.solo = true;
                        }
                    }
                    self.note(What::BatchRefused {
                        size: sent.len(),
                        failure,
                    });
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
        let Some(pending) = self.slot_of(lease).and_then(Slot::pending_mut) else {
            return;
        };
        pending.sending = false;
        pending.solo = true;
        let exit_code = match &pending.completion.outcome {
            Outcome::Succeeded => Some(Some(0)),
            Outcome::Failed { exit_code, .. } => Some(*exit_code),
            Outcome::Cancelled => Some(None),
            Outcome::Interrupted { .. } | Outcome::HandBack => None,
        };
        if let (Some(exit_code), false) = (exit_code, pending.degraded) {
            pending.degraded = true;
            pending.completion = Completion {
                lease,
                outcome: Outcome::Failed {
                    exit_code,
                    error: format!(
                        "the store refused this job's outcome ({}); recorded as failed without its output",
                        failure.message
                    ),
                },
                output: Vec::new(),
            };
            self.counters.invalid += 1;
            self.note(What::OutcomeInvalid {
                job: lease.job,
                failure: failure.clone(),
                left_to_lease: false,
            });
            return;
        }
        // Even the plainest outcome is refused: leave the job to its lease,
        // so the store's reaper gives it to a worker again.
        self.release(lease.job);
        self.gave_up += 1;
        self.abandon(lease);
        self.note(What::OutcomeInvalid {
            job: lease.job,
            failure: failure.clone(),
            left_to_lease: true,
        });
    }

    fn recorded(&mut self, lease: Lease, state: crate::job::JobState) {
        if self.slot_of(lease).is_none() {
            return;
        }
        let Some(slot) = self.release(lease.job) else {
            return;
        };
        let Run::Done(pending) = slot.run else {
            return;
        };
        let outcome = pending.completion.outcome;
        match outcome {
            Outcome::Succeeded => self.counters.succeeded += 1,
            Outcome::Failed { .. } => self.counters.failed += 1,
            Outcome::Interrupted { .. } => self.counters.interrupted += 1,
            Outcome::Cancelled => self.counters.cancelled += 1,
            Outcome::HandBack => self.counters.handed_back += 1,
        }
        self.note(What::Recorded {
            job: lease.job,
            queue: slot.job.queue,
            outcome: outcome.name(),
            state,
            quiet: self.inner == Inner::Running,
        });
    }

    fn recv_reap_reply(&mut self, request: u64, reply: Result<u64, StoreFailure>) {
        if self.reap_in_flight != Some(request) {
            self.counters.late_replies += 1;
            return;
        }
        self.reap_in_flight = None;
        match reply {
            Ok(_) => self.store_ok(),
            Err(failure) => self.store_failed(StoreCall::Reap, failure),
        }
    }

    fn send_heartbeat(&mut self) {
        if self.heartbeats.in_flight.is_some() {
            self.heartbeats.due = true;
            return;
        }
        self.heartbeats.due = false;
        // Finished jobs waiting for their outcome write keep their lease too.
        let leases: Vec<Lease> = self.slots.values().map(|slot| slot.job.lease).collect();
        let ids = leases.iter().map(|lease| lease.job).collect();
        let recover: Vec<u64> = self.claims.uncertain.iter().copied().collect();
        let request = self.request_id();
        self.heartbeats.in_flight = Some((request, self.now, ids, recover.clone()));
        self.actions.push_back(Action::Heartbeat {
            request,
            phase: self.phase(),
            leases,
            recover,
        });
    }

    fn recv_heartbeat_reply(&mut self, request: u64, reply: Result<HeartbeatAnswer, StoreFailure>) {
        let (sent_at, ids, recover) = match self.heartbeats.in_flight.take() {
            Some((id, sent_at, ids, recover)) if id == request => (sent_at, ids, recover),
            other => {
                self.heartbeats.in_flight = other;
                self.counters.late_replies += 1;
                return;
            }
        };
        match reply {
            Ok(answer) => {
                self.store_ok();
                let deadline = sent_at + self.config.lease;
                for id in ids {
                    if answer.lost.contains(&id) {
                        continue;
                    }
                    let extend = match self.slots.get_mut(&id).map(|slot| &mut slot.run) {
                        Some(Run::Queued { lease_deadline }) => Some(lease_deadline),
                        Some(Run::Starting(live) | Run::Running(live))
                            if live.stop != Some(StopReason::LeaseLost) =>
                        {
                            Some(&mut live.lease_deadline)
                        }
                        _ => None,
                    };
                    if let Some(lease_deadline) = extend {
                        *lease_deadline = deadline;
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
                self.claims
                    .uncertain
                    .retain(|claim| !recover.contains(claim));
                for job in answer.recovered {
                    self.note(What::Recovered { job: job.lease.job });
                    self.take_claimed(job, sent_at);
                }
            }
            Err(failure) => {
                if self.inner != Inner::Running && !recover.is_empty() {
                    // Shutting down: do not wait for the store to recover
                    // these; their jobs return when their lease expires.
                    self.claims
                        .uncertain
                        .retain(|claim| !recover.contains(claim));
                    self.note(What::RecoveryGivenUp {
                        claims: recover.len(),
                    });
                }
                self.store_failed(StoreCall::Heartbeat, failure);
            }
        }
        if self.heartbeats.due {
            self.send_heartbeat();
        }
    }

    fn store_failed(&mut self, call: StoreCall, failure: StoreFailure) {
        self.counters.store_errors += 1;
        if self.store_up {
            self.store_up = false;
            self.note(What::StoreDown { call, failure });
        }
    }

    /// A store call succeeded: outcome writes waiting for their retry timer
    /// go now (the store is back, and they are flushed before any claim).
    fn store_ok(&mut self) {
        if !self.store_up {
            self.store_up = true;
            self.note(What::StoreUp);
        }
        if self.records.blocked {
            self.records.blocked = false;
            self.timers.stop(Timer::StoreRetry);
        }
    }

    // ----- after every event ------------------------------------------------------

    /// Issue whatever the state now calls for: a claim, a reap, an outcome
    /// batch, a recovery, the exit.
    fn drive(&mut self) {
        if matches!(self.inner, Inner::Stopped { .. }) {
            return;
        }
        // Outcomes whose write failed are waiting: until they are written, no
        // claim and no reap goes out (either could supersede them).
        let flushing = self
            .slots
            .values()
            .any(|slot| slot.pending().is_some_and(|p| p.must_flush));
        self.start_step();
        if !flushing {
            self.claim_step();
            self.reap_step();
        }
        self.record_step();
        self.recover_step();
        self.stop_step();
    }

    /// Claims in flight at once: one, or with a prefetch two, so that the
    /// next batch is on its way while the last one's reply is handled (the
    /// prefetched jobs keep the slots busy meanwhile).
    fn claims_at_once(&self) -> usize {
        if self.config.prefetch > 0 {
            2
        } else {
            1
        }
    }

    fn claim_step(&mut self) {
        if self.inner != Inner::Running
            || !self.claims.wanted
            || self.claims.in_flight.len() >= self.claims_at_once()
        {
            return;
        }
        // Slots count live and prefetched jobs: a finished job waiting for
        // its outcome write does not hold one, so claims overlap with writes.
        // Held jobs stay bounded at twice the concurrency plus the prefetch.
        // Claims in flight count as held for all they asked.
        let concurrency = self.config.concurrency as usize;
        let capacity = concurrency + self.config.prefetch as usize;
        let alive = self.alive();
        let asked: usize = self
            .claims
            .in_flight
            .iter()
            .map(|(_, max, _)| *max as usize)
            .sum();
        let free = capacity
            .saturating_sub(alive + self.queued.len() + asked)
            .min((capacity + concurrency).saturating_sub(self.slots.len() + asked));
        // Claim in worthwhile batches: when a quarter of the slots (up to the
        // batch limit) are free, or when nothing runs and nothing is asked.
        let low_water = (capacity / 4).clamp(1, self.config.batch_max as usize);
        let idle = alive == 0 && asked == 0;
        if free == 0 || (free < low_water && !idle) {
            return;
        }
        // Invariant 1: no claim after the first shutdown signal.
        assert!(
            self.first_signal_at().is_none(),
            "claim after a shutdown signal"
        );
        let max = (free as u32).min(self.config.batch_max);
        let request = self.request_id();
        self.claims.in_flight.push_back((request, max, self.now));
        self.claims.wanted = false;
        self.actions.push_back(Action::Claim { request, max });
    }

    fn reap_step(&mut self) {
        if self.inner == Inner::Running && self.reap_wanted && self.reap_in_flight.is_none() {
            let request = self.request_id();
            self.reap_wanted = false;
            self.reap_in_flight = Some(request);
            self.actions.push_back(Action::Reap { request });
        }
    }

    /// One record action: an outcome the store refused in a batch goes
    /// alone; otherwise up to `batch_max` outcomes at once.
    fn record_step(&mut self) {
        if self.records.in_flight.is_some() || self.records.blocked {
            return;
        }
        let solo = self
            .slots
            .values()
            .find(|slot| slot.pending().is_some_and(|p| p.solo) && slot.waiting_to_record())
            .map(|slot| slot.job.lease.job);
        let mut completions = Vec::new();
        let mut leases = Vec::new();
        for (id, slot) in self.slots.iter_mut() {
            if completions.len() >= self.config.batch_max as usize {
                break;
            }
            let Some(pending) = slot.pending_mut() else {
                continue;
            };
            if pending.sending
                || solo.is_some_and(|only| only != *id)
                || (solo.is_none() && pending.solo)
            {
                continue;
            }
            pending.sending = true;
            completions.push(pending.completion.clone());
            leases.push(pending.completion.lease);
        }
        if !completions.is_empty() {
            let request = self.request_id();
            self.records.in_flight = Some((request, leases));
            self.actions.push_back(Action::Record {
                request,
                completions,
            });
        }
    }

    /// Shutting down with claims whose reply was lost: ask the store now for
    /// their jobs, to hand them back before exiting.
    fn recover_step(&mut self) {
        if self.inner != Inner::Running && !self.claims.uncertain.is_empty() {
            self.send_heartbeat();
        }
    }

    fn stop_step(&mut self) {
        if matches!(self.inner, Inner::Draining { .. } | Inner::TimedOut { .. })
            && self.slots.is_empty()
            && self.claims.in_flight.is_empty()
            && self.claims.uncertain.is_empty()
        {
            let cause = if self.counters.claimed == 0 && self.counters.handed_back == 0 {
                StopCause::Idle
            } else {
                StopCause::AllDone
            };
            self.stop(cause);
        }
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// An event that breaks the driver's contract: counted, ignored, and a
    /// failed assertion in debug builds (a bug in the driver, not in the world).
    fn violation(&mut self) {
        self.counters.violations += 1;
        debug_assert!(false, "an event that breaks the driver's contract");
    }

    fn abandon(&mut self, lease: Lease) {
        if self.abandoned.len() >= MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(lease);
    }

    fn check_invariants(&self) {
        // Invariant 2: running jobs never exceed concurrency.
        assert!(
            self.alive() <= self.config.concurrency as usize,
            "more jobs alive than concurrency allows"
        );
        assert!(self.slots.len() <= self.max_held(), "too many jobs held");
        // Prefetched jobs wait only while every slot is busy, only while no
        // signal has come, and never beyond the prefetch.
        debug_assert_eq!(
            self.queued.len(),
            self.slots.values().filter(|slot| slot.queued()).count(),
            "the prefetch list and the prefetched slots disagree"
        );
        if self.inner != Inner::Running && self.config.prefetch > 0 {
            assert!(
                !self.slots.values().any(Slot::queued),
                "a prefetched job held after the first signal"
            );
        }
        if !self.queued.is_empty() {
            assert!(
                self.inner == Inner::Running
                    && self.alive() == self.config.concurrency as usize
                    && self.queued.len() <= self.config.prefetch as usize,
                "a prefetched job waits while it should start or go back"
            );
        }
        if let Inner::Stopped { code, .. } = self.inner {
            // Invariant 5: exit only once every job is done and recorded (or given up).
            assert!(self.slots.is_empty(), "stopped while holding jobs");
            // Invariant 8: 0 only if nothing was interrupted.
            assert!(
                code != EXIT_OK || (!self.interrupted && self.gave_up == 0),
                "exit 0 after an interruption"
            );
        }
    }

    // ----- notes ------------------------------------------------------------------

    fn note(&mut self, what: What) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.pop_front();
            self.notes_dropped += 1;
        }
        self.notes.push_back(Note { at: self.now, what });
    }
}

/// The outcome of a job that never started, waiting to be written.
fn unstarted(lease: Lease, outcome: Outcome) -> Pending {
    Pending {
        completion: Completion {
            lease,
            outcome,
            output: Vec::new(),
        },
        sending: false,
        must_flush: false,
        solo: false,
        degraded: false,
    }
}

/// The outcome of a run that exited, given why it was stopped (if a signal
/// reached it).
fn decide(exit: Exit, reason: Option<StopReason>) -> Outcome {
    match reason {
        // Exit 0 is the job saying its work is done, even after a TERM (a job
        // that ignored it and finished in the grace period): requeueing it
        // would run a finished job's side effects again. A job that stops
        // early on TERM and wants to run again exits non-zero (143 by
        // convention). (With the lease lost nothing is recorded at all.)
        _ if exit.success() => Outcome::Succeeded,
        None => Outcome::Failed {
            exit_code: exit.code(),
            error: exit.to_string(),
        },
        Some(StopReason::Timeout(limit)) => Outcome::Failed {
            exit_code: exit.code(),
            error: format!("timed out after {}", fmt_duration(limit)),
        },
        Some(StopReason::Shutdown) | Some(StopReason::LeaseLost) => Outcome::Interrupted {
            reason: "worker shutdown".to_string(),
        },
        Some(StopReason::Cancel) => Outcome::Cancelled,
    }
}

/// Wait before retrying a failed outcome write: 100ms, doubling, capped.
fn store_backoff(failures: u32, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_millis(100u64 << exp).min(cap)
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

    #[test]
    fn late_replies_are_counted_not_acted_on() {
        let mut m = Machine::new(Config::default(), Instant::ZERO).unwrap();
        while m.poll_action().is_some() {}
        for event in [
            Event::RecordReply {
                request: 99,
                result: Ok(vec![]),
            },
            Event::HeartbeatReply {
                request: 98,
                result: Ok(HeartbeatAnswer::default()),
            },
            Event::ReapReply {
                request: 97,
                result: Ok(0),
            },
        ] {
            m.handle(event, Instant::from_millis(1));
        }
        assert_eq!(m.counters().late_replies, 3);
        assert_eq!(m.poll_action(), None);
    }
}
