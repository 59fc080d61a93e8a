//! The job store: one [`Store`] trait, three backends.
//!
//! - [`postgres`]: for fleets; claims with `FOR UPDATE SKIP LOCKED`, wake-ups
//!   with LISTEN/NOTIFY.
//! - [`sqlite`]: the embedded default (`sqlite://dockhand.db`), one machine.
//! - [`memory`]: in-process, for tests, benchmarks and the simulation.
//!
//! Every state change is one statement or one transaction, and every write
//! about a running job is fenced by worker id + lease token: a stale or
//! foreign lease changes nothing and is reported as
//! [`RecordResult::Refused`].

mod any;
pub mod memory;
pub mod postgres;
mod rules;
pub mod sqlite;

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::job::{
    storable_text, ClaimedJob, Completion, JobId, JobSpec, JobState, Lease, NewJob, Outcome,
    RecordResult,
};
use crate::job::{HeartbeatAnswer, Phase};

pub use any::AnyStore;
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The database used when neither `--database-url` nor `DATABASE_URL` is given.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://dockhand.db";

/// Most jobs in one bulk enqueue.
pub const MAX_BULK: usize = 100_000;

/// Most jobs one [`Store::enqueue_stream`] takes (its answers are kept until
/// the commit: 16 bytes a job).
pub const MAX_STREAM: usize = 10_000_000;

/// Where [`Store::enqueue_stream`] draws its jobs: the next chunk (at most
/// [`MAX_BULK`] jobs), `None` at the end, or why the input cannot be used
/// (which rolls back everything drawn so far).
pub type JobChunks<'a> = &'a mut (dyn FnMut() -> Result<Option<Vec<NewJob>>, StoreError> + Send);

/// Most rows one listing returns.
pub const MAX_LIST: u32 = 10_000;
/// Longest queue name.
pub const MAX_QUEUE_LEN: usize = 200;
/// Most bytes of a job's spec (command, env) as JSON.
pub const MAX_SPEC_BYTES: usize = 64 * 1024;
/// Most expired leases requeued by one reap.
pub const REAP_BATCH: i64 = 1000;
/// First retry after about this long, doubling per attempt.
pub const RETRY_BASE: Duration = Duration::from_secs(1);
/// Retry backoff cap.
pub const RETRY_CAP: Duration = Duration::from_secs(600);
/// A worker whose heartbeat is older than this many leases is presumed lost.
pub const LOST_AFTER_LEASES: u32 = 2;
/// Longest per-job timeout.
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest per-job memory limit.
pub const MAX_JOB_MEMORY: u64 = 1 << 40;
/// Smallest memory limit: Docker's own minimum. Zero is refused rather than
/// passed on, because Docker reads a zero limit as "no limit".
pub const MIN_JOB_MEMORY: u64 = 6 << 20;
/// Largest process limit (the kernel's largest `pid_max`). Zero is refused:
/// Docker reads it as "no limit".
pub const MAX_JOB_PIDS: u32 = 4_194_304;
/// Schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 7;
/// Longest unique key.
pub const MAX_UNIQUE_KEY_LEN: usize = 200;
/// Latest run time a job may ask for: the end of year 9999 (unix ms).
pub const MAX_RUN_AT_MS: i64 = 253_402_300_799_999;

/// What can go wrong talking to the store, in words a user can act on.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The URL cannot be used.
    #[error("invalid database URL {url}: {reason}")]
    BadUrl {
        /// The URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
    /// The database cannot be reached (down, refused, timed out).
    #[error("database unreachable: {0}")]
    Unreachable(String),
    /// The database is there but cannot serve this now (busy, deadlock,
    /// shutting down, out of connections): try again later.
    #[error("temporary database error: {0}")]
    Temporary(String),
    /// The database was migrated by a newer dockhand.
    #[error("database schema is at version {found}, newer than this dockhand knows ({known}); upgrade dockhand")]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// A job that cannot be stored as given.
    #[error("invalid job: {0}")]
    InvalidJob(String),
    /// The database refused a write as breaking a constraint.
    #[error("constraint violated: {0}")]
    Constraint(String),
    /// No job with that id.
    #[error("job {0} not found")]
    NotFound(JobId),
    /// A row the store cannot read back.
    #[error("unreadable row: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unreachable(error.to_string()),
            sqlx::Error::Database(db) => {
                let message = db.message().to_string();
                let code = db.code();
                if transient_code(code.as_deref()) {
                    return StoreError::Temporary(message);
                }
                if db.is_check_violation()
                    || db.is_unique_violation()
                    || db.is_foreign_key_violation()
                {
                    StoreError::Constraint(message)
                } else {
                    StoreError::Database(message)
                }
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnNotFound(_) => StoreError::Corrupt(error.to_string()),
            _ => StoreError::Database(error.to_string()),
        }
    }
}

/// Whether a database error code means "try again later" rather than
/// "this request is wrong". PostgreSQL SQLSTATE classes: 08 connection,
/// 40 serialization/deadlock, 53 resources (too many connections, disk
/// full), 55P03 lock not available, 57 operator intervention (shutdown,
/// restart), 58 system I/O. SQLite primary codes: 5 BUSY, 6 LOCKED,
/// 10 IOERR, 13 FULL, 14 CANTOPEN.
fn transient_code(code: Option<&str>) -> bool {
    let Some(code) = code else {
        return false;
    };
    // A PostgreSQL SQLSTATE has five characters; SQLite reports its
    // (extended) result code as a shorter number whose low byte is the
    // primary code.
    if code.len() == 5 {
        return matches!(&code[..2], "08" | "40" | "53" | "57" | "58") || code == "55P03";
    }
    match code.parse::<u32>() {
        Ok(n) => matches!(n & 0xff, 5 | 6 | 10 | 13 | 14),
        Err(_) => false,
    }
}

impl StoreError {
    /// Whether trying again later may succeed (an outage, a busy database):
    /// a worker retries these with backoff. Anything else is permanent: the
    /// same request would fail again, so it must be changed, not repeated.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable(_) | StoreError::Temporary(_))
    }
}

/// A job as stored: what `show` and `jobs` print.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// Queue.
    pub queue: String,
    /// State.
    pub state: JobState,
    /// What it runs (env values of secret-looking keys are redacted by the CLI).
    pub spec: JobSpec,
    /// Higher runs first.
    pub priority: i32,
    /// Runs that ended in success or failure.
    pub attempts: u32,
    /// Runs allowed to fail before `failed`.
    pub max_attempts: u32,
    /// Runs interrupted by shutdown or a lost worker.
    pub interruptions: u32,
    /// Interruptions after which the job is failed instead of requeued.
    pub max_interruptions: u32,
    /// Exit code of the last run that exited.
    pub exit_code: Option<i32>,
    /// Why the last run failed, in words.
    pub error: Option<String>,
    /// Worker holding (or that last held) the lease.
    pub worker_id: Option<String>,
    /// Token of the current (or last) claim.
    pub lease_token: i64,
    /// Cancel asked for while running.
    pub cancel_requested: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Not claimed before (unix ms).
    pub run_at: i64,
    /// Last claim (unix ms).
    pub started_at: Option<i64>,
    /// Reached a final state (unix ms).
    pub finished_at: Option<i64>,
    /// The job's unique key, if it was enqueued with one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
}

impl Job {
    /// Queued, but not to run before a time still to come (a delay, `--at`
    /// or a retry's backoff), judged at `now_ms`.
    pub fn is_scheduled(&self, now_ms: i64) -> bool {
        self.state == JobState::Queued && self.run_at > now_ms
    }
}

/// One answer of [`Store::enqueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    /// The new job, or the live job that holds the same unique key.
    pub id: JobId,
    /// True when nothing was created because of the unique key.
    pub existed: bool,
}

/// One queue as `dockhand queues` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Its name.
    pub queue: String,
    /// Queued and due.
    pub ready: u64,
    /// Queued, due later.
    pub scheduled: u64,
    /// Held by a worker.
    pub running: u64,
    /// Finished in success (still in the table).
    pub succeeded: u64,
    /// Out of attempts or interrupted too often.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Paused by an operator: workers claim nothing from it.
    pub paused: bool,
    /// Age of its oldest ready job, in milliseconds (0 when none is ready).
    pub oldest_ready_age_ms: u64,
}

/// A periodic job: what `dockhand schedule add` stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Its name (unique).
    pub name: String,
    /// The cron expression, evaluated in UTC.
    pub cron: String,
    /// The job each due slot enqueues (its delay, run time and unique key
    /// are not used).
    pub job: NewJob,
    /// The latest slot enqueued (unix ms); a slot at or before it is never
    /// enqueued again. When the schedule is added: the time it was added.
    pub last_slot_ms: i64,
}

/// What a bulk `cancel` or `retry` applies to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BulkFilter {
    /// Only jobs in this state (`None`: every state the action applies to).
    pub state: Option<JobState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only jobs that entered their state longer ago than this.
    pub older_than: Option<Duration>,
}

/// A bulk action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BulkAction {
    /// Cancel queued jobs, ask workers to stop running ones.
    Cancel,
    /// Requeue failed and cancelled jobs.
    Retry,
}

impl BulkAction {
    /// The states the action applies to.
    pub fn states(self) -> &'static [JobState] {
        match self {
            BulkAction::Cancel => &[JobState::Queued, JobState::Running],
            BulkAction::Retry => &[JobState::Failed, JobState::Cancelled],
        }
    }

    /// The states a filter selects for this action; an error names a state
    /// the action does not apply to.
    pub fn select(self, filter: &BulkFilter) -> Result<Vec<JobState>, StoreError> {
        match filter.state {
            None => Ok(self.states().to_vec()),
            Some(state) if self.states().contains(&state) => Ok(vec![state]),
            Some(state) => Err(StoreError::InvalidJob(format!(
                "{} applies to {} jobs, not {}",
                self.verb(),
                self.states()
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" or "),
                state.as_str()
            ))),
        }
    }

    /// In SQL, what else a row must be for the action to apply: not yet
    /// asked to cancel; for a retry, the newest job of its unique key.
    pub(crate) fn guard_sql(self) -> &'static str {
        match self {
            BulkAction::Cancel => "NOT cancel_requested",
            BulkAction::Retry => NEWEST_OF_KEY,
        }
    }

    /// `cancel` or `retry`.
    pub fn verb(self) -> &'static str {
        match self {
            BulkAction::Cancel => "cancel",
            BulkAction::Retry => "retry",
        }
    }
}

/// The states `prune` may delete; a live state is refused.
pub fn check_prunable(states: &[JobState]) -> Result<(), StoreError> {
    match states
        .iter()
        .find(|s| matches!(s, JobState::Queued | JobState::Running))
    {
        Some(live) => Err(StoreError::InvalidJob(format!(
            "prune deletes succeeded, failed or cancelled jobs, not {live} ones"
        ))),
        None if states.is_empty() => Err(StoreError::InvalidJob(
            "prune needs at least one state".into(),
        )),
        None => Ok(()),
    }
}

/// Rows one bulk statement changes at most: a batch holds its row locks
/// briefly, so workers claiming beside it are never blocked for long.
pub const BULK_BATCH: u32 = 1000;

/// One entry of a job's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobEvent {
    /// Unix milliseconds.
    pub at: i64,
    /// enqueued, claimed, succeeded, failed, retry-scheduled, interrupted,
    /// requeued, handed-back, lease-expired, cancel-requested, cancelled,
    /// retried, stale-write-refused.
    pub kind: String,
    /// Worker involved, if any.
    pub worker_id: Option<String>,
    /// Lease token involved, if any.
    pub lease_token: Option<i64>,
    /// Details in words.
    pub detail: Option<String>,
}

/// Which jobs to list.
#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<JobState>,
    /// Only this queue.
    pub queue: Option<String>,
    /// At most this many (newest first); capped at [`MAX_LIST`].
    pub limit: Option<u32>,
    /// Only queued jobs due later (`Some(true)`); only jobs that are not
    /// (`Some(false)`).
    pub scheduled: Option<bool>,
    /// Only jobs whose command (its words joined by spaces) holds this
    /// text, ASCII case ignored.
    pub text: Option<String>,
    /// Only jobs created at or after this time (unix ms).
    pub created_from: Option<i64>,
    /// Only jobs created before this time (unix ms).
    pub created_until: Option<i64>,
    /// Only jobs with a smaller id: the next page after a page that ended
    /// with this id (keyset paging costs the same on every page).
    pub before: Option<JobId>,
    /// Only jobs this worker holds or last held.
    pub worker: Option<String>,
}

/// Longest text a [`JobFilter`] searches for.
pub const MAX_FILTER_TEXT: usize = 200;

/// `text` as a `LIKE` pattern that matches it anywhere, with `\` as the
/// escape character (so `%` and `_` in the text match themselves).
pub(crate) fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Whether a command matches a filter's text the way the SQL stores match
/// it: its words joined by spaces hold the text, ASCII case ignored.
pub fn command_matches(command: &[String], text: &str) -> bool {
    command
        .join(" ")
        .to_ascii_lowercase()
        .contains(&text.to_ascii_lowercase())
}

/// Jobs that finished in one minute: what the dashboard charts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Activity {
    /// The minute's start (unix ms, a multiple of 60,000).
    pub minute_ms: i64,
    /// Jobs that succeeded in it.
    pub succeeded: u64,
    /// Jobs that failed in it (out of attempts, or interrupted too often).
    pub failed: u64,
}

/// How a worker stopped, kept for a while after it left the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WorkerStop {
    /// The worker.
    pub worker_id: String,
    /// Its exit code.
    pub exit_code: i32,
    /// Its shutdown trace (empty if it stopped without a signal); at most
    /// [`MAX_STOP_TRACE`] bytes.
    pub trace: String,
    /// Unix ms; set by the store.
    #[serde(default)]
    pub stopped_at: i64,
}

/// Longest shutdown trace kept per stopped worker.
pub const MAX_STOP_TRACE: usize = 64 * 1024;
/// Stopped workers kept (the newest), and for how long at most.
pub const KEEP_STOPS: u32 = 100;
/// How long a stopped worker's trace is kept.
pub const KEEP_STOPS_FOR: Duration = Duration::from_secs(24 * 3600);

impl WorkerStop {
    /// A stop record, its trace cut to [`MAX_STOP_TRACE`] bytes.
    pub fn new(worker_id: &str, exit_code: i32, trace: &str) -> Self {
        let mut end = trace.len().min(MAX_STOP_TRACE);
        while !trace.is_char_boundary(end) {
            end -= 1;
        }
        let mut kept = trace[..end].to_string();
        if end < trace.len() {
            kept.push_str("\n[trace cut]\n");
        }
        WorkerStop {
            worker_id: worker_id.to_string(),
            exit_code,
            trace: kept,
            stopped_at: 0,
        }
    }
}

impl JobFilter {
    /// Refuse a filter no store should run: a search text over
    /// [`MAX_FILTER_TEXT`] bytes.
    pub fn check(&self) -> Result<(), StoreError> {
        match &self.text {
            Some(text) if text.len() > MAX_FILTER_TEXT => Err(StoreError::InvalidJob(format!(
                "the search text is over {MAX_FILTER_TEXT} bytes"
            ))),
            _ => Ok(()),
        }
    }

    fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(1000).min(MAX_LIST))
    }
}

/// What a worker asks of one claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClaimRequest {
    /// The worker.
    pub worker: String,
    /// Queues to take jobs from.
    pub queues: Vec<String>,
    /// Most jobs.
    pub max: u32,
    /// The lease each claimed job gets.
    pub lease: Duration,
    /// The claim's id (unique per worker; recovered by a heartbeat if the
    /// reply is lost).
    pub claim_id: u64,
    /// Whether jobs with an image may be claimed: a worker whose Docker
    /// engine is away (or who has none) leaves them to others.
    pub images: bool,
}

impl ClaimRequest {
    /// A claim for `worker` that takes any job of `queues`.
    pub fn new(worker: &str, queues: &[String], max: u32, lease: Duration, claim_id: u64) -> Self {
        ClaimRequest {
            worker: worker.to_string(),
            queues: queues.to_vec(),
            max,
            lease,
            claim_id,
            images: true,
        }
    }
}

/// A worker announcing itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    /// Unique id (host-pid-random): containers may share a host name and a pid,
    /// so the random part is 32 bits.
    pub id: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Queues it serves.
    pub queues: Vec<String>,
    /// Jobs at once.
    pub concurrency: u32,
    /// Its lease: others judge it lost when it stays silent for
    /// [`LOST_AFTER_LEASES`] of them.
    #[serde(default)]
    pub lease: Duration,
}

/// A worker in the registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerRow {
    /// What it announced.
    #[serde(flatten)]
    pub info: WorkerInfo,
    /// Last reported phase.
    pub phase: String,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms of the last heartbeat.
    pub heartbeat_at: i64,
    /// No heartbeat for [`LOST_AFTER_LEASES`] leases: presumed dead.
    pub lost: bool,
    /// Jobs it holds leases on.
    pub running_jobs: Vec<JobId>,
    /// Its Docker engine: `reachable`, `unreachable`, or `None` (not
    /// configured, or an older worker).
    pub docker: Option<String>,
}

/// What `cancel` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelResult {
    /// It was queued; now `cancelled`.
    Cancelled,
    /// It is running; its worker will stop it and record `cancelled`.
    Requested,
    /// Already final (succeeded, failed, cancelled): nothing changed.
    AlreadyFinal(JobState),
}

/// A push from the store to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// New jobs may be ready.
    Jobs,
    /// A user cancelled this running job.
    Cancel(JobId),
}

/// Capacity of a wake-up channel; wake-ups coalesce, so dropping is harmless.
pub const WAKEUP_CAPACITY: usize = 64;

/// The operations a worker and the CLI need. Each is one statement or one
/// transaction. Futures are `Send` so the shell can run on any runtime thread.
pub trait Store: Send + Sync + 'static {
    /// Create or upgrade the schema; safe when several processes do it at once.
    fn migrate(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Enqueue jobs, all or nothing; one answer per job, in input order. A
    /// job whose unique key is held by a live (queued or running) job, or
    /// by an earlier job of the same call, creates nothing and answers with
    /// that job's id (`existed`). The database enforces the key, so
    /// concurrent enqueues of one key create one job.
    fn enqueue(
        &self,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send;

    /// Enqueue every job `next` yields, chunk by chunk, all or nothing (one
    /// transaction), with [`Store::enqueue`]'s answers and unique keys.
    /// Memory holds one chunk at a time plus the answers, so a file of
    /// millions of jobs can be loaded; at most [`MAX_STREAM`] jobs. This
    /// default collects everything first and allows [`MAX_BULK`].
    fn enqueue_stream(
        &self,
        next: JobChunks<'_>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send {
        async move {
            let mut jobs = Vec::new();
            while let Some(chunk) = next()? {
                jobs.extend(chunk);
                if jobs.len() > MAX_BULK {
                    return Err(StoreError::InvalidJob(format!(
                        "at most {MAX_BULK} jobs per enqueue on this store"
                    )));
                }
            }
            self.enqueue(&jobs).await
        }
    }

    /// [`Store::enqueue`], answering with the ids only.
    fn enqueue_many(
        &self,
        jobs: &[NewJob],
    ) -> impl Future<Output = Result<Vec<JobId>, StoreError>> + Send {
        async move {
            Ok(self
                .enqueue(jobs)
                .await?
                .into_iter()
                .map(|e| e.id)
                .collect())
        }
    }

    /// Claim up to `request.max` ready jobs in one statement, each with a
    /// fresh lease token. The rows remember the claim id (unique per worker),
    /// so a claim whose reply was lost can be recovered by a later heartbeat.
    fn claim(
        &self,
        request: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<ClaimedJob>, StoreError>> + Send;

    /// Extend every given lease held by `worker`, record its phase, and say
    /// which leases are lost and which jobs are to be cancelled. Jobs still
    /// running under one of `recover` (claims of this worker whose reply
    /// never arrived) are handed over in `recovered`, their leases extended.
    fn heartbeat(
        &self,
        worker: &str,
        phase: Phase,
        leases: &[Lease],
        lease: Duration,
        recover: &[u64],
    ) -> impl Future<Output = Result<HeartbeatAnswer, StoreError>> + Send;

    /// Record outcomes, each fenced by its lease; one transaction. An outcome
    /// is accepted while its lease is the job's latest claim: the job is
    /// running under it, or the lease expired and was reaped but nobody has
    /// claimed the job since (the reap's interruption is then undone). A
    /// pending cancel turns every requeue into `cancelled`.
    fn record(
        &self,
        worker: &str,
        completions: &[Completion],
    ) -> impl Future<Output = Result<Vec<(JobId, RecordResult)>, StoreError>> + Send;

    /// Requeue jobs whose lease expired (counts as an interruption); how many.
    fn reap_expired(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Cancel a queued job, or flag a running one for its worker to stop.
    fn cancel(&self, id: JobId) -> impl Future<Output = Result<CancelResult, StoreError>> + Send;

    /// Put a failed or cancelled job back in the queue. `false` if it is in
    /// another state.
    fn retry(&self, id: JobId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Cancel or retry every job the filter selects, in batches of at
    /// most [`BULK_BATCH`] rows (one statement each); with `dry_run`, only
    /// count them. Answers how many jobs were (or would be) changed.
    fn bulk(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        dry_run: bool,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Delete finished jobs (`states` must all be final) that finished
    /// longer than `older_than` ago, with their history, in batches of at
    /// most [`BULK_BATCH`] rows (one short transaction each, so claims and
    /// records go on beside it); with `dry_run`, only count them. How many.
    fn prune(
        &self,
        states: &[JobState],
        older_than: Duration,
        dry_run: bool,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Every queue that has jobs or was paused, by name.
    fn queue_stats(&self) -> impl Future<Output = Result<Vec<QueueStats>, StoreError>> + Send;

    /// Pause (workers claim nothing from it) or resume a queue; whether
    /// that changed anything.
    fn set_paused(
        &self,
        queue: &str,
        paused: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Add a schedule, or replace the one of that name (its last slot is
    /// kept, so a replaced schedule does not fire a slot twice). Whether
    /// one was replaced.
    fn put_schedule(
        &self,
        schedule: &Schedule,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Remove a schedule; whether it existed.
    fn remove_schedule(&self, name: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every schedule, by name.
    fn schedules(&self) -> impl Future<Output = Result<Vec<Schedule>, StoreError>> + Send;

    /// Enqueue the schedule's job for `slot_ms` if no process did yet:
    /// moving the schedule's last slot forward and the insert are one
    /// transaction, so across a fleet each slot is enqueued once. The new
    /// job's id, or `None` when the slot was already taken (or the
    /// schedule is gone).
    fn fire_schedule(
        &self,
        name: &str,
        slot_ms: i64,
    ) -> impl Future<Output = Result<Option<JobId>, StoreError>> + Send;

    /// One job.
    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<Job>, StoreError>> + Send;

    /// Jobs, newest first.
    fn list(&self, filter: &JobFilter)
        -> impl Future<Output = Result<Vec<Job>, StoreError>> + Send;

    /// A job's history, oldest first.
    fn history(&self, id: JobId) -> impl Future<Output = Result<Vec<JobEvent>, StoreError>> + Send;

    /// A job's captured output tail, byte for byte.
    fn output(&self, id: JobId)
        -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Announce a worker (or refresh it).
    fn register_worker(
        &self,
        info: &WorkerInfo,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Remove a worker that exited from the registry, and keep how it
    /// stopped (its exit code and shutdown trace) for the dashboard: the
    /// newest [`KEEP_STOPS`], for at most [`KEEP_STOPS_FOR`].
    fn deregister_worker(
        &self,
        stop: &WorkerStop,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Workers that stopped lately, newest first.
    fn stops(&self) -> impl Future<Output = Result<Vec<WorkerStop>, StoreError>> + Send;

    /// Jobs that finished (succeeded or failed) in each minute of the last
    /// `span`, oldest first; minutes without any are left out.
    fn activity(
        &self,
        span: Duration,
    ) -> impl Future<Output = Result<Vec<Activity>, StoreError>> + Send;

    /// The registry, each worker flagged lost by its own announced lease
    /// (`lease` for a worker that announced none).
    fn workers(
        &self,
        lease: Duration,
    ) -> impl Future<Output = Result<Vec<WorkerRow>, StoreError>> + Send;

    /// Record the state of a worker's Docker engine (`reachable`,
    /// `unreachable`), for `status` and the dashboard.
    fn report_engine(
        &self,
        worker: &str,
        state: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A random identity of this database, made at migration: it tells
    /// apart deployments that share a Docker engine.
    fn instance_id(&self) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Pushed wake-ups, if the backend has them (`None`: poll only).
    fn wakeups(
        &self,
    ) -> impl Future<Output = Result<Option<mpsc::Receiver<Wakeup>>, StoreError>> + Send;
}

/// Match each job of an enqueue call (its unique key, in input order) to
/// its answer: `inserted` are the rows created, in input order (skipped
/// rows left out); `holders` maps each skipped key to the job holding it.
pub(crate) fn match_enqueued(
    keys: &[Option<&str>],
    inserted: &[(JobId, Option<String>)],
    holders: &[(String, i64)],
) -> Result<Vec<Enqueued>, StoreError> {
    let mut answers = Vec::with_capacity(keys.len());
    let mut next = inserted.iter().peekable();
    for key in keys {
        let created = next
            .peek()
            .filter(|(_, k)| k.as_deref() == *key)
            .filter(|_| {
                // An earlier row of this call with the same key took it.
                key.is_none_or(|key| {
                    !answers
                        .iter()
                        .zip(keys)
                        .any(|(_, k): (&Enqueued, &Option<&str>)| *k == Some(key))
                })
            })
            .map(|(id, _)| *id);
        if let Some(id) = created {
            next.next();
            answers.push(Enqueued { id, existed: false });
            continue;
        }
        let key = key.ok_or_else(|| {
            StoreError::Corrupt("an enqueued job without a unique key was not created".into())
        })?;
        let earlier = answers
            .iter()
            .zip(keys)
            .find(|(_, k)| **k == Some(key))
            .map(|(a, _)| a.id);
        let holder = holders
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, id)| JobId(*id));
        let id = earlier
            .or(holder)
            .ok_or_else(|| StoreError::Corrupt(format!("no job holds the unique key {key:?}")))?;
        answers.push(Enqueued { id, existed: true });
    }
    Ok(answers)
}

/// In SQL, whether a job may be retried as far as its unique key goes: it
/// is the newest job of its key (a live job of the key would be newer, as
/// it blocked every enqueue after it), so a retry never makes two live jobs
/// of one key.
pub(crate) const NEWEST_OF_KEY: &str = "(unique_key IS NULL OR id = (
    SELECT max(k.id) FROM jobs k WHERE k.unique_key = jobs.unique_key))";

/// In SQL, when a job entered its state, as `--older-than` judges it:
/// finished jobs by when they finished, running ones by their claim,
/// queued ones by when they became due.
pub(crate) const SINCE: &str = "(CASE state WHEN 'queued' THEN run_at
    WHEN 'running' THEN coalesce(started_at, run_at) ELSE coalesce(finished_at, created_at) END)";

/// Read a row of the queue statistics query of either SQL backend.
pub(crate) fn decode_queue_stats<R>(row: &R) -> Result<QueueStats, StoreError>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let count = |name: &str| -> Result<u64, StoreError> {
        let value: i64 = row.try_get(name)?;
        Ok(value.max(0) as u64)
    };
    Ok(QueueStats {
        queue: row.try_get("queue")?,
        ready: count("ready")?,
        scheduled: count("scheduled")?,
        running: count("running")?,
        succeeded: count("succeeded")?,
        failed: count("failed")?,
        cancelled: count("cancelled")?,
        paused: row.try_get("paused")?,
        oldest_ready_age_ms: count("oldest_ms")?,
    })
}

/// Read the rows of the stopped-workers query of either SQL backend
/// (columns `id`, `exit_code`, `trace`, `stopped_ms`).
pub(crate) fn decode_stops<R>(rows: &[R]) -> Result<Vec<WorkerStop>, StoreError>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|row| {
            Ok(WorkerStop {
                worker_id: row.try_get("id")?,
                exit_code: row.try_get("exit_code")?,
                trace: row.try_get("trace")?,
                stopped_at: row.try_get("stopped_ms")?,
            })
        })
        .collect()
}

/// Read the rows of the activity query of either SQL backend.
pub(crate) fn decode_activity<R>(rows: &[R]) -> Result<Vec<Activity>, StoreError>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    rows.iter()
        .map(|row| {
            let count = |name: &str| -> Result<u64, StoreError> {
                let value: i64 = row.try_get(name)?;
                Ok(value.max(0) as u64)
            };
            Ok(Activity {
                minute_ms: row.try_get("minute_ms")?,
                succeeded: count("succeeded")?,
                failed: count("failed")?,
            })
        })
        .collect()
}

/// Read a row of the schedules table of either SQL backend.
pub(crate) fn decode_schedule<R>(row: &R) -> Result<Schedule, StoreError>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let spec: String = row.try_get("spec")?;
    let max_attempts: i32 = row.try_get("max_attempts")?;
    Ok(Schedule {
        name: row.try_get("name")?,
        cron: row.try_get("cron")?,
        job: NewJob {
            queue: row.try_get("queue")?,
            spec: serde_json::from_str(&spec)
                .map_err(|e| StoreError::Corrupt(format!("schedule spec: {e}")))?,
            priority: row.try_get("priority")?,
            max_attempts: u32::try_from(max_attempts)
                .map_err(|_| StoreError::Corrupt("max_attempts is negative".into()))?,
            delay: Duration::ZERO,
            run_at: None,
            unique_key: None,
        },
        last_slot_ms: row.try_get("last_slot_ms")?,
    })
}

/// A schedule before it is stored: its name and its job.
pub fn validate_schedule(schedule: &Schedule) -> Result<(), StoreError> {
    let name = &schedule.name;
    if name.is_empty() || name.len() > MAX_QUEUE_LEN || name.contains('\0') {
        return Err(StoreError::InvalidJob(format!(
            "schedule name must be 1 to {MAX_QUEUE_LEN} characters without NUL"
        )));
    }
    if schedule.cron.is_empty() || schedule.cron.len() > 200 || schedule.cron.contains('\0') {
        return Err(StoreError::InvalidJob(
            "cron expression must be 1 to 200 characters".into(),
        ));
    }
    validate(&schedule.job)
}

/// A queue name as `pause` and `resume` take it.
pub fn validate_queue_name(queue: &str) -> Result<(), StoreError> {
    // Queue names reach logs, metric labels and one-line listings: no
    // control characters (newlines, escapes), NUL included.
    if queue.is_empty() || queue.len() > MAX_QUEUE_LEN || queue.contains(char::is_control) {
        return Err(StoreError::InvalidJob(format!(
            "queue name must be 1 to {MAX_QUEUE_LEN} characters without control characters"
        )));
    }
    Ok(())
}

/// Check a job before any write, so a bad item in a bulk enqueue writes nothing.
pub fn validate(job: &NewJob) -> Result<(), StoreError> {
    let bad = |reason: String| Err(StoreError::InvalidJob(reason));
    if job.spec.command.is_empty() || job.spec.command[0].is_empty() {
        return bad("a command is required".into());
    }
    // A NUL cannot reach exec (arguments and environment are C strings),
    // and PostgreSQL cannot store it in text or jsonb.
    let texts = job
        .spec
        .command
        .iter()
        .chain(job.spec.env.keys())
        .chain(job.spec.env.values())
        .chain(std::iter::once(&job.queue))
        .chain(job.spec.image.iter());
    for text in texts {
        if text.contains('\0') {
            return bad(format!(
                "{:?} contains a NUL byte, which no command, environment, queue or image may hold",
                crate::redact::redact_text(&text.replace('\0', "\\0"))
            ));
        }
    }
    if job.spec.env.keys().any(|k| k.is_empty() || k.contains('=')) {
        return bad("environment names must be non-empty and hold no '='".into());
    }
    validate_queue_name(&job.queue)?;
    if job.max_attempts == 0 || job.max_attempts > 1000 {
        return bad("max_attempts must be between 1 and 1000".into());
    }
    if job.spec.image.as_deref() == Some("") {
        return bad("image must not be empty".into());
    }
    if job.spec.timeout_ms == Some(0) {
        return bad("timeout must be greater than zero".into());
    }
    if job
        .spec
        .timeout_ms
        .is_some_and(|ms| ms > MAX_JOB_TIMEOUT.as_millis() as u64)
    {
        return bad("timeout must be at most 30 days".into());
    }
    if let Some(bytes) = job.spec.memory_bytes {
        if let Err(e) = check_memory(bytes) {
            return bad(e);
        }
    }
    if let Some(pids) = job.spec.pids {
        if let Err(e) = check_pids(pids) {
            return bad(e);
        }
    }
    if let Some(cpu) = job.spec.cpu_millis {
        if let Err(e) = check_cpu(cpu) {
            return bad(e);
        }
    }
    if job.delay > Duration::from_secs(366 * 24 * 3600) {
        return bad("delay must be under a year".into());
    }
    if job
        .run_at
        .is_some_and(|ms| !(0..=MAX_RUN_AT_MS).contains(&ms))
    {
        return bad("run time must be between 1970 and 9999".into());
    }
    if let Some(key) = &job.unique_key {
        if key.is_empty() || key.len() > MAX_UNIQUE_KEY_LEN || key.contains('\0') {
            return bad(format!(
                "unique key must be 1 to {MAX_UNIQUE_KEY_LEN} bytes without NUL"
            ));
        }
    }
    let spec_len = serde_json::to_vec(&job.spec)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if spec_len > MAX_SPEC_BYTES {
        return bad(format!(
            "command and env must be under {MAX_SPEC_BYTES} bytes as JSON"
        ));
    }
    Ok(())
}

/// A memory limit in bytes, refused when Docker would not enforce it
/// (zero means "no limit" to Docker) or when it is absurd.
pub fn check_memory(bytes: u64) -> Result<(), String> {
    if bytes < MIN_JOB_MEMORY {
        return Err(format!(
            "memory limit must be at least 6 MiB, got {bytes} bytes (a limit cannot be turned off)"
        ));
    }
    if bytes > MAX_JOB_MEMORY {
        return Err("memory limit must be at most 1 TiB".into());
    }
    Ok(())
}

/// A CPU limit in thousandths of a CPU (zero would be "no limit").
pub fn check_cpu(cpu_millis: u32) -> Result<(), String> {
    if cpu_millis == 0 || cpu_millis > 1_024_000 {
        return Err("CPU limit must be between 0.001 and 1024 CPUs".into());
    }
    Ok(())
}

/// A process limit, refused when Docker would not enforce it (zero means
/// "no limit" to Docker).
pub fn check_pids(pids: u32) -> Result<(), String> {
    if pids == 0 || pids > MAX_JOB_PIDS {
        return Err(format!(
            "process limit must be between 1 and {MAX_JOB_PIDS}, got {pids} (a limit cannot be turned off)"
        ));
    }
    Ok(())
}

/// The bound of [`Store::enqueue_stream`], checked before each chunk goes in.
fn check_stream_len(total: usize) -> Result<(), StoreError> {
    if total > MAX_STREAM {
        return Err(StoreError::InvalidJob(format!(
            "at most {MAX_STREAM} jobs per enqueue; split the input"
        )));
    }
    Ok(())
}

fn validate_all(jobs: &[NewJob]) -> Result<(), StoreError> {
    if jobs.len() > MAX_BULK {
        return Err(StoreError::InvalidJob(format!(
            "at most {MAX_BULK} jobs per enqueue"
        )));
    }
    for (i, job) in jobs.iter().enumerate() {
        validate(job).map_err(|e| match e {
            StoreError::InvalidJob(reason) if jobs.len() > 1 => {
                StoreError::InvalidJob(format!("job #{}: {reason}", i + 1))
            }
            other => other,
        })?;
    }
    Ok(())
}

/// Retry delay after a failed attempt (`attempts` = failures so far, ≥ 1):
/// about 1 s, doubling, capped at 10 min, ±25 % jitter from `unit` in [0, 1).
pub fn retry_backoff(attempts: u32, unit: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    let base = RETRY_BASE.saturating_mul(1u32 << exp).min(RETRY_CAP);
    base.mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0))
}

/// The error recorded on a job failed for too many interruptions.
pub fn quarantine_reason(interruptions: u32) -> String {
    format!("interrupted {interruptions}{}", rules::QUARANTINE_SUFFIX)
}

/// Wall-clock unix milliseconds (SQLite and display; Postgres uses its own clock).
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub use crate::redact::redact_url;

/// The outcome as SQL parameters: kind, exit code, error.
/// Error texts are made storable (no NUL, bounded) here, for every backend.
pub(crate) fn outcome_params(outcome: &Outcome) -> (&'static str, Option<i32>, Option<String>) {
    let text = |t: &str| Some(storable_text(t).into_owned());
    match outcome {
        Outcome::Succeeded => ("succeeded", Some(0), None),
        Outcome::Failed { exit_code, error } => ("failed", *exit_code, text(error)),
        Outcome::Interrupted { reason } => ("interrupted", None, text(reason)),
        Outcome::Cancelled => ("cancelled", None, None),
        Outcome::HandBack => ("handed-back", None, None),
    }
}

/// The migrations a database at schema `current` still needs, in order; a
/// database migrated by a newer dockhand is refused. Both SQL backends
/// apply the plan inside their own migration transaction.
pub(crate) fn migration_plan<'a>(
    current: Option<i64>,
    migrations: &'a [(i64, &'a str)],
) -> Result<Vec<(i64, Vec<&'a str>)>, StoreError> {
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known: SCHEMA_VERSION,
        });
    }
    Ok(migrations
        .iter()
        .filter(|(version, _)| *version > current)
        .map(|(version, sql)| (*version, statements(sql)))
        .collect())
}

/// The statements of a migration file: split on `;` at line ends, comments
/// dropped (our migrations keep every statement's `;` at the end of a line).
pub(crate) fn statements(sql: &str) -> Vec<&str> {
    sql.split(";\n")
        .map(str::trim)
        .filter(|chunk| {
            chunk
                .lines()
                .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"))
        })
        .map(|chunk| chunk.trim_end_matches(';'))
        .collect()
}

/// Read a claimed job from a row of either SQL backend: `id`, `lease_token`,
/// `queue`, `spec` (JSON text), `attempts`, `interruptions`, `waited_ms`.
pub(crate) fn decode_claimed<R>(row: &R) -> Result<ClaimedJob, StoreError>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let spec: String = row.try_get("spec")?;
    let count = |name: &str| -> Result<u32, StoreError> {
        let value: i64 = row.try_get(name)?;
        u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{name} is {value}")))
    };
    Ok(ClaimedJob {
        lease: Lease {
            job: JobId(row.try_get("id")?),
            token: crate::job::LeaseToken(row.try_get("lease_token")?),
        },
        queue: row.try_get("queue")?,
        spec: serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?,
        attempts: count("attempts")?,
        interruptions: count("interruptions")?,
        waited: Duration::from_millis(row.try_get::<i64, _>("waited_ms")?.max(0) as u64),
    })
}

/// Read a job from a row of either SQL backend (both select the same names).
pub(crate) fn decode_job<R>(row: &R) -> Result<Job, StoreError>
where
    R: sqlx::Row,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let spec: String = row.try_get("spec")?;
    let state: String = row.try_get("state")?;
    let count = |name: &str| -> Result<u32, StoreError> {
        let value: i32 = row.try_get(name)?;
        u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{name} is negative")))
    };
    Ok(Job {
        id: JobId(row.try_get("id")?),
        queue: row.try_get("queue")?,
        state: state.parse().map_err(StoreError::Corrupt)?,
        spec: serde_json::from_str(&spec).map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?,
        priority: row.try_get("priority")?,
        attempts: count("attempts")?,
        max_attempts: count("max_attempts")?,
        interruptions: count("interruptions")?,
        max_interruptions: count("max_interruptions")?,
        exit_code: row.try_get("exit_code")?,
        error: row.try_get("error")?,
        worker_id: row.try_get("lease_owner")?,
        lease_token: row.try_get("lease_token")?,
        cancel_requested: row.try_get("cancel_requested")?,
        created_at: row.try_get("created_ms")?,
        run_at: row.try_get("run_ms")?,
        started_at: row.try_get("started_ms")?,
        finished_at: row.try_get("finished_ms")?,
        unique_key: row.try_get("unique_key")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_near_a_second_and_caps() {
        assert_eq!(retry_backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(retry_backoff(2, 0.5), Duration::from_secs(2));
        assert_eq!(retry_backoff(1, 0.0), Duration::from_millis(750));
        assert_eq!(retry_backoff(1, 1.0), Duration::from_millis(1250));
        assert_eq!(retry_backoff(30, 0.5), RETRY_CAP);
    }

    #[test]
    fn a_job_without_command_is_invalid() {
        let job = NewJob::new(vec![]);
        assert!(matches!(validate(&job), Err(StoreError::InvalidJob(_))));
        let jobs = vec![NewJob::new(vec!["true".into()]), NewJob::new(vec![])];
        let err = validate_all(&jobs).unwrap_err().to_string();
        assert!(err.contains("job #2"), "{err}");
    }

    /// Each bound of a job holds at its edge and refuses one past it: the
    /// limits are part of the contract (`enqueue` answers the same on every
    /// store), so an off-by-one in either direction is a bug.
    #[test]
    fn every_bound_of_a_job_holds_at_its_edge() {
        let valid = |change: &dyn Fn(&mut NewJob)| {
            let mut job = NewJob::new(vec!["true".into()]);
            change(&mut job);
            validate(&job).map_err(|e| e.to_string())
        };
        let refused = |change: &dyn Fn(&mut NewJob), says: &str| {
            let err = valid(change).expect_err(says);
            assert!(err.contains(says), "{err} (wanted: {says})");
        };
        // Attempts.
        valid(&|j| j.max_attempts = 1).unwrap();
        valid(&|j| j.max_attempts = 1000).unwrap();
        refused(&|j| j.max_attempts = 0, "max_attempts");
        refused(&|j| j.max_attempts = 1001, "max_attempts");
        // Delay and run time.
        let year = Duration::from_secs(366 * 24 * 3600);
        valid(&|j| j.delay = year).unwrap();
        refused(&|j| j.delay = year + Duration::from_millis(1), "delay");
        valid(&|j| j.run_at = Some(0)).unwrap();
        valid(&|j| j.run_at = Some(MAX_RUN_AT_MS)).unwrap();
        refused(&|j| j.run_at = Some(-1), "run time");
        refused(&|j| j.run_at = Some(MAX_RUN_AT_MS + 1), "run time");
        // Unique key.
        valid(&|j| j.unique_key = Some("k".into())).unwrap();
        valid(&|j| j.unique_key = Some("k".repeat(MAX_UNIQUE_KEY_LEN))).unwrap();
        refused(&|j| j.unique_key = Some(String::new()), "unique key");
        let long_key = "k".repeat(MAX_UNIQUE_KEY_LEN + 1);
        refused(&|j| j.unique_key = Some(long_key.clone()), "unique key");
        refused(&|j| j.unique_key = Some("a\0b".into()), "unique key");
        // Queue name.
        valid(&|j| j.queue = "q".repeat(MAX_QUEUE_LEN)).unwrap();
        refused(&|j| j.queue = "q".repeat(MAX_QUEUE_LEN + 1), "queue name");
        refused(&|j| j.queue = String::new(), "queue name");
        refused(
            &|j| {
                j.queue = "a
b"
                .into()
            },
            "queue name",
        );
        // Command, environment, image.
        refused(&|j| j.spec.command = vec![String::new()], "command");
        valid(&|j| j.spec.command.push(String::new())).unwrap();
        refused(&|j| j.spec.command.push("a\0".into()), "NUL");
        refused(&|j| j.spec.image = Some("img\0".into()), "NUL");
        refused(&|j| j.queue = "q\0".into(), "NUL");
        refused(
            &|j| {
                j.spec.env.insert("A".into(), "b\0".into());
            },
            "NUL",
        );
        refused(
            &|j| {
                j.spec.env.insert("A=B".into(), "c".into());
            },
            "environment names",
        );
        refused(
            &|j| {
                j.spec.env.insert(String::new(), "c".into());
            },
            "environment names",
        );
        valid(&|j| {
            j.spec.env.insert("A".into(), "=".into());
        })
        .unwrap();
        refused(&|j| j.spec.image = Some(String::new()), "image");
        valid(&|j| j.spec.image = Some("busybox".into())).unwrap();
        // Limits.
        valid(&|j| j.spec.memory_bytes = Some(MIN_JOB_MEMORY)).unwrap();
        valid(&|j| j.spec.memory_bytes = Some(MAX_JOB_MEMORY)).unwrap();
        refused(
            &|j| j.spec.memory_bytes = Some(MIN_JOB_MEMORY - 1),
            "at least 6 MiB",
        );
        refused(
            &|j| j.spec.memory_bytes = Some(MAX_JOB_MEMORY + 1),
            "at most 1 TiB",
        );
        valid(&|j| j.spec.cpu_millis = Some(1)).unwrap();
        valid(&|j| j.spec.cpu_millis = Some(1_024_000)).unwrap();
        refused(&|j| j.spec.cpu_millis = Some(0), "CPU limit");
        refused(&|j| j.spec.cpu_millis = Some(1_024_001), "CPU limit");
        valid(&|j| j.spec.pids = Some(1)).unwrap();
        valid(&|j| j.spec.pids = Some(MAX_JOB_PIDS)).unwrap();
        refused(&|j| j.spec.pids = Some(0), "process limit");
        refused(&|j| j.spec.pids = Some(MAX_JOB_PIDS + 1), "process limit");
        // The spec's size as JSON: `{"command":["true","x..."]}` padded to
        // exactly the limit, then one byte more.
        let base = serde_json::to_vec(&NewJob::new(vec!["true".into(), String::new()]).spec)
            .map(|v| v.len())
            .unwrap();
        let pad = MAX_SPEC_BYTES - base;
        // The documented sizes themselves (docs/CLI.md), not just the
        // constants' edges: 64 KiB of spec, 6 MiB to 1 TiB of memory.
        valid(&|j| j.spec.command.push("x".repeat(65_536 - base))).unwrap();
        valid(&|j| j.spec.memory_bytes = Some(6 * 1024 * 1024)).unwrap();
        refused(
            &|j| j.spec.memory_bytes = Some(6 * 1024 * 1024 - 1),
            "6 MiB",
        );
        valid(&|j| j.spec.memory_bytes = Some(1024_u64.pow(4))).unwrap();
        refused(
            &|j| j.spec.memory_bytes = Some(1024_u64.pow(4) + 1),
            "1 TiB",
        );
        valid(&|j| j.spec.command.push("x".repeat(pad))).unwrap();
        refused(
            &|j| j.spec.command.push("x".repeat(pad + 1)),
            "bytes as JSON",
        );
    }

    #[test]
    fn a_schedules_name_and_cron_hold_at_their_edges() {
        let schedule = |name: &str, cron: &str| Schedule {
            name: name.into(),
            cron: cron.into(),
            job: NewJob::new(vec!["true".into()]),
            last_slot_ms: 0,
        };
        let max_name = "n".repeat(MAX_QUEUE_LEN);
        let max_cron = "*".repeat(200);
        validate_schedule(&schedule(&max_name, &max_cron)).unwrap();
        for (name, cron) in [
            (String::new(), "* * * * *".to_string()),
            ("n".repeat(MAX_QUEUE_LEN + 1), "* * * * *".into()),
            ("a\0".into(), "* * * * *".into()),
            ("n".into(), String::new()),
            ("n".into(), "*".repeat(201)),
            ("n".into(), "* *\0".into()),
        ] {
            assert!(
                validate_schedule(&schedule(&name, &cron)).is_err(),
                "{name:?} {cron:?}"
            );
        }
        let mut bad_job = schedule("n", "* * * * *");
        bad_job.job.max_attempts = 0;
        assert!(validate_schedule(&bad_job).is_err());
    }

    #[test]
    fn a_bulk_enqueue_and_a_stream_hold_at_their_edges() {
        let jobs = vec![NewJob::new(vec!["true".into()]); MAX_BULK];
        validate_all(&jobs).unwrap();
        let more = vec![NewJob::new(vec!["true".into()]); MAX_BULK + 1];
        let err = validate_all(&more).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
        // One bad job alone is named without a number.
        let err = validate_all(&[NewJob::new(vec![])])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("job #"), "{err}");
        check_stream_len(MAX_STREAM).unwrap();
        assert!(check_stream_len(MAX_STREAM + 1).is_err());
    }

    /// The codes that make a worker wait and retry rather than give up:
    /// judged wrong, an outage fails jobs for good (transient taken for
    /// permanent) or a bad request is retried for ever (the reverse).
    #[test]
    fn database_codes_are_told_transient_or_permanent() {
        let transient = [
            "08006", "08001", "40001", "40P01", "53300", "53100", "55P03", "57P01", "57P03",
            "58030", // PostgreSQL
            "5", "6", "10", "13", "14", "517", "262", "266", // SQLite, extended too
        ];
        for code in transient {
            assert!(transient_code(Some(code)), "{code} is transient");
        }
        let permanent = [
            "23505", "23514", "42601", "42P01", "55000", "22012", "XX000", // PostgreSQL
            "1", "19", "2067", "275", "11", // SQLite
            "", "abc", "5x",
        ];
        for code in permanent {
            assert!(!transient_code(Some(code)), "{code} is permanent");
        }
        assert!(!transient_code(None));
    }

    #[test]
    fn only_outages_and_busy_databases_are_worth_retrying() {
        assert!(StoreError::Unreachable("down".into()).is_transient());
        assert!(StoreError::Temporary("busy".into()).is_transient());
        for permanent in [
            StoreError::InvalidJob("bad".into()),
            StoreError::Constraint("dup".into()),
            StoreError::NotFound(JobId(1)),
            StoreError::Corrupt("row".into()),
            StoreError::Database("syntax".into()),
            StoreError::SchemaTooNew { found: 9, known: 7 },
        ] {
            assert!(!permanent.is_transient(), "{permanent}");
        }
        // sqlx's own errors: the network and the pool are outages, a row
        // that does not decode is corrupt.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(matches!(
            StoreError::from(sqlx::Error::Io(io)),
            StoreError::Unreachable(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::PoolTimedOut),
            StoreError::Unreachable(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::ColumnNotFound("x".into())),
            StoreError::Corrupt(_)
        ));
        assert!(matches!(
            StoreError::from(sqlx::Error::RowNotFound),
            StoreError::Database(_)
        ));
    }

    #[test]
    fn prune_takes_only_finished_states_and_at_least_one() {
        assert!(check_prunable(&[]).is_err());
        let err = check_prunable(&[JobState::Succeeded, JobState::Running])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not running"), "{err}");
        assert!(check_prunable(&[JobState::Queued]).is_err());
        check_prunable(&[JobState::Succeeded, JobState::Failed, JobState::Cancelled]).unwrap();
    }

    #[test]
    fn a_stop_trace_is_kept_up_to_64_kib_and_cut_on_a_character() {
        let whole = "t".repeat(64 * 1024);
        assert_eq!(WorkerStop::new("w", 0, &whole).trace, whole);
        let over = format!("{whole}!");
        let cut = WorkerStop::new("w", 1, &over);
        assert_eq!(cut.trace, format!("{whole}\n[trace cut]\n"));
        assert_eq!((cut.worker_id.as_str(), cut.exit_code), ("w", 1));
        // A two-byte character across the limit is left out whole.
        let split = format!("{}é", "t".repeat(64 * 1024 - 1));
        let cut = WorkerStop::new("w", 0, &split).trace;
        assert_eq!(cut, format!("{}\n[trace cut]\n", "t".repeat(64 * 1024 - 1)));
    }

    #[test]
    fn a_listing_is_bounded_and_so_is_its_search_text() {
        let filter = |text: Option<String>, limit: Option<u32>| JobFilter {
            text,
            limit,
            ..JobFilter::default()
        };
        filter(Some("s".repeat(MAX_FILTER_TEXT)), None)
            .check()
            .unwrap();
        assert!(filter(Some("s".repeat(MAX_FILTER_TEXT + 1)), None)
            .check()
            .is_err());
        assert_eq!(filter(None, None).limit(), 1000);
        assert_eq!(filter(None, Some(5)).limit(), 5);
        assert_eq!(filter(None, Some(u32::MAX)).limit(), i64::from(MAX_LIST));
    }

    /// The default `enqueue_stream` (the in-memory store's) takes up to
    /// `MAX_BULK` jobs, then refuses the whole input.
    #[tokio::test]
    async fn the_default_stream_takes_up_to_max_bulk_jobs() {
        let stream = |total: usize| {
            let mut left = total;
            move || -> Result<Option<Vec<NewJob>>, StoreError> {
                if left == 0 {
                    return Ok(None);
                }
                let n = left.min(10_000);
                left -= n;
                Ok(Some(vec![NewJob::new(vec!["true".into()]); n]))
            }
        };
        let store = memory::MemoryStore::new();
        let mut next = stream(MAX_BULK);
        assert_eq!(
            store.enqueue_stream(&mut next).await.unwrap().len(),
            MAX_BULK
        );
        let store = memory::MemoryStore::new();
        let mut next = stream(MAX_BULK + 1);
        let err = store
            .enqueue_stream(&mut next)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("at most"), "{err}");
        assert!(store.list(&JobFilter::default()).await.unwrap().is_empty());
    }

    #[test]
    fn a_timeout_may_be_up_to_thirty_days() {
        let with_timeout = |ms: u64| {
            let mut job = NewJob::new(vec!["true".into()]);
            job.spec.timeout_ms = Some(ms);
            validate(&job)
        };
        let thirty_days = 30 * 24 * 3600 * 1000;
        assert!(with_timeout(1).is_ok());
        assert!(with_timeout(2 * 3600 * 1000).is_ok(), "two hours");
        assert!(with_timeout(thirty_days).is_ok());
        let err = with_timeout(thirty_days + 1).unwrap_err().to_string();
        assert!(err.contains("at most 30 days"), "{err}");
        assert!(with_timeout(0).is_err());
    }
}
