//! In-memory store: the same semantics as the SQL backends, for tests, the
//! simulation and benchmarks.
//!
//! Time comes from tokio's clock (simulated under turmoil), randomness from a
//! seeded generator, iteration from ordered maps: runs are reproducible. The
//! lock is never held across an await.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    command_matches, outcome_params, quarantine_reason, retry_backoff, unix_ms_now, validate_all,
    Activity, BulkAction, BulkFilter, CancelResult, ClaimRequest, Enqueued, Job, JobEvent,
    JobFilter, QueueStats, Schedule, Store, StoreError, Wakeup, WorkerInfo, WorkerRow, WorkerStop,
    KEEP_STOPS, KEEP_STOPS_FOR, LOST_AFTER_LEASES, WAKEUP_CAPACITY,
};
use crate::job::{
    storable_text, ClaimedJob, Completion, JobId, JobState, Lease, LeaseToken, NewJob, Outcome,
    RecordResult, DEFAULT_MAX_INTERRUPTIONS,
};
use crate::job::{HeartbeatAnswer, Phase};

#[derive(Debug)]
struct Row {
    job: Job,
    output: Option<Vec<u8>>,
    lease_expires_at: Option<i64>,
    /// Reaped, and nobody claimed it since: the reaped run's late outcome is
    /// still accepted.
    lease_expired: bool,
    /// The claim that took the current lease.
    claim_id: Option<u64>,
}

#[derive(Debug)]
struct State {
    next_id: i64,
    jobs: BTreeMap<i64, Row>,
    /// The ids of the jobs holding each unique key, oldest first: the
    /// newest is found without a scan of every job (a scan per enqueued
    /// key made a 60,000-key stream quadratic, minutes long).
    keys: BTreeMap<String, Vec<i64>>,
    events: BTreeMap<i64, Vec<JobEvent>>,
    workers: BTreeMap<String, WorkerRow>,
    /// Queues an operator paused.
    paused: BTreeSet<String>,
    schedules: BTreeMap<String, Schedule>,
    /// Workers that stopped, oldest first (at most [`KEEP_STOPS`]).
    stops: VecDeque<WorkerStop>,
    subscribers: Vec<mpsc::Sender<Wakeup>>,
    rng: fastrand::Rng,
}

/// An in-process store. Clones share the same data.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
    epoch_ms: i64,
    origin: tokio::time::Instant,
    /// Milliseconds since the origin, set by whoever drives time (see
    /// [`MemoryStore::with_clock`]); `None`: tokio's clock.
    clock: Option<Arc<std::sync::atomic::AtomicI64>>,
    /// How far the store's clock was moved on (see [`MemoryStore::advance`]).
    jumped_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store whose timestamps start at the wall clock.
    pub fn new() -> Self {
        Self::with_seed(unix_ms_now(), 0x5eed)
    }

    /// An empty store with a fixed time origin and seed (simulation).
    pub fn with_seed(epoch_ms: i64, seed: u64) -> Self {
        MemoryStore {
            state: Arc::new(Mutex::new(State {
                next_id: 1,
                jobs: BTreeMap::new(),
                keys: BTreeMap::new(),
                events: BTreeMap::new(),
                workers: BTreeMap::new(),
                paused: BTreeSet::new(),
                schedules: BTreeMap::new(),
                stops: VecDeque::new(),
                subscribers: Vec::new(),
                rng: fastrand::Rng::with_seed(seed),
            })),
            epoch_ms,
            origin: tokio::time::Instant::now(),
            clock: None,
            jumped_ms: Arc::new(std::sync::atomic::AtomicI64::new(0)),
        }
    }

    /// An empty store whose clock reads `clock` (milliseconds since
    /// `epoch_ms`), for a simulation that calls the store from outside its
    /// simulated hosts too, where tokio's clock would be the wall clock.
    pub fn with_clock(epoch_ms: i64, seed: u64, clock: Arc<std::sync::atomic::AtomicI64>) -> Self {
        MemoryStore {
            clock: Some(clock),
            ..Self::with_seed(epoch_ms, seed)
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-made change (every
        // change is computed, then applied), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> i64 {
        let since_origin = match &self.clock {
            Some(clock) => clock.load(std::sync::atomic::Ordering::Relaxed),
            None => self.origin.elapsed().as_millis() as i64,
        };
        self.epoch_ms + since_origin + self.jumped_ms.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Move the store's clock `by` on, as a database server's clock jumps:
    /// leases expire and backoffs elapse that much sooner. (The model test
    /// moves the SQL stores' timestamps back by as much.)
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.jumped_ms
            .fetch_add(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl State {
    fn event(
        &mut self,
        id: JobId,
        at: i64,
        kind: &str,
        worker: Option<&str>,
        token: Option<i64>,
        detail: Option<String>,
    ) {
        self.events.entry(id.0).or_default().push(JobEvent {
            at,
            kind: kind.to_string(),
            worker_id: worker.map(str::to_string),
            lease_token: token,
            detail,
        });
    }

    /// Insert a new queued job (validated already) with its first history
    /// row.
    fn insert_job(&mut self, new: &NewJob, now: i64, kind: &str, detail: Option<String>) -> JobId {
        let id = self.next_id;
        self.next_id += 1;
        let job = Job {
            id: JobId(id),
            queue: new.queue.clone(),
            state: JobState::Queued,
            spec: new.spec.clone(),
            priority: new.priority,
            attempts: 0,
            max_attempts: new.max_attempts,
            interruptions: 0,
            max_interruptions: DEFAULT_MAX_INTERRUPTIONS,
            exit_code: None,
            error: None,
            worker_id: None,
            lease_token: 0,
            cancel_requested: false,
            created_at: now,
            run_at: new.run_at.unwrap_or(now + new.delay.as_millis() as i64),
            started_at: None,
            finished_at: None,
            unique_key: new.unique_key.clone(),
        };
        if let Some(key) = &new.unique_key {
            self.keys.entry(key.clone()).or_default().push(id);
        }
        self.jobs.insert(
            id,
            Row {
                job,
                output: None,
                lease_expires_at: None,
                lease_expired: false,
                claim_id: None,
            },
        );
        self.event(JobId(id), now, kind, None, None, detail);
        JobId(id)
    }

    /// The newest job holding `key`: while it is queued or running, the key
    /// is taken (the SQL stores enforce the same with a partial unique
    /// index).
    fn newest_with_key(&self, key: &str) -> Option<&Job> {
        let id = self.keys.get(key)?.last()?;
        self.jobs.get(id).map(|row| &row.job)
    }

    /// Whether `retry` may requeue this job: its unique key, if any, must
    /// not be held by a newer job (so a retry never makes two live jobs of
    /// one key).
    fn retryable(&self, job: &Job) -> bool {
        matches!(job.state, JobState::Failed | JobState::Cancelled)
            && job
                .unique_key
                .as_deref()
                .is_none_or(|key| self.newest_with_key(key).map(|j| j.id) == Some(job.id))
    }

    fn requeue_for_retry(&mut self, id: JobId, now: i64) {
        if let Some(row) = self.jobs.get_mut(&id.0) {
            row.job.state = JobState::Queued;
            row.job.run_at = now;
            row.job.max_attempts = row.job.max_attempts.max(row.job.attempts + 1);
            row.job.interruptions = 0;
            row.job.cancel_requested = false;
            row.job.error = None;
            row.job.exit_code = None;
            row.job.finished_at = None;
            row.lease_expired = false;
            self.event(id, now, "retried", None, None, None);
        }
    }

    /// Cancel a queued job, or flag a running one; `None` if it is final.
    fn cancel_one(&mut self, id: JobId, now: i64) -> Option<CancelResult> {
        let row = self.jobs.get_mut(&id.0)?;
        let result = match row.job.state {
            JobState::Queued => {
                row.job.state = JobState::Cancelled;
                row.job.finished_at = Some(now);
                row.lease_expired = false;
                CancelResult::Cancelled
            }
            JobState::Running => {
                row.job.cancel_requested = true;
                CancelResult::Requested
            }
            _ => return None,
        };
        let kind = if result == CancelResult::Cancelled {
            "cancelled"
        } else {
            "cancel-requested"
        };
        self.event(id, now, kind, None, None, None);
        if result == CancelResult::Requested {
            self.notify(Wakeup::Cancel(id));
        }
        Some(result)
    }

    fn notify(&mut self, wakeup: Wakeup) {
        // A full channel already holds a wake-up; a closed one is dropped.
        self.subscribers.retain(|tx| !tx.is_closed());
        for tx in &self.subscribers {
            let _ = tx.try_send(wakeup);
        }
    }

    /// The row if `lease` is still the job's latest claim and runs, or was
    /// reaped without anybody claiming the job since (see `rules.rs`).
    fn fenced(&mut self, worker: &str, lease: Lease) -> Option<&mut Row> {
        self.jobs.get_mut(&lease.job.0).filter(|row| {
            (row.job.state == JobState::Running || row.lease_expired)
                && row.job.worker_id.as_deref() == Some(worker)
                && row.job.lease_token == lease.token.0
        })
    }

    /// A running row held by `worker` under `lease` (heartbeats).
    fn leased(&mut self, worker: &str, lease: Lease) -> Option<&mut Row> {
        self.jobs.get_mut(&lease.job.0).filter(|row| {
            row.job.state == JobState::Running
                && row.job.worker_id.as_deref() == Some(worker)
                && row.job.lease_token == lease.token.0
        })
    }
}

/// End the lease after an outcome; `worker_id` stays to show who ran it
/// last. Fencing needs `running` (or a reaped lease not yet cleared), so the
/// old lease can no longer write.
fn release(row: &mut Row) {
    row.lease_expires_at = None;
    row.lease_expired = false;
}

impl Store for MemoryStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, StoreError> {
        validate_all(jobs)?;
        let now = self.now_ms();
        let mut state = self.lock();
        let mut answers = Vec::with_capacity(jobs.len());
        for new in jobs {
            if let Some(key) = &new.unique_key {
                let live = state
                    .newest_with_key(key)
                    .filter(|job| matches!(job.state, JobState::Queued | JobState::Running));
                if let Some(job) = live {
                    answers.push(Enqueued {
                        id: job.id,
                        existed: true,
                    });
                    // The SQL stores draw an id before the unique index
                    // skips the row; ids stay alike across the three.
                    state.next_id += 1;
                    continue;
                }
            }
            let id = state.insert_job(new, now, "enqueued", None);
            answers.push(Enqueued { id, existed: false });
        }
        if answers.iter().any(|a| !a.existed) {
            state.notify(Wakeup::Jobs);
        }
        Ok(answers)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = self.now_ms();
        let (worker, queues, max, lease, claim_id) = (
            request.worker.as_str(),
            &request.queues,
            request.max,
            request.lease,
            request.claim_id,
        );
        let mut state = self.lock();
        let mut ready: Vec<(i32, i64, i64)> = state
            .jobs
            .values()
            .filter(|row| {
                row.job.state == JobState::Queued
                    && row.job.run_at <= now
                    && queues.contains(&row.job.queue)
                    && !state.paused.contains(&row.job.queue)
                    && (request.images || row.job.spec.image.is_none())
            })
            .map(|row| (-row.job.priority, row.job.run_at, row.job.id.0))
            .collect();
        ready.sort_unstable();
        let mut claimed = Vec::new();
        for (_, _, id) in ready.into_iter().take(max as usize) {
            let Some(row) = state.jobs.get_mut(&id) else {
                continue;
            };
            row.job.state = JobState::Running;
            row.job.worker_id = Some(worker.to_string());
            row.job.lease_token += 1;
            row.job.started_at = Some(now);
            row.job.cancel_requested = false;
            row.lease_expires_at = Some(now + lease.as_millis() as i64);
            row.lease_expired = false;
            row.claim_id = Some(claim_id);
            let job = claimed_job(row, now);
            state.event(
                JobId(id),
                now,
                "claimed",
                Some(worker),
                Some(job.lease.token.0),
                None,
            );
            claimed.push(job);
        }
        Ok(claimed)
    }

    async fn heartbeat(
        &self,
        worker: &str,
        phase: Phase,
        leases: &[Lease],
        lease: Duration,
        recover: &[u64],
    ) -> Result<HeartbeatAnswer, StoreError> {
        let now = self.now_ms();
        let expires = now + lease.as_millis() as i64;
        let mut state = self.lock();
        let mut answer = HeartbeatAnswer::default();
        for held in leases {
            match state.leased(worker, *held) {
                Some(row) => {
                    row.lease_expires_at = Some(expires);
                    if row.job.cancel_requested {
                        answer.cancelled.push(held.job);
                    }
                }
                None => answer.lost.push(held.job),
            }
        }
        if !recover.is_empty() {
            for row in state.jobs.values_mut() {
                if row.job.state == JobState::Running
                    && row.job.worker_id.as_deref() == Some(worker)
                    && row.claim_id.is_some_and(|id| recover.contains(&id))
                {
                    row.lease_expires_at = Some(expires);
                    answer.recovered.push(claimed_job(row, now));
                }
            }
        }
        if let Some(row) = state.workers.get_mut(worker) {
            row.phase = phase.as_str().to_string();
            row.heartbeat_at = now;
        }
        Ok(answer)
    }

    async fn record(
        &self,
        worker: &str,
        completions: &[Completion],
    ) -> Result<Vec<(JobId, RecordResult)>, StoreError> {
        let now = self.now_ms();
        let mut state = self.lock();
        let mut results = Vec::with_capacity(completions.len());
        for completion in completions {
            let lease = completion.lease;
            let unit = state.rng.f64();
            let Some(row) = state.fenced(worker, lease) else {
                if state.jobs.contains_key(&lease.job.0) {
                    state.event(
                        lease.job,
                        now,
                        "stale-write-refused",
                        Some(worker),
                        Some(lease.token.0),
                        Some(outcome_params(&completion.outcome).0.to_string()),
                    );
                }
                results.push((lease.job, RecordResult::Refused));
                continue;
            };
            let late = row.job.state != JobState::Running;
            let (kind, mut detail) = apply_outcome(row, &completion.outcome, now, unit);
            let row_state = row.job.state;
            if !matches!(completion.outcome, Outcome::HandBack) {
                row.output = Some(completion.output.clone());
            }
            release(row);
            if late {
                let note = "accepted after the lease expired: nobody had claimed the job since";
                detail = Some(match detail {
                    Some(text) => format!("{text}; {note}"),
                    None => note.to_string(),
                });
            }
            state.event(
                lease.job,
                now,
                kind,
                Some(worker),
                Some(lease.token.0),
                detail,
            );
            results.push((lease.job, RecordResult::Recorded { state: row_state }));
        }
        if results.iter().any(|(_, r)| r.is_recorded()) {
            state.notify(Wakeup::Jobs);
        }
        Ok(results)
    }

    async fn reap_expired(&self) -> Result<u64, StoreError> {
        let now = self.now_ms();
        let mut state = self.lock();
        let expired: Vec<i64> = state
            .jobs
            .values()
            .filter(|row| {
                row.job.state == JobState::Running
                    && row.lease_expires_at.is_some_and(|at| at < now)
            })
            .map(|row| row.job.id.0)
            .take(super::REAP_BATCH as usize)
            .collect();
        for id in &expired {
            let Some(row) = state.jobs.get_mut(id) else {
                continue;
            };
            let owner = row.job.worker_id.clone();
            let token = row.job.lease_token;
            if row.job.cancel_requested {
                row.job.state = JobState::Cancelled;
                row.job.finished_at = Some(now);
            } else {
                interrupt(row, now);
            }
            row.lease_expires_at = None;
            row.lease_expired = true;
            let detail = format!("lease expired; now {}", row.job.state);
            state.event(
                JobId(*id),
                now,
                "lease-expired",
                owner.as_deref(),
                Some(token),
                Some(detail),
            );
        }
        if !expired.is_empty() {
            state.notify(Wakeup::Jobs);
        }
        Ok(expired.len() as u64)
    }

    async fn cancel(&self, id: JobId) -> Result<CancelResult, StoreError> {
        let now = self.now_ms();
        let mut state = self.lock();
        let current = state
            .jobs
            .get(&id.0)
            .ok_or(StoreError::NotFound(id))?
            .job
            .state;
        Ok(state
            .cancel_one(id, now)
            .unwrap_or(CancelResult::AlreadyFinal(current)))
    }

    async fn retry(&self, id: JobId) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let mut state = self.lock();
        let row = state.jobs.get(&id.0).ok_or(StoreError::NotFound(id))?;
        if !state.retryable(&row.job) {
            return Ok(false);
        }
        state.requeue_for_retry(id, now);
        state.notify(Wakeup::Jobs);
        Ok(true)
    }

    async fn bulk(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let states = action.select(filter)?;
        let now = self.now_ms();
        let before = filter
            .older_than
            .map(|d| now.saturating_sub(d.as_millis() as i64));
        let mut state = self.lock();
        let chosen: Vec<JobId> = state
            .jobs
            .values()
            .map(|row| &row.job)
            .filter(|job| states.contains(&job.state))
            .filter(|job| filter.queue.as_ref().is_none_or(|q| &job.queue == q))
            .filter(|job| before.is_none_or(|b| state_since(job) < b))
            .filter(|job| match action {
                BulkAction::Cancel => !job.cancel_requested,
                BulkAction::Retry => state.retryable(job),
            })
            .map(|job| job.id)
            .collect();
        if dry_run {
            return Ok(chosen.len() as u64);
        }
        for id in &chosen {
            match action {
                BulkAction::Cancel => {
                    state.cancel_one(*id, now);
                }
                BulkAction::Retry => state.requeue_for_retry(*id, now),
            }
        }
        if action == BulkAction::Retry && !chosen.is_empty() {
            state.notify(Wakeup::Jobs);
        }
        Ok(chosen.len() as u64)
    }

    async fn prune(
        &self,
        states: &[JobState],
        older_than: Duration,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        super::check_prunable(states)?;
        let before = self.now_ms().saturating_sub(older_than.as_millis() as i64);
        let mut state = self.lock();
        let doomed: Vec<i64> = state
            .jobs
            .values()
            .filter(|row| states.contains(&row.job.state))
            .filter(|row| row.job.finished_at.is_some_and(|at| at < before))
            .map(|row| row.job.id.0)
            .collect();
        if !dry_run {
            for id in &doomed {
                if let Some(row) = state.jobs.remove(id) {
                    if let Some(key) = row.job.unique_key {
                        if let Some(ids) = state.keys.get_mut(&key) {
                            ids.retain(|held| held != id);
                            if ids.is_empty() {
                                state.keys.remove(&key);
                            }
                        }
                    }
                }
                state.events.remove(id);
            }
        }
        Ok(doomed.len() as u64)
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let now = self.now_ms();
        let state = self.lock();
        let mut queues: BTreeMap<&str, QueueStats> = BTreeMap::new();
        for row in state.jobs.values() {
            let job = &row.job;
            let q = queues.entry(&job.queue).or_default();
            match job.state {
                JobState::Queued if job.run_at > now => q.scheduled += 1,
                JobState::Queued => {
                    q.ready += 1;
                    q.oldest_ready_age_ms = q.oldest_ready_age_ms.max((now - job.run_at) as u64);
                }
                JobState::Running => q.running += 1,
                JobState::Succeeded => q.succeeded += 1,
                JobState::Failed => q.failed += 1,
                JobState::Cancelled => q.cancelled += 1,
            }
        }
        for name in &state.paused {
            queues.entry(name).or_default().paused = true;
        }
        Ok(queues
            .into_iter()
            .map(|(name, mut stats)| {
                stats.queue = name.to_string();
                stats
            })
            .collect())
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        super::validate_queue_name(queue)?;
        let mut state = self.lock();
        let changed = if paused {
            state.paused.insert(queue.to_string())
        } else {
            state.paused.remove(queue)
        };
        if changed && !paused {
            state.notify(Wakeup::Jobs);
        }
        Ok(changed)
    }

    async fn put_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError> {
        super::validate_schedule(schedule)?;
        let mut state = self.lock();
        let mut new = schedule.clone();
        let replaced = match state.schedules.get(&schedule.name) {
            Some(old) => {
                new.last_slot_ms = old.last_slot_ms.max(schedule.last_slot_ms);
                true
            }
            None => false,
        };
        state.schedules.insert(new.name.clone(), new);
        Ok(replaced)
    }

    async fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.lock().schedules.remove(name).is_some())
    }

    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        Ok(self.lock().schedules.values().cloned().collect())
    }

    async fn fire_schedule(&self, name: &str, slot_ms: i64) -> Result<Option<JobId>, StoreError> {
        let now = self.now_ms();
        let mut state = self.lock();
        let Some(schedule) = state.schedules.get_mut(name) else {
            return Ok(None);
        };
        if schedule.last_slot_ms >= slot_ms {
            return Ok(None);
        }
        schedule.last_slot_ms = slot_ms;
        let job = NewJob {
            delay: Duration::ZERO,
            run_at: None,
            unique_key: None,
            ..schedule.job.clone()
        };
        let id = state.insert_job(
            &job,
            now,
            "enqueued",
            Some(format!("schedule {name} slot {slot_ms}")),
        );
        state.notify(Wakeup::Jobs);
        Ok(Some(id))
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let state = self.lock();
        Ok(state.jobs.get(&id.0).map(|row| row.job.clone()))
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        filter.check()?;
        let now = self.now_ms();
        let state = self.lock();
        Ok(state
            .jobs
            .values()
            .rev()
            .filter(|row| filter.state.is_none_or(|s| row.job.state == s))
            .filter(|row| filter.queue.as_ref().is_none_or(|q| &row.job.queue == q))
            .filter(|row| {
                filter
                    .scheduled
                    .is_none_or(|scheduled| row.job.is_scheduled(now) == scheduled)
            })
            .filter(|row| {
                filter
                    .text
                    .as_deref()
                    .is_none_or(|text| command_matches(&row.job.spec.command, text))
            })
            .filter(|row| filter.created_from.is_none_or(|t| row.job.created_at >= t))
            .filter(|row| filter.created_until.is_none_or(|t| row.job.created_at < t))
            .filter(|row| filter.before.is_none_or(|id| row.job.id < id))
            .filter(|row| {
                filter
                    .worker
                    .as_ref()
                    .is_none_or(|w| row.job.worker_id.as_ref() == Some(w))
            })
            .take(filter.limit() as usize)
            .map(|row| row.job.clone())
            .collect())
    }

    async fn history(&self, id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        let state = self.lock();
        Ok(state.events.get(&id.0).cloned().unwrap_or_default())
    }

    async fn output(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        let state = self.lock();
        Ok(state.jobs.get(&id.0).and_then(|row| row.output.clone()))
    }

    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut state = self.lock();
        state.workers.insert(
            info.id.clone(),
            WorkerRow {
                info: info.clone(),
                phase: Phase::Running.as_str().to_string(),
                started_at: now,
                heartbeat_at: now,
                lost: false,
                running_jobs: Vec::new(),
                docker: None,
            },
        );
        Ok(())
    }

    async fn deregister_worker(&self, stop: &WorkerStop) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut state = self.lock();
        state.workers.remove(&stop.worker_id);
        state.stops.retain(|kept| kept.worker_id != stop.worker_id);
        state.stops.push_back(WorkerStop {
            stopped_at: now,
            ..stop.clone()
        });
        let oldest = now.saturating_sub(KEEP_STOPS_FOR.as_millis() as i64);
        state.stops.retain(|kept| kept.stopped_at >= oldest);
        while state.stops.len() > KEEP_STOPS as usize {
            state.stops.pop_front();
        }
        Ok(())
    }

    async fn stops(&self) -> Result<Vec<WorkerStop>, StoreError> {
        let oldest = self
            .now_ms()
            .saturating_sub(KEEP_STOPS_FOR.as_millis() as i64);
        let state = self.lock();
        Ok(state
            .stops
            .iter()
            .rev()
            .filter(|stop| stop.stopped_at >= oldest)
            .cloned()
            .collect())
    }

    async fn activity(&self, span: Duration) -> Result<Vec<Activity>, StoreError> {
        let since = self.now_ms().saturating_sub(span.as_millis() as i64);
        let state = self.lock();
        let mut minutes: BTreeMap<i64, Activity> = BTreeMap::new();
        for row in state.jobs.values() {
            let Some(at) = row.job.finished_at.filter(|at| *at >= since) else {
                continue;
            };
            let minute_ms = at.div_euclid(60_000) * 60_000;
            let entry = minutes.entry(minute_ms).or_insert(Activity {
                minute_ms,
                ..Activity::default()
            });
            match row.job.state {
                JobState::Succeeded => entry.succeeded += 1,
                JobState::Failed => entry.failed += 1,
                _ => {}
            }
        }
        Ok(minutes
            .into_values()
            .filter(|minute| minute.succeeded + minute.failed > 0)
            .collect())
    }

    async fn workers(&self, lease: Duration) -> Result<Vec<WorkerRow>, StoreError> {
        let now = self.now_ms();
        let state = self.lock();
        Ok(state
            .workers
            .values()
            .map(|row| {
                let mut row = row.clone();
                if row.info.lease.is_zero() {
                    row.info.lease = lease;
                }
                row.lost = now - row.heartbeat_at
                    > (row.info.lease * LOST_AFTER_LEASES).as_millis() as i64;
                row.running_jobs = state
                    .jobs
                    .values()
                    .filter(|j| {
                        j.job.state == JobState::Running
                            && j.job.worker_id.as_deref() == Some(row.info.id.as_str())
                    })
                    .map(|j| j.job.id)
                    .collect();
                row
            })
            .collect())
    }

    async fn report_engine(&self, worker: &str, state: &str) -> Result<(), StoreError> {
        let mut state_lock = self.lock();
        if let Some(row) = state_lock.workers.get_mut(worker) {
            row.docker = Some(state.to_string());
        }
        Ok(())
    }

    async fn instance_id(&self) -> Result<String, StoreError> {
        Ok(format!("memory-{:p}", Arc::as_ptr(&self.state)))
    }

    async fn wakeups(&self) -> Result<Option<mpsc::Receiver<Wakeup>>, StoreError> {
        let (tx, rx) = mpsc::channel(WAKEUP_CAPACITY);
        self.lock().subscribers.push(tx);
        Ok(Some(rx))
    }
}

/// A claimed job as handed to a worker.
/// When a job entered its state, as `--older-than` judges it: finished
/// jobs by when they finished, running ones by their claim, queued ones by
/// when they became due.
fn state_since(job: &Job) -> i64 {
    match job.state {
        JobState::Queued => job.run_at,
        JobState::Running => job.started_at.unwrap_or(job.run_at),
        _ => job.finished_at.unwrap_or(job.created_at),
    }
}

fn claimed_job(row: &Row, now: i64) -> ClaimedJob {
    ClaimedJob {
        lease: Lease {
            job: row.job.id,
            token: LeaseToken(row.job.lease_token),
        },
        queue: row.job.queue.clone(),
        spec: row.job.spec.clone(),
        attempts: row.job.attempts,
        interruptions: row.job.interruptions,
        waited: Duration::from_millis((now - row.job.run_at).max(0) as u64),
    }
}

/// Apply an outcome to a fenced row; the event kind and detail. The same
/// rules as the SQL backends (`rules.rs`).
fn apply_outcome(
    row: &mut Row,
    outcome: &Outcome,
    now: i64,
    unit: f64,
) -> (&'static str, Option<String>) {
    // A reaped run whose outcome arrives late did happen: undo the
    // interruption the reap counted (it counted none for a pending cancel).
    if row.job.state != JobState::Running && !row.job.cancel_requested {
        row.job.interruptions = row.job.interruptions.saturating_sub(1);
    }
    let cancel = row.job.cancel_requested;
    let (kind, detail) = match outcome {
        Outcome::Succeeded => {
            row.job.attempts += 1;
            row.job.state = JobState::Succeeded;
            row.job.exit_code = Some(0);
            row.job.error = None;
            ("succeeded", None)
        }
        Outcome::Failed { exit_code, error } => {
            row.job.attempts += 1;
            row.job.exit_code = *exit_code;
            let error = storable_text(error).into_owned();
            row.job.error = Some(error.clone());
            if cancel {
                row.job.state = JobState::Cancelled;
                ("cancelled", Some(format!("attempt failed: {error}")))
            } else if row.job.attempts >= row.job.max_attempts {
                row.job.state = JobState::Failed;
                ("failed", Some(error))
            } else {
                row.job.state = JobState::Queued;
                ("retry-scheduled", Some(error))
            }
        }
        Outcome::Interrupted { reason } => {
            row.job.interruptions += 1;
            let reason = storable_text(reason).into_owned();
            if cancel {
                row.job.state = JobState::Cancelled;
                ("cancelled", Some(reason))
            } else if row.job.interruptions >= row.job.max_interruptions {
                row.job.state = JobState::Failed;
                row.job.error = Some(quarantine_reason(row.job.interruptions));
                ("failed", Some(reason))
            } else {
                row.job.state = JobState::Queued;
                ("interrupted", Some(reason))
            }
        }
        Outcome::Cancelled => {
            row.job.state = JobState::Cancelled;
            ("cancelled", None)
        }
        Outcome::HandBack => {
            row.job.started_at = None;
            if cancel {
                row.job.state = JobState::Cancelled;
                ("cancelled", None)
            } else {
                row.job.state = JobState::Queued;
                ("handed-back", None)
            }
        }
    };
    row.job.finished_at = row.job.state.is_final().then_some(now);
    row.job.run_at = match outcome {
        Outcome::Failed { .. } => now + retry_backoff(row.job.attempts, unit).as_millis() as i64,
        _ => now,
    };
    (kind, detail)
}

/// A reaped run: requeue without using an attempt, or quarantine.
fn interrupt(row: &mut Row, now: i64) {
    row.job.interruptions += 1;
    if row.job.interruptions >= row.job.max_interruptions {
        row.job.state = JobState::Failed;
        row.job.error = Some(quarantine_reason(row.job.interruptions));
        row.job.finished_at = Some(now);
    } else {
        row.job.state = JobState::Queued;
        row.job.run_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering};

    /// A simulation's store reads the clock it is given, not tokio's.
    #[tokio::test]
    async fn a_store_with_a_clock_reads_that_clock() {
        let clock = Arc::new(AtomicI64::new(5_000));
        let store = MemoryStore::with_clock(1_000_000, 7, clock.clone());
        let first = store
            .enqueue_many(&[NewJob::new(vec!["true".into()])])
            .await
            .unwrap()[0];
        clock.store(9_000, Ordering::Relaxed);
        let second = store
            .enqueue_many(&[NewJob::new(vec!["true".into()])])
            .await
            .unwrap()[0];
        let created = |id| {
            let store = store.clone();
            async move { store.get(id).await.unwrap().unwrap().created_at }
        };
        assert_eq!(created(first).await, 1_005_000);
        assert_eq!(created(second).await, 1_009_000);
    }

    /// The simulation's time moves in whole milliseconds, so it meets the
    /// exact edges the SQL stores' clocks pass over: a lease still holds at
    /// its deadline, and a delayed job is scheduled until its run time,
    /// ready from it (both as the SQL stores compare, `<` and `>`).
    #[tokio::test]
    async fn a_lease_holds_at_its_deadline_and_a_job_is_ready_at_its_run_time() {
        let clock = Arc::new(AtomicI64::new(0));
        let store = MemoryStore::with_clock(1_000_000, 7, clock.clone());
        let queues = vec!["default".to_string()];
        store
            .enqueue_many(&[NewJob::new(vec!["true".into()])])
            .await
            .unwrap();
        let delayed = NewJob {
            delay: Duration::from_millis(500),
            ..NewJob::new(vec!["true".into()])
        };
        store.enqueue_many(&[delayed]).await.unwrap();
        let request = ClaimRequest::new("w1", &queues, 1, Duration::from_secs(1), 1);
        assert_eq!(store.claim(&request).await.unwrap().len(), 1);
        let stats = |store: MemoryStore| async move {
            let stats = store.queue_stats().await.unwrap();
            (stats[0].ready, stats[0].scheduled)
        };

        clock.store(499, Ordering::Relaxed);
        assert_eq!(stats(store.clone()).await, (0, 1), "499 ms of 500");
        clock.store(500, Ordering::Relaxed);
        assert_eq!(stats(store.clone()).await, (1, 0), "at its run time");

        clock.store(1_000, Ordering::Relaxed);
        assert_eq!(store.reap_expired().await.unwrap(), 0, "at the deadline");
        clock.store(1_001, Ordering::Relaxed);
        assert_eq!(store.reap_expired().await.unwrap(), 1, "a millisecond past");
    }

    /// "Older than a minute" is strictly older, at the millisecond, for a
    /// bulk action (a queued job since its run time) and for prune (a
    /// finished job since it finished), as in the SQL stores.
    #[tokio::test]
    async fn older_than_means_strictly_older() {
        let clock = Arc::new(AtomicI64::new(0));
        let store = MemoryStore::with_clock(1_000_000, 7, clock.clone());
        let minute = Duration::from_secs(60);
        let queues = vec!["default".to_string()];
        let jobs = vec![NewJob::new(vec!["true".into()]); 2];
        store.enqueue_many(&jobs).await.unwrap();
        let old_queued = BulkFilter {
            older_than: Some(minute),
            ..BulkFilter::default()
        };
        let cancels = |store: MemoryStore| {
            let filter = old_queued.clone();
            async move { store.bulk(BulkAction::Cancel, &filter, true).await.unwrap() }
        };
        clock.store(60_000, Ordering::Relaxed);
        assert_eq!(cancels(store.clone()).await, 0, "queued exactly a minute");
        clock.store(60_001, Ordering::Relaxed);
        assert_eq!(cancels(store.clone()).await, 2);

        let request = ClaimRequest::new("w1", &queues, 1, Duration::from_secs(30), 1);
        let claimed = store.claim(&request).await.unwrap();
        let done = Completion {
            lease: claimed[0].lease,
            outcome: Outcome::Succeeded,
            output: Vec::new(),
        };
        store.record("w1", &[done]).await.unwrap();
        let prunable = |store: MemoryStore| async move {
            store
                .prune(&[JobState::Succeeded], minute, true)
                .await
                .unwrap()
        };
        clock.store(120_001, Ordering::Relaxed);
        assert_eq!(
            prunable(store.clone()).await,
            0,
            "finished exactly a minute ago"
        );
        clock.store(120_002, Ordering::Relaxed);
        assert_eq!(prunable(store.clone()).await, 1);
    }
}
