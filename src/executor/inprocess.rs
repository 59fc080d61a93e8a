//! Runs jobs as async handlers inside the worker process, for applications
//! embedding dockhand and for benchmarks. A job's kind is its command's first
//! word; the rest are its arguments.
//!
//! Stopping maps onto the same protocol as processes: TERM sets the job's
//! cancellation signal (the handler should wind down and return), KILL
//! aborts the handler's task.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::{ExecEvent, Executor};
use crate::job::JobSignal;
use crate::job::{ClaimedJob, Exit, JobId, Lease, LeaseToken};

/// What a handler receives.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The job.
    pub id: JobId,
    /// Its kind (the command's first word).
    pub kind: String,
    /// The command's other words.
    pub args: Vec<String>,
    /// Its environment.
    pub env: BTreeMap<String, String>,
    /// This run's attempt number (1 for the first).
    pub attempt: u32,
    cancel: watch::Receiver<bool>,
}

impl JobContext {
    /// Whether the worker asked this job to stop (the in-process TERM).
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when the worker asks this job to stop.
    pub async fn cancelled(&mut self) {
        while !*self.cancel.borrow_and_update() {
            if self.cancel.changed().await.is_err() {
                // The executor is gone: nobody will ask again.
                std::future::pending::<()>().await;
            }
        }
    }
}

/// A handler's result: `Err` fails the attempt with that message.
pub type HandlerResult = Result<(), String>;

/// A boxed handler future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

/// A registered handler.
pub type Handler = Arc<dyn Fn(JobContext) -> HandlerFuture + Send + Sync>;

/// Executor of in-process handlers, by job kind.
pub struct InProcessExecutor {
    handlers: Arc<BTreeMap<String, Handler>>,
    running: BTreeMap<JobId, (LeaseToken, watch::Sender<bool>, AbortHandle)>,
}

impl std::fmt::Debug for InProcessExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessExecutor")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .field("running", &self.running.len())
            .finish()
    }
}

impl InProcessExecutor {
    /// An executor with these handlers.
    pub fn new(handlers: BTreeMap<String, Handler>) -> Self {
        InProcessExecutor {
            handlers: Arc::new(handlers),
            running: BTreeMap::new(),
        }
    }
}

impl Executor for InProcessExecutor {
    fn start(&mut self, job: ClaimedJob, events: mpsc::Sender<ExecEvent>) {
        let lease = job.lease;
        let id = lease.job;
        let kind = job.spec.command.first().cloned().unwrap_or_default();
        let Some(handler) = self.handlers.get(&kind).cloned() else {
            let error = format!("no handler for job kind {kind:?}");
            tokio::spawn(async move {
                let _ = events
                    .send(ExecEvent::StartFailed {
                        lease,
                        error,
                        transient: false,
                    })
                    .await;
            });
            return;
        };
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let context = JobContext {
            id,
            kind,
            args: job.spec.command[1..].to_vec(),
            env: job.spec.env.clone(),
            attempt: job.attempts + 1,
            cancel: cancel_rx,
        };
        let work = tokio::spawn(handler(context));
        let abort = work.abort_handle();
        self.running.insert(id, (lease.token, cancel_tx, abort));
        tokio::spawn(async move {
            let _ = events.send(ExecEvent::Started { lease }).await;
            let (exit, output) = match work.await {
                Ok(Ok(())) => (Exit::Code(0), Vec::new()),
                Ok(Err(error)) => (Exit::Code(1), error.into_bytes()),
                Err(join) if join.is_cancelled() => (Exit::Signal(9), Vec::new()),
                Err(join) => (
                    Exit::Code(101),
                    format!("handler panicked: {join}").into_bytes(),
                ),
            };
            let _ = events
                .send(ExecEvent::Exited {
                    lease,
                    exit,
                    output,
                })
                .await;
        });
    }

    fn signal(&mut self, job: JobId, signal: JobSignal) {
        let Some((_, cancel, abort)) = self.running.get(&job) else {
            return;
        };
        match signal {
            JobSignal::Term => {
                let _ = cancel.send(true);
            }
            JobSignal::Kill => abort.abort(),
        }
    }

    fn release(&mut self, lease: Lease) {
        if self
            .running
            .get(&lease.job)
            .is_some_and(|(token, _, _)| *token == lease.token)
        {
            self.running.remove(&lease.job);
        }
    }

    fn kill_all(&mut self) -> impl Future<Output = ()> + Send {
        for (_, _, abort) in self.running.values() {
            abort.abort();
        }
        std::future::ready(())
    }
}
