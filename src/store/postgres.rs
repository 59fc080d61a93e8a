//! PostgreSQL backend: claims with `FOR UPDATE SKIP LOCKED`, wake-ups with
//! LISTEN/NOTIFY, the database's clock for every lease.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::mpsc;

use super::rules::{self, Dialect};
use super::{
    check_prunable, check_stream_len, decode_activity, decode_claimed, decode_job,
    decode_queue_stats, decode_schedule, decode_stops, like_pattern, match_enqueued,
    migration_plan, outcome_params, redact_url, validate_all, validate_queue_name,
    validate_schedule, Activity, BulkAction, BulkFilter, CancelResult, ClaimRequest, Enqueued, Job,
    JobChunks, JobEvent, JobFilter, QueueStats, Schedule, Store, StoreError, Wakeup, WorkerInfo,
    WorkerRow, WorkerStop, BULK_BATCH, KEEP_STOPS, KEEP_STOPS_FOR, LOST_AFTER_LEASES,
    NEWEST_OF_KEY, REAP_BATCH, SINCE, WAKEUP_CAPACITY,
};
use crate::job::{
    ClaimedJob, Completion, JobId, JobState, Lease, NewJob, RecordResult, DEFAULT_MAX_INTERRUPTIONS,
};
use crate::job::{HeartbeatAnswer, Phase};

const MIGRATIONS: [(i64, &str); 7] = [
    (1, include_str!("../../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../../migrations/postgres/0002_bytes_and_late_outcomes.sql"),
    ),
    (
        3,
        include_str!("../../migrations/postgres/0003_engines.sql"),
    ),
    (
        4,
        include_str!("../../migrations/postgres/0004_operations.sql"),
    ),
    (
        5,
        include_str!("../../migrations/postgres/0005_schedules.sql"),
    ),
    (
        6,
        include_str!("../../migrations/postgres/0006_dashboard.sql"),
    ),
    (
        7,
        include_str!("../../migrations/postgres/0007_history_without_fk.sql"),
    ),
];

/// The claim's statement, from the CTE `picked` (the ids to take, in claim
/// order; binds: $1 worker, $2 queues, $3 max, $4 lease ms, $5 claim id,
/// $6 whether jobs with an image may be taken).
macro_rules! claim_sql {
    ($picked:literal) => {
        concat!(
            "WITH picked AS (",
            $picked,
            "), claimed AS (
                UPDATE jobs j SET state = 'running', lease_owner = $1, lease_token = j.lease_token + 1,
                    lease_expires_at = now() + $4 * interval '1 millisecond', started_at = now(),
                    cancel_requested = false, lease_expired = false, claim_id = $5
                FROM picked WHERE j.id = picked.id
                RETURNING j.id, j.lease_token, j.queue, j.spec::text AS spec, j.attempts, j.interruptions,
                    j.priority, j.run_at, (extract(epoch FROM now() - j.run_at) * 1000)::bigint AS waited_ms
            ), ev AS (
                INSERT INTO job_events (job_id, kind, worker_id, lease_token)
                SELECT id, 'claimed', $1, lease_token FROM claimed
            )
            SELECT id, lease_token, queue, spec, attempts::bigint AS attempts,
                interruptions::bigint AS interruptions, waited_ms FROM claimed
            ORDER BY priority DESC, run_at, id"
        )
    };
}

/// A claim from several queues: a `LATERAL` index scan per distinct name,
/// merged by priority.
const CLAIM_QUEUES: &str = claim_sql!(
    "SELECT j.id FROM (SELECT DISTINCT name FROM unnest($2::text[]) AS u(name)) q
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM jobs
        WHERE state = 'queued' AND queue = q.name AND run_at <= now()
          AND ($6 OR image IS NULL)
          AND NOT EXISTS (SELECT 1 FROM queues p WHERE p.name = q.name AND p.paused)
        ORDER BY priority DESC, run_at, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) j
    ORDER BY j.priority DESC, j.run_at, j.id
    LIMIT $3"
);

/// A claim from one queue (`$2` names it, perhaps more than once): one
/// index scan, the same rows in the same order as `CLAIM_QUEUES`.
const CLAIM_ONE_QUEUE: &str = claim_sql!(
    "SELECT id FROM jobs
    WHERE state = 'queued' AND queue = $2[1] AND run_at <= now()
      AND ($6 OR image IS NULL)
      AND NOT EXISTS (SELECT 1 FROM queues p WHERE p.name = $2[1] AND p.paused)
    ORDER BY priority DESC, run_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED"
);

/// A condition that takes the worker's transaction-level advisory lock
/// (`$worker` binds its id) before the statement touches any row.
///
/// A worker's heartbeat and its outcome write run independently and both
/// update many of its held rows; each locks them in its plan's order, so
/// the two deadlocked under load (about one heartbeat in two at concurrency
/// 64, each costing the server's one-second `deadlock_timeout` and a failed
/// call). Uncorrelated, the subquery is planned as an `InitPlan` checked as
/// a one-time filter before the scan (`EXPLAIN` shows it above the join),
/// so the calls of one worker take turns. Other writers of those rows lock
/// one row at a time (cancel) or skip locked rows (claim, reap, bulk), so
/// they cannot close a cycle. Workers whose ids hash alike merely take turns.
macro_rules! worker_lock {
    ($worker:literal) => {
        concat!(
            "(SELECT true FROM pg_advisory_xact_lock(",
            "1146, hashtext(",
            $worker,
            ")))"
        )
    };
}

/// Channel NOTIFYed when jobs become ready.
const JOBS_CHANNEL: &str = "dockhand_jobs";
/// Channel NOTIFYed with a job id when a running job is cancelled.
const CANCEL_CHANNEL: &str = "dockhand_cancel";
/// Serialises concurrent migrations (an arbitrary constant). The other
/// advisory locks use the two-integer form, a separate key space: class
/// 1146 a worker's calls (`worker_lock!`), 1147 statements making several
/// unique keys live (`lock_live_keys`).
const MIGRATION_LOCK: i64 = 0x646f_636b_6861_6e64;

const JOB_COLUMNS: &str =
    "id, queue, spec::text AS spec, state, priority, attempts, max_attempts, interruptions, max_interruptions,
    exit_code, error, lease_owner, lease_token, cancel_requested,
    (extract(epoch FROM created_at) * 1000)::bigint AS created_ms,
    (extract(epoch FROM run_at) * 1000)::bigint AS run_ms,
    (extract(epoch FROM started_at) * 1000)::bigint AS started_ms,
    (extract(epoch FROM finished_at) * 1000)::bigint AS finished_ms, unique_key";

/// A PostgreSQL store over a small connection pool.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connect (at most 4 connections), failing fast if the server is unreachable.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, 4).await
    }

    /// Connect with a pool of at most `max_connections`.
    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
            url: crate::redact::one_line(&redact_url(url)),
            reason: crate::redact::one_line(&crate::redact::redact_error_about(
                url,
                &e.to_string(),
            )),
        })?;
        // One direct connection first: a pool hides the cause (refused, bad
        // password, no such database) behind "pool timed out".
        let probe = tokio::time::timeout(Duration::from_secs(5), options.connect()).await;
        match probe {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
            }
            Ok(Err(error)) => {
                return Err(StoreError::Unreachable(format!(
                    "{}: {error}",
                    redact_url(url)
                )));
            }
            Err(_) => {
                return Err(StoreError::Unreachable(format!(
                    "{}: no answer within 5s",
                    redact_url(url)
                )));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.application_name("dockhand"))
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Database(message) | StoreError::Unreachable(message) => {
                    StoreError::Unreachable(format!("{}: {message}", redact_url(url)))
                }
                other => other,
            })?;
        Ok(PostgresStore { pool })
    }

    /// The pool, for tests that inspect the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Take the lock that orders statements making several unique keys live
/// at once (an enqueue of two or more keys, each batch of a bulk retry):
/// class 1147, held to the end of the transaction.
async fn lock_live_keys<'e, E>(executor: E) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query("SELECT pg_advisory_xact_lock(1147, 0)")
        .execute(executor)
        .await?;
    Ok(())
}

/// Wake the listeners of `channel` (LISTEN/NOTIFY); inside a transaction
/// the notification goes out only when it commits.
async fn notify<'e, E>(executor: E, channel: &str, payload: &str) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(executor)
        .await?;
    Ok(())
}

/// PostgreSQL's words for the shared rules.
fn dialect() -> Dialect {
    let (base, cap) = rules::backoff_ms();
    Dialect {
        now: "now()",
        output: "t.output",
        backoff: format!(
            "now() + least({cap}, {base} * power(2, least(j.attempts, 20))) * (0.75 + random() * 0.5) * interval '1 millisecond'"
        ),
        false_: "false",
        true_: "true",
    }
}

/// The batched, fenced outcome write (see [`rules`]).
fn record_sql() -> String {
    let d = dialect();
    format!(
        "WITH input AS (
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int[], $5::text[], $6::bytea[])
                AS t(id, token, kind, exit_code, error, output)
        ), before AS (
            SELECT id, state <> 'running' AS late FROM jobs WHERE id = ANY($1)
        ), upd AS (
            UPDATE jobs j SET {assignments}
            FROM input t WHERE {lock} AND j.id = t.id AND {fence}
            RETURNING j.id, j.state, t.kind, t.token, t.error
        ), history AS (
            INSERT INTO job_events (job_id, kind, worker_id, lease_token, detail)
            SELECT upd.id, {event}, $7, upd.token,
                -- concat_ws of nothing is '', and no detail is NULL, as in
                -- the other stores.
                NULLIF(concat_ws('; ',
                    CASE WHEN upd.kind = 'failed' AND upd.state = 'cancelled'
                        THEN 'attempt failed: ' || coalesce(upd.error, '') ELSE upd.error END,
                    CASE WHEN b.late
                        THEN 'accepted after the lease expired: nobody had claimed the job since' END), '')
            FROM upd LEFT JOIN before b ON b.id = upd.id
        ), refused AS (
            INSERT INTO job_events (job_id, kind, worker_id, lease_token, detail)
            SELECT i.id, 'stale-write-refused', $7, i.token, i.kind FROM input i
            WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.id = i.id)
              AND EXISTS (SELECT 1 FROM jobs WHERE jobs.id = i.id)
        )
        SELECT id, state FROM upd",
        assignments = rules::outcome_assignments(&d),
        lock = worker_lock!("$7"),
        fence = rules::outcome_fence("$7"),
        event = rules::outcome_event("upd.state").replace("t.kind", "upd.kind"),
    )
}

fn events(rows: Vec<PgRow>) -> Result<Vec<JobEvent>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok(JobEvent {
                at: row.try_get("at_ms")?,
                kind: row.try_get("kind")?,
                worker_id: row.try_get("worker_id")?,
                lease_token: row.try_get("lease_token")?,
                detail: row.try_get("detail")?,
            })
        })
        .collect()
}

/// Insert one chunk of an enqueue inside the caller's transaction; the
/// answers, and whether any row was created (so the caller notifies).
async fn insert_jobs(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
) -> Result<(Vec<Enqueued>, bool), StoreError> {
    validate_all(jobs)?;
    if jobs.is_empty() {
        return Ok((Vec::new(), false));
    }
    let mut queues = Vec::with_capacity(jobs.len());
    let mut specs = Vec::with_capacity(jobs.len());
    let mut priorities = Vec::with_capacity(jobs.len());
    let mut max_attempts = Vec::with_capacity(jobs.len());
    let mut delays = Vec::with_capacity(jobs.len());
    let mut images: Vec<Option<&str>> = Vec::with_capacity(jobs.len());
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(jobs.len());
    let mut run_ats: Vec<Option<i64>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        images.push(job.spec.image.as_deref());
        keys.push(job.unique_key.as_deref());
        run_ats.push(job.run_at);
        queues.push(job.queue.clone());
        specs.push(
            serde_json::to_string(&job.spec).map_err(|e| StoreError::InvalidJob(e.to_string()))?,
        );
        priorities.push(job.priority);
        max_attempts.push(job.max_attempts as i32);
        delays.push(job.delay.as_millis() as i64);
    }
    // An insert of a key that another open transaction has inserted waits
    // for that transaction, so two batches sharing keys in different
    // orders deadlocked. A transaction that inserts one key holds nothing
    // while it waits, so only those with two or more keys can close a
    // cycle: they take one advisory lock and go one at a time (its later
    // chunks take it again, a no-op). One lock, not one per key: the
    // server's lock table holds a few thousand locks in all, and a stream
    // of 50,000 keys ran out of it.
    let mut named = keys.iter().flatten();
    let first = named.next();
    if named.any(|key| Some(key) != first) {
        lock_live_keys(&mut *tx).await?;
    }
    // Rows are inserted, and ids drawn, in input order. A row whose key
    // a live job holds (or an earlier row of this call) is skipped by
    // the partial unique index; concurrent enqueues of one key wait for
    // each other there, so only one of them creates a job.
    let rows = sqlx::query(
        "WITH ins AS (
            INSERT INTO jobs (queue, spec, priority, max_attempts, max_interruptions, run_at, image, unique_key)
            SELECT q, s::jsonb, p, m, $6,
                coalesce(to_timestamp(a / 1000.0), now() + d * interval '1 millisecond'), i, k
            FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::bigint[], $7::text[],
                        $8::text[], $9::bigint[])
                WITH ORDINALITY AS t(q, s, p, m, d, i, k, a, n)
            ORDER BY n
            ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('queued', 'running')
            DO NOTHING
            RETURNING id, unique_key
        )
        SELECT id, unique_key FROM ins ORDER BY id",
    )
    .bind(&queues)
    .bind(&specs)
    .bind(&priorities)
    .bind(&max_attempts)
    .bind(&delays)
    .bind(DEFAULT_MAX_INTERRUPTIONS as i32)
    .bind(&images)
    .bind(&keys)
    .bind(&run_ats)
    .fetch_all(&mut *tx)
    .await?;
    let mut inserted = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        let key: Option<String> = row.try_get("unique_key")?;
        inserted.push((JobId(id), key));
    }
    let skipped: Vec<&str> = keys
        .iter()
        .flatten()
        .copied()
        .filter(|k| !inserted.iter().any(|(_, key)| key.as_deref() == Some(*k)))
        .collect();
    // The jobs that hold the skipped keys: live ones first (one may
    // also have finished since it made us skip).
    let holders: Vec<(String, i64)> = if skipped.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT DISTINCT ON (unique_key) unique_key, id FROM jobs
             WHERE unique_key = ANY($1)
             ORDER BY unique_key, (state IN ('queued', 'running')) DESC, id DESC",
        )
        .bind(&skipped)
        .fetch_all(&mut *tx)
        .await?
    };
    let answers = match_enqueued(&keys, &inserted, &holders)?;
    Ok((answers, !inserted.is_empty()))
}

impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS dockhand_schema (version bigint PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut *tx)
        .await?;
        let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM dockhand_schema")
            .fetch_one(&mut *tx)
            .await?;
        for (version, statements) in migration_plan(current, &MIGRATIONS)? {
            for statement in statements {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            sqlx::query("INSERT INTO dockhand_schema (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, StoreError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let (answers, created) = insert_jobs(&mut tx, jobs).await?;
        if created {
            notify(&mut *tx, JOBS_CHANNEL, "").await?;
        }
        tx.commit().await?;
        Ok(answers)
    }

    // Chunks go in one transaction: a bad line (or a lost connection) after
    // a million rows rolls all of them back, and memory holds one chunk.
    async fn enqueue_stream(&self, next: JobChunks<'_>) -> Result<Vec<Enqueued>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut answers = Vec::new();
        let mut created = false;
        while let Some(chunk) = next()? {
            check_stream_len(answers.len() + chunk.len())?;
            let (more, any) = insert_jobs(&mut tx, &chunk).await?;
            answers.extend(more);
            created |= any;
        }
        if created {
            notify(&mut *tx, JOBS_CHANNEL, "").await?;
        }
        tx.commit().await?;
        Ok(answers)
    }

    // One index scan per queue (`jobs_ready` hands each queue's rows over
    // in claim order, so nothing is sorted but the few rows taken), merged
    // by priority: the cost does not grow with the backlog, nor with the
    // number of queues beyond one short scan each. `queue = ANY(...)`
    // instead made every claim sort all queued rows (1.4 s at 1,000,000).
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let one_queue = request
            .queues
            .first()
            .is_some_and(|first| request.queues.iter().all(|q| q == first));
        // PostgreSQL plans the claim afresh on every call (a generic plan
        // cannot know how many queues or rows are asked for); planning the
        // merged form took 0.74 ms a claim, a third of its time in the
        // database (`pg_stat_statements`, 2026-12-01). The common case, a
        // worker of one queue, gets the plain index scan: `EXPLAIN ANALYZE`
        // plans it in about a fifth of the merged form's time.
        let sql = if one_queue {
            CLAIM_ONE_QUEUE
        } else {
            CLAIM_QUEUES
        };
        let rows = sqlx::query(sql)
            .bind(&request.worker)
            .bind(&request.queues)
            .bind(i64::from(request.max))
            .bind(request.lease.as_millis() as i64)
            .bind(request.claim_id as i64)
            .bind(request.images)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(decode_claimed).collect()
    }

    async fn heartbeat(
        &self,
        worker: &str,
        phase: Phase,
        leases: &[Lease],
        lease: Duration,
        recover: &[u64],
    ) -> Result<HeartbeatAnswer, StoreError> {
        let ids: Vec<i64> = leases.iter().map(|l| l.job.0).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token.0).collect();
        let rows = sqlx::query(concat!(
            "WITH w AS (
                    UPDATE workers SET phase = $5, heartbeat_at = now() WHERE id = $1
                )
                UPDATE jobs SET lease_expires_at = now() + $4 * interval '1 millisecond'
                WHERE ",
            worker_lock!("$1"),
            " AND state = 'running' AND lease_owner = $1
                  AND (id, lease_token) IN (SELECT * FROM unnest($2::bigint[], $3::bigint[]))
                RETURNING id, lease_token, cancel_requested"
        ))
        .bind(worker)
        .bind(&ids)
        .bind(&tokens)
        .bind(lease.as_millis() as i64)
        .bind(phase.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut answer = HeartbeatAnswer::default();
        let mut kept = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = JobId(row.try_get("id")?);
            kept.push((id, row.try_get::<i64, _>("lease_token")?));
            if row.try_get::<bool, _>("cancel_requested")? {
                answer.cancelled.push(id);
            }
        }
        // Lost is per lease, as in the other stores: a stale token of a job
        // the worker holds again under a newer one is lost too.
        answer.lost = leases
            .iter()
            .filter(|l| !kept.contains(&(l.job, l.token.0)))
            .map(|l| l.job)
            .collect();
        if !recover.is_empty() {
            let claims: Vec<i64> = recover.iter().map(|&c| c as i64).collect();
            let rows = sqlx::query(
                concat!(
                    "UPDATE jobs SET lease_expires_at = now() + $3 * interval '1 millisecond'
                    WHERE ",
                    worker_lock!("$1"),
                    " AND state = 'running' AND lease_owner = $1 AND claim_id = ANY($2)
                    RETURNING id, lease_token, queue, spec::text AS spec, attempts::bigint AS attempts,
                        interruptions::bigint AS interruptions,
                        (extract(epoch FROM now() - run_at) * 1000)::bigint AS waited_ms"
                ),
            )
            .bind(worker)
            .bind(&claims)
            .bind(lease.as_millis() as i64)
            .fetch_all(&self.pool)
            .await?;
            answer.recovered = rows.iter().map(decode_claimed).collect::<Result<_, _>>()?;
        }
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
        let mut ids = Vec::with_capacity(completions.len());
        let mut tokens = Vec::with_capacity(completions.len());
        let mut kinds = Vec::with_capacity(completions.len());
        let mut codes: Vec<Option<i32>> = Vec::with_capacity(completions.len());
        let mut errors: Vec<Option<String>> = Vec::with_capacity(completions.len());
        let mut outputs: Vec<&[u8]> = Vec::with_capacity(completions.len());
        for completion in completions {
            let (kind, exit_code, error) = outcome_params(&completion.outcome);
            ids.push(completion.lease.job.0);
            tokens.push(completion.lease.token.0);
            kinds.push(kind);
            codes.push(exit_code);
            errors.push(error);
            outputs.push(completion.output.as_slice());
        }
        // One statement for the whole batch: the fenced update (PostgreSQL
        // re-checks the fence on the locked row), history, and a
        // `stale-write-refused` event for every outcome whose lease is gone.
        let recorded: Vec<(i64, String)> = sqlx::query_as(&record_sql())
            .bind(&ids)
            .bind(&tokens)
            .bind(&kinds)
            .bind(&codes)
            .bind(&errors)
            .bind(&outputs)
            .bind(worker)
            .fetch_all(&self.pool)
            .await?;
        let recorded: BTreeMap<i64, JobState> = recorded
            .into_iter()
            .map(|(id, state)| Ok((id, state.parse().map_err(StoreError::Corrupt)?)))
            .collect::<Result<_, StoreError>>()?;
        let requeued = recorded.values().any(|state| *state == JobState::Queued);
        if requeued {
            notify(&self.pool, JOBS_CHANNEL, "").await?;
        }
        Ok(completions
            .iter()
            .map(|c| {
                let result = match recorded.get(&c.lease.job.0) {
                    Some(state) => RecordResult::Recorded { state: *state },
                    None => RecordResult::Refused,
                };
                (c.lease.job, result)
            })
            .collect())
    }

    async fn reap_expired(&self) -> Result<u64, StoreError> {
        let reaped: Vec<i64> = sqlx::query_scalar(&format!(
            "WITH expired AS (
                SELECT id, lease_owner, lease_token FROM jobs
                WHERE state = 'running' AND lease_expires_at < now()
                ORDER BY lease_expires_at LIMIT $1
                FOR UPDATE SKIP LOCKED
            ), upd AS (
                UPDATE jobs j SET {}
                FROM expired WHERE j.id = expired.id
                RETURNING j.id, j.state, expired.lease_owner, expired.lease_token
            )
            INSERT INTO job_events (job_id, kind, worker_id, lease_token, detail)
            SELECT id, 'lease-expired', lease_owner, lease_token, 'lease expired; now ' || state FROM upd
            RETURNING job_id",
            rules::reap_assignments(&dialect())
        ))
        .bind(REAP_BATCH)
        .fetch_all(&self.pool)
        .await?;
        if !reaped.is_empty() {
            notify(&self.pool, JOBS_CHANNEL, "").await?;
        }
        Ok(reaped.len() as u64)
    }

    async fn cancel(&self, id: JobId) -> Result<CancelResult, StoreError> {
        let mut tx = self.pool.begin().await?;
        let new_state: Option<String> = sqlx::query_scalar(
            "UPDATE jobs SET
                state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
                cancel_requested = (state = 'running'),
                lease_expired = false,
                finished_at = CASE WHEN state = 'queued' THEN now() ELSE finished_at END
             WHERE id = $1 AND state IN ('queued', 'running')
             RETURNING state",
        )
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let result = match new_state.as_deref() {
            Some("cancelled") => CancelResult::Cancelled,
            Some(_) => CancelResult::Requested,
            None => {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
                        .bind(id.0)
                        .fetch_optional(&mut *tx)
                        .await?;
                let state = state.ok_or(StoreError::NotFound(id))?;
                let state = state.parse::<JobState>().map_err(StoreError::Corrupt)?;
                return Ok(CancelResult::AlreadyFinal(state));
            }
        };
        let kind = if result == CancelResult::Cancelled {
            "cancelled"
        } else {
            "cancel-requested"
        };
        sqlx::query("INSERT INTO job_events (job_id, kind) VALUES ($1, $2)")
            .bind(id.0)
            .bind(kind)
            .execute(&mut *tx)
            .await?;
        if result == CancelResult::Requested {
            notify(&mut *tx, CANCEL_CHANNEL, &id.0.to_string()).await?;
        }
        tx.commit().await?;
        Ok(result)
    }

    async fn retry(&self, id: JobId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated: Result<Option<i64>, _> = sqlx::query_scalar(&format!(
            "UPDATE jobs SET state = 'queued', run_at = now(), max_attempts = greatest(max_attempts, attempts + 1),
                interruptions = 0, cancel_requested = false, lease_expired = false,
                error = NULL, exit_code = NULL, finished_at = NULL
             WHERE id = $1 AND state IN ('failed', 'cancelled') AND {NEWEST_OF_KEY}
             RETURNING id"
        ))
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await;
        let updated = match updated {
            // An enqueue of the key committed while this waited on it: a
            // newer job holds the key, so the retry is refused as the guard
            // would have refused it had it seen that job.
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(false),
            other => other?,
        };
        if updated.is_none() {
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
            return match exists {
                Some(_) => Ok(false),
                None => Err(StoreError::NotFound(id)),
            };
        }
        sqlx::query("INSERT INTO job_events (job_id, kind) VALUES ($1, 'retried')")
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
        notify(&mut *tx, JOBS_CHANNEL, "").await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn bulk(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let states: Vec<&str> = action.select(filter)?.iter().map(|s| s.as_str()).collect();
        let older_ms = filter.older_than.map(|d| d.as_millis() as i64);
        let selected = format!(
            "state = ANY($1) AND ($2::text IS NULL OR queue = $2)
             AND ($3::bigint IS NULL OR {SINCE} < now() - $3 * interval '1 millisecond')
             AND {}",
            action.guard_sql()
        );
        if dry_run {
            let count: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE {selected}"))
                    .bind(&states)
                    .bind(filter.queue.as_deref())
                    .bind(older_ms)
                    .fetch_one(&self.pool)
                    .await?;
            return Ok(count as u64);
        }
        let change = match action {
            BulkAction::Cancel => {
                "UPDATE jobs j SET
                    state = CASE WHEN j.state = 'queued' THEN 'cancelled' ELSE j.state END,
                    cancel_requested = (j.state = 'running'),
                    lease_expired = false,
                    finished_at = CASE WHEN j.state = 'queued' THEN now() ELSE j.finished_at END
                 FROM picked WHERE j.id = picked.id
                 RETURNING j.id, CASE WHEN j.state = 'cancelled' THEN 'cancelled' ELSE 'cancel-requested' END AS kind"
            }
            BulkAction::Retry => {
                "UPDATE jobs j SET state = 'queued', run_at = now(),
                    max_attempts = greatest(j.max_attempts, j.attempts + 1),
                    interruptions = 0, cancel_requested = false, lease_expired = false,
                    error = NULL, exit_code = NULL, finished_at = NULL
                 FROM picked WHERE j.id = picked.id
                 RETURNING j.id, 'retried' AS kind"
            }
        };
        // One statement per batch of at most BULK_BATCH rows, locked with
        // SKIP LOCKED: a row a worker is claiming or recording right now is
        // taken by a later batch, never waited for.
        let sql = format!(
            "WITH picked AS (
                SELECT id FROM jobs WHERE {selected}
                ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED
            ), changed AS ({change}
            ), ev AS (
                INSERT INTO job_events (job_id, kind) SELECT id, kind FROM changed
            )
            SELECT id, kind FROM changed"
        );
        let mut total = 0u64;
        let mut key_races = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            if action == BulkAction::Retry {
                // A requeued row enters the unique index of live keys as an
                // insert does: without the enqueues' lock (`insert_jobs`) a
                // retry and a batch of the same keys in another order
                // waited for each other.
                lock_live_keys(&mut *tx).await?;
            }
            let changed: Vec<(i64, String)> = match sqlx::query_as(&sql)
                .bind(&states)
                .bind(filter.queue.as_deref())
                .bind(older_ms)
                .bind(i64::from(BULK_BATCH))
                .fetch_all(&mut *tx)
                .await
            {
                Ok(changed) => changed,
                // An enqueue of one key takes no lock: if it took a key this
                // batch requeues, the batch fails whole (only once that
                // enqueue committed). The next attempt's snapshot sees the
                // new job, whose key the guard then skips: each race takes
                // one more key out of the batch, so a batch is tried at most
                // once per row it may hold.
                Err(sqlx::Error::Database(db))
                    if db.is_unique_violation() && key_races < BULK_BATCH =>
                {
                    key_races += 1;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            for (id, kind) in &changed {
                if kind == "cancel-requested" {
                    notify(&mut *tx, CANCEL_CHANNEL, &id.to_string()).await?;
                }
            }
            if action == BulkAction::Retry && !changed.is_empty() {
                notify(&mut *tx, JOBS_CHANNEL, "").await?;
            }
            tx.commit().await?;
            key_races = 0;
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
        let states: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let older_ms = older_than.as_millis() as i64;
        let selected = "state = ANY($1) AND finished_at < now() - $2 * interval '1 millisecond'";
        if dry_run {
            let count: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM jobs WHERE {selected}"))
                    .bind(&states)
                    .bind(older_ms)
                    .fetch_one(&self.pool)
                    .await?;
            return Ok(count as u64);
        }
        // The history goes with its job, in the same statement (there is
        // no foreign key to cascade since v7). SKIP LOCKED: a row someone
        // is retrying right now is left for the next round.
        let sql = format!(
            "WITH gone AS (
                DELETE FROM jobs WHERE id IN (
                    SELECT id FROM jobs WHERE {selected} ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                RETURNING id
            ), history AS (
                DELETE FROM job_events WHERE job_id IN (SELECT id FROM gone)
            )
            SELECT count(*) FROM gone"
        );
        let mut total = 0u64;
        loop {
            let deleted: i64 = sqlx::query_scalar(&sql)
                .bind(&states)
                .bind(older_ms)
                .bind(i64::from(BULK_BATCH))
                .fetch_one(&self.pool)
                .await?;
            let deleted = deleted as u64;
            total += deleted;
            if deleted < u64::from(BULK_BATCH) {
                return Ok(total);
            }
        }
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        // Counts by state come from the (state, id) index; the ready and
        // scheduled split and the oldest age read only queued rows.
        let rows = sqlx::query(
            "WITH counts AS (
                SELECT queue,
                    count(*) FILTER (WHERE state = 'queued' AND run_at <= now()) AS ready,
                    count(*) FILTER (WHERE state = 'queued' AND run_at > now()) AS scheduled,
                    count(*) FILTER (WHERE state = 'running') AS running,
                    count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                    count(*) FILTER (WHERE state = 'failed') AS failed,
                    count(*) FILTER (WHERE state = 'cancelled') AS cancelled,
                    coalesce((extract(epoch FROM now() - min(run_at) FILTER (
                        WHERE state = 'queued' AND run_at <= now())) * 1000)::bigint, 0) AS oldest_ms
                FROM jobs GROUP BY queue
            )
            SELECT coalesce(c.queue, q.name) AS queue, coalesce(c.ready, 0) AS ready,
                coalesce(c.scheduled, 0) AS scheduled, coalesce(c.running, 0) AS running,
                coalesce(c.succeeded, 0) AS succeeded, coalesce(c.failed, 0) AS failed,
                coalesce(c.cancelled, 0) AS cancelled, coalesce(c.oldest_ms, 0) AS oldest_ms,
                coalesce(q.paused, false) AS paused
            FROM counts c FULL JOIN queues q ON q.name = c.queue
            WHERE c.queue IS NOT NULL OR q.paused
            ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_queue_stats).collect()
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        validate_queue_name(queue)?;
        let mut tx = self.pool.begin().await?;
        let sql = if paused {
            "INSERT INTO queues (name, paused) VALUES ($1, true)
             ON CONFLICT (name) DO UPDATE SET paused = true, changed_at = now()
                 WHERE NOT queues.paused
             RETURNING name"
        } else {
            "UPDATE queues SET paused = false, changed_at = now()
             WHERE name = $1 AND paused RETURNING name"
        };
        let changed: Option<String> = sqlx::query_scalar(sql)
            .bind(queue)
            .fetch_optional(&mut *tx)
            .await?;
        if changed.is_some() && !paused {
            notify(&mut *tx, JOBS_CHANNEL, "").await?;
        }
        tx.commit().await?;
        Ok(changed.is_some())
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError> {
        validate_schedule(schedule)?;
        let spec = serde_json::to_string(&schedule.job.spec)
            .map_err(|e| StoreError::InvalidJob(e.to_string()))?;
        // xmax = 0 tells an insert from an update in RETURNING.
        let inserted: bool = sqlx::query_scalar(
            "INSERT INTO schedules (name, cron, queue, spec, priority, max_attempts, last_slot_ms)
             VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
             ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, queue = EXCLUDED.queue,
                 spec = EXCLUDED.spec, priority = EXCLUDED.priority,
                 max_attempts = EXCLUDED.max_attempts,
                 last_slot_ms = greatest(schedules.last_slot_ms, EXCLUDED.last_slot_ms)
             RETURNING (xmax = 0)",
        )
        .bind(&schedule.name)
        .bind(&schedule.cron)
        .bind(&schedule.job.queue)
        .bind(spec)
        .bind(schedule.job.priority)
        .bind(schedule.job.max_attempts as i32)
        .bind(schedule.last_slot_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(!inserted)
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed > 0)
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, cron, queue, spec::text AS spec, priority, max_attempts, last_slot_ms
             FROM schedules ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_schedule).collect()
    }

    async fn fire_schedule(&self, name: &str, slot_ms: i64) -> Result<Option<JobId>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The guarded update takes the slot (concurrent workers wait on
        // the row and then find it taken); the insert is in the same
        // statement, so a slot is taken only with its job.
        let id: Option<i64> = sqlx::query_scalar(
            "WITH s AS (
                UPDATE schedules SET last_slot_ms = $2 WHERE name = $1 AND last_slot_ms < $2
                RETURNING queue, spec, priority, max_attempts
            ), ins AS (
                INSERT INTO jobs (queue, spec, priority, max_attempts, max_interruptions, run_at, image)
                SELECT queue, spec, priority, max_attempts, $3, now(), spec->>'image' FROM s
                RETURNING id
            ), ev AS (
                INSERT INTO job_events (job_id, kind, detail)
                SELECT id, 'enqueued', 'schedule ' || $1 || ' slot ' || $2 FROM ins
            )
            SELECT id FROM ins",
        )
        .bind(name)
        .bind(slot_ms)
        .bind(DEFAULT_MAX_INTERRUPTIONS as i32)
        .fetch_optional(&mut *tx)
        .await?;
        if id.is_some() {
            notify(&mut *tx, JOBS_CHANNEL, "").await?;
        }
        tx.commit().await?;
        Ok(id.map(JobId))
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(decode_job).transpose()
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        filter.check()?;
        // Each condition is switched off by a NULL parameter; ORDER BY id
        // DESC with an id cursor walks the primary key (or jobs_state) from
        // where the last page ended, however deep the page. Creation times
        // compare in the milliseconds every job shows (rounded like
        // JOB_COLUMNS), so a job's own `created_at` selects it.
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR queue = $2)
               AND ($4::boolean IS NULL OR (state = 'queued' AND run_at > now()) = $4)
               AND ($5::text IS NULL OR array_to_string(ARRAY(
                     SELECT jsonb_array_elements_text(spec->'command')), ' ') ILIKE $5 ESCAPE '\\')
               AND ($6::bigint IS NULL OR (extract(epoch FROM created_at) * 1000)::bigint >= $6)
               AND ($7::bigint IS NULL OR (extract(epoch FROM created_at) * 1000)::bigint < $7)
               AND ($8::bigint IS NULL OR id < $8)
               AND ($9::text IS NULL OR lease_owner = $9)
             ORDER BY id DESC LIMIT $3"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(filter.queue.as_deref())
        .bind(filter.limit())
        .bind(filter.scheduled)
        .bind(filter.text.as_deref().map(like_pattern))
        .bind(filter.created_from)
        .bind(filter.created_until)
        .bind(filter.before.map(|id| id.0))
        .bind(filter.worker.as_deref())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode_job).collect()
    }

    // A plain enqueue writes no history row (it was a third of a bulk
    // enqueue's time): its `enqueued` event is the job's `created_at`, the
    // instant the row it would have written carried. Schedules still write
    // theirs, with the slot in its detail; so do databases from before v7.
    async fn history(&self, id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT at_ms, kind, worker_id, lease_token, detail FROM (
                SELECT 0 AS part, 0::bigint AS id,
                    (extract(epoch FROM created_at) * 1000)::bigint AS at_ms, 'enqueued' AS kind,
                    NULL::text AS worker_id, NULL::bigint AS lease_token, NULL::text AS detail
                FROM jobs WHERE id = $1 AND NOT EXISTS (
                    SELECT 1 FROM job_events WHERE job_id = $1 AND kind = 'enqueued')
                UNION ALL
                SELECT 1, id, (extract(epoch FROM at) * 1000)::bigint, kind, worker_id,
                    lease_token, detail
                FROM job_events WHERE job_id = $1
             ) h ORDER BY part, id",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await?;
        events(rows)
    }

    async fn output(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT output FROM jobs WHERE id = $1")
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.flatten())
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO workers (id, host, pid, queues, concurrency, phase, lease_ms)
             VALUES ($1, $2, $3, $4, $5, 'running', NULLIF($6, 0))
             ON CONFLICT (id) DO UPDATE SET phase = 'running', heartbeat_at = now()",
        )
        .bind(&info.id)
        .bind(&info.host)
        .bind(info.pid as i32)
        .bind(info.queues.join(","))
        .bind(info.concurrency as i32)
        .bind(info.lease.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deregister_worker(&self, stop: &WorkerStop) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(&stop.worker_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO worker_stops (id, exit_code, trace) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET exit_code = $2, trace = $3, stopped_at = now()",
        )
        .bind(&stop.worker_id)
        .bind(stop.exit_code)
        .bind(&stop.trace)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM worker_stops WHERE stopped_at < now() - $1 * interval '1 millisecond'
                OR id IN (SELECT id FROM worker_stops ORDER BY stopped_at DESC, id OFFSET $2)",
        )
        .bind(KEEP_STOPS_FOR.as_millis() as i64)
        .bind(i64::from(KEEP_STOPS))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn stops(&self) -> Result<Vec<WorkerStop>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, exit_code, trace, (extract(epoch FROM stopped_at) * 1000)::bigint AS stopped_ms
             FROM worker_stops WHERE stopped_at >= now() - $1 * interval '1 millisecond'
             ORDER BY stopped_at DESC, id LIMIT $2",
        )
        .bind(KEEP_STOPS_FOR.as_millis() as i64)
        .bind(i64::from(KEEP_STOPS))
        .fetch_all(&self.pool)
        .await?;
        decode_stops(&rows)
    }

    async fn activity(&self, span: Duration) -> Result<Vec<Activity>, StoreError> {
        let rows = sqlx::query(
            // The epoch is computed once per minute, not once per row.
            "SELECT (extract(epoch FROM date_trunc('minute', finished_at)) * 1000)::bigint AS minute_ms,
                count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
                count(*) FILTER (WHERE state = 'failed') AS failed
             FROM jobs WHERE finished_at >= now() - $1 * interval '1 millisecond'
             GROUP BY date_trunc('minute', finished_at) ORDER BY 1",
        )
        .bind(span.as_millis() as i64)
        .fetch_all(&self.pool)
        .await?;
        decode_activity(&rows)
    }

    async fn workers(&self, lease: Duration) -> Result<Vec<WorkerRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.phase, w.docker,
                coalesce(w.lease_ms, $1) AS lease_ms,
                (extract(epoch FROM w.started_at) * 1000)::bigint AS started_ms,
                (extract(epoch FROM w.heartbeat_at) * 1000)::bigint AS heartbeat_ms,
                (now() - w.heartbeat_at) > coalesce(w.lease_ms, $1) * $2 * interval '1 millisecond' AS lost,
                coalesce(array_agg(j.id ORDER BY j.id) FILTER (WHERE j.id IS NOT NULL), '{}') AS running
             FROM workers w LEFT JOIN jobs j ON j.state = 'running' AND j.lease_owner = w.id
             GROUP BY w.id ORDER BY w.started_at, w.id",
        )
        .bind(lease.as_millis() as i64)
        .bind(i64::from(LOST_AFTER_LEASES))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let queues: String = row.try_get("queues")?;
                let running: Vec<i64> = row.try_get("running")?;
                Ok(WorkerRow {
                    info: WorkerInfo {
                        id: row.try_get("id")?,
                        host: row.try_get("host")?,
                        pid: row.try_get::<i32, _>("pid")? as u32,
                        queues: queues.split(',').map(str::to_string).collect(),
                        concurrency: row.try_get::<i32, _>("concurrency")? as u32,
                        lease: Duration::from_millis(
                            row.try_get::<i64, _>("lease_ms")?.max(0) as u64
                        ),
                    },
                    docker: row.try_get("docker")?,
                    phase: row.try_get("phase")?,
                    started_at: row.try_get("started_ms")?,
                    heartbeat_at: row.try_get("heartbeat_ms")?,
                    lost: row.try_get("lost")?,
                    running_jobs: running.into_iter().map(JobId).collect(),
                })
            })
            .collect()
    }

    async fn report_engine(&self, worker: &str, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE workers SET docker = $2 WHERE id = $1")
            .bind(worker)
            .bind(state)
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
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([JOBS_CHANNEL, CANCEL_CHANNEL]).await?;
        let (tx, rx) = mpsc::channel(WAKEUP_CAPACITY);
        tokio::spawn(async move {
            loop {
                // Wait for a notification, or for the worker to drop its end:
                // then the listener (and its pooled connection) goes too.
                let received = tokio::select! {
                    _ = tx.closed() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        let wakeup = if notification.channel() == CANCEL_CHANNEL {
                            match notification.payload().parse::<i64>() {
                                Ok(id) => Wakeup::Cancel(JobId(id)),
                                Err(_) => continue,
                            }
                        } else {
                            Wakeup::Jobs
                        };
                        // Full: a wake-up is already pending, which is as good.
                        let _ = tx.try_send(wakeup);
                    }
                    // The connection was lost and is re-established on the next
                    // call; notifications in between are gone, so look anyway.
                    Ok(None) => {
                        let _ = tx.try_send(Wakeup::Jobs);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
        Ok(Some(rx))
    }
}
