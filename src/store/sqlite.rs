//! SQLite backend: the embedded default, for one machine (several worker
//! processes may share the file). WAL mode; every write transaction starts
//! with `BEGIN IMMEDIATE`, so two writers queue on the lock instead of failing.
//! Times are unix milliseconds from this machine's clock.

use std::collections::{BTreeMap, BTreeSet};

use super::WAKEUP_CAPACITY;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Row};
use tokio::sync::mpsc;

use super::rules::{self, Dialect};
use super::{
    check_prunable, check_stream_len, decode_activity, decode_claimed, decode_job,
    decode_queue_stats, decode_schedule, decode_stops, like_pattern, match_enqueued,
    migration_plan, outcome_params, redact_url, unix_ms_now, validate_all, validate_queue_name,
    validate_schedule, Activity, BulkAction, BulkFilter, CancelResult, ClaimRequest, Enqueued, Job,
    JobChunks, JobEvent, JobFilter, QueueStats, Schedule, Store, StoreError, Wakeup, WorkerInfo,
    WorkerRow, WorkerStop, BULK_BATCH, KEEP_STOPS, KEEP_STOPS_FOR, LOST_AFTER_LEASES,
    NEWEST_OF_KEY, REAP_BATCH, SINCE,
};
use crate::job::{
    ClaimedJob, Completion, JobId, JobState, Lease, NewJob, RecordResult, DEFAULT_MAX_INTERRUPTIONS,
};
use crate::job::{HeartbeatAnswer, Phase};

/// How often a worker looks for cancels of running jobs when nothing
/// changed in the file.
const CANCEL_POLL: Duration = Duration::from_millis(500);
/// How often the wake-up watcher asks whether another connection (another
/// process, or this one's pool) committed, while the file is busy.
const CHANGE_POLL: Duration = Duration::from_millis(2);
/// ... and once nothing has changed for [`IDLE_AFTER`]: every look costs
/// about 0.13 ms of CPU (a query through sqlx's connection thread), so
/// looking every 2 ms for ever would cost an idle worker 7 % of a core.
/// The worker's own heartbeats count as changes.
const IDLE_POLL: Duration = Duration::from_millis(20);
const IDLE_AFTER: Duration = Duration::from_millis(200);

const MIGRATIONS: [(i64, &str); 7] = [
    (1, include_str!("../../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/sqlite/0002_bytes_and_late_outcomes.sql"),
    ),
    (3, include_str!("../../migrations/sqlite/0003_engines.sql")),
    (
        4,
        include_str!("../../migrations/sqlite/0004_operations.sql"),
    ),
    (
        5,
        include_str!("../../migrations/sqlite/0005_schedules.sql"),
    ),
    (
        6,
        include_str!("../../migrations/sqlite/0006_dashboard.sql"),
    ),
    (
        7,
        include_str!("../../migrations/sqlite/0007_history_without_fk.sql"),
    ),
];

const JOB_COLUMNS: &str = "id, queue, spec, state, priority, attempts, max_attempts, interruptions, max_interruptions,
    exit_code, error, lease_owner, lease_token, cancel_requested,
    created_at AS created_ms, run_at AS run_ms, started_at AS started_ms, finished_at AS finished_ms, unique_key";

/// A SQLite store over a small pool.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// For the wake-up watcher's own connection (outside the pool).
    options: std::sync::Arc<SqliteConnectOptions>,
}

impl SqliteStore {
    /// Open (creating the file if missing) `sqlite://PATH` or `sqlite::memory:`.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, true).await
    }

    /// Open a database file that must exist already: what read-only
    /// commands use, so a mistyped path is an error instead of a new,
    /// empty database.
    pub async fn open_existing(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, false).await
    }

    async fn open_with(url: &str, create: bool) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::BadUrl {
                url: crate::redact::one_line(&redact_url(url)),
                reason: crate::redact::one_line(&crate::redact::redact_error_about(
                    url,
                    &e.to_string(),
                )),
            })?
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let file = options.get_filename();
        if !create && !names_memory(url) && !file.exists() {
            return Err(StoreError::BadUrl {
                url: redact_url(url),
                reason: format!(
                    "no database file at {}; a worker or `dockhand migrate` creates it",
                    file.display()
                ),
            });
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                StoreError::Unreachable(format!("cannot open {}: {e}", redact_url(url)))
            })?;
        // The file holds every job's spec and output: readable by its owner
        // only, never by jobs running as another user.
        let path = options.get_filename();
        if path.is_file() {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
            }
        }
        Ok(SqliteStore {
            pool,
            options: std::sync::Arc::new(options),
        })
    }

    /// The pool, for tests that inspect the database directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Whether `url` names an in-memory database, read as sqlx reads it
/// (`sqlite::memory:`, `sqlite://:memory:`, `?mode=memory`): it has no file
/// to find. (sqlx names such a database `file:sqlx-in-memory-N`, so its
/// file name does not tell.)
fn names_memory(url: &str) -> bool {
    let rest = url.strip_prefix("sqlite:").unwrap_or(url);
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|param| param == "mode=memory")
}

fn lease_ms(lease: Duration) -> i64 {
    lease.as_millis() as i64
}

/// SQLite's words for the shared rules; `?1` is the current unix time in ms.
fn dialect() -> Dialect {
    let (base, cap) = rules::backoff_ms();
    Dialect {
        now: "?1",
        output: "t.output",
        backoff: format!(
            "?1 + CAST(min({cap}, {base} * (1 << min(j.attempts, 20))) * (0.75 + 0.5 * ((random() & 1048575) / 1048576.0)) AS INTEGER)"
        ),
        false_: "0",
        true_: "1",
    }
}

/// The batched, fenced outcome write (see [`rules`]): `?1` the outcomes as
/// JSON, `?2` now, `?3` the worker.
fn record_sql() -> String {
    let d = Dialect {
        now: "?2",
        backoff: dialect().backoff.replace("?1", "?2"),
        ..dialect()
    };
    format!(
        "UPDATE jobs AS j SET {assignments}
         FROM (SELECT value->>'id' AS id, value->>'token' AS token, value->>'kind' AS kind,
                 value->>'exit_code' AS exit_code, value->>'error' AS error,
                 unhex(value->>'output') AS output
               FROM json_each(?1)) AS t
         WHERE j.id = t.id AND {fence}
         RETURNING id, state",
        assignments = rules::outcome_assignments(&d),
        fence = rules::outcome_fence("?3"),
    )
}

/// Bytes as lower-case hex (SQLite's `unhex` reads it back).
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// Rows per `INSERT` of an enqueue: 9 parameters each, well under SQLite's
/// 32,766; one statement per row cost a round trip through sqlx's
/// connection thread each.
const INSERT_ROWS: usize = 500;

/// Insert validated jobs inside the caller's write transaction, in input
/// order; [`Store::enqueue`]'s answers.
async fn insert_jobs(
    tx: &mut sqlx::SqliteConnection,
    jobs: &[NewJob],
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut inserted: Vec<(JobId, Option<String>)> = Vec::with_capacity(jobs.len());
    for rows in jobs.chunks(INSERT_ROWS) {
        let mut sql = String::from(
            "INSERT INTO jobs (queue, spec, priority, max_attempts, max_interruptions, run_at, created_at, image, unique_key) VALUES ",
        );
        for i in 0..rows.len() {
            sql.push_str(if i == 0 {
                "(?,?,?,?,?,?,?,?,?)"
            } else {
                ",(?,?,?,?,?,?,?,?,?)"
            });
        }
        // The partial unique index skips a job whose key a live job (or an
        // earlier row) holds; the write lock (BEGIN IMMEDIATE) orders
        // concurrent enqueues. Rows get ascending ids in VALUES order.
        sql.push_str(
            " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
             DO NOTHING RETURNING id, unique_key",
        );
        let mut query = sqlx::query(&sql);
        for job in rows {
            let spec = serde_json::to_string(&job.spec)
                .map_err(|e| StoreError::InvalidJob(e.to_string()))?;
            query = query
                .bind(job.queue.clone())
                .bind(spec)
                .bind(job.priority)
                .bind(job.max_attempts as i64)
                .bind(i64::from(DEFAULT_MAX_INTERRUPTIONS))
                .bind(job.run_at.unwrap_or(now + job.delay.as_millis() as i64))
                .bind(now)
                .bind(job.spec.image.clone())
                .bind(job.unique_key.clone());
        }
        let mut created: Vec<(i64, Option<String>)> = query
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("unique_key")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        created.sort_unstable_by_key(|(id, _)| *id);
        inserted.extend(created.into_iter().map(|(id, key)| (JobId(id), key)));
    }
    let keys: Vec<Option<&str>> = jobs.iter().map(|j| j.unique_key.as_deref()).collect();
    let created: BTreeSet<&str> = inserted.iter().filter_map(|(_, k)| k.as_deref()).collect();
    let skipped: BTreeSet<&str> = keys
        .iter()
        .flatten()
        .copied()
        .filter(|k| !created.contains(k))
        .collect();
    let mut holders = Vec::with_capacity(skipped.len());
    for key in skipped {
        let holder: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE unique_key = ?
             ORDER BY (state IN ('queued', 'running')) DESC, id DESC LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        holders.extend(holder.map(|id| (key.to_string(), id)));
    }
    match_enqueued(&keys, &inserted, &holders)
}

impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS dockhand_schema (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM dockhand_schema")
            .fetch_one(&mut *tx)
            .await?;
        for (version, statements) in migration_plan(current, &MIGRATIONS)? {
            for statement in statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO dockhand_schema (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(unix_ms_now())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, StoreError> {
        validate_all(jobs)?;
        let mut tx = self.write().await?;
        let answers = insert_jobs(&mut tx, jobs, unix_ms_now()).await?;
        tx.commit().await?;
        Ok(answers)
    }

    // One write transaction for every chunk: all or nothing, and memory
    // holds one chunk. Workers wait for the write lock meanwhile.
    async fn enqueue_stream(&self, next: JobChunks<'_>) -> Result<Vec<Enqueued>, StoreError> {
        let now = unix_ms_now();
        let mut tx = self.write().await?;
        let mut answers = Vec::new();
        while let Some(chunk) = next()? {
            check_stream_len(answers.len() + chunk.len())?;
            validate_all(&chunk)?;
            answers.extend(insert_jobs(&mut tx, &chunk, now).await?);
        }
        tx.commit().await?;
        Ok(answers)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = unix_ms_now();
        let worker = request.worker.as_str();
        let mut queues: Vec<&str> = request.queues.iter().map(String::as_str).collect();
        queues.sort_unstable();
        queues.dedup();
        let mut tx = self.write().await?;
        // One index scan per queue (`jobs_ready` yields each queue's rows in
        // claim order: no sort of the backlog), merged here by priority; the
        // write lock is held, so what is read is what is updated. A single
        // `queue IN (...) ORDER BY` sorted every queued row in a temp B-tree.
        let mut candidates: Vec<(i32, i64, i64)> = Vec::new();
        for queue in queues {
            let rows: Vec<(i64, i32, i64)> = sqlx::query_as(
                "SELECT id, priority, run_at FROM jobs INDEXED BY jobs_ready
                 WHERE state = 'queued' AND queue = ?1 AND run_at <= ?2 AND (?3 OR image IS NULL)
                   AND NOT EXISTS (SELECT 1 FROM queues p WHERE p.name = ?1 AND p.paused)
                 ORDER BY priority DESC, run_at, id LIMIT ?4",
            )
            .bind(queue)
            .bind(now)
            .bind(request.images)
            .bind(i64::from(request.max))
            .fetch_all(&mut *tx)
            .await?;
            candidates.extend(rows.into_iter().map(|(id, p, at)| (-p, at, id)));
        }
        candidates.sort_unstable();
        candidates.truncate(request.max as usize);
        let ids = serde_json::to_string(&candidates.iter().map(|c| c.2).collect::<Vec<_>>())
            .map_err(|e| StoreError::InvalidJob(e.to_string()))?;
        let rows = sqlx::query(
            "UPDATE jobs SET state = 'running', lease_owner = ?1, lease_token = lease_token + 1,
                lease_expires_at = ?2 + ?3, started_at = ?2, cancel_requested = 0,
                lease_expired = 0, claim_id = ?5
             WHERE id IN (SELECT value FROM json_each(?4)) AND state = 'queued'
             RETURNING id, lease_token, queue, spec, attempts, interruptions, priority, run_at,
                ?2 - run_at AS waited_ms",
        )
        .bind(worker)
        .bind(now)
        .bind(lease_ms(request.lease))
        .bind(ids)
        .bind(request.claim_id as i64)
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut history = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = decode_claimed(row)?;
            history.push([job.lease.job.0, job.lease.token.0]);
            let priority: i32 = row.try_get("priority")?;
            let run_at: i64 = row.try_get("run_at")?;
            claimed.push(((-priority, run_at, job.lease.job), job));
        }
        // One statement for the batch's history: a statement per job cost a
        // round trip through sqlx's connection thread each.
        let history =
            serde_json::to_string(&history).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO job_events (job_id, at, kind, worker_id, lease_token)
             SELECT value->>0, ?1, 'claimed', ?2, value->>1 FROM json_each(?3)",
        )
        .bind(now)
        .bind(worker)
        .bind(history)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        // RETURNING order is unspecified in SQLite: restore the claim order.
        claimed.sort_by_key(|(key, _)| *key);
        Ok(claimed.into_iter().map(|(_, job)| job).collect())
    }

    async fn heartbeat(
        &self,
        worker: &str,
        phase: Phase,
        leases: &[Lease],
        lease: Duration,
        recover: &[u64],
    ) -> Result<HeartbeatAnswer, StoreError> {
        let now = unix_ms_now();
        let mut tx = self.write().await?;
        sqlx::query("UPDATE workers SET phase = ?, heartbeat_at = ? WHERE id = ?")
            .bind(phase.as_str())
            .bind(now)
            .bind(worker)
            .execute(&mut *tx)
            .await?;
        let mut answer = HeartbeatAnswer::default();
        if !leases.is_empty() {
            // One statement for every lease held (a statement each cost a
            // round trip through sqlx's connection thread).
            let held: Vec<[i64; 2]> = leases.iter().map(|l| [l.job.0, l.token.0]).collect();
            let held =
                serde_json::to_string(&held).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let extended: Vec<(i64, i64, bool)> = sqlx::query_as(
                "UPDATE jobs SET lease_expires_at = ?1
                 WHERE state = 'running' AND lease_owner = ?2
                   AND (id, lease_token) IN (SELECT value->>0, value->>1 FROM json_each(?3))
                 RETURNING id, lease_token, cancel_requested",
            )
            .bind(now + lease_ms(lease))
            .bind(worker)
            .bind(held)
            .fetch_all(&mut *tx)
            .await?;
            // By job and token: a job may be named twice, under an old
            // lease and under its current one.
            let extended: BTreeMap<(i64, i64), bool> = extended
                .into_iter()
                .map(|(id, token, cancel)| ((id, token), cancel))
                .collect();
            for held in leases {
                match extended.get(&(held.job.0, held.token.0)) {
                    Some(true) => answer.cancelled.push(held.job),
                    Some(false) => {}
                    None => answer.lost.push(held.job),
                }
            }
        }
        if !recover.is_empty() {
            let claims =
                serde_json::to_string(recover).map_err(|e| StoreError::Database(e.to_string()))?;
            let rows = sqlx::query(
                "UPDATE jobs SET lease_expires_at = ?1 + ?2
                 WHERE state = 'running' AND lease_owner = ?3
                   AND claim_id IN (SELECT value FROM json_each(?4))
                 RETURNING id, lease_token, queue, spec, attempts, interruptions, ?1 - run_at AS waited_ms",
            )
            .bind(now)
            .bind(lease_ms(lease))
            .bind(worker)
            .bind(claims)
            .fetch_all(&mut *tx)
            .await?;
            answer.recovered = rows.iter().map(decode_claimed).collect::<Result<_, _>>()?;
            answer.recovered.sort_by_key(|job| job.lease.job);
        }
        tx.commit().await?;
        Ok(answer)
    }

    async fn record(
        &self,
        worker: &str,
        completions: &[Completion],
    ) -> Result<Vec<(JobId, RecordResult)>, StoreError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let now = unix_ms_now();
        let input: Vec<serde_json::Value> = completions
            .iter()
            .map(|c| {
                let (kind, exit_code, error) = outcome_params(&c.outcome);
                serde_json::json!({
                    "id": c.lease.job.0,
                    "token": c.lease.token.0,
                    "kind": kind,
                    "exit_code": exit_code,
                    "error": error,
                    "output": hex(&c.output),
                })
            })
            .collect();
        let input = serde_json::Value::Array(input).to_string();
        let mut tx = self.write().await?;
        // Under BEGIN IMMEDIATE nothing changes between these statements.
        let before: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, state FROM jobs WHERE id IN (SELECT value->>'id' FROM json_each(?1))",
        )
        .bind(&input)
        .fetch_all(&mut *tx)
        .await?;
        let updated: Vec<(i64, String)> = sqlx::query_as(&record_sql())
            .bind(&input)
            .bind(now)
            .bind(worker)
            .fetch_all(&mut *tx)
            .await?;
        let new_state: BTreeMap<i64, &str> =
            updated.iter().map(|(id, s)| (*id, s.as_str())).collect();
        let old_state: BTreeMap<i64, &str> =
            before.iter().map(|(id, s)| (*id, s.as_str())).collect();
        let mut history = Vec::with_capacity(completions.len());
        let mut results = Vec::with_capacity(completions.len());
        for c in completions {
            let id = c.lease.job.0;
            let (kind, _, error) = outcome_params(&c.outcome);
            let Some(old) = old_state.get(&id) else {
                // The job was deleted (pruned): nothing to fence or record.
                results.push((c.lease.job, RecordResult::Refused));
                continue;
            };
            let (event, detail, result) = match new_state.get(&id) {
                Some(state) => {
                    let event = match (kind, *state) {
                        ("failed", "queued") => "retry-scheduled",
                        ("failed" | "interrupted" | "handed-back", "cancelled") => "cancelled",
                        ("interrupted", "failed") => "failed",
                        _ => kind,
                    };
                    let error = match (kind, *state) {
                        ("failed", "cancelled") => {
                            Some(format!("attempt failed: {}", error.unwrap_or_default()))
                        }
                        _ => error,
                    };
                    let late = (*old != "running").then_some(
                        "accepted after the lease expired: nobody had claimed the job since",
                    );
                    let parts: Vec<&str> = [error.as_deref(), late].into_iter().flatten().collect();
                    let detail = (!parts.is_empty()).then(|| parts.join("; "));
                    let state = state.parse().map_err(StoreError::Corrupt)?;
                    (event, detail, RecordResult::Recorded { state })
                }
                None => (
                    "stale-write-refused",
                    Some(kind.to_string()),
                    RecordResult::Refused,
                ),
            };
            history.push(serde_json::json!({
                "id": id, "kind": event, "token": c.lease.token.0, "detail": detail,
            }));
            results.push((c.lease.job, result));
        }
        sqlx::query(
            "INSERT INTO job_events (job_id, at, kind, worker_id, lease_token, detail)
             SELECT value->>'id', ?2, value->>'kind', ?3, value->>'token', value->>'detail'
             FROM json_each(?1)",
        )
        .bind(serde_json::Value::Array(history).to_string())
        .bind(now)
        .bind(worker)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(results)
    }

    async fn reap_expired(&self) -> Result<u64, StoreError> {
        let now = unix_ms_now();
        let mut tx = self.write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE jobs AS j SET {}
             WHERE j.id IN (
                SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < ?1
                ORDER BY lease_expires_at LIMIT ?2
             )
             RETURNING id, state, lease_owner, lease_token",
            rules::reap_assignments(&dialect())
        ))
        .bind(now)
        .bind(REAP_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let state: String = row.try_get("state")?;
            sqlx::query(
                "INSERT INTO job_events (job_id, at, kind, worker_id, lease_token, detail)
                 VALUES (?, ?, 'lease-expired', ?, ?, ?)",
            )
            .bind(row.try_get::<i64, _>("id")?)
            .bind(now)
            .bind(row.try_get::<Option<String>, _>("lease_owner")?)
            .bind(row.try_get::<i64, _>("lease_token")?)
            .bind(format!("lease expired; now {state}"))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    async fn cancel(&self, id: JobId) -> Result<CancelResult, StoreError> {
        let now = unix_ms_now();
        let mut tx = self.write().await?;
        let new_state: Option<String> = sqlx::query_scalar(
            "UPDATE jobs SET
                state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                cancel_requested = (state = 'running'),
                lease_expired = 0,
                finished_at = CASE WHEN state = 'queued' THEN ?2 ELSE finished_at END
             WHERE id = ?1 AND state IN ('queued', 'running')
             RETURNING state",
        )
        .bind(id.0)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match new_state.as_deref() {
            Some("cancelled") => CancelResult::Cancelled,
            Some(_) => CancelResult::Requested,
            None => {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
                        .bind(id.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                let state = state.ok_or(StoreError::NotFound(id))?;
                return Ok(CancelResult::AlreadyFinal(
                    state.parse::<JobState>().map_err(StoreError::Corrupt)?,
                ));
            }
        };
        let kind = if result == CancelResult::Cancelled {
            "cancelled"
        } else {
            "cancel-requested"
        };
        sqlx::query("INSERT INTO job_events (job_id, at, kind) VALUES (?, ?, ?)")
            .bind(id.0)
            .bind(now)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result)
    }

    async fn retry(&self, id: JobId) -> Result<bool, StoreError> {
        let now = unix_ms_now();
        let mut tx = self.write().await?;
        let updated: Option<i64> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET state = 'queued', run_at = ?2, max_attempts = max(max_attempts, attempts + 1),
                interruptions = 0, cancel_requested = 0, lease_expired = 0,
                error = NULL, exit_code = NULL, finished_at = NULL
             WHERE id = ?1 AND state IN ('failed', 'cancelled') AND {NEWEST_OF_KEY}
             RETURNING id"
        ))
        .bind(id.0)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        if updated.is_none() {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ?")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
            return match exists {
                Some(_) => Ok(false),
                None => Err(StoreError::NotFound(id)),
            };
        }
        sqlx::query("INSERT INTO job_events (job_id, at, kind) VALUES (?, ?, 'retried')")
            .bind(id.0)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn bulk(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let states = serde_json::to_string(
            &action
                .select(filter)?
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        )
        .map_err(|e| StoreError::InvalidJob(e.to_string()))?;
        let now = unix_ms_now();
        let before = filter
            .older_than
            .map(|d| now.saturating_sub(d.as_millis() as i64));
        let selected = format!(
            "state IN (SELECT value FROM json_each(?1)) AND (?2 IS NULL OR queue = ?2)
             AND (?3 IS NULL OR {SINCE} < ?3) AND {}",
            action.guard_sql()
        );
        if dry_run {
            let count: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE {selected}"))
                    .bind(&states)
                    .bind(filter.queue.as_deref())
                    .bind(before)
                    .fetch_one(&self.pool)
                    .await?;
            return Ok(count as u64);
        }
        let change = match action {
            BulkAction::Cancel => {
                "UPDATE jobs SET
                    state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                    cancel_requested = (state = 'running'),
                    lease_expired = 0,
                    finished_at = CASE WHEN state = 'queued' THEN ?4 ELSE finished_at END"
            }
            BulkAction::Retry => {
                "UPDATE jobs SET state = 'queued', run_at = ?4,
                    max_attempts = max(max_attempts, attempts + 1),
                    interruptions = 0, cancel_requested = 0, lease_expired = 0,
                    error = NULL, exit_code = NULL, finished_at = NULL"
            }
        };
        // One statement per batch of at most BULK_BATCH rows, each in its
        // own short write transaction, so workers' claims and records
        // interleave with a long bulk change.
        let sql = format!(
            "{change} WHERE id IN (SELECT id FROM jobs WHERE {selected} ORDER BY id LIMIT ?5)
             RETURNING id, CASE state WHEN 'cancelled' THEN 'cancelled' WHEN 'running' THEN 'cancel-requested'
                 ELSE 'retried' END AS kind"
        );
        let mut total = 0u64;
        loop {
            let mut tx = self.write().await?;
            let changed: Vec<(i64, String)> = sqlx::query_as(&sql)
                .bind(&states)
                .bind(filter.queue.as_deref())
                .bind(before)
                .bind(now)
                .bind(i64::from(BULK_BATCH))
                .fetch_all(&mut *tx)
                .await?;
            for (id, kind) in &changed {
                sqlx::query("INSERT INTO job_events (job_id, at, kind) VALUES (?, ?, ?)")
                    .bind(id)
                    .bind(now)
                    .bind(kind)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            total += changed.len() as u64;
            if changed.is_empty() {
                return Ok(total);
            }
        }
    }

    async fn prune(
        &self,
        states: &[JobState],
        older_than: Duration,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        check_prunable(states)?;
        let states = serde_json::to_string(&states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
            .map_err(|e| StoreError::InvalidJob(e.to_string()))?;
        let before = unix_ms_now().saturating_sub(older_than.as_millis() as i64);
        let selected = "state IN (SELECT value FROM json_each(?1)) AND finished_at < ?2";
        if dry_run {
            let count: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE {selected}"))
                    .bind(&states)
                    .bind(before)
                    .fetch_one(&self.pool)
                    .await?;
            return Ok(count as u64);
        }
        let mut total = 0u64;
        loop {
            // One short write transaction per batch: the history first,
            // then the jobs.
            let mut tx = self.write().await?;
            let ids: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT id FROM jobs WHERE {selected} ORDER BY id LIMIT ?3"
            ))
            .bind(&states)
            .bind(before)
            .bind(i64::from(BULK_BATCH))
            .fetch_all(&mut *tx)
            .await?;
            let list =
                serde_json::to_string(&ids).map_err(|e| StoreError::InvalidJob(e.to_string()))?;
            sqlx::query("DELETE FROM job_events WHERE job_id IN (SELECT value FROM json_each(?))")
                .bind(&list)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))")
                .bind(&list)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            total += ids.len() as u64;
            if ids.len() < BULK_BATCH as usize {
                return Ok(total);
            }
        }
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let rows = sqlx::query(
            "WITH counts AS (
                SELECT queue,
                    sum(state = 'queued' AND run_at <= ?1) AS ready,
                    sum(state = 'queued' AND run_at > ?1) AS scheduled,
                    sum(state = 'running') AS running,
                    sum(state = 'succeeded') AS succeeded,
                    sum(state = 'failed') AS failed,
                    sum(state = 'cancelled') AS cancelled,
                    coalesce(?1 - min(CASE WHEN state = 'queued' AND run_at <= ?1 THEN run_at END), 0) AS oldest_ms
                FROM jobs GROUP BY queue
            ), names AS (
                SELECT queue AS name FROM counts UNION SELECT name FROM queues WHERE paused
            )
            SELECT n.name AS queue, coalesce(c.ready, 0) AS ready,
                coalesce(c.scheduled, 0) AS scheduled, coalesce(c.running, 0) AS running,
                coalesce(c.succeeded, 0) AS succeeded, coalesce(c.failed, 0) AS failed,
                coalesce(c.cancelled, 0) AS cancelled, coalesce(c.oldest_ms, 0) AS oldest_ms,
                coalesce(q.paused, 0) != 0 AS paused
            FROM names n LEFT JOIN counts c ON c.queue = n.name LEFT JOIN queues q ON q.name = n.name
            ORDER BY n.name",
        )
        .bind(unix_ms_now())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_queue_stats).collect()
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        validate_queue_name(queue)?;
        let mut tx = self.write().await?;
        let sql = if paused {
            "INSERT INTO queues (name, paused, changed_at) VALUES (?1, 1, ?2)
             ON CONFLICT (name) DO UPDATE SET paused = 1, changed_at = ?2
                 WHERE NOT queues.paused
             RETURNING name"
        } else {
            "UPDATE queues SET paused = 0, changed_at = ?2
             WHERE name = ?1 AND paused RETURNING name"
        };
        let changed: Option<String> = sqlx::query_scalar(sql)
            .bind(queue)
            .bind(unix_ms_now())
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changed.is_some())
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError> {
        validate_schedule(schedule)?;
        let spec = serde_json::to_string(&schedule.job.spec)
            .map_err(|e| StoreError::InvalidJob(e.to_string()))?;
        let mut tx = self.write().await?;
        let replaced: Option<String> =
            sqlx::query_scalar("SELECT name FROM schedules WHERE name = ?")
                .bind(&schedule.name)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO schedules (name, cron, queue, spec, priority, max_attempts, last_slot_ms, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, queue = excluded.queue,
                 spec = excluded.spec, priority = excluded.priority,
                 max_attempts = excluded.max_attempts,
                 last_slot_ms = max(schedules.last_slot_ms, excluded.last_slot_ms)",
        )
        .bind(&schedule.name)
        .bind(&schedule.cron)
        .bind(&schedule.job.queue)
        .bind(spec)
        .bind(schedule.job.priority)
        .bind(i64::from(schedule.job.max_attempts))
        .bind(schedule.last_slot_ms)
        .bind(unix_ms_now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaced.is_some())
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let removed = sqlx::query("DELETE FROM schedules WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(removed > 0)
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, cron, queue, spec, priority, max_attempts, last_slot_ms
             FROM schedules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_schedule).collect()
    }

    async fn fire_schedule(&self, name: &str, slot_ms: i64) -> Result<Option<JobId>, StoreError> {
        let now = unix_ms_now();
        let mut tx = self.write().await?;
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO jobs (queue, spec, priority, max_attempts, max_interruptions, run_at, created_at, image)
             SELECT queue, spec, priority, max_attempts, ?3, ?4, ?4, json_extract(spec, '$.image')
             FROM schedules WHERE name = ?1 AND last_slot_ms < ?2
             RETURNING id",
        )
        .bind(name)
        .bind(slot_ms)
        .bind(i64::from(DEFAULT_MAX_INTERRUPTIONS))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = id else {
            return Ok(None);
        };
        sqlx::query("UPDATE schedules SET last_slot_ms = ? WHERE name = ?")
            .bind(slot_ms)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO job_events (job_id, at, kind, detail) VALUES (?, ?, 'enqueued', ?)",
        )
        .bind(id)
        .bind(now)
        .bind(format!("schedule {name} slot {slot_ms}"))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(JobId(id)))
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_job).transpose()
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        filter.check()?;
        // Each condition is switched off by a NULL parameter; the id cursor
        // makes every page cost the same (see the PostgreSQL store).
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR queue = ?2)
               AND (?4 IS NULL OR (state = 'queued' AND run_at > ?5) = ?4)
               AND (?6 IS NULL OR (SELECT group_concat(value, ' ') FROM json_each(spec, '$.command'))
                     LIKE ?6 ESCAPE '\\')
               AND (?7 IS NULL OR created_at >= ?7) AND (?8 IS NULL OR created_at < ?8)
               AND (?9 IS NULL OR id < ?9) AND (?10 IS NULL OR lease_owner = ?10)
             ORDER BY id DESC LIMIT ?3"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.queue.as_deref())
        .bind(filter.limit())
        .bind(filter.scheduled)
        .bind(unix_ms_now())
        .bind(filter.text.as_deref().map(like_pattern))
        .bind(filter.created_from)
        .bind(filter.created_until)
        .bind(filter.before.map(|id| id.0))
        .bind(filter.worker.as_deref())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_job).collect()
    }

    async fn history(&self, id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        // A plain enqueue writes no history row: its `enqueued` event is the
        // job's `created_at` (see the PostgreSQL store).
        let rows = sqlx::query(
            "SELECT at, kind, worker_id, lease_token, detail FROM (
                SELECT 0 AS part, 0 AS id, created_at AS at, 'enqueued' AS kind, NULL AS worker_id,
                    NULL AS lease_token, NULL AS detail
                FROM jobs WHERE id = ?1 AND NOT EXISTS (
                    SELECT 1 FROM job_events WHERE job_id = ?1 AND kind = 'enqueued')
                UNION ALL
                SELECT 1, id, at, kind, worker_id, lease_token, detail
                FROM job_events WHERE job_id = ?1
             ) ORDER BY part, id",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(JobEvent {
                    at: row.try_get("at")?,
                    kind: row.try_get("kind")?,
                    worker_id: row.try_get("worker_id")?,
                    lease_token: row.try_get("lease_token")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn output(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        // Text written before schema v2 reads back as its UTF-8 bytes.
        let row: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT CAST(output AS BLOB) FROM jobs WHERE id = ?")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.flatten())
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        let now = unix_ms_now();
        sqlx::query(
            "INSERT INTO workers (id, host, pid, queues, concurrency, phase, started_at, heartbeat_at, lease_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?6, NULLIF(?7, 0))
             ON CONFLICT (id) DO UPDATE SET phase = 'running', heartbeat_at = ?6",
        )
        .bind(&info.id)
        .bind(&info.host)
        .bind(i64::from(info.pid))
        .bind(info.queues.join(","))
        .bind(i64::from(info.concurrency))
        .bind(now)
        .bind(lease_ms(info.lease))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deregister_worker(&self, stop: &WorkerStop) -> Result<(), StoreError> {
        let now = unix_ms_now();
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM workers WHERE id = ?")
            .bind(&stop.worker_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO worker_stops (id, exit_code, trace, stopped_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET exit_code = ?2, trace = ?3, stopped_at = ?4",
        )
        .bind(&stop.worker_id)
        .bind(stop.exit_code)
        .bind(&stop.trace)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM worker_stops WHERE stopped_at < ?1
                OR id IN (SELECT id FROM worker_stops ORDER BY stopped_at DESC, id LIMIT -1 OFFSET ?2)",
        )
        .bind(now.saturating_sub(KEEP_STOPS_FOR.as_millis() as i64))
        .bind(i64::from(KEEP_STOPS))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stops(&self) -> Result<Vec<WorkerStop>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, exit_code, trace, stopped_at AS stopped_ms FROM worker_stops WHERE stopped_at >= ?1
             ORDER BY stopped_at DESC, id LIMIT ?2",
        )
        .bind(unix_ms_now().saturating_sub(KEEP_STOPS_FOR.as_millis() as i64))
        .bind(i64::from(KEEP_STOPS))
        .fetch_all(&self.pool)
        .await?;
        decode_stops(&rows)
    }

    async fn activity(&self, span: Duration) -> Result<Vec<Activity>, StoreError> {
        let rows = sqlx::query(
            "SELECT finished_at / 60000 * 60000 AS minute_ms,
                sum(state = 'succeeded') AS succeeded, sum(state = 'failed') AS failed
             FROM jobs WHERE finished_at >= ?1 GROUP BY 1 ORDER BY 1",
        )
        .bind(unix_ms_now().saturating_sub(span.as_millis() as i64))
        .fetch_all(&self.pool)
        .await?;
        decode_activity(&rows)
    }

    async fn workers(&self, lease: Duration) -> Result<Vec<WorkerRow>, StoreError> {
        let now = unix_ms_now();
        let rows = sqlx::query(
            "SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.phase, w.started_at, w.heartbeat_at,
                w.lease_ms, w.docker,
                (SELECT group_concat(j.id) FROM jobs j WHERE j.state = 'running' AND j.lease_owner = w.id) AS running
             FROM workers w ORDER BY w.started_at, w.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let queues: String = row.try_get("queues")?;
                let running: Option<String> = row.try_get("running")?;
                let heartbeat_at: i64 = row.try_get("heartbeat_at")?;
                let own_lease = row
                    .try_get::<Option<i64>, _>("lease_ms")?
                    .map(|ms| Duration::from_millis(ms.max(0) as u64))
                    .unwrap_or(lease);
                let mut running_jobs: Vec<JobId> = running
                    .unwrap_or_default()
                    .split(',')
                    .filter_map(|id| id.parse().ok().map(JobId))
                    .collect();
                running_jobs.sort();
                Ok(WorkerRow {
                    info: WorkerInfo {
                        id: row.try_get("id")?,
                        host: row.try_get("host")?,
                        pid: row.try_get::<i64, _>("pid")? as u32,
                        queues: queues.split(',').map(str::to_string).collect(),
                        concurrency: row.try_get::<i64, _>("concurrency")? as u32,
                        lease: own_lease,
                    },
                    phase: row.try_get("phase")?,
                    started_at: row.try_get("started_at")?,
                    heartbeat_at,
                    lost: now - heartbeat_at > lease_ms(own_lease * LOST_AFTER_LEASES),
                    running_jobs,
                    docker: row.try_get("docker")?,
                })
            })
            .collect()
    }

    async fn report_engine(&self, worker: &str, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET docker = ? WHERE id = ?")
            .bind(state)
            .bind(worker)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn instance_id(&self) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM dockhand_instance")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn wakeups(&self) -> Result<Option<mpsc::Receiver<Wakeup>>, StoreError> {
        // Other processes cannot push through a file, so a connection of
        // its own watches `PRAGMA data_version`, which changes whenever any
        // other connection commits: new jobs wake the worker within 2 ms
        // while the file is busy, 20 ms after 200 ms of quiet, whichever
        // process enqueued them. Cancels
        // of running jobs are looked for after a change (at most every
        // 50 ms) and every half second.
        let (tx, rx) = mpsc::channel(WAKEUP_CAPACITY);
        let mut watcher = self.options.connect().await?;
        // The first reading is taken before the caller holds the channel:
        // taken later, it would count a commit made in between as the
        // starting point and announce nothing.
        let first: i64 = sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut watcher)
            .await?;
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let mut sent: BTreeSet<i64> = BTreeSet::new();
            let mut version = first;
            let mut cancels_checked = tokio::time::Instant::now();
            let mut last_change = tokio::time::Instant::now();
            loop {
                let pause = if last_change.elapsed() < IDLE_AFTER {
                    CHANGE_POLL
                } else {
                    IDLE_POLL
                };
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                let now: Option<i64> = sqlx::query_scalar("PRAGMA data_version")
                    .fetch_one(&mut watcher)
                    .await
                    .ok();
                // A failed reading changes nothing; the next one compares.
                let changed = now.is_some_and(|now| now != version);
                if let Some(now) = now {
                    version = now;
                }
                if changed {
                    last_change = tokio::time::Instant::now();
                    let _ = tx.try_send(Wakeup::Jobs);
                }
                let since = cancels_checked.elapsed();
                if !(since >= CANCEL_POLL || (changed && since >= Duration::from_millis(50))) {
                    continue;
                }
                cancels_checked = tokio::time::Instant::now();
                let ids: Vec<i64> = match sqlx::query_scalar(
                    "SELECT id FROM jobs WHERE state = 'running' AND cancel_requested = 1 LIMIT 1000",
                )
                .fetch_all(&pool)
                .await
                {
                    Ok(ids) => ids,
                    Err(_) => continue,
                };
                // Each cancel once; forget the ones that are done.
                sent.retain(|id| ids.contains(id));
                for id in ids {
                    if sent.insert(id) {
                        let _ = tx.try_send(Wakeup::Cancel(JobId(id)));
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_databases_are_told_from_files() {
        for memory in [
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://jobs.db?mode=memory",
            "sqlite://jobs.db?cache=shared&mode=memory",
        ] {
            assert!(names_memory(memory), "{memory}");
        }
        for file in [
            "sqlite://jobs.db",
            "sqlite:jobs.db",
            "sqlite:///var/lib/dockhand/:memory:.db",
            "sqlite://jobs.db?mode=rwc",
            "sqlite://jobs.db?mode=memoryless",
        ] {
            assert!(!names_memory(file), "{file}");
        }
    }
}
