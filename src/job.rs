//! Job vocabulary shared by the machine, the stores and the executors.
//!
//! Plain data only: nothing here does I/O, so the pure machine can use it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most bytes of a job's captured output kept (the tail is kept).
pub const OUTPUT_LIMIT: usize = 64 * 1024;

/// Default number of interruptions by shutdown or lost workers before a job
/// is failed instead of requeued (invariant 7).
pub const DEFAULT_MAX_INTERRUPTIONS: u32 = 3;

/// A job's id in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fencing token of one claim of a job: a new value on every claim, so a
/// write from an older claim (a stale lease) can be recognised and refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(pub i64);

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One claim of one job: every write about a running job carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The job.
    pub job: JobId,
    /// The token handed out by the claim.
    pub token: LeaseToken,
}

/// What to run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Program and arguments; never empty in a stored job.
    pub command: Vec<String>,
    /// Container image; `None` runs the command as a local process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment given to the job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Per-job timeout in milliseconds: the job is stopped and counts as a
    /// failed attempt when it runs longer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Container memory limit in bytes (overrides the worker's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Container CPU limit in thousandths of a CPU (overrides the worker's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Container process limit (overrides the worker's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl JobSpec {
    /// The per-job timeout, if any.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout_ms.map(Duration::from_millis)
    }
}

/// A job to enqueue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// Queue name.
    pub queue: String,
    /// What to run.
    pub spec: JobSpec,
    /// Higher runs first.
    pub priority: i32,
    /// Runs that may end in failure before the job is `failed`.
    pub max_attempts: u32,
    /// Not before this long after enqueue.
    pub delay: Duration,
    /// Not before this time (unix milliseconds); wins over `delay`.
    pub run_at: Option<i64>,
    /// While a job with this key is queued or running, enqueueing another
    /// creates nothing and answers with the live job's id.
    pub unique_key: Option<String>,
}

impl NewJob {
    /// A job on the `default` queue with default settings.
    pub fn new(command: Vec<String>) -> Self {
        NewJob {
            queue: "default".to_string(),
            spec: JobSpec {
                command,
                ..JobSpec::default()
            },
            priority: 0,
            max_attempts: 3,
            delay: Duration::ZERO,
            run_at: None,
            unique_key: None,
        }
    }
}

/// A job handed to a worker by a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedJob {
    /// The claim: job id and fencing token.
    pub lease: Lease,
    /// Queue it came from.
    pub queue: String,
    /// What to run.
    pub spec: JobSpec,
    /// Runs so far that ended in success or failure.
    pub attempts: u32,
    /// Runs so far that were interrupted.
    pub interruptions: u32,
    /// How long it waited, ready, before this claim (by the store's clock).
    pub waited: Duration,
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

/// The store's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatAnswer {
    /// Jobs whose lease we no longer hold (reaped, or claimed by another).
    pub lost: Vec<JobId>,
    /// Jobs a user asked to cancel.
    pub cancelled: Vec<JobId>,
    /// Jobs of claims whose reply never arrived, found running under this
    /// worker: they are ours to run (or hand back).
    #[serde(default)]
    pub recovered: Vec<ClaimedJob>,
}

/// Lifecycle state of a job in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed (possibly not before `run_at`).
    Queued,
    /// Claimed by a worker holding a lease.
    Running,
    /// Finished with exit code 0.
    Succeeded,
    /// Out of attempts, or interrupted too often.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// All states, in lifecycle order.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name used in the database, the CLI and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether no further transition happens without a user's `retry`.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                format!("unknown job state {s:?} (expected queued, running, succeeded, failed or cancelled)")
            })
    }
}

/// How a job's process or container ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code; 0 is success.
    Code(i32),
    /// Ended by this signal number.
    Signal(i32),
}

impl Exit {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// The exit code, if it exited rather than being signalled.
    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(code) => Some(code),
            Exit::Signal(_) => None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit code {code}"),
            Exit::Signal(9) => f.write_str("killed (SIGKILL)"),
            Exit::Signal(15) => f.write_str("terminated (SIGTERM)"),
            Exit::Signal(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// What a worker reports about a claimed job when it is done with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Ran to the end with exit code 0.
    Succeeded,
    /// A run that counts as an attempt and failed: the store retries it with
    /// backoff until `max_attempts`, then marks it `failed`.
    Failed {
        /// Exit code when the job exited on its own.
        exit_code: Option<i32>,
        /// Why, in words.
        error: String,
    },
    /// Stopped by a shutdown: back to `queued` without using an attempt
    /// (`failed` after `max_interruptions`).
    Interrupted {
        /// Why, in words.
        reason: String,
    },
    /// Stopped because a user cancelled it.
    Cancelled,
    /// Claimed but never started (the claim reply came after the shutdown
    /// signal): back to `queued`, no counter changes.
    HandBack,
}

impl RecordResult {
    /// Whether the outcome was written.
    pub fn is_recorded(self) -> bool {
        matches!(self, RecordResult::Recorded { .. })
    }
}

impl Outcome {
    /// Short name for traces and events.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Interrupted { .. } => "interrupted",
            Outcome::Cancelled => "cancelled",
            Outcome::HandBack => "handed back",
        }
    }
}

/// An outcome to record, fenced by the lease it was claimed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The claim this outcome belongs to.
    pub lease: Lease,
    /// What happened.
    pub outcome: Outcome,
    /// Tail of the captured output (at most [`OUTPUT_LIMIT`] bytes): the
    /// job's bytes as it wrote them, whatever they are.
    pub output: Vec<u8>,
}

/// The store's answer for one completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordResult {
    /// Written; the job is now in `state` (a failed attempt that is retried
    /// leaves it `queued`, the last one `failed`).
    Recorded {
        /// The job's state after the outcome.
        state: JobState,
    },
    /// Refused: the lease is stale or belongs to another worker; nothing changed.
    Refused,
}

/// Keep at most `limit` bytes of the end of `bytes`.
pub fn tail(bytes: &[u8], limit: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(limit)..]
}

/// Longest error or detail text the store keeps (the start is kept).
pub const TEXT_LIMIT: usize = 8 * 1024;

/// Text fit for a text column of any backend: NUL (which PostgreSQL text
/// cannot hold) becomes U+FFFD, and at most [`TEXT_LIMIT`] bytes are kept, cut
/// at a character boundary. Job output is stored as bytes and never passes
/// through here; this is for errors and history details.
pub fn storable_text(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= TEXT_LIMIT && !text.contains('\0') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = text.len().min(TEXT_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(text[..end].replace('\0', "\u{fffd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        assert_eq!(tail(b"hello", 10), b"hello");
        assert_eq!(tail(b"he\0llo", 3), b"llo");
    }

    #[test]
    fn storable_text_has_no_nul_and_a_bound() {
        assert_eq!(storable_text("plain"), "plain");
        assert_eq!(storable_text("a\0b"), "a\u{fffd}b");
        let long = "é".repeat(TEXT_LIMIT);
        let kept = storable_text(&long);
        assert!(kept.len() <= TEXT_LIMIT && kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn states_round_trip() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("done".parse::<JobState>().is_err());
    }
}
