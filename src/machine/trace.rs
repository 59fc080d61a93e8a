//! The shutdown trace as text: one line per event, action, transition and job
//! outcome, each with a time relative to an origin.
//!
//! The worker prints the note lines at exit; the snapshot tests render all
//! three kinds, so a reviewer reads the same words an operator does.

use std::fmt::{self, Write as _};

use super::{
    fmt_duration, Action, Event, Instant, Note, NoteKind, RunEnd, Status, StopCause, StoreCall,
    StoreFailure, TimeoutCause, What,
};

/// A [`StoreFailure`] in trace words: permanent ones say so.
pub struct FailureText<'a>(pub &'a StoreFailure);

impl fmt::Display for FailureText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        if !self.0.transient {
            f.write_str(" (permanent)")?;
        }
        Ok(())
    }
}
use crate::job::{Outcome, RecordResult};

/// Most lines one [`Trace`] keeps; later lines are counted, not stored.
pub const MAX_TRACE_LINES: usize = 20_000;

/// Accumulates trace lines with times relative to `origin`.
#[derive(Clone, Debug)]
pub struct Trace {
    origin: Instant,
    text: String,
    lines: usize,
    dropped: usize,
}

impl Trace {
    /// An empty trace whose times count from `origin`.
    pub fn new(origin: Instant) -> Self {
        Trace {
            origin,
            text: String::new(),
            lines: 0,
            dropped: 0,
        }
    }

    /// Add one line.
    pub fn line(&mut self, at: Instant, kind: &str, text: impl fmt::Display) {
        if self.lines >= MAX_TRACE_LINES {
            self.dropped += 1;
            return;
        }
        self.lines += 1;
        let _ = writeln!(
            self.text,
            "{}  {kind:<6}  {text}",
            Instant::from_origin(at.saturating_since(self.origin))
        );
    }

    /// Add an event line.
    pub fn event(&mut self, at: Instant, event: &Event) {
        self.line(at, "event", EventText(event));
    }

    /// Add an action line.
    pub fn action(&mut self, at: Instant, action: &Action) {
        self.line(at, "action", ActionText(action));
    }

    /// Add a note line (phase, job or store), if the note is one to show.
    pub fn note(&mut self, note: &Note) {
        if !note.shown() {
            return;
        }
        let kind = match note.kind() {
            NoteKind::Phase => "phase",
            NoteKind::Job => "job",
            NoteKind::Store => "store",
        };
        self.line(note.at, kind, NoteText(note));
    }

    /// Lines added so far.
    pub fn len(&self) -> usize {
        self.lines
    }

    /// Whether no line was added.
    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// The text, with a last line counting dropped lines if any were.
    pub fn render(&self) -> String {
        let mut text = self.text.clone();
        if self.dropped > 0 {
            let _ = writeln!(text, "... {} more lines not kept", self.dropped);
        }
        text
    }
}

/// An [`Event`] in trace words.
pub struct EventText<'a>(pub &'a Event);

impl fmt::Display for EventText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Event::Signal(signal) => write!(f, "signal {signal}"),
            Event::TimerFired => f.write_str("timer fired"),
            Event::ClaimReply {
                result: Ok(jobs), ..
            } if jobs.is_empty() => f.write_str("claim reply: no jobs"),
            Event::ClaimReply {
                result: Ok(jobs), ..
            } => {
                f.write_str("claim reply: job")?;
                if jobs.len() > 1 {
                    f.write_str("s")?;
                }
                for (i, job) in jobs.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{}", job.lease.job)?;
                }
                Ok(())
            }
            Event::ClaimReply { result: Err(e), .. } => {
                write!(f, "claim failed: {}", FailureText(e))
            }
            Event::JobStarted { lease } => write!(f, "job {} started", lease.job),
            Event::StartFailed { lease, error, .. } => {
                write!(f, "job {} could not start: {error}", lease.job)
            }
            Event::JobExited { lease, exit, .. } => write!(f, "job {} exited: {exit}", lease.job),
            Event::RecordReply {
                result: Ok(results),
                ..
            } => {
                f.write_str("record reply:")?;
                for (i, (job, result)) in results.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    let word = match result {
                        RecordResult::Recorded { .. } => "recorded",
                        RecordResult::Refused => "refused",
                    };
                    write!(f, "{sep}job {job} {word}")?;
                }
                Ok(())
            }
            Event::RecordReply { result: Err(e), .. } => {
                write!(f, "record failed: {}", FailureText(e))
            }
            Event::ReapReply { result: Ok(n), .. } => write!(f, "reap reply: {n} requeued"),
            Event::ReapReply { result: Err(e), .. } => {
                write!(f, "reap failed: {}", FailureText(e))
            }
            Event::HeartbeatReply {
                result: Ok(answer), ..
            } => {
                f.write_str("heartbeat reply: ok")?;
                if !answer.lost.is_empty() {
                    write!(f, ", lost {}", ids(&answer.lost))?;
                }
                if !answer.cancelled.is_empty() {
                    write!(f, ", cancel {}", ids(&answer.cancelled))?;
                }
                if !answer.recovered.is_empty() {
                    let recovered: Vec<_> = answer.recovered.iter().map(|j| j.lease.job).collect();
                    write!(f, ", recovered {}", ids(&recovered))?;
                }
                Ok(())
            }
            Event::HeartbeatReply { result: Err(e), .. } => {
                write!(f, "heartbeat failed: {}", FailureText(e))
            }
            Event::CancelRequested { job } => write!(f, "cancel of job {job} requested"),
            Event::Wake => f.write_str("wake-up: new jobs"),
        }
    }
}

/// A [`Note`] in the words an operator reads in logs and the shutdown trace.
pub struct NoteText<'a>(pub &'a Note);

fn s(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl fmt::Display for NoteText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.what {
            What::Started {
                concurrency,
                prefetch,
                shutdown_timeout,
                kill_grace,
                lease,
            } => {
                write!(f, "running (concurrency {concurrency}")?;
                if *prefetch > 0 {
                    write!(f, ", prefetch {prefetch}")?;
                }
                write!(
                    f,
                    ", shutdown timeout {}, kill grace {}, lease {})",
                    fmt_duration(*shutdown_timeout),
                    fmt_duration(*kill_grace),
                    fmt_duration(*lease)
                )
            }
            What::Draining {
                signal,
                alive,
                shutdown_timeout,
                claim_in_flight,
                uncertain_claims,
            } => {
                write!(
                    f,
                    "running -> draining: {signal} received; {alive} job{} running, no new claims, drain deadline in {}",
                    s(*alive),
                    fmt_duration(*shutdown_timeout)
                )?;
                if *claim_in_flight {
                    f.write_str("; the claim in flight will be handed back")?;
                }
                if *uncertain_claims {
                    f.write_str("; claims whose reply was lost will be recovered and handed back")?;
                }
                f.write_str(" (a second signal stops jobs now)")
            }
            What::TimedOut {
                cause,
                alive,
                kill_grace,
            } => {
                f.write_str("draining -> timed-out: ")?;
                match cause {
                    TimeoutCause::Deadline(timeout) => {
                        write!(f, "shutdown timeout ({}) passed", fmt_duration(*timeout))?
                    }
                    TimeoutCause::Signal(signal, n) => write!(f, "{signal} #{n}: forcing the stop")?,
                }
                write!(
                    f,
                    "; sending SIGTERM to {alive} job{}, SIGKILL in {}",
                    s(*alive),
                    fmt_duration(*kill_grace)
                )
            }
            What::KillNow {
                signal,
                count,
                alive,
            } => write!(
                f,
                "timed-out: {signal} #{count}: sending SIGKILL to {alive} job{} now",
                s(*alive)
            ),
            What::Stopped { from, cause, code } => {
                write!(f, "{from} -> stopped: ")?;
                match cause {
                    StopCause::Idle => f.write_str("idle")?,
                    StopCause::AllDone => {
                        f.write_str("every job finished or stopped, every outcome recorded")?
                    }
                    StopCause::ExitDeadline { bound, unrecorded } => write!(
                        f,
                        "exit deadline ({}) passed with {unrecorded} job{} unrecorded",
                        fmt_duration(*bound),
                        s(*unrecorded)
                    )?,
                }
                write!(f, "; exit {code}")
            }
            What::StoreDown { call, failure } => {
                let call = match call {
                    StoreCall::Claim => "claim failed",
                    StoreCall::Record => "recording outcomes failed",
                    StoreCall::Heartbeat => "heartbeat failed",
                    StoreCall::Reap => "reaping expired leases failed",
                };
                write!(f, "{call}: {failure}")
            }
            What::StoreUp => f.write_str("store reachable again"),
            What::BatchRefused { size, failure } => write!(
                f,
                "the store refused a batch of {size} outcomes ({failure}); writing them one by one"
            ),
            What::RecoveryGivenUp { claims } => write!(
                f,
                "could not recover {claims} claim{} whose reply was lost; their jobs return to the queue when their lease expires",
                s(*claims)
            ),
            What::JobEnded {
                job,
                end,
                ran_for,
                outcome,
                ..
            } => {
                write!(f, "job {job}: ")?;
                match end {
                    RunEnd::StartFailed { error, .. } => write!(f, "could not start: {error}")?,
                    RunEnd::Exited(exit) => write!(f, "{exit}")?,
                }
                write!(f, " after {}", fmt_duration(*ran_for))?;
                match outcome {
                    Some(outcome) => write!(f, " -> {outcome}"),
                    None => f.write_str("; lease lost, nothing recorded"),
                }
            }
            What::Recorded { job, outcome, .. } => write!(f, "job {job}: recorded: {outcome}"),
            What::OutcomeRefused { job } => write!(
                f,
                "job {job}: outcome refused by the store: stale lease, another worker owns the job"
            ),
            What::OutcomeInvalid {
                job,
                failure,
                left_to_lease,
            } => {
                write!(f, "job {job}: the store refused its outcome ({failure}); ")?;
                if *left_to_lease {
                    f.write_str("left to its lease")
                } else {
                    f.write_str("recording it as failed instead")
                }
            }
            What::HandedBack { job } => write!(
                f,
                "job {job}: claimed after the shutdown signal; handing it back unstarted"
            ),
            What::PrefetchReturned { job, signal: true } => write!(
                f,
                "job {job}: prefetched, not started before the shutdown signal; handing it back"
            ),
            What::PrefetchReturned { job, signal: false } => write!(
                f,
                "job {job}: prefetched, and its lease ran short before a slot was free; handing it back"
            ),
            What::CancelledUnstarted { job } => write!(
                f,
                "job {job}: cancel requested while prefetched; recording it cancelled, never started"
            ),
            What::ClaimTooLate { job } => write!(
                f,
                "job {job}: its claim was answered too late to run within the lease; handing it back"
            ),
            What::ClaimedAgain { job, old, alive } => {
                if *alive {
                    write!(f, "job {job}: claimed again while its run under lease {old} is still alive: that run is killed, the new one starts after it")
                } else {
                    write!(f, "job {job}: claimed again: the unrecorded outcome of lease {old} is superseded and dropped")
                }
            }
            What::Recovered { job } => {
                write!(f, "job {job}: recovered from a claim whose reply was lost")
            }
            What::CancelRequested { job } => write!(f, "job {job}: cancel requested; stopping it"),
            What::LeaseLost { job } => write!(
                f,
                "job {job}: lease lost; killing it now, another worker may run it"
            ),
            What::LeaseRunningOut { job, expires_in } => write!(
                f,
                "job {job}: no heartbeat has extended its lease, which may expire in {}; stopping it (SIGKILL then) before another worker can run it",
                fmt_duration(*expires_in)
            ),
            What::LeftToLease { job, alive } => {
                if *alive {
                    write!(f, "job {job}: still alive at the exit deadline; killed and left to its lease")
                } else {
                    write!(f, "job {job}: outcome not recorded by the exit deadline; left to its lease")
                }
            }
        }
    }
}

/// An [`Action`] in trace words.
pub struct ActionText<'a>(pub &'a Action);

impl fmt::Display for ActionText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Action::Claim { max, .. } => write!(f, "claim up to {max}"),
            Action::Start { job } => write!(f, "start job {}", job.lease.job),
            Action::Signal { job, signal } => write!(f, "send {signal} to job {job}"),
            Action::Record { completions, .. } => {
                f.write_str("record")?;
                for (i, c) in completions.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}job {} {}", c.lease.job, OutcomeText(&c.outcome))?;
                }
                Ok(())
            }
            Action::Heartbeat {
                phase,
                leases,
                recover,
                ..
            } => {
                write!(f, "heartbeat ({phase}, {} lease", leases.len())?;
                if leases.len() != 1 {
                    f.write_str("s")?;
                }
                if !recover.is_empty() {
                    write!(f, ", recover claims {recover:?}")?;
                }
                f.write_str(")")
            }
            Action::Release { lease } => write!(f, "release job {}", lease.job),
            Action::Reap { .. } => f.write_str("reap expired leases"),
            Action::ReportStatus(status) => write!(f, "status {}", StatusText(status)),
            Action::Exit { code } => write!(f, "exit {code}"),
        }
    }
}

/// An [`Outcome`] in trace words.
pub struct OutcomeText<'a>(pub &'a Outcome);

impl fmt::Display for OutcomeText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Outcome::Failed { error, .. } => write!(f, "failed ({error})"),
            Outcome::Interrupted { reason } => write!(f, "interrupted ({reason})"),
            other => f.write_str(other.name()),
        }
    }
}

/// A [`Status`] as one line: `phase=draining signals=1 jobs=[3 running 4.2s] claimed=3 ...`.
pub struct StatusText<'a>(pub &'a Status);

impl fmt::Display for StatusText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        write!(f, "phase={} signals={} jobs=[", s.phase, s.signals)?;
        for (i, job) in s.jobs.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(
                f,
                "{sep}{} {} {}",
                job.id,
                job.state,
                fmt_duration(job.elapsed)
            )?;
        }
        let c = &s.counters;
        write!(
            f,
            "] claimed={} succeeded={} failed={} interrupted={} cancelled={} handed_back={} lost={} refused={} invalid={} superseded={} store_errors={} late_replies={} violations={}",
            c.claimed, c.succeeded, c.failed, c.interrupted, c.cancelled, c.handed_back, c.lost, c.refused, c.invalid, c.superseded, c.store_errors, c.late_replies, c.violations
        )
    }
}

fn ids(ids: &[crate::job::JobId]) -> String {
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
