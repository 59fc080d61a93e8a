//! Time as the machine sees it: instants passed in by the driver, and the one
//! timer table every deadline lives in.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

use crate::job::JobId;

/// A point in time: the time elapsed since an origin the driver chose.
///
/// The machine never reads a clock; the shell maps its tokio instants onto
/// this, the simulation its simulated time, tests any value they like.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(Duration);

impl Instant {
    /// The driver's origin.
    pub const ZERO: Instant = Instant(Duration::ZERO);

    /// `d` after the origin.
    pub fn from_origin(d: Duration) -> Self {
        Instant(d)
    }

    /// `ms` milliseconds after the origin.
    pub fn from_millis(ms: u64) -> Self {
        Instant(Duration::from_millis(ms))
    }

    /// Time since the origin.
    pub fn since_origin(self) -> Duration {
        self.0
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_since(rhs)
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{}.{:03}s", self.0.as_secs(), self.0.subsec_millis())
    }
}

/// The worker-wide timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Next claim attempt and reap of expired leases (Running only).
    Poll,
    /// Next heartbeat: extends leases and reports the phase.
    Heartbeat,
    /// End of the drain: `shutdown_timeout` after the first signal.
    ShutdownDeadline,
    /// KILL every job still alive: `kill_grace` after entering TimedOut.
    KillGrace,
    /// Retry of a failed outcome write, after backoff.
    StoreRetry,
    /// Give up waiting for the store: signal + timeout + grace + store grace.
    ExitDeadline,
}

impl Timer {
    const ALL: [Timer; 6] = [
        Timer::Poll,
        Timer::Heartbeat,
        Timer::ShutdownDeadline,
        Timer::KillGrace,
        Timer::StoreRetry,
        Timer::ExitDeadline,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Timers that belong to one job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum JobTimer {
    /// The job's own `timeout` ran out.
    Timeout,
    /// `kill_grace` after the job was sent TERM.
    Kill,
    /// Our lease on the job runs out unless a heartbeat extends it.
    LeaseExpiry,
}

/// Which timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fired {
    /// A worker-wide timer.
    Worker(Timer),
    /// A job's timer.
    Job(JobId, JobTimer),
}

/// Every deadline the machine has, in one place.
#[derive(Clone, Debug, Default)]
pub(crate) struct TimerTable {
    worker: [Option<Instant>; Timer::ALL.len()],
    jobs: BTreeMap<(JobId, JobTimer), Instant>,
}

impl TimerTable {
    /// Arm (or re-arm) a worker timer.
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.worker[timer.index()] = Some(at);
    }

    /// Disarm a worker timer.
    pub fn stop(&mut self, timer: Timer) {
        self.worker[timer.index()] = None;
    }

    /// Arm (or re-arm) a job timer.
    pub fn set_job(&mut self, job: JobId, timer: JobTimer, at: Instant) {
        self.jobs.insert((job, timer), at);
    }

    /// Arm a job timer unless it is already due earlier.
    pub fn set_job_earliest(&mut self, job: JobId, timer: JobTimer, at: Instant) {
        let entry = self.jobs.entry((job, timer)).or_insert(at);
        if at < *entry {
            *entry = at;
        }
    }

    /// Disarm one job timer.
    pub fn stop_job(&mut self, job: JobId, timer: JobTimer) {
        self.jobs.remove(&(job, timer));
    }

    /// Disarm every timer of a job.
    pub fn forget_job(&mut self, job: JobId) {
        for timer in [JobTimer::Timeout, JobTimer::Kill, JobTimer::LeaseExpiry] {
            self.jobs.remove(&(job, timer));
        }
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        let worker = self.worker.iter().flatten().copied().min();
        let job = self.jobs.values().copied().min();
        match (worker, job) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Disarm and return every timer due at `now`, in a fixed order (worker
    /// timers first, then jobs by id) so replays are identical.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Fired> {
        let mut fired = Vec::new();
        for timer in Timer::ALL {
            if let Some(at) = self.worker[timer.index()] {
                if at <= now {
                    self.worker[timer.index()] = None;
                    fired.push(Fired::Worker(timer));
                }
            }
        }
        let due: Vec<(JobId, JobTimer)> = self
            .jobs
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.jobs.remove(&key);
            fired.push(Fired::Job(key.0, key.1));
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_the_earliest_of_worker_and_job_timers() {
        let mut table = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(Timer::Poll, Instant::from_millis(500));
        table.set_job(JobId(1), JobTimer::Kill, Instant::from_millis(200));
        assert_eq!(table.next(), Some(Instant::from_millis(200)));
        table.set_job_earliest(JobId(1), JobTimer::Kill, Instant::from_millis(900));
        let fired = table.take_expired(Instant::from_millis(500));
        assert_eq!(
            fired,
            vec![
                Fired::Worker(Timer::Poll),
                Fired::Job(JobId(1), JobTimer::Kill)
            ]
        );
        assert_eq!(table.next(), None);
    }

    #[test]
    fn instants_display_relative_seconds() {
        assert_eq!(Instant::from_millis(1500).to_string(), "+1.500s");
        assert_eq!(
            Instant::from_millis(5) - Instant::from_millis(2),
            Duration::from_millis(3)
        );
        assert_eq!(
            Instant::from_millis(2) - Instant::from_millis(5),
            Duration::ZERO,
            "saturates"
        );
    }
}
