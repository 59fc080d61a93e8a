//! Worker configuration, validated once at construction.

use std::time::Duration;

use thiserror::Error;

/// Most jobs one worker runs at once.
pub const MAX_CONCURRENCY: u32 = 1024;
/// Most jobs in one claim or one batch of outcome writes.
pub const MAX_BATCH: u32 = 1000;
/// Shortest lease: heartbeats go every lease/3 and must fit a round trip.
pub const MIN_LEASE: Duration = Duration::from_millis(300);
/// Shortest poll interval, so an empty queue is not hammered.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Longest drain (`shutdown_timeout`): a day. Every deadline the machine
/// computes stays far from overflowing, and no orchestrator waits longer.
pub const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// Longest of every other timing (kill grace, lease, poll interval, store
/// grace, store backoff): an hour.
pub const MAX_TIMING: Duration = Duration::from_secs(3600);

/// Everything that decides the machine's timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Most jobs running at once.
    pub concurrency: u32,
    /// Most claimed jobs held waiting for a slot (0: claim only for free
    /// slots). They are started in claim order as slots free up, and handed
    /// back, never started, at the first shutdown signal. With short jobs
    /// this lets a claim carry the jobs that will be done by the time it is
    /// answered; with long jobs it keeps them from idle workers.
    pub prefetch: u32,
    /// Most jobs asked for in one claim, and most outcomes in one write.
    pub batch_max: u32,
    /// How often to look for work (and reap expired leases) without a wake-up.
    pub poll_interval: Duration,
    /// How long running jobs may go on after the first TERM/INT.
    pub shutdown_timeout: Duration,
    /// Time between TERM and KILL for a job being stopped.
    pub kill_grace: Duration,
    /// How long a claim stays valid without a heartbeat.
    pub lease: Duration,
    /// Extra time after the kill for outcome writes to reach the store.
    pub store_grace: Duration,
    /// Longest wait between retries of a failed outcome write.
    pub max_store_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 4,
            prefetch: 0,
            batch_max: 100,
            poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(10),
            lease: Duration::from_secs(15),
            store_grace: Duration::from_secs(5),
            max_store_backoff: Duration::from_secs(2),
        }
    }
}

/// A configuration the machine refuses.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// `concurrency` outside 1..=MAX_CONCURRENCY.
    #[error("concurrency must be between 1 and {MAX_CONCURRENCY}, got {0}")]
    Concurrency(u32),
    /// `prefetch` above MAX_CONCURRENCY.
    #[error("prefetch must be at most {MAX_CONCURRENCY}, got {0}")]
    Prefetch(u32),
    /// `batch_max` outside 1..=MAX_BATCH.
    #[error("batch size must be between 1 and {MAX_BATCH}, got {0}")]
    Batch(u32),
    /// `kill_grace` of zero would KILL without ever giving TERM a chance.
    #[error("kill grace must be greater than zero")]
    KillGrace,
    /// Lease too short for heartbeats at lease/3.
    #[error("lease must be at least {}ms, got {}ms", MIN_LEASE.as_millis(), .0.as_millis())]
    Lease(Duration),
    /// Poll interval too short.
    #[error("poll interval must be at least {}ms, got {}ms", MIN_POLL_INTERVAL.as_millis(), .0.as_millis())]
    PollInterval(Duration),
    /// Store grace of zero leaves no time to record outcomes after a kill.
    #[error("store grace must be greater than zero")]
    StoreGrace,
    /// Backoff cap of zero would retry failed writes in a busy loop.
    #[error("store backoff cap must be greater than zero")]
    StoreBackoff,
    /// A timing beyond its upper bound.
    #[error("{name} must be at most {}, got {}", super::fmt_duration(*.max), super::fmt_duration(*.got))]
    TooLong {
        /// Which timing.
        name: &'static str,
        /// Its bound.
        max: Duration,
        /// What was asked for.
        got: Duration,
    },
}

impl Config {
    /// Check every limit; the machine only runs with a valid config.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(ConfigError::Concurrency(self.concurrency));
        }
        if self.prefetch > MAX_CONCURRENCY {
            return Err(ConfigError::Prefetch(self.prefetch));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_max) {
            return Err(ConfigError::Batch(self.batch_max));
        }
        if self.kill_grace.is_zero() {
            return Err(ConfigError::KillGrace);
        }
        if self.lease < MIN_LEASE {
            return Err(ConfigError::Lease(self.lease));
        }
        if self.poll_interval < MIN_POLL_INTERVAL {
            return Err(ConfigError::PollInterval(self.poll_interval));
        }
        if self.store_grace.is_zero() {
            return Err(ConfigError::StoreGrace);
        }
        if self.max_store_backoff.is_zero() {
            return Err(ConfigError::StoreBackoff);
        }
        let bounds = [
            (
                "shutdown timeout",
                self.shutdown_timeout,
                MAX_SHUTDOWN_TIMEOUT,
            ),
            ("kill grace", self.kill_grace, MAX_TIMING),
            ("lease", self.lease, MAX_TIMING),
            ("poll interval", self.poll_interval, MAX_TIMING),
            ("store grace", self.store_grace, MAX_TIMING),
            ("store backoff cap", self.max_store_backoff, MAX_TIMING),
        ];
        for (name, got, max) in bounds {
            if got > max {
                return Err(ConfigError::TooLong { name, max, got });
            }
        }
        Ok(())
    }

    /// Heartbeats go every lease/3, so two may be lost before a lease expires.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lease / 3
    }

    /// The longest time from the first shutdown signal to exit (invariant 6).
    pub fn exit_bound(&self) -> Duration {
        self.shutdown_timeout + self.kill_grace + self.store_grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn the_largest_prefetch_is_valid() {
        let config = Config {
            prefetch: MAX_CONCURRENCY,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn the_limits_themselves_are_valid() {
        // Each bound is inclusive: a day's drain, an hour of every other
        // timing, the shortest lease and poll interval.
        let edges = [
            Config {
                shutdown_timeout: Duration::from_secs(24 * 3600),
                ..Config::default()
            },
            Config {
                kill_grace: MAX_TIMING,
                lease: MAX_TIMING,
                poll_interval: MAX_TIMING,
                store_grace: MAX_TIMING,
                max_store_backoff: MAX_TIMING,
                ..Config::default()
            },
            Config {
                lease: MIN_LEASE,
                poll_interval: MIN_POLL_INTERVAL,
                ..Config::default()
            },
        ];
        for config in edges {
            assert_eq!(config.validate(), Ok(()), "{config:?}");
        }
        let past = Config {
            shutdown_timeout: Duration::from_secs(24 * 3600 + 1),
            ..Config::default()
        };
        assert!(past.validate().is_err());
    }

    #[test]
    fn limits_are_enforced_with_named_errors() {
        let base = Config::default();
        let bad = [
            (
                Config {
                    concurrency: 0,
                    ..base.clone()
                },
                ConfigError::Concurrency(0),
            ),
            (
                Config {
                    concurrency: 5000,
                    ..base.clone()
                },
                ConfigError::Concurrency(5000),
            ),
            (
                Config {
                    prefetch: MAX_CONCURRENCY + 1,
                    ..base.clone()
                },
                ConfigError::Prefetch(MAX_CONCURRENCY + 1),
            ),
            (
                Config {
                    batch_max: 0,
                    ..base.clone()
                },
                ConfigError::Batch(0),
            ),
            (
                Config {
                    kill_grace: Duration::ZERO,
                    ..base.clone()
                },
                ConfigError::KillGrace,
            ),
            (
                Config {
                    lease: Duration::from_millis(100),
                    ..base.clone()
                },
                ConfigError::Lease(Duration::from_millis(100)),
            ),
            (
                Config {
                    poll_interval: Duration::from_millis(1),
                    ..base.clone()
                },
                ConfigError::PollInterval(Duration::from_millis(1)),
            ),
            (
                Config {
                    store_grace: Duration::ZERO,
                    ..base.clone()
                },
                ConfigError::StoreGrace,
            ),
        ];
        for (config, expected) in bad {
            assert_eq!(config.validate(), Err(expected));
        }
    }

    #[test]
    fn absurd_timings_are_refused_not_overflowed() {
        let huge = Duration::from_secs(u64::MAX / 2);
        let config = Config {
            shutdown_timeout: huge,
            ..Config::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::TooLong {
                name: "shutdown timeout",
                ..
            })
        ));
        let config = Config {
            shutdown_timeout: MAX_SHUTDOWN_TIMEOUT,
            kill_grace: MAX_TIMING,
            store_grace: MAX_TIMING,
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
        assert!(config.exit_bound() < Duration::from_secs(2 * 24 * 3600));
        let error = Config {
            lease: Duration::from_secs(7200),
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert_eq!(error, "lease must be at most 60m, got 120m");
    }
}
