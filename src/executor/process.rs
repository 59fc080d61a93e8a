//! Runs a job as a local process in its own session and process group, with
//! its output captured (the last [`crate::job::OUTPUT_LIMIT`] bytes) and every signal sent
//! to the whole group.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::watchdog::Watchdog;
use super::{ExecEvent, Executor, OutputTail};
use crate::job::JobSignal;
use crate::job::{ClaimedJob, Exit, JobId};

/// Variables passed from the worker's environment to jobs; nothing else is,
/// so the worker's secrets (e.g. `DATABASE_URL`) never reach a job.
const PASSED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"];

/// How long to keep reading output after the job's process exited (its
/// leftover children were killed, but a pipe may still hold data).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// The local-process executor.
#[derive(Debug)]
pub struct ProcessExecutor {
    /// Process group of every live job.
    groups: Arc<Mutex<BTreeMap<JobId, i32>>>,
    watchdog: Option<Watchdog>,
}

impl ProcessExecutor {
    /// An executor; with a watchdog, job groups die with the worker.
    pub fn new(watchdog: Option<Watchdog>) -> Self {
        ProcessExecutor {
            groups: Arc::new(Mutex::new(BTreeMap::new())),
            watchdog,
        }
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, i32>> {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn command(job: &ClaimedJob) -> Command {
    let spec = &job.spec;
    let mut cmd = Command::new(&spec.command[0]);
    cmd.args(&spec.command[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(false);
    for key in PASSED_ENV {
        if let Ok(value) = std::env::var(key) {
            cmd.env(key, value);
        }
    }
    cmd.envs(&spec.env)
        .env("DOCKHAND_JOB_ID", job.lease.job.to_string())
        .env("DOCKHAND_ATTEMPT", (job.attempts + 1).to_string());
    // SAFETY: between fork and exec only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(|| {
            // Own session and process group: signals reach the whole job,
            // and a Ctrl-C at the worker's terminal does not.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Belt and braces with the watchdog: the direct child dies with
            // the forking thread's process.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
    cmd
}

async fn pump(mut pipe: impl AsyncRead + Unpin, tail: Arc<Mutex<OutputTail>>) {
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(&buf[..n]),
        }
    }
}

impl Executor for ProcessExecutor {
    fn start(&mut self, job: ClaimedJob, events: mpsc::Sender<ExecEvent>) {
        let lease = job.lease;
        let id = lease.job;
        let mut child = match command(&job).spawn() {
            Ok(child) => child,
            Err(error) => {
                let error = format!("{}: {error}", job.spec.command[0]);
                tokio::spawn(async move {
                    let _ = events.send(ExecEvent::StartFailed { lease, error }).await;
                });
                return;
            }
        };
        // setsid made the child a group leader: its pid is the group id.
        let pgid = child.id().map(|pid| pid as i32).unwrap_or(0);
        if pgid > 0 {
            self.groups().insert(id, pgid);
            if let Some(watchdog) = &self.watchdog {
                watchdog.guard(pgid);
            }
        }
        let tail = Arc::new(Mutex::new(OutputTail::default()));
        let stdout = child
            .stdout
            .take()
            .map(|p| tokio::spawn(pump(p, tail.clone())));
        let stderr = child
            .stderr
            .take()
            .map(|p| tokio::spawn(pump(p, tail.clone())));
        let groups = self.groups.clone();
        let watchdog = self.watchdog.clone();
        tokio::spawn(async move {
            let _ = events.send(ExecEvent::Started { lease }).await;
            let status = child.wait().await;
            // Whatever the job left behind in its group goes with it; this also
            // closes pipes that leftover children would hold open.
            if pgid > 0 {
                // SAFETY: plain syscall on a group we created.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                groups.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                if let Some(watchdog) = &watchdog {
                    watchdog.release(pgid);
                }
            }
            for reader in [stdout, stderr].into_iter().flatten() {
                let _ = tokio::time::timeout(OUTPUT_DRAIN, reader).await;
            }
            let exit = match status {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => Exit::Code(code),
                    (None, Some(signal)) => Exit::Signal(signal),
                    (None, None) => Exit::Code(-1),
                },
                Err(_) => Exit::Code(-1),
            };
            let output = tail.lock().unwrap_or_else(|p| p.into_inner()).bytes();
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
        let Some(pgid) = self.groups().get(&job).copied() else {
            return;
        };
        let sig = match signal {
            JobSignal::Term => libc::SIGTERM,
            JobSignal::Kill => libc::SIGKILL,
        };
        // SAFETY: plain syscall on a group we created.
        unsafe { libc::kill(-pgid, sig) };
    }

    fn kill_all(&mut self) -> impl std::future::Future<Output = ()> + Send {
        for pgid in self.groups().values() {
            // SAFETY: plain syscall on groups we created.
            unsafe { libc::kill(-*pgid, libc::SIGKILL) };
        }
        std::future::ready(())
    }
}
