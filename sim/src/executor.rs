//! Simulated job processes: they sleep (on simulated time), exit with a code,
//! obey or ignore TERM, and die with their host on a crash.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dockhand::executor::{ExecEvent, Executor};
use dockhand::job::JobSignal;
use dockhand::job::{ClaimedJob, Exit, JobId, Lease, LeaseToken};
use tokio::sync::mpsc;

use crate::Shared;

/// How a simulated job behaves, encoded in its command:
/// `["sim", RUN_MS | "stuck", "obey" | "ignore", EXIT_CODE]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behavior {
    /// Runs this long; `None` never ends on its own.
    pub run: Option<Duration>,
    /// Ignores TERM.
    pub ignores_term: bool,
    /// Exit code when it ends on its own.
    pub code: i32,
}

impl Behavior {
    /// The command that encodes this behaviour.
    pub fn command(&self) -> Vec<String> {
        vec![
            "sim".into(),
            self.run
                .map(|d| d.as_millis().to_string())
                .unwrap_or_else(|| "stuck".into()),
            if self.ignores_term { "ignore" } else { "obey" }.into(),
            self.code.to_string(),
        ]
    }

    fn parse(command: &[String]) -> Behavior {
        let run = command
            .get(1)
            .and_then(|r| r.parse().ok())
            .map(Duration::from_millis);
        Behavior {
            run,
            ignores_term: command.get(2).map(String::as_str) == Some("ignore"),
            code: command.get(3).and_then(|c| c.parse().ok()).unwrap_or(0),
        }
    }
}

/// One worker incarnation's simulated processes.
pub struct SimExecutor {
    worker: String,
    shared: Arc<Mutex<Shared>>,
    procs: BTreeMap<JobId, (LeaseToken, mpsc::Sender<JobSignal>)>,
}

impl SimExecutor {
    /// Processes of `worker`, registered in `shared` while alive.
    pub fn new(worker: &str, shared: Arc<Mutex<Shared>>) -> Self {
        SimExecutor {
            worker: worker.to_string(),
            shared,
            procs: BTreeMap::new(),
        }
    }
}

impl Executor for SimExecutor {
    fn start(&mut self, job: ClaimedJob, events: mpsc::Sender<ExecEvent>) {
        let lease = job.lease;
        let id = lease.job;
        let behavior = Behavior::parse(&job.spec.command);
        let (tx, mut rx) = mpsc::channel(8);
        self.procs.insert(id, (lease.token, tx));
        let key = (self.worker.clone(), id);
        {
            let mut shared = crate::lock(&self.shared);
            shared.alive.insert(key.clone(), job.lease.token);
            shared
                .started
                .insert((self.worker.clone(), id, job.lease.token.0));
            shared.starts.push((
                self.worker.clone(),
                id,
                turmoil::sim_elapsed().unwrap_or_default(),
            ));
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let _ = events.send(ExecEvent::Started { lease }).await;
            let deadline = behavior.run.map(|run| tokio::time::Instant::now() + run);
            let exit = loop {
                let natural = async {
                    match deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                // Biased: an unbiased select! draws its first branch from
                // tokio's per-thread random state, which is not the seed's,
                // so a signal and a natural end at one instant would make
                // the trace depend on what else the thread had run.
                tokio::select! {
                    biased;
                    _ = natural => break Exit::Code(behavior.code),
                    signal = rx.recv() => match signal {
                        Some(JobSignal::Kill) => break Exit::Signal(9),
                        Some(JobSignal::Term) if !behavior.ignores_term => break Exit::Signal(15),
                        Some(JobSignal::Term) => continue,
                        None => std::future::pending::<()>().await,
                    },
                }
            };
            crate::lock(&shared).alive.remove(&key);
            let _ = events
                .send(ExecEvent::Exited {
                    lease,
                    exit,
                    output: format!("job {id} ran\n").into_bytes(),
                })
                .await;
        });
    }

    fn signal(&mut self, job: JobId, signal: JobSignal) {
        if let Some((_, tx)) = self.procs.get(&job) {
            let _ = tx.try_send(signal);
        }
    }

    fn release(&mut self, lease: Lease) {
        if self
            .procs
            .get(&lease.job)
            .is_some_and(|(token, _)| *token == lease.token)
        {
            self.procs.remove(&lease.job);
        }
    }

    fn kill_all(&mut self) -> impl std::future::Future<Output = ()> + Send {
        for (_, tx) in self.procs.values() {
            let _ = tx.try_send(JobSignal::Kill);
        }
        std::future::ready(())
    }
}
