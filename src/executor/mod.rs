//! Executors run jobs: local processes ([`process`]), later containers and
//! in-process handlers. The shell starts and signals jobs through the
//! [`Executor`] trait and learns how they ended from [`ExecEvent`]s.

#[cfg(feature = "docker")]
pub mod docker;
pub mod inprocess;
pub mod process;
#[cfg(feature = "docker")]
pub mod router;
pub mod shim;
pub mod watchdog;

use tokio::sync::mpsc;

use std::future::Future;

use crate::job::JobSignal;
use crate::job::{ClaimedJob, Exit, JobId, Lease, OUTPUT_LIMIT};

#[cfg(feature = "docker")]
pub use docker::DockerExecutor;
pub use process::ProcessExecutor;
#[cfg(feature = "docker")]
pub use router::Router;

/// Whether a worker's Docker engine answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineState {
    /// It answers: jobs with an image are claimed.
    Reachable,
    /// It does not (not running, restarting, wrong socket): jobs with an
    /// image are left to other workers until it answers again.
    Unreachable,
}

impl EngineState {
    /// `reachable` or `unreachable`, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineState::Reachable => "reachable",
            EngineState::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for EngineState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an executor (or its engine) could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The Docker engine cannot be reached (not running, wrong socket).
    #[error("Docker engine unreachable: {0}")]
    EngineUnreachable(String),
    /// The engine answered with an error.
    #[error("Docker engine refused ({status}): {message}")]
    EngineRefused {
        /// HTTP status of the engine's answer.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The job's image is not on the engine (dockhand never pulls).
    #[error("image {0:?} is not present on the Docker engine (dockhand never pulls; build or pull it first)")]
    ImageMissing(String),
    /// Container limits that would not limit anything (zero means "no
    /// limit" to Docker) or are out of range.
    #[error("invalid container limits: {0}")]
    InvalidLimits(String),
    /// This worker runs no containers (e.g. the demo).
    #[error("{0}")]
    NotConfigured(&'static str),
    /// The store could not be asked (reconciliation).
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// What an executor reports about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// The job's process is running.
    Started {
        /// The run (job and lease) from [`Executor::start`].
        lease: Lease,
    },
    /// The job could not be started.
    StartFailed {
        /// The run (job and lease) from [`Executor::start`].
        lease: Lease,
        /// Why.
        error: String,
        /// The fault is the worker's, not the job's (its engine is away):
        /// the job goes back to the queue without using an attempt.
        transient: bool,
    },
    /// The job's process ended and its output was collected.
    Exited {
        /// The run (job and lease) from [`Executor::start`].
        lease: Lease,
        /// How it ended.
        exit: Exit,
        /// Tail of its output (bounded), as bytes.
        output: Vec<u8>,
    },
}

/// Runs jobs. Each started job reports `Started` or `StartFailed`, then (if
/// started) exactly one `Exited`, through the channel given to `start`.
pub trait Executor: Send + 'static {
    /// Start a job; returns at once.
    fn start(&mut self, job: ClaimedJob, events: mpsc::Sender<ExecEvent>);

    /// Send TERM or KILL to a running job (its whole process group).
    fn signal(&mut self, job: JobId, signal: JobSignal);

    /// The machine is done with this run (its outcome is recorded, or it was
    /// refused, superseded, lost or given up): release what is kept for it.
    /// A container is removed only now, so its logs and exit code outlive a
    /// crash between exit and record. A newer run of the same job is left
    /// alone: only `lease` is released.
    fn release(&mut self, _lease: Lease) {}

    /// The state of the container engine, or `None` if this executor runs
    /// no containers.
    fn engine(&self) -> Option<EngineState> {
        None
    }

    /// Whether jobs with an image may be claimed now: only while the
    /// engine answers, so a worker without one never takes them from
    /// workers that have one.
    fn runs_images(&self) -> bool {
        self.engine() == Some(EngineState::Reachable)
    }

    /// KILL everything still running and clean up (the worker is exiting).
    fn kill_all(&mut self) -> impl Future<Output = ()> + Send;
}

/// Keeps the last [`OUTPUT_LIMIT`] bytes of a job's output.
#[derive(Debug, Default)]
pub struct OutputTail {
    bytes: Vec<u8>,
}

impl OutputTail {
    /// Append a chunk; memory stays under twice the limit.
    pub fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > 2 * OUTPUT_LIMIT {
            let cut = self.bytes.len() - OUTPUT_LIMIT;
            self.bytes.drain(..cut);
        }
    }

    /// The last [`OUTPUT_LIMIT`] bytes, as the job wrote them.
    pub fn bytes(&self) -> Vec<u8> {
        crate::job::tail(&self.bytes, OUTPUT_LIMIT).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut tail = OutputTail::default();
        for _ in 0..10 {
            tail.push(&vec![b'a'; OUTPUT_LIMIT / 2]);
        }
        tail.push(b"end\0\xff");
        let bytes = tail.bytes();
        assert_eq!(bytes.len(), OUTPUT_LIMIT);
        assert!(bytes.ends_with(b"aend\0\xff"));
        assert!(tail.bytes.len() <= 2 * OUTPUT_LIMIT);
    }
}
