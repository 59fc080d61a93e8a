//! What goes in and out of the machine: the events a driver feeds it, the
//! actions it asks for, the notes it keeps of what happened, and its status.
//!
//! Everything here is plain data. The English an operator reads is written
//! in [`super::trace`], only when someone renders a note.

use std::fmt;
use std::time::Duration;

use super::Instant;
use crate::job::{ClaimedJob, Completion, Exit, HeartbeatAnswer, JobId, JobSignal, JobState};
use crate::job::{Lease, LeaseToken, Phase, RecordResult};

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

/// Something that happened, fed to [`super::Machine::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A signal reached the worker.
    Signal(Signal),
    /// The deadline from [`super::Machine::poll_timeout`] was reached.
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
        /// The fault is the worker's, not the job's (its Docker engine is
        /// away): the job is handed back without using an attempt.
        transient: bool,
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
    /// A user asked to cancel this running job (a push from the store).
    CancelRequested {
        /// The job.
        job: JobId,
    },
    /// New jobs may be ready (a notification): look now rather than at the next poll.
    Wake,
}

/// Something the driver must do, pulled with [`super::Machine::poll_action`].
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
    /// The run under this lease is over for this worker (recorded, refused,
    /// superseded, lost or given up): the executor may let go of what it
    /// keeps for it (e.g. remove its container). Never answered.
    Release {
        /// The run.
        lease: Lease,
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

/// Which store call a note is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCall {
    /// [`Action::Claim`].
    Claim,
    /// [`Action::Record`].
    Record,
    /// [`Action::Heartbeat`].
    Heartbeat,
    /// [`Action::Reap`].
    Reap,
}

/// Why the drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutCause {
    /// `shutdown_timeout` passed.
    Deadline(Duration),
    /// The n-th TERM/INT.
    Signal(Signal, u32),
}

/// Why the worker stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// Nothing was ever held.
    Idle,
    /// Every job finished or stopped and every outcome is recorded.
    AllDone,
    /// The store stayed unreachable past the exit bound.
    ExitDeadline {
        /// The bound.
        bound: Duration,
        /// Jobs left to their lease.
        unrecorded: usize,
    },
}

/// How a run ended, as the machine learned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The executor could not start it.
    StartFailed {
        /// Why, in words.
        error: String,
        /// The fault is the worker's (see [`Event::StartFailed`]).
        transient: bool,
    },
    /// Its process or container exited.
    Exited(Exit),
}

/// What a note tells; rendered as text by [`super::trace`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum What {
    /// The machine was created.
    Started {
        /// Jobs at once.
        concurrency: u32,
        /// Jobs claimed ahead of free slots.
        prefetch: u32,
        /// Drain time.
        shutdown_timeout: Duration,
        /// TERM to KILL.
        kill_grace: Duration,
        /// Lease.
        lease: Duration,
    },
    /// Running → Draining.
    Draining {
        /// The signal.
        signal: Signal,
        /// Jobs alive.
        alive: usize,
        /// Drain time.
        shutdown_timeout: Duration,
        /// A claim was in flight (it will be handed back).
        claim_in_flight: bool,
        /// Claims whose reply was lost wait to be recovered.
        uncertain_claims: bool,
    },
    /// Draining → TimedOut.
    TimedOut {
        /// Why.
        cause: TimeoutCause,
        /// Jobs alive, sent TERM.
        alive: usize,
        /// KILL follows after this.
        kill_grace: Duration,
    },
    /// A third TERM/INT while TimedOut: KILL now.
    KillNow {
        /// The signal.
        signal: Signal,
        /// Its number.
        count: u32,
        /// Jobs alive.
        alive: usize,
    },
    /// → Stopped.
    Stopped {
        /// The phase left.
        from: Phase,
        /// Why.
        cause: StopCause,
        /// The exit code.
        code: i32,
    },
    /// A store call failed and the store was thought up.
    StoreDown {
        /// The call.
        call: StoreCall,
        /// Why.
        failure: StoreFailure,
    },
    /// A store call succeeded after failures.
    StoreUp,
    /// The store refused a batch of outcomes as invalid.
    BatchRefused {
        /// Outcomes in it.
        size: usize,
        /// Why.
        failure: StoreFailure,
    },
    /// Claims whose reply was lost could not be recovered before the exit.
    RecoveryGivenUp {
        /// How many.
        claims: usize,
    },
    /// A job's run ended.
    JobEnded {
        /// The job.
        job: JobId,
        /// Its queue.
        queue: String,
        /// How.
        end: RunEnd,
        /// Since it was claimed.
        ran_for: Duration,
        /// The outcome to record, or `None` when the lease was lost and
        /// nothing is recorded.
        outcome: Option<&'static str>,
    },
    /// A job's outcome was written.
    Recorded {
        /// The job.
        job: JobId,
        /// Its queue.
        queue: String,
        /// The outcome.
        outcome: &'static str,
        /// The job's state after it.
        state: JobState,
        /// Written while Running (logged and traced only when shutting down).
        quiet: bool,
    },
    /// The store refused a job's outcome: another worker owns the job.
    OutcomeRefused {
        /// The job.
        job: JobId,
    },
    /// The store refused a job's outcome as invalid.
    OutcomeInvalid {
        /// The job.
        job: JobId,
        /// Why.
        failure: StoreFailure,
        /// Even the plain failure was refused: left to its lease.
        left_to_lease: bool,
    },
    /// A claim answered after the first signal: handed back unstarted.
    HandedBack {
        /// The job.
        job: JobId,
    },
    /// A prefetched job handed back without ever starting.
    PrefetchReturned {
        /// The job.
        job: JobId,
        /// Because the first shutdown signal came (otherwise: its lease ran
        /// short while it waited for a slot).
        signal: bool,
    },
    /// A cancel reached a prefetched job: recorded cancelled, never started.
    CancelledUnstarted {
        /// The job.
        job: JobId,
    },
    /// A claim answered too late to run within its lease: handed back.
    ClaimTooLate {
        /// The job.
        job: JobId,
    },
    /// A newer claim of a job we hold arrived.
    ClaimedAgain {
        /// The job.
        job: JobId,
        /// The superseded lease.
        old: LeaseToken,
        /// The old run is still alive (killed first) or had ended (its
        /// outcome dropped).
        alive: bool,
    },
    /// A job from a claim whose reply was lost, recovered by a heartbeat.
    Recovered {
        /// The job.
        job: JobId,
    },
    /// A user cancelled a running job.
    CancelRequested {
        /// The job.
        job: JobId,
    },
    /// The store says our lease of the job is gone.
    LeaseLost {
        /// The job.
        job: JobId,
    },
    /// No heartbeat extended the job's lease: it is stopped before the
    /// lease can expire.
    LeaseRunningOut {
        /// The job.
        job: JobId,
        /// Time left until the deadline (the KILL).
        expires_in: Duration,
    },
    /// At the exit deadline: a job not recorded is left to its lease.
    LeftToLease {
        /// The job.
        job: JobId,
        /// Its process was still alive (it is killed).
        alive: bool,
    },
}

/// What kind of thing a note tells: how it is logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// A phase transition.
    Phase,
    /// Something that happened to one job.
    Job,
    /// The store went away or came back, or outcomes were given up.
    Store,
}

/// One entry of the worker's own story: transitions and job outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// When.
    pub at: Instant,
    /// What.
    pub what: What,
}

impl Note {
    /// Its kind, for logging.
    pub fn kind(&self) -> NoteKind {
        match self.what {
            What::Started { .. }
            | What::Draining { .. }
            | What::TimedOut { .. }
            | What::KillNow { .. }
            | What::Stopped { .. } => NoteKind::Phase,
            What::StoreDown { .. }
            | What::StoreUp
            | What::BatchRefused { .. }
            | What::RecoveryGivenUp { .. } => NoteKind::Store,
            _ => NoteKind::Job,
        }
    }

    /// Whether it belongs in logs and traces (an outcome written in the
    /// ordinary course of Running is a fact for metrics, not a story).
    pub fn shown(&self) -> bool {
        !matches!(self.what, What::Recorded { quiet: true, .. })
    }
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
    /// Jobs handed back unstarted: claimed after the signal, or prefetched
    /// and not started before it.
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
    /// Replies that came after their question was settled (a duplicate, a
    /// reply to a call that already timed out): expected, and ignored.
    pub late_replies: u64,
    /// Events that break the driver's contract (an executor event for a run
    /// the machine does not hold): ignored, counted, a bug in the driver.
    pub violations: u64,
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
