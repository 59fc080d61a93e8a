//! The shutdown trace as text: one line per event, action, transition and job
//! outcome, each with a time relative to an origin.
//!
//! The worker prints the note lines at exit; the snapshot tests render all
//! three kinds, so a reviewer reads the same words an operator does.

use std::fmt::{self, Write as _};

use super::{fmt_duration, Action, Event, Instant, Note, NoteKind, Status, StoreFailure};

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

    /// Add a note line (phase, job or store).
    pub fn note(&mut self, note: &Note) {
        let kind = match note.kind {
            NoteKind::Phase => "phase",
            NoteKind::Job => "job",
            NoteKind::Store => "store",
        };
        self.line(note.at, kind, &note.text);
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
            Event::StartFailed { lease, error } => {
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
                        RecordResult::Recorded => "recorded",
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
            Event::LeaseLost { job } => write!(f, "lease of job {job} lost"),
            Event::CancelRequested { job } => write!(f, "cancel of job {job} requested"),
            Event::StoreUnreachable => f.write_str("store unreachable"),
            Event::StoreReachable => f.write_str("store reachable"),
            Event::Wake => f.write_str("wake-up: new jobs"),
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
            "] claimed={} succeeded={} failed={} interrupted={} cancelled={} handed_back={} lost={} refused={} invalid={} superseded={} store_errors={}",
            c.claimed, c.succeeded, c.failed, c.interrupted, c.cancelled, c.handed_back, c.lost, c.refused, c.invalid, c.superseded, c.store_errors
        )
    }
}

fn ids(ids: &[crate::job::JobId]) -> String {
    ids.iter()
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
