//! Any backend, chosen by the database URL at run time.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    redact_url, Activity, BulkAction, BulkFilter, CancelResult, ClaimRequest, Enqueued, Job,
    JobChunks, JobEvent, JobFilter, MemoryStore, PostgresStore, QueueStats, Schedule, SqliteStore,
    Store, StoreError, Wakeup, WorkerInfo, WorkerRow, WorkerStop,
};
use crate::job::{
    ClaimedJob, Completion, HeartbeatAnswer, JobId, JobState, Lease, NewJob, Phase, RecordResult,
};

/// Any backend, chosen by URL at run time.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// PostgreSQL.
    Postgres(PostgresStore),
    /// SQLite.
    Sqlite(SqliteStore),
    /// In memory.
    Memory(MemoryStore),
}

impl AnyStore {
    /// Open `postgres://…`, `sqlite://…` or `memory://`; checks the URL and
    /// connects, without migrating.
    pub async fn open(url: &str) -> Result<AnyStore, StoreError> {
        Self::open_with(url, true).await
    }

    /// Open the store `url` names; a SQLite file must exist already (for
    /// commands that only read: a typo must not create an empty database).
    pub async fn open_existing(url: &str) -> Result<AnyStore, StoreError> {
        Self::open_with(url, false).await
    }

    /// Check a database URL without connecting: its scheme and what the
    /// backend's parser makes of it. The error names the URL with its
    /// password hidden.
    pub fn check_url(url: &str) -> Result<(), StoreError> {
        use std::str::FromStr;
        let bad = |reason: String| StoreError::BadUrl {
            url: crate::redact::one_line(&redact_url(url)),
            reason: crate::redact::one_line(&crate::redact::redact_error_about(url, &reason)),
        };
        let parse = |url: &str| -> Result<(), String> {
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                sqlx::postgres::PgConnectOptions::from_str(url).map_err(|e| e.to_string())?;
            } else if url.starts_with("sqlite:") {
                sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|e| e.to_string())?;
            } else if url != "memory://" {
                return Err("expected postgres://…, sqlite://FILE or memory://".to_string());
            }
            Ok(())
        };
        let Err(reason) = parse(url) else {
            return Ok(());
        };
        // A parser quotes what it could not read, which may be a fragment of
        // the password: say what it makes of the URL with the password
        // hidden instead, which it never saw.
        let shown = redact_url(url);
        if shown == url {
            return Err(bad(reason));
        }
        Err(bad(parse(&shown).err().unwrap_or_else(|| {
            "its password cannot be read (percent-encode characters such as @ : / ?)".to_string()
        })))
    }

    async fn open_with(url: &str, create: bool) -> Result<AnyStore, StoreError> {
        Self::check_url(url)?;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(PostgresStore::connect(url).await?))
        } else if url.starts_with("sqlite:") {
            let store = if create {
                SqliteStore::open(url).await?
            } else {
                SqliteStore::open_existing(url).await?
            };
            Ok(AnyStore::Sqlite(store))
        } else {
            Ok(AnyStore::Memory(MemoryStore::new()))
        }
    }
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Postgres($store) => $call.await,
            AnyStore::Sqlite($store) => $call.await,
            AnyStore::Memory($store) => $call.await,
        }
    };
}

impl Store for AnyStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        delegate!(self, s => s.migrate())
    }
    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, StoreError> {
        delegate!(self, s => s.enqueue(jobs))
    }
    async fn enqueue_stream(&self, next: JobChunks<'_>) -> Result<Vec<Enqueued>, StoreError> {
        delegate!(self, s => s.enqueue_stream(next))
    }
    async fn bulk(
        &self,
        action: BulkAction,
        filter: &BulkFilter,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        delegate!(self, s => s.bulk(action, filter, dry_run))
    }
    async fn prune(
        &self,
        states: &[JobState],
        older_than: Duration,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        delegate!(self, s => s.prune(states, older_than, dry_run))
    }
    async fn queue_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        delegate!(self, s => s.queue_stats())
    }
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<bool, StoreError> {
        delegate!(self, s => s.set_paused(queue, paused))
    }
    async fn put_schedule(&self, schedule: &Schedule) -> Result<bool, StoreError> {
        delegate!(self, s => s.put_schedule(schedule))
    }
    async fn remove_schedule(&self, name: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.remove_schedule(name))
    }
    async fn schedules(&self) -> Result<Vec<Schedule>, StoreError> {
        delegate!(self, s => s.schedules())
    }
    async fn fire_schedule(&self, name: &str, slot_ms: i64) -> Result<Option<JobId>, StoreError> {
        delegate!(self, s => s.fire_schedule(name, slot_ms))
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        delegate!(self, s => s.claim(request))
    }
    async fn heartbeat(
        &self,
        worker: &str,
        phase: Phase,
        leases: &[Lease],
        lease: Duration,
        recover: &[u64],
    ) -> Result<HeartbeatAnswer, StoreError> {
        delegate!(self, s => s.heartbeat(worker, phase, leases, lease, recover))
    }
    async fn record(
        &self,
        worker: &str,
        completions: &[Completion],
    ) -> Result<Vec<(JobId, RecordResult)>, StoreError> {
        delegate!(self, s => s.record(worker, completions))
    }
    async fn reap_expired(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.reap_expired())
    }
    async fn cancel(&self, id: JobId) -> Result<CancelResult, StoreError> {
        delegate!(self, s => s.cancel(id))
    }
    async fn retry(&self, id: JobId) -> Result<bool, StoreError> {
        delegate!(self, s => s.retry(id))
    }
    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        delegate!(self, s => s.get(id))
    }
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        delegate!(self, s => s.list(filter))
    }
    async fn history(&self, id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        delegate!(self, s => s.history(id))
    }
    async fn output(&self, id: JobId) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.output(id))
    }
    async fn register_worker(&self, info: &WorkerInfo) -> Result<(), StoreError> {
        delegate!(self, s => s.register_worker(info))
    }
    async fn deregister_worker(&self, stop: &WorkerStop) -> Result<(), StoreError> {
        delegate!(self, s => s.deregister_worker(stop))
    }
    async fn stops(&self) -> Result<Vec<WorkerStop>, StoreError> {
        delegate!(self, s => s.stops())
    }
    async fn activity(&self, span: Duration) -> Result<Vec<Activity>, StoreError> {
        delegate!(self, s => s.activity(span))
    }
    async fn workers(&self, lease: Duration) -> Result<Vec<WorkerRow>, StoreError> {
        delegate!(self, s => s.workers(lease))
    }
    async fn report_engine(&self, worker: &str, state: &str) -> Result<(), StoreError> {
        delegate!(self, s => s.report_engine(worker, state))
    }
    async fn instance_id(&self) -> Result<String, StoreError> {
        delegate!(self, s => s.instance_id())
    }
    async fn wakeups(&self) -> Result<Option<mpsc::Receiver<Wakeup>>, StoreError> {
        delegate!(self, s => s.wakeups())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_by_their_scheme_before_any_connection() {
        for good in [
            "memory://",
            "sqlite://dockhand.db",
            "sqlite::memory:",
            "postgres://u@h/db",
            "postgresql://h:5433/db",
        ] {
            AnyStore::check_url(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "mysql://h/db",
            "memory",
            "memory://x",
            "",
            "postgres://h:port/db",
        ] {
            match AnyStore::check_url(bad) {
                Err(StoreError::BadUrl { url, .. }) => assert_eq!(url, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let err = AnyStore::check_url("mysql://h/db").unwrap_err().to_string();
        assert!(err.contains("expected postgres://"), "{err}");
    }
}
