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
//! - The engine may come and go: a watcher pings it (with backoff while it
//!   is away); image jobs are claimed only while it answers, a start that
//!   fails for want of it hands the job back without using an attempt, and
//!   a wait that breaks looks at the container again rather than guess.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
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

use super::{EngineState, ExecError, ExecEvent, Executor, OutputTail};
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
/// How often an engine that answers is pinged.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for one ping or version request.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between tries while the engine is away.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(10);

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

impl Limits {
    /// Refuses limits Docker would not enforce: a zero memory, CPU or
    /// process limit means "unlimited" to the engine, so a typo must not
    /// turn a limit off.
    pub fn validate(&self) -> Result<(), ExecError> {
        crate::store::check_memory(self.memory_bytes)
            .and_then(|()| crate::store::check_cpu(self.cpu_millis))
            .and_then(|()| crate::store::check_pids(self.pids))
            .map_err(ExecError::InvalidLimits)
    }
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

/// The Docker engine as the worker knows it: a client once one could be
/// made (the engine's socket may not exist yet), and whether the engine
/// answered the last ping. Shared by the executor, its runs, the watcher
/// and reconciliation.
#[derive(Clone, Debug, Default)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

#[derive(Debug, Default)]
struct EngineInner {
    up: AtomicBool,
    client: Mutex<Option<Docker>>,
}

impl Engine {
    /// Whether the engine answered the last ping.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    /// A client, once one could be made.
    pub fn client(&self) -> Option<Docker> {
        self.inner
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A call failed for want of the engine: stop claiming image jobs until
    /// the watcher's next ping hears from it (at most [`PING_EVERY`]
    /// later, so an engine that answers pings but fails calls costs at most
    /// one handed-back job per ping).
    fn lost(&self) {
        self.inner.up.store(false, Ordering::Relaxed);
    }

    /// Ping the engine once (making a client first if there is none yet),
    /// set whether it is up, and log a change against `logged`.
    async fn check(&self, worker_id: &str, logged: &mut Option<bool>) {
        let answer = match self.client() {
            Some(docker) => reach(&docker, !self.is_up()).await,
            None => match client() {
                Ok(docker) => {
                    let answer = reach(&docker, true).await;
                    *self.inner.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(docker);
                    answer
                }
                Err(why) => Err(why),
            },
        };
        let up = answer.is_ok();
        self.inner.up.store(up, Ordering::Relaxed);
        if *logged != Some(up) {
            match &answer {
                Ok(()) => tracing::info!(
                    worker_id,
                    "Docker engine reachable: jobs with an image are claimed"
                ),
                Err(why) => tracing::warn!(
                    worker_id,
                    "{why}: jobs with an image are left to other workers until it answers"
                ),
            }
            *logged = Some(up);
        }
    }

    /// Keep checking: every [`PING_EVERY`] while the engine answers, after a
    /// doubling pause (up to [`RETRY_MAX`]) while it does not.
    async fn watch(self, worker_id: String, mut logged: Option<bool>) {
        let mut retry = RETRY_FIRST;
        loop {
            let pause = if self.is_up() {
                retry = RETRY_FIRST;
                PING_EVERY
            } else {
                let pause = retry;
                retry = (retry * 2).min(RETRY_MAX);
                pause
            };
            tokio::time::sleep(pause).await;
            self.check(&worker_id, &mut logged).await;
        }
    }
}

/// The container executor.
#[derive(Debug)]
pub struct DockerExecutor {
    engine: Engine,
    watcher: tokio::task::JoinHandle<()>,
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

/// A client for the local engine (`DOCKER_HOST` or the default socket).
/// Nothing is sent; it fails while the engine's socket does not exist.
fn client() -> Result<Docker, ExecError> {
    Docker::connect_with_local_defaults().map_err(|e| ExecError::EngineUnreachable(e.to_string()))
}

/// Ask the engine whether it answers; on `negotiate`, also agree on an API
/// version it supports (an engine that comes back may be another version;
/// the client's clones share the agreed version).
async fn reach(docker: &Docker, negotiate: bool) -> Result<(), ExecError> {
    let call = async {
        docker.ping().await?;
        if negotiate {
            docker.clone().negotiate_version().await?;
        }
        Ok::<(), DockerError>(())
    };
    match tokio::time::timeout(PING_TIMEOUT, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ExecError::EngineUnreachable(error.to_string())),
        Err(_) => Err(ExecError::EngineUnreachable(format!(
            "no answer within {}s",
            PING_TIMEOUT.as_secs()
        ))),
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

impl ExecError {
    /// Whether the fault is the worker's (its engine is away), not the
    /// job's: such a job is handed back rather than failed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ExecError::EngineUnreachable(_))
    }
}

impl DockerExecutor {
    /// An executor on the local engine (`DOCKER_HOST` or the default
    /// socket) for `worker_id` of the store `store_id`. Asks the engine once
    /// (at most [`PING_TIMEOUT`]); an engine that is away is no error: a
    /// watcher keeps asking, and image jobs are claimed once it answers.
    pub async fn connect(
        store_id: &str,
        worker_id: &str,
        limits: Limits,
    ) -> Result<Self, ExecError> {
        limits.validate()?;
        let engine = Engine::default();
        let mut logged = None;
        engine.check(worker_id, &mut logged).await;
        let watcher = tokio::spawn(engine.clone().watch(worker_id.to_string(), logged));
        Ok(DockerExecutor {
            engine,
            watcher,
            store_id: store_id.to_string(),
            worker_id: worker_id.to_string(),
            limits,
            containers: Arc::new(Mutex::new(BTreeMap::new())),
            removals: tokio::task::JoinSet::new(),
        })
    }

    /// The engine, for reconciliation.
    pub fn engine_handle(&self) -> Engine {
        self.engine.clone()
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
            // Not attached and no terminal (the API's defaults): the output
            // is read from the container's logs once it exits.
            host_config: Some(HostConfig {
                // An init as PID 1 forwards TERM to the job and reaps its children.
                init: Some(true),
                // The API's default, stated: a job never runs privileged.
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

/// How waiting for a container ended.
enum Waited {
    /// It exited with this code.
    Exited(i64),
    /// It is gone (removed behind our back): its exit status is unknown.
    Gone,
    /// The machine is done with this run: nobody wants its end any more.
    Released,
}

/// Whether `lease` is still the run the executor keeps for its job.
fn still_kept(containers: &Containers, lease: Lease) -> bool {
    containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&lease.job)
        .is_some_and(|(token, _)| *token == lease.token)
}

/// Wait for `container` to exit. A wait stream that breaks (the engine
/// restarted or went away) proves nothing about the container: look at it
/// once the engine answers, and wait again while it still runs.
async fn wait_exit(
    docker: &Docker,
    container: &str,
    lease: Lease,
    containers: &Containers,
    engine: &Engine,
) -> Waited {
    let mut retry = RETRY_FIRST;
    loop {
        let mut wait = docker.wait_container(container, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(response)) => return Waited::Exited(response.status_code),
            Some(Err(DockerError::DockerContainerWaitError { code, .. })) => {
                return Waited::Exited(code)
            }
            Some(Err(error)) => {
                tracing::warn!(job_id = %lease.job, %error, "lost the wait on the container; looking at it again");
            }
            None => {
                tracing::warn!(job_id = %lease.job, "the wait on the container ended without an answer; looking at it again");
            }
        }
        loop {
            if !still_kept(containers, lease) {
                return Waited::Released;
            }
            match docker
                .inspect_container(container, None::<InspectContainerOptions>)
                .await
            {
                Ok(info) => {
                    use bollard::models::ContainerStateStatusEnum as S;
                    let state = info.state.unwrap_or_default();
                    match (state.status, state.exit_code) {
                        (Some(S::EXITED | S::DEAD), Some(code)) => return Waited::Exited(code),
                        // Still running (or paused, restarting): wait again.
                        _ => break,
                    }
                }
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Waited::Gone,
                Err(_) => {
                    engine.lost();
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
        // A stream that breaks at once must not spin.
        tokio::time::sleep(RETRY_FIRST).await;
    }
}

/// Report a start that failed; a fault of the engine's hands the job back.
async fn start_failed(
    events: &mpsc::Sender<ExecEvent>,
    engine: &Engine,
    lease: Lease,
    error: ExecError,
) {
    let transient = error.is_transient();
    if transient {
        engine.lost();
    }
    let error = error.to_string();
    let _ = events
        .send(ExecEvent::StartFailed {
            lease,
            error,
            transient,
        })
        .await;
}

/// The name of the container that runs claim `token` of job `job` for the
/// store `store_id` (its instance id): unique per claim, and readable by an
/// operator who looks at `docker ps`.
pub fn container_name(store_id: &str, job: JobId, token: i64) -> String {
    let short: String = store_id.chars().take(12).collect();
    format!("dockhand-{short}-{job}-{token}")
}

async fn run_container(
    docker: Docker,
    engine: Engine,
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
    let name = container_name(&store_id, id, job.lease.token.0);
    let options = CreateContainerOptions {
        name: Some(name),
        ..Default::default()
    };
    let container = match docker.create_container(Some(options), body).await {
        Ok(created) => created.id,
        Err(error) => {
            return start_failed(&events, &engine, lease, describe(error, &image)).await;
        }
    };
    containers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, (lease.token, container.clone()));
    if let Err(error) = docker.start_container(&container, None).await {
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
        return start_failed(&events, &engine, lease, describe(error, &image)).await;
    }
    let _ = events.send(ExecEvent::Started { lease }).await;
    let code = match wait_exit(&docker, &container, lease, &containers, &engine).await {
        Waited::Exited(code) => Some(code),
        Waited::Gone => None,
        Waited::Released => return,
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
            tail.push(b"\n[dockhand] the container was removed before it was seen to exit; exit status unknown\n");
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
        let Some(docker) = self.engine.client() else {
            let (engine, lease) = (self.engine.clone(), job.lease);
            let error = ExecError::EngineUnreachable("no connection yet".into());
            tokio::spawn(async move { start_failed(&events, &engine, lease, error).await });
            return;
        };
        tokio::spawn(run_container(
            docker,
            self.engine.clone(),
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
        let Some(docker) = self.engine.client() else {
            return;
        };
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
        let Some(docker) = self.engine.client() else {
            return;
        };
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

    fn engine(&self) -> Option<EngineState> {
        Some(if self.engine.is_up() {
            EngineState::Reachable
        } else {
            EngineState::Unreachable
        })
    }

    fn kill_all(&mut self) -> impl std::future::Future<Output = ()> + Send {
        self.watcher.abort();
        let containers: Vec<String> = std::mem::take(&mut *self.containers())
            .into_values()
            .map(|(_, container)| container)
            .collect();
        let docker = self.engine.client();
        let mut removals = std::mem::take(&mut self.removals);
        async move {
            let cleanup = async {
                if let Some(docker) = docker {
                    for container in containers {
                        kill_and_remove(&docker, &container).await;
                    }
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

impl Drop for DockerExecutor {
    fn drop(&mut self) {
        self.watcher.abort();
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

    #[test]
    fn limits_docker_would_not_enforce_are_refused() {
        let limits = Limits {
            memory_bytes: 512 << 20,
            cpu_millis: 1000,
            pids: 512,
        };
        assert!(limits.validate().is_ok());
        // Zero is "no limit" to the engine: a library user's typo must not
        // run hostile code unconfined.
        for zero in [
            Limits {
                memory_bytes: 0,
                ..limits
            },
            Limits {
                cpu_millis: 0,
                ..limits
            },
            Limits { pids: 0, ..limits },
        ] {
            assert!(
                matches!(zero.validate(), Err(ExecError::InvalidLimits(_))),
                "{zero:?}"
            );
        }
    }
}
