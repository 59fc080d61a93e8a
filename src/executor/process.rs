//! Runs a job as a local process in its own session, with its output
//! captured (the last [`crate::job::OUTPUT_LIMIT`] bytes).
//!
//! With a shim (the `dockhand` binary sets one), the job's leader is
//! [`super::shim`]: every descendant of the job, also those that leave its
//! process group, is killed when the job ends or is stopped. Without one
//! (an embedding application's plain executor), signals go to the job's
//! process group.
//!
//! With a job user (a root worker's default is `nobody`), the job runs
//! under that uid and gid with no supplementary groups and
//! `no_new_privs`: it cannot read the worker's `/proc` entries, its open
//! files or its memory, and cannot regain privileges through a setuid
//! program.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use super::shim::{self, SHIM_ARG};
use super::watchdog::Watchdog;
use super::{ExecEvent, Executor, OutputTail};
use crate::job::JobSignal;
use crate::job::{ClaimedJob, Exit, JobId};

/// Variables passed from the worker's environment to jobs; nothing else is,
/// so the worker's secrets (e.g. `DATABASE_URL`) never reach a job. (`HOME`
/// and `USER` are the job user's when the job runs as another user.)
const PASSED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"];

/// How long to keep reading output after the job's process exited (its
/// leftover children were killed, but a pipe may still hold data).
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// How often a worker that runs shims looks for orphans re-parented to it
/// (a shim killed from outside leaves its job's processes to its parent).
const ORPHAN_SWEEP: Duration = Duration::from_secs(1);

/// The user jobs run as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobUser {
    /// User name (for `USER`).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Home directory (for `HOME`).
    pub home: String,
}

impl JobUser {
    /// `USER` or `USER:GROUP`, by name or number, from the system's user
    /// database. `nobody` is known even where no passwd file exists (a
    /// `FROM scratch` image): 65534:65534.
    pub fn resolve(spec: &str) -> Result<JobUser, String> {
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        if user.is_empty() || group == Some("") {
            return Err(format!("invalid job user {spec:?}; use USER or USER:GROUP"));
        }
        let mut found = lookup_user(user).or_else(|| {
            (user == "nobody").then(|| JobUser {
                name: "nobody".into(),
                uid: 65534,
                gid: 65534,
                home: "/nonexistent".into(),
            })
        });
        if found.is_none() {
            if let Ok(uid) = user.parse::<u32>() {
                found = Some(JobUser {
                    name: user.to_string(),
                    uid,
                    gid: uid,
                    home: "/".into(),
                });
            }
        }
        let mut job_user = found.ok_or_else(|| format!("unknown job user {user:?}"))?;
        if let Some(group) = group {
            job_user.gid = lookup_group(group)
                .or_else(|| group.parse().ok())
                .ok_or_else(|| format!("unknown job group {group:?}"))?;
        }
        Ok(job_user)
    }

    /// Whether this is the superuser.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

fn lookup_user(name: &str) -> Option<JobUser> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; getpwnam_r writes
    // into `pwd` and `buf` only, and we read them while `buf` lives.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() {
            return None;
        }
        let home = if pwd.pw_dir.is_null() {
            "/".to_string()
        } else {
            std::ffi::CStr::from_ptr(pwd.pw_dir)
                .to_string_lossy()
                .into_owned()
        };
        Some(JobUser {
            name: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        })
    }
}

fn lookup_group(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: as in `lookup_user`.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        );
        (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
    }
}

/// The local-process executor.
#[derive(Debug)]
pub struct ProcessExecutor {
    /// The leader (shim or job) of every live job: its pid is its process
    /// group. Spawning holds this lock, so the orphan sweep never sees a
    /// job that is not listed yet.
    leaders: Arc<Mutex<BTreeMap<JobId, i32>>>,
    watchdog: Option<Watchdog>,
    /// The `dockhand` binary, run as each job's shim.
    shim: Option<PathBuf>,
    /// Who jobs run as (`None`: as the worker).
    user: Option<JobUser>,
    sweeping: bool,
}

impl ProcessExecutor {
    /// An executor; with a watchdog, job groups die with the worker.
    pub fn new(watchdog: Option<Watchdog>) -> Self {
        ProcessExecutor {
            leaders: Arc::new(Mutex::new(BTreeMap::new())),
            watchdog,
            shim: None,
            user: None,
            sweeping: false,
        }
    }

    /// Run every job under the shim at `binary` (the `dockhand` binary):
    /// all of a job's descendants die with it. The worker also becomes a
    /// child subreaper, so that if a shim is killed from outside, its job's
    /// processes come to the worker, which kills them.
    pub fn with_shim(mut self, binary: PathBuf) -> Self {
        // SAFETY: plain prctl on this process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        self.shim = Some(binary);
        self
    }

    /// Run jobs as `user` (the worker must be root to switch).
    pub fn with_user(mut self, user: JobUser) -> Self {
        self.user = Some(user);
        self
    }

    fn leaders(&self) -> std::sync::MutexGuard<'_, BTreeMap<JobId, i32>> {
        self.leaders.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn command(&self, job: &ClaimedJob) -> Result<Command, String> {
        let spec = &job.spec;
        let program = resolve_program(&spec.command[0], spec.env.get("PATH"))?;
        let mut cmd = match &self.shim {
            Some(shim) => {
                let mut cmd = Command::new(shim);
                cmd.arg(SHIM_ARG).arg(&program);
                cmd
            }
            None => Command::new(&program),
        };
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
        if let Some(user) = &self.user {
            cmd.env("HOME", &user.home).env("USER", &user.name);
        }
        cmd.envs(&spec.env)
            .env("DOCKHAND_JOB_ID", job.lease.job.to_string())
            .env("DOCKHAND_ATTEMPT", (job.attempts + 1).to_string());
        let switch = self
            .user
            .as_ref()
            .filter(|user| !user.is_root())
            .map(|user| (user.uid, user.gid));
        // SAFETY: between fork and exec only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || {
                // Own session and process group: signals reach the whole job,
                // and a Ctrl-C at the worker's terminal does not.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Belt and braces with the watchdog: the direct child dies with
                // the forking thread's process.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if let Some((uid, gid)) = switch {
                    // Groups first: after setuid there is no going back.
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    // No setuid program can lift the job out of reach.
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                }
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// Kill and reap every child of the worker that is no job's leader (nor
    /// the watchdog): orphans of a shim that was killed from outside.
    fn start_orphan_sweep(&mut self) {
        if self.shim.is_none() || self.sweeping {
            return;
        }
        self.sweeping = true;
        let leaders = self.leaders.clone();
        let watchdog = self.watchdog.as_ref().map(Watchdog::pid);
        tokio::spawn(async move {
            let me = std::process::id() as i32;
            loop {
                tokio::time::sleep(ORPHAN_SWEEP).await;
                let known = leaders.lock().unwrap_or_else(|p| p.into_inner());
                for pid in shim::children_of(me) {
                    if Some(pid) == watchdog || known.values().any(|leader| *leader == pid) {
                        continue;
                    }
                    tracing::warn!(pid, "killing a process left by a job whose shim died");
                    // SAFETY: plain syscalls on a child of this process.
                    unsafe {
                        libc::kill(-pid, libc::SIGKILL);
                        libc::kill(pid, libc::SIGKILL);
                        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
                    }
                }
            }
        });
    }
}

/// The program to run: a path as given, or the first match on `PATH`, so a
/// job whose command does not exist fails to start with a clear error.
fn resolve_program(program: &str, job_path: Option<&String>) -> Result<PathBuf, String> {
    let runnable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if runnable(&path) {
            Ok(path)
        } else {
            Err(format!("{program}: no such executable"))
        };
    }
    let path = job_path
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| runnable(candidate))
        .ok_or_else(|| format!("{program}: not found on PATH"))
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
        self.start_orphan_sweep();
        let lease = job.lease;
        let id = lease.job;
        let spawned = self.command(&job).and_then(|mut cmd| {
            // Listed under the same lock as spawned: see `leaders`.
            let mut leaders = self.leaders.lock().unwrap_or_else(|p| p.into_inner());
            let child = cmd
                .spawn()
                .map_err(|e| format!("{}: {e}", job.spec.command[0]))?;
            if let Some(pid) = child.id() {
                leaders.insert(id, pid as i32);
            }
            Ok(child)
        });
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
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
            }
        };
        // setsid made the child a group leader: its pid is the group id.
        let pgid = child.id().map(|pid| pid as i32).unwrap_or(0);
        if pgid > 0 {
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
        let leaders = self.leaders.clone();
        let watchdog = self.watchdog.clone();
        tokio::spawn(async move {
            let _ = events.send(ExecEvent::Started { lease }).await;
            let status = child.wait().await;
            // Whatever the job left behind in its group goes with it; this also
            // closes pipes that leftover children would hold open.
            if pgid > 0 {
                // SAFETY: plain syscall on a group we created.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                leaders
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
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
        let Some(leader) = self.leaders().get(&job).copied() else {
            return;
        };
        // SAFETY: plain syscalls on a process and group we created.
        unsafe {
            match (signal, self.shim.is_some()) {
                // The shim forwards TERM to the command's group.
                (JobSignal::Term, _) => libc::kill(-leader, libc::SIGTERM),
                // The shim kills every descendant, wherever it went.
                (JobSignal::Kill, true) => libc::kill(leader, shim::KILL_ALL),
                (JobSignal::Kill, false) => libc::kill(-leader, libc::SIGKILL),
            };
        }
    }

    fn kill_all(&mut self) -> impl std::future::Future<Output = ()> + Send {
        let leaders: Vec<i32> = self.leaders().values().copied().collect();
        let shim = self.shim.is_some();
        async move {
            for leader in &leaders {
                // SAFETY: plain syscalls on processes and groups we created.
                unsafe {
                    if shim {
                        libc::kill(*leader, shim::KILL_ALL);
                    } else {
                        libc::kill(-*leader, libc::SIGKILL);
                    }
                }
            }
            if shim && !leaders.is_empty() {
                // Give the shims a moment to kill their trees, then make sure.
                tokio::time::sleep(Duration::from_millis(200)).await;
                for leader in &leaders {
                    // SAFETY: as above.
                    unsafe { libc::kill(-*leader, libc::SIGKILL) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_resolve_by_name_number_and_group() {
        let root = JobUser::resolve("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(root.is_root());
        let nobody = JobUser::resolve("nobody").unwrap();
        assert_eq!(nobody.uid, 65534);
        let numeric = JobUser::resolve("12345:0").unwrap();
        assert_eq!((numeric.uid, numeric.gid), (12345, 0));
        assert!(JobUser::resolve("no-such-user-here").is_err());
        assert!(JobUser::resolve("root:").is_err());
        assert!(JobUser::resolve("root:no-such-group-here").is_err());
    }

    #[test]
    fn programs_resolve_on_path() {
        assert!(resolve_program("sh", None).is_ok());
        assert!(resolve_program("/bin/sh", None).is_ok());
        assert!(resolve_program("no-such-program-here", None).is_err());
        assert!(resolve_program("/no/such/program", None).is_err());
        assert!(resolve_program("sh", Some(&"/nowhere".to_string())).is_err());
    }

    #[test]
    fn only_executable_files_are_programs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let script = file("script", 0o755);
        let group_only = file("group-only", 0o710);
        file("plain", 0o644);
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let path = dir.path().display().to_string();
        assert_eq!(resolve_program("script", Some(&path)), Ok(script));
        assert_eq!(resolve_program("group-only", Some(&path)), Ok(group_only));
        // A file without an execute bit, or a directory (whose bits are
        // set), is no program: the job fails to start with a clear error
        // instead of with the kernel's.
        for name in ["plain", "folder"] {
            let full = dir.path().join(name).display().to_string();
            assert!(resolve_program(name, Some(&path)).is_err(), "{name}");
            assert!(resolve_program(&full, None).is_err(), "{full}");
        }
    }
}
