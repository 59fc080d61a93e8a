//! The worker itself as a container under the real termination contract:
//! `docker stop -t N` sends TERM to PID 1, waits N seconds, then KILLs — what
//! Kubernetes does with `terminationGracePeriodSeconds`. The image is built
//! locally (nothing can be pulled): the test binary, stripped, the shared
//! libraries `ldd` names, and a static busybox for the jobs' shell. Replicas
//! run with `--network host` against the test PostgreSQL.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use dockhand::job::{JobSpec, JobState, NewJob};
use dockhand::store::{AnyStore, JobFilter, Store};
use support::{eventually, Db};

const LONG: Duration = Duration::from_secs(60);

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run docker {args:?}: {e}"))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Containers and the image of one test; removed however the test ends.
struct Cleanup {
    image: String,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = docker(&["rm", "-f", name]);
        }
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

/// Build `FROM scratch` + the worker binary + its libraries + busybox.
fn build_worker_image(tag: &str) {
    let ctx = tempfile::tempdir().expect("temp dir");
    let root = ctx.path().join("rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("rootfs");
    let strip = Command::new("strip")
        .arg("-o")
        .arg(root.join("dockhand"))
        .arg(support::bin())
        .status()
        .expect("run strip");
    assert!(strip.success(), "strip failed");
    let ldd = Command::new("ldd")
        .arg(support::bin())
        .output()
        .expect("run ldd");
    assert!(ldd.status.success(), "ldd failed");
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let Some(path) = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(Path::new)
        else {
            continue; // linux-vdso has no file
        };
        let target = root.join(path.strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(target.parent().expect("parent")).expect("lib dir");
        std::fs::copy(path, &target).unwrap_or_else(|e| panic!("copy {path:?}: {e}"));
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (scripts/test installs busybox-static)");
    for applet in ["sh", "sleep", "echo", "touch", "cat", "ps"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("symlink");
    }
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/dockhand\"]\n",
    )
    .expect("Dockerfile");
    docker_ok(&["build", "-q", "-t", tag, &ctx.path().display().to_string()]);
}

struct Setup {
    db: Db,
    store: AnyStore,
    cleanup: Cleanup,
    name: String,
}

async fn setup(name: &str) -> Setup {
    let tag = format!("dockhand-worker-test:{name}-{}", std::process::id());
    build_worker_image(&tag);
    let db = Db::postgres(name).await;
    let store = db.store().await;
    store.migrate().await.expect("migrate");
    Setup {
        db,
        store,
        cleanup: Cleanup {
            image: tag,
            containers: Vec::new(),
        },
        name: name.to_string(),
    }
}

impl Setup {
    /// Start a replica; its worker id starts with `replica-<suffix>-`.
    fn replica(&mut self, suffix: &str) -> String {
        let container = format!("dht-{}-{}-{suffix}", self.name, std::process::id());
        let _ = docker(&["rm", "-f", &container]);
        let effects = format!("{}:/effects", self.db.dir.path().display());
        let hostname = format!("replica-{suffix}");
        let database = format!("DATABASE_URL={}", self.db.url);
        let args = [
            "run",
            "-d",
            "--name",
            &container,
            "--hostname",
            &hostname,
            "--network",
            "host",
            "-e",
            &database,
            "-v",
            &effects,
            &self.cleanup.image,
            "worker",
            "--concurrency",
            "2",
            "--lease",
            "3s",
            "--shutdown-timeout",
            "3s",
            "--kill-grace",
            "1s",
            "--poll-interval",
            "250ms",
        ];
        docker_ok(&args);
        self.cleanup.containers.push(container.clone());
        container
    }

    async fn enqueue(&self, scripts: &[&str]) {
        let jobs: Vec<NewJob> = scripts
            .iter()
            .map(|s| {
                let mut job = NewJob::new(vec!["sh".into(), "-c".into(), s.to_string()]);
                job.spec = JobSpec {
                    env: BTreeMap::from([("TEST_RUN".to_string(), self.cleanup.image.clone())]),
                    ..std::mem::take(&mut job.spec)
                };
                job
            })
            .collect();
        self.store.enqueue_many(&jobs).await.expect("enqueue");
    }

    async fn events(&self) -> Vec<(i64, String, Option<String>)> {
        let AnyStore::Postgres(pg) = &self.store else {
            panic!("postgres store expected")
        };
        sqlx::query_as("SELECT job_id, kind, worker_id FROM job_events ORDER BY id")
            .fetch_all(pg.pool())
            .await
            .expect("job_events")
    }

    /// Jobs leased right now.
    async fn running(&self) -> Vec<dockhand::store::Job> {
        self.store
            .list(&JobFilter {
                state: Some(JobState::Running),
                limit: Some(1000),
                ..JobFilter::default()
            })
            .await
            .expect("list running jobs")
    }

    /// Replicas (by host name) that hold a claim right now.
    async fn replicas_running_jobs(&self) -> BTreeSet<String> {
        self.running()
            .await
            .into_iter()
            .filter_map(|j| j.worker_id)
            .filter_map(|w| w.split('-').nth(1).map(str::to_string))
            .collect()
    }

    /// Every job in a final state (a host worker finishes what the replicas left).
    async fn all_succeeded(&self) -> Vec<dockhand::store::Job> {
        eventually("every job succeeded", LONG, || async {
            let jobs = self
                .store
                .list(&JobFilter {
                    limit: Some(1000),
                    ..JobFilter::default()
                })
                .await
                .ok()?;
            jobs.iter()
                .all(|j| j.state == JobState::Succeeded)
                .then_some(jobs)
        })
        .await
    }

    /// Every job's side effect happened, and only once.
    fn assert_each_effect_once(&self, jobs: &[dockhand::store::Job]) {
        let effects = self.effects();
        for job in jobs {
            assert_eq!(
                effects.get(&job.id.0),
                Some(&1),
                "job {} side effects",
                job.id
            );
        }
    }

    fn effects(&self) -> BTreeMap<i64, usize> {
        let text = std::fs::read_to_string(self.db.path("effects.log")).unwrap_or_default();
        let mut runs = BTreeMap::new();
        for line in text.lines() {
            let id: i64 = line
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad effect {line:?}"));
            *runs.entry(id).or_insert(0) += 1;
        }
        runs
    }
}

fn inspect(container: &str, format: &str) -> String {
    docker_ok(&["inspect", "-f", format, container])
}

/// `docker stop -t N` on several containers at once, as an orchestrator does.
fn stop_all(containers: &[String], grace: u32) -> Duration {
    let start = Instant::now();
    let handles: Vec<_> = containers
        .iter()
        .map(|c| {
            let c = c.clone();
            std::thread::spawn(move || docker_ok(&["stop", "-t", &grace.to_string(), &c]))
        })
        .collect();
    for handle in handles {
        handle.join().expect("docker stop thread");
    }
    start.elapsed()
}

/// Zombie children of a container's PID 1, seen from the host.
fn zombies_under(container: &str) -> Vec<String> {
    let init = inspect(container, "{{.State.Pid}}");
    let mut zombies = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&init.as_str()) {
            zombies.push(stat.trim().to_string());
        }
    }
    zombies
}

const EFFECT: &str = "echo $DOCKHAND_JOB_ID >> /effects/effects.log";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_with_enough_time_lets_each_replica_exit_on_its_own() {
    let mut s = setup("stopok").await;
    let a = s.replica("a");
    let b = s.replica("b");
    // Jobs that leave background processes behind: orphans reparent to PID 1.
    let orphaner = format!("for i in 1 2 3; do sleep 0.3 & done; {EFFECT}");
    s.enqueue(&[&orphaner, &orphaner, &orphaner, &orphaner])
        .await;
    s.all_succeeded().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for c in [&a, &b] {
        let zombies = zombies_under(c);
        assert!(zombies.is_empty(), "PID 1 of {c} left zombies: {zombies:?}");
    }
    // Signals reach the worker through PID 1.
    docker_ok(&["kill", "-s", "USR1", &a]);
    eventually("a status line in the logs", LONG, || async {
        let out = docker(&["logs", &a]);
        String::from_utf8_lossy(&out.stderr)
            .contains("dockhand status:")
            .then_some(())
    })
    .await;

    // Two slow jobs that finish within the shutdown timeout, and two that
    // ignore TERM and outlast it: with concurrency 2 each replica holds two.
    let slow = format!("sleep 1.5; {EFFECT}");
    let stuck = format!("trap '' TERM; sleep 8; {EFFECT}");
    s.enqueue(&[&slow, &stuck, &slow, &stuck]).await;
    eventually("both replicas running jobs", LONG, || async {
        (s.replicas_running_jobs().await.len() == 2).then_some(())
    })
    .await;
    // More than shutdown timeout + kill grace + store grace: each replica exits on its own.
    let took = stop_all(&[a.clone(), b.clone()], 20);
    assert!(took < Duration::from_secs(20), "docker stop took {took:?}");
    let events = s.events().await;
    for (c, host) in [(&a, "replica-a-"), (&b, "replica-b-")] {
        let code: i32 = inspect(c, "{{.State.ExitCode}}")
            .parse()
            .expect("exit code");
        let interrupted = events.iter().any(|(_, kind, w)| {
            kind == "interrupted" && w.as_deref().is_some_and(|w| w.starts_with(host))
        });
        let logs = String::from_utf8_lossy(&docker(&["logs", c]).stderr).to_string();
        assert_eq!(
            code,
            if interrupted { 75 } else { 0 },
            "{c} exit code (interrupted a job: {interrupted}):\n{logs}"
        );
        assert!(
            logs.contains("shutdown trace:"),
            "{c} printed no shutdown trace:\n{logs}"
        );
    }
    // Everything the replicas held was recorded before they exited.
    let running = s.running().await;
    assert!(
        running.is_empty(),
        "jobs still leased after a clean stop: {running:?}"
    );
    let interrupted = events.iter().filter(|(_, k, _)| k == "interrupted").count();
    assert!(
        interrupted >= 1,
        "the jobs ignoring TERM were interrupted and requeued"
    );

    // Nothing lost: a fresh replica finishes the requeued jobs, each side effect once.
    let c = s.replica("c");
    let jobs = s.all_succeeded().await;
    stop_all(std::slice::from_ref(&c), 20);
    assert_eq!(
        inspect(&c, "{{.State.ExitCode}}"),
        "0",
        "idle replica c exits 0"
    );
    s.assert_each_effect_once(&jobs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_too_short_kills_and_the_lease_recovers_the_jobs() {
    let mut s = setup("stopshort").await;
    let a = s.replica("a");
    let stuck = format!("trap '' TERM; sleep 4; {EFFECT}");
    s.enqueue(&[&stuck, &stuck]).await;
    eventually("replica a running both jobs", LONG, || async {
        (s.running().await.len() == 2).then_some(())
    })
    .await;
    let b = s.replica("b");
    // One second is far less than shutdown timeout + kill grace: the engine KILLs.
    stop_all(std::slice::from_ref(&a), 1);
    let code: i32 = inspect(&a, "{{.State.ExitCode}}")
        .parse()
        .expect("exit code");
    assert_eq!(code, 137, "replica a was killed by the engine");
    // Its jobs died with its PID namespace; replica b reaps the leases and reruns them.
    let needle = format!("TEST_RUN={}", s.cleanup.image);
    let jobs = s.all_succeeded().await;
    let events = s.events().await;
    for job in &jobs {
        assert!(
            events.iter().any(|(id, kind, w)| *id == job.id.0
                && kind == "lease-expired"
                && w.as_deref().is_some_and(|w| w.starts_with("replica-a-"))),
            "job {} was recovered through its lease: {events:?}",
            job.id
        );
        assert!(
            events.iter().any(|(id, kind, w)| *id == job.id.0
                && kind == "succeeded"
                && w.as_deref().is_some_and(|w| w.starts_with("replica-b-"))),
            "job {} finished on replica b",
            job.id
        );
    }
    // Killed before their side effect: each ran to the end exactly once.
    s.assert_each_effect_once(&jobs);
    stop_all(std::slice::from_ref(&b), 20);
    assert_eq!(
        inspect(&b, "{{.State.ExitCode}}"),
        "0",
        "idle replica b exits 0"
    );
    let left = support::processes_with_env(&needle);
    assert!(
        left.is_empty(),
        "job processes outlived the replicas: {left:?}"
    );
}
