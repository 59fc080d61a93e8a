//! Sends each job to the right executor: a container when it has an image,
//! a local process otherwise.

use std::collections::BTreeMap;

use tokio::sync::mpsc;

use super::{DockerExecutor, EngineState, ExecError, ExecEvent, Executor, ProcessExecutor};
use crate::job::JobSignal;
use crate::job::{ClaimedJob, JobId, Lease, LeaseToken};

/// Routes by `spec.image`.
#[derive(Debug)]
pub struct Router {
    process: ProcessExecutor,
    docker: Option<DockerExecutor>,
    /// Why there is no Docker executor, for the jobs that needed one.
    no_docker: String,
    /// Jobs whose current run is a container, with its lease token.
    in_containers: BTreeMap<JobId, LeaseToken>,
}

impl Router {
    /// Processes always; containers when `docker` is set. Without it, the
    /// engine counts as unreachable: no image job is claimed.
    pub fn new(process: ProcessExecutor, docker: Result<DockerExecutor, ExecError>) -> Self {
        let (docker, no_docker) = match docker {
            Ok(docker) => (Some(docker), String::new()),
            Err(why) => (None, why.to_string()),
        };
        Router {
            process,
            docker,
            no_docker,
            in_containers: BTreeMap::new(),
        }
    }
}

impl Executor for Router {
    fn start(&mut self, job: ClaimedJob, events: mpsc::Sender<ExecEvent>) {
        if job.spec.image.is_none() {
            return self.process.start(job, events);
        }
        let lease = job.lease;
        let id = lease.job;
        match &mut self.docker {
            Some(docker) => {
                self.in_containers.insert(id, lease.token);
                docker.start(job, events);
            }
            None => {
                // Claimed by a mistake of the store's (this worker asks for
                // no image job): not the job's fault, so it goes back.
                let error = format!("cannot run a container: {}", self.no_docker);
                tokio::spawn(async move {
                    let _ = events
                        .send(ExecEvent::StartFailed {
                            lease,
                            error,
                            transient: true,
                        })
                        .await;
                });
            }
        }
    }

    fn signal(&mut self, job: JobId, signal: JobSignal) {
        match (&mut self.docker, self.in_containers.contains_key(&job)) {
            (Some(docker), true) => docker.signal(job, signal),
            _ => self.process.signal(job, signal),
        }
    }

    fn release(&mut self, lease: Lease) {
        if self.in_containers.get(&lease.job) == Some(&lease.token) {
            self.in_containers.remove(&lease.job);
            if let Some(docker) = &mut self.docker {
                docker.release(lease);
            }
        }
    }

    fn engine(&self) -> Option<EngineState> {
        Some(match &self.docker {
            Some(docker) => docker.engine().unwrap_or(EngineState::Unreachable),
            None => EngineState::Unreachable,
        })
    }

    fn kill_all(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let process = self.process.kill_all();
        let docker = self.docker.as_mut().map(|d| d.kill_all());
        async move {
            process.await;
            if let Some(docker) = docker {
                docker.await;
            }
        }
    }
}
