//! Executors run jobs: local processes ([`process`]), later containers and
//! in-process handlers. The shell starts and signals jobs through the
//! [`Executor`] trait and learns how they ended from [`ExecEvent`]s.

pub mod process;
pub mod watchdog;

use tokio::sync::mpsc;

use crate::job::{ClaimedJob, Exit, JobId};
use crate::machine::JobSignal;

pub use process::ProcessExecutor;

/// What an executor reports about a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    /// The job's process is running.
    Started {
        /// The job.
        job: JobId,
    },
    /// The job could not be started.
    StartFailed {
        /// The job.
        job: JobId,
        /// Why.
        error: String,
    },
    /// The job's process ended and its output was collected.
    Exited {
        /// The job.
        job: JobId,
        /// How it ended.
        exit: Exit,
        /// Tail of its output (bounded).
        output: String,
    },
}

/// Runs jobs. Each started job reports `Started` or `StartFailed`, then (if
/// started) exactly one `Exited`, through the channel given to `start`.
pub trait Executor: Send + 'static {
    /// Start a job; returns at once.
    fn start(&mut self, job: ClaimedJob, events: mpsc::Sender<ExecEvent>);

    /// Send TERM or KILL to a running job (its whole process group).
    fn signal(&mut self, job: JobId, signal: JobSignal);

    /// KILL everything still running (the worker is exiting).
    fn kill_all(&mut self);
}
