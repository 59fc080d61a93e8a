//! Runs a job with an image as a container, through the Docker Engine API.
//!
//! - Labels carry the job id, worker id and lease token, so reconciliation
//!   can tell whose a container is and whether its lease still lives.
//! - Resource limits: the worker's defaults, overridden per job.
//! - Never privileged, no host mounts, no host network: a job spec has no
//!   way to ask for them.
//! - Stop = SIGTERM to the container, SIGKILL when the machine says so —
//!   never a force-remove of a running container.
//! - Logs are harvested (bounded) after the exit; the container is removed
//!   only once the outcome is recorded ([`Executor::forget`]).
//! - Images are never pulled: a missing image fails the job with a clear error.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{ExecError, ExecEvent, Executor, OutputTail};
use crate::job::JobSignal;
use crate::job::{ClaimedJob, Exit, JobId, JobState, Lease, LeaseToken};
use crate::store::Store;

/// Label: this container is run by dockhand.
pub const LABEL_MANAGED: &str = "dockhand.managed";
/// Label: the database's instance id (deployments sharing an engine).
pub const LABEL_STORE: &str = "dockhand.store";
/// Label: the job id.
pub const LABEL_JOB: &str = "dockhand.job_id";
/// Label: the worker that started it.
pub const LABEL_WORKER: &str = "dockhand.worker_id";
/// Label: the lease token of the claim it runs for.
pub const LABEL_TOKEN: &str = "dockhand.lease_token";

/// Longest wait for cleanup of every container at worker exit.
const EXIT_CLEANUP: Duration = Duration::from_secs(10);

/// The container of each job's current run, and the lease it runs under.
type Containers = Arc<Mutex<BTreeMap<JobId, (LeaseToken, String)>>>;

/// Worker-level container limits (a job's own values win).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// CPU in thousandths of a CPU.
    pub cpu_millis: u32,
    /// Processes.
    pub pids: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 * 1024 * 1024,
            cpu_millis: 1000,
            pids: 512,
        }
    }
}

/// The container executor.
#[derive(Debug)]
pub struct DockerExecutor {
    docker: Docker,
    store_id: String,
    worker_id: String,
    limits: Limits,
    /// Container of every run not yet released, by job (one run at a time).
    containers: Containers,
    /// Removals of containers whose outcome is recorded, still under way:
    /// the worker waits for them before it exits, so no recorded job's
    /// container outlives it.
    removals: tokio::task::JoinSet<()>,
}

/// Connect to the local engine (`DOCKER_HOST` or the default socket),
/// agreeing on an API version it supports.
pub async fn connect() -> Result<Docker, ExecError> {
    let docker = Docker::connect_with_local_defaults()
        .map_err(|e| ExecError::EngineUnreachable(e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(5), docker.clone().negotiate_version()).await {
        Ok(Ok(docker)) => Ok(docker),
        Ok(Err(error)) => Err(ExecError::EngineUnreachable(error.to_string())),
        Err(_) => Err(ExecError::EngineUnreachable("no answer within 5s".into())),
    }
}

/// An engine error in the executor's terms; `image` is the job's.
fn describe(error: DockerError, image: &str) -> ExecError {
    match error {
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => ExecError::ImageMissing(image.to_string()),
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => ExecError::EngineRefused {
            status: status_code,
            message,
        },
        other => ExecError::EngineUnreachable(other.to_string()),
    }
}

/// Docker reports a container ended by signal N as exit code 128 + N.
fn exit_from_code(code: i64) -> Exit {
    match code {
        129..=159 => Exit::Signal((code - 128) as i32),
        code => Exit::Code(code.clamp(i32::MIN as i64, i32::MAX as i64) as i32),
    }
}

impl DockerExecutor {
    /// An executor on `docker` for `worker_id` of the store `store_id`.
    pub fn new(docker: Docker, store_id: &str, worker_id: &str, limits: Limits) -> Self {
        DockerExecutor {
            docker,
            store_id: store_id.to_string(),
            worker_id: worker_id.to_string(),
            limits,
            containers: Arc::new(Mutex::new(BTreeMap::new())),
            removals: tokio::task::JoinSet::new(),
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, (LeaseToken, String)>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn body(&self, job: &ClaimedJob) -> ContainerCreateBody {
        let spec = &job.spec;
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_STORE.to_string(), self.store_id.clone()),
            (LABEL_JOB.to_string(), job.lease.job.to_string()),
            (LABEL_WORKER.to_string(), self.worker_id.clone()),
            (LABEL_TOKEN.to_string(), job.lease.token.to_string()),
        ]);
        let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("DOCKHAND_JOB_ID={}", job.lease.job));
        env.push(format!("DOCKHAND_ATTEMPT={}", job.attempts + 1));
        let memory = spec.memory_bytes.unwrap_or(self.limits.memory_bytes);
        let cpu = spec.cpu_millis.unwrap_or(self.limits.cpu_millis);
        let pids = spec.pids.unwrap_or(self.limits.pids);
        ContainerCreateBody {
            image: spec.image.clone(),
            cmd: Some(spec.command.clone()),
            env: Some(env),
            labels: Some(labels),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            host_config: Some(HostConfig {
                // An init as PID 1 forwards TERM to the job and reaps its children.
                init: Some(true),
                privileged: Some(false),
                memory: Some(memory as i64),
                memory_swap: Some(memory as i64),
                nano_cpus: Some(i64::from(cpu) * 1_000_000),
                pids_limit: Some(i64::from(pids)),
                cap_drop: Some(vec!["NET_RAW".to_string(), "SYS_ADMIN".to_string()]),
                security_opt: Some(vec!["no-new-privileges".to_string()]),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        }
    }
}

/// SIGKILL a container (harmless if it already exited) and remove it.
async fn kill_and_remove(docker: &Docker, id: &str) -> bool {
    let kill = KillContainerOptions {
        signal: "SIGKILL".into(),
    };
    let _ = docker.kill_container(id, Some(kill)).await;
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    docker.remove_container(id, Some(options)).await.is_ok()
}

/// Kill (if running) and remove every container labelled with `job`, except `keep`.
async fn remove_job_containers(docker: &Docker, store_id: &str, job: JobId) -> usize {
    let labels = vec![
        format!("{LABEL_STORE}={store_id}"),
        format!("{LABEL_JOB}={job}"),
    ];
    let filters = HashMap::from([("label".to_string(), labels)]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..ListContainersOptions::default()
    };
    let Ok(found) = docker.list_containers(Some(options)).await else {
        return 0;
    };
    let mut removed = 0;
    for container in found {
        let Some(id) = container.id else { continue };
        if kill_and_remove(docker, &id).await {
            removed += 1;
        }
    }
    removed
}

async fn run_container(
    docker: Docker,
    store_id: String,
    job: ClaimedJob,
    body: ContainerCreateBody,
    containers: Containers,
    events: mpsc::Sender<ExecEvent>,
) {
    let lease = job.lease;
    let id = lease.job;
    let image = job.spec.image.clone().unwrap_or_default();
    // A container of an older claim of this job (a dead worker's) must not
    // run beside the new one.
    let stale = remove_job_containers(&docker, &store_id, id).await;
    if stale > 0 {
        tracing::warn!(job_id = %id, removed = stale, "removed containers of an earlier claim of this job");
    }
    let short: String = store_id.chars().take(12).collect();
    let name = format!("dockhand-{short}-{}-{}", id, job.lease.token);
    let options = CreateContainerOptions {
        name: Some(name),
        ..Default::default()
    };
    let container = match docker.create_container(Some(options), body).await {
        Ok(created) => created.id,
        Err(error) => {
            let error = describe(error, &image).to_string();
            let _ = events.send(ExecEvent::StartFailed { lease, error }).await;
            return;
        }
    };
    containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, (lease.token, container.clone()));
    if let Err(error) = docker.start_container(&container, None).await {
        let error = describe(error, &image).to_string();
        let _ = docker
            .remove_container(
                &container,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
        containers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let _ = events.send(ExecEvent::StartFailed { lease, error }).await;
        return;
    }
    let _ = events.send(ExecEvent::Started { lease }).await;
    let mut wait = docker.wait_container(&container, None::<WaitContainerOptions>);
    let code = match wait.next().await {
        Some(Ok(response)) => Some(response.status_code),
        Some(Err(DockerError::DockerContainerWaitError { code, .. })) => Some(code),
        _ => None,
    };
    let mut tail = OutputTail::default();
    let logs = LogsOptions {
        stdout: true,
        stderr: true,
        tail: "all".into(),
        ..Default::default()
    };
    let mut stream = docker.logs(&container, Some(logs));
    while let Some(Ok(chunk)) = stream.next().await {
        tail.push(&chunk.into_bytes());
    }
    let inspect = docker
        .inspect_container(&container, None::<InspectContainerOptions>)
        .await
        .ok();
    let state = inspect.and_then(|i| i.state);
    let code = code.or_else(|| state.as_ref().and_then(|s| s.exit_code));
    if state.as_ref().and_then(|s| s.oom_killed) == Some(true) {
        tail.push(b"\n[dockhand] the container was killed: out of memory\n");
    }
    let exit = match code {
        Some(code) => exit_from_code(code),
        None => {
            tail.push(b"\n[dockhand] lost contact with the Docker engine; exit status unknown\n");
            Exit::Code(-1)
        }
    };
    let _ = events
        .send(ExecEvent::Exited {
            lease,
            exit,
            output: tail.bytes(),
        })
        .await;
}

impl Executor for DockerExecutor {
    fn start(&mut self, job: ClaimedJob, events: mpsc::Sender<ExecEvent>) {
        let body = self.body(&job);
        tokio::spawn(run_container(
            self.docker.clone(),
            self.store_id.clone(),
            job,
            body,
            self.containers.clone(),
            events,
        ));
    }

    fn signal(&mut self, job: JobId, signal: JobSignal) {
        let Some((_, container)) = self.containers().get(&job).cloned() else {
            return;
        };
        let docker = self.docker.clone();
        let signal = match signal {
            JobSignal::Term => "SIGTERM",
            JobSignal::Kill => "SIGKILL",
        };
        tokio::spawn(async move {
            // Fails harmlessly when the container has just exited.
            let _ = docker
                .kill_container(
                    &container,
                    Some(KillContainerOptions {
                        signal: signal.into(),
                    }),
                )
                .await;
        });
    }

    fn release(&mut self, lease: Lease) {
        let job = lease.job;
        let container = {
            let mut containers = self.containers();
            match containers.get(&job) {
                Some((token, _)) if *token == lease.token => containers.remove(&job),
                _ => None,
            }
        };
        let Some((_, container)) = container else {
            return;
        };
        // Finished removals are collected as new ones start: the set stays
        // as small as the removals really under way.
        while self.removals.try_join_next().is_some() {}
        let docker = self.docker.clone();
        self.removals.spawn(async move {
            let options = RemoveContainerOptions {
                v: true,
                ..Default::default()
            };
            if let Err(error) = docker.remove_container(&container, Some(options)).await {
                tracing::warn!(job_id = %job, %error, "could not remove the container; reconciliation will");
            }
        });
    }

    fn kill_all(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let containers: Vec<String> = std::mem::take(&mut *self.containers())
            .into_values()
            .map(|(_, container)| container)
            .collect();
        let docker = self.docker.clone();
        let mut removals = std::mem::take(&mut self.removals);
        async move {
            let cleanup = async {
                for container in containers {
                    kill_and_remove(&docker, &container).await;
                }
                while removals.join_next().await.is_some() {}
            };
            if tokio::time::timeout(EXIT_CLEANUP, cleanup).await.is_err() {
                tracing::warn!(
                    "container clean-up at exit took over {}s; reconciliation will finish it",
                    EXIT_CLEANUP.as_secs()
                );
            }
        }
    }
}

/// Stop and remove containers whose claim no longer lives: their worker is
/// gone, or their job is no longer running under that worker and token.
/// Containers of `own_worker` are left alone. Returns how many were removed.
pub async fn reconcile<S: Store>(
    docker: &Docker,
    store: &S,
    own_worker: &str,
    lease: Duration,
) -> Result<usize, ExecError> {
    let store_id = store.instance_id().await?;
    let labels = vec![
        format!("{LABEL_MANAGED}=true"),
        format!("{LABEL_STORE}={store_id}"),
    ];
    let filters = HashMap::from([("label".to_string(), labels)]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let found = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| describe(e, ""))?;
    if found.is_empty() {
        return Ok(0);
    }
    let workers = store.workers(lease).await?;
    let mut removed = 0;
    for container in found {
        let (Some(id), Some(labels)) = (container.id, container.labels) else {
            continue;
        };
        let worker = labels.get(LABEL_WORKER).cloned().unwrap_or_default();
        if worker == own_worker {
            continue;
        }
        let job = labels
            .get(LABEL_JOB)
            .and_then(|j| j.parse().ok())
            .map(JobId);
        let token: Option<i64> = labels.get(LABEL_TOKEN).and_then(|t| t.parse().ok());
        let worker_alive = workers.iter().any(|w| w.info.id == worker && !w.lost);
        let lease_alive = match job {
            Some(job) => store.get(job).await?.is_some_and(|j| {
                j.state == JobState::Running
                    && j.worker_id.as_deref() == Some(worker.as_str())
                    && Some(j.lease_token) == token
            }),
            None => false,
        };
        if worker_alive && lease_alive {
            continue;
        }
        if kill_and_remove(docker, &id).await {
            removed += 1;
            tracing::warn!(container = %id, worker_id = %worker, job_id = ?job, "removed an orphaned container");
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_exits_are_recognised() {
        assert_eq!(exit_from_code(0), Exit::Code(0));
        assert_eq!(exit_from_code(3), Exit::Code(3));
        assert_eq!(exit_from_code(137), Exit::Signal(9));
        assert_eq!(exit_from_code(143), Exit::Signal(15));
    }
}
