//! Issue 15, items 1 and 2, on the real binary: a job is other people's code.
//! It must not find the database password anywhere the worker keeps it, and
//! none of its descendants may outlive it, however they leave its process
//! group.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dockhand::job::JobState;
use dockhand::store::{AnyStore, Store};
use support::{bin, eventually, processes_with_env, wait_state, Db};

const LONG: Duration = Duration::from_secs(30);

/// What a hostile job tries: every process's environment and command line,
/// and the worker's (its shim's parent's) memory, open files and maps.
const SNOOP: &str = r#"
W=$(cut -d' ' -f4 /proc/$PPID/stat)
echo "uid=$(id -u) gid=$(id -g) groups=$(id -G) worker=$W"
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do tr '\0' ' ' 2>/dev/null < "$f"; echo; done
echo "R$((40+2)) $(cat /proc/$W/environ 2>&1 | tr '\0' ' ')"
echo "--- worker mem"; dd if=/proc/$W/mem bs=1 count=16 skip=4194304 2>&1 | tail -1
echo "--- worker fds"; ls -l /proc/$W/fd 2>&1 | head -3
for fd in /proc/$W/fd/*; do head -c 65536 "$fd" 2>/dev/null; done
echo "--- worker maps"; head -1 /proc/$W/maps 2>&1
exit 0
"#;

/// A PostgreSQL database owned by a role whose password appears nowhere
/// else: returns the database (dropped with the role when it goes), the
/// URL with the password, and the password.
async fn database_with_a_secret(name: &str) -> (support::PgDatabase, String, String) {
    let mut database = support::fresh_postgres_database(name).await;
    let url = database.url.clone();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let secret = format!("Pw{}x{nanos}", std::process::id());
    let role = format!("job_{}_{}", name, std::process::id());
    let admin = dockhand::store::PostgresStore::connect_with(&url, 1)
        .await
        .unwrap();
    let db = database.name().to_string();
    database.drop_role_after(&role);
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{secret}'"),
        format!("ALTER DATABASE {db} OWNER TO {role}"),
        format!("GRANT ALL ON SCHEMA public TO {role}"),
    ] {
        sqlx::query(&statement).execute(admin.pool()).await.unwrap();
    }
    admin.pool().close().await;
    let server = url.rsplit_once('@').unwrap().1;
    (
        database,
        format!("postgres://{role}:{secret}@{server}"),
        secret,
    )
}

fn output(url: &str, id: i64) -> String {
    let out = Command::new(bin())
        .args(["--database-url", url, "logs", &id.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn assert_snooping_finds_nothing(url: &str, id: i64, secret: &str) {
    let store = AnyStore::open(url).await.unwrap();
    let job = eventually("the snooping job to finish", LONG, || {
        let store = store.clone();
        async move {
            store
                .get(dockhand::job::JobId(id))
                .await
                .unwrap()
                .filter(|j| j.state.is_final())
        }
    })
    .await;
    let seen = output(url, id);
    assert_eq!(job.state, JobState::Succeeded, "{seen}");
    // Nobody's group alone: none of the worker's supplementary groups
    // (a `docker` group would open the engine's socket to the job).
    assert!(
        seen.contains("uid=65534 gid=65534 groups=65534 worker="),
        "the job runs as nobody, in nobody's group alone:\n{seen}"
    );
    assert!(
        !seen.contains(secret),
        "the job found the password:\n{seen}"
    );
    // "R42 ..." is printed only by the running script (its own command line,
    // dumped from /proc too, reads "R$((40+2))").
    let worker_environ = seen
        .lines()
        .find(|line| line.starts_with("R42 "))
        .unwrap_or_default();
    assert!(
        worker_environ.contains("Permission denied"),
        "the worker's environment is closed to the job: {worker_environ:?}\n{seen}"
    );
}

/// A root worker (the URL from a file, as a Kubernetes secret would give
/// it) runs the job as nobody: the job finds no password anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_workers_job_finds_no_password() {
    let (_database, url, secret) = database_with_a_secret("rootsnoop").await;
    let dir = support::job_dir();
    let url_file = dir.path().join("database-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let enqueue = Command::new(bin())
        .arg("--database-url-file")
        .arg(&url_file)
        .args(["enqueue", "--", "sh", "-c", SNOOP])
        .output()
        .unwrap();
    assert!(enqueue.status.success(), "{enqueue:?}");
    let id: i64 = String::from_utf8_lossy(&enqueue.stdout)
        .trim()
        .parse()
        .unwrap();
    let mut worker = Command::new(bin());
    worker
        .arg("--database-url-file")
        .arg(&url_file)
        .args(["worker", "--poll-interval", "100ms"])
        .current_dir(dir.path())
        .stderr(Stdio::null());
    // The worker holds supplementary groups (adm, disk), as a root
    // service's often do: its job must not.
    // SAFETY: setgroups is async-signal-safe; nothing else runs here.
    unsafe {
        worker.pre_exec(|| {
            let groups: [libc::gid_t; 2] = [4, 6];
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut worker = support::Worker::adopt(worker.spawn().unwrap());
    assert_snooping_finds_nothing(&url, id, &secret).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}

/// A worker running as an ordinary user (here nobody) runs the job as
/// itself: being non-dumpable, its /proc entries are still closed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_root_workers_job_finds_no_password() {
    let (_database, url, secret) = database_with_a_secret("usersnoop").await;
    let dir = support::job_dir();
    let enqueue = Command::new(bin())
        .env("DATABASE_URL", &url)
        .args(["enqueue", "--", "sh", "-c", SNOOP])
        .output()
        .unwrap();
    assert!(enqueue.status.success(), "{enqueue:?}");
    let id: i64 = String::from_utf8_lossy(&enqueue.stdout)
        .trim()
        .parse()
        .unwrap();
    let worker = Command::new(bin())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &url)
        .args(["worker", "--poll-interval", "100ms"])
        .current_dir(dir.path())
        .uid(65534)
        .gid(65534)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut worker = support::Worker::adopt(worker);
    assert_snooping_finds_nothing(&url, id, &secret).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}

/// The SQLite file holds every job's spec: a job running as nobody cannot
/// read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cannot_read_the_sqlite_file() {
    let db = Db::sqlite("sqlite_snoop").await;
    let file = db.url.trim_start_matches("sqlite://").to_string();
    let id = db.enqueue(
        &["--env", "API_TOKEN=t0p-s3cret"],
        &[
            "sh",
            "-c",
            &format!("cat {file} {file}-wal 2>&1 | head -c 300; true"),
        ],
    );
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Succeeded).await;
    let seen = String::from_utf8_lossy(&db.cli(&["logs", &id.to_string()]).stdout).into_owned();
    assert!(seen.contains("Permission denied"), "{seen}");
    assert!(!seen.contains("t0p-s3cret"), "{seen}");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}

/// The URL file: a missing or empty file is a configuration error (78) in
/// one line; it cannot be given together with --database-url; a worker with
/// a password on its command line says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_file_and_the_command_line_warning() {
    let dir = support::job_dir();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (file, needle) in [(&missing, "cannot read"), (&empty, "one URL")] {
        let out = Command::new(bin())
            .arg("--database-url-file")
            .arg(file)
            .arg("jobs")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
    let both = Command::new(bin())
        .args(["--database-url", "sqlite://x.db", "--database-url-file"])
        .arg(&empty)
        .arg("jobs")
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    // A worker with a password on its command line: warned, then it runs.
    let db = Db::postgres("cmdline_warning").await;
    let mut worker = db.worker(&[]);
    worker.wait_for_line("password is on the command line", LONG);
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}

/// A marker variable for this test's job processes (every descendant
/// inherits it).
fn marker(db: &Db) -> String {
    format!("DOCKHAND_TEST_MARK={}", db.dir.path().display())
}

/// A job whose descendants leave its process group: `setsid`, a double
/// fork, `setpgid` through a subshell in the background.
fn escaping_script(then: &str) -> String {
    format!(
        "setsid sleep 300 >/dev/null 2>&1 & \
         (setsid sh -c 'trap \"\" TERM; sleep 300' >/dev/null 2>&1 &) ; \
         (set -m; sleep 300 >/dev/null 2>&1 &) ; \
         sleep 0.3; {then}"
    )
}

async fn no_process_left(mark: &str, within: Duration) {
    let mark = mark.to_string();
    eventually("every descendant of the job to be gone", within, || {
        let left = processes_with_env(&mark);
        async move { left.is_empty().then_some(()) }
    })
    .await;
}

/// The job ends on its own: whatever it started goes with it.
async fn descendants_die_when_the_job_ends(db: Db) {
    let mark = marker(&db);
    let id = db.enqueue(&["--env", &mark], &["sh", "-c", &escaping_script("exit 0")]);
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Succeeded).await;
    no_process_left(&mark, Duration::from_secs(5)).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}

/// The job is stopped (shutdown timeout, then KILL): all of it dies, also
/// the descendant that left the group and ignores TERM.
async fn descendants_die_when_the_job_is_stopped(db: Db) {
    let mark = marker(&db);
    let id = db.enqueue(
        &["--env", &mark],
        &["sh", "-c", &escaping_script("trap '' TERM; sleep 300")],
    );
    let mut worker = db.worker(&[
        "--poll-interval",
        "100ms",
        "--shutdown-timeout",
        "500ms",
        "--kill-grace",
        "500ms",
    ]);
    wait_state(&db, id, JobState::Running).await;
    eventually("the escaped descendants", LONG, || {
        let found = processes_with_env(&mark).len();
        async move { (found >= 4).then_some(()) }
    })
    .await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 75, "{}", worker.stderr());
    no_process_left(&mark, Duration::from_secs(2)).await;
}

/// The worker is SIGKILLed: its watchdog has each job's shim kill its tree.
async fn descendants_die_with_a_sigkilled_worker(db: Db) {
    let mark = marker(&db);
    let id = db.enqueue(
        &["--env", &mark],
        &["sh", "-c", &escaping_script("sleep 300")],
    );
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Running).await;
    eventually("the escaped descendants", LONG, || {
        let found = processes_with_env(&mark).len();
        async move { (found >= 4).then_some(()) }
    })
    .await;
    worker.signal(libc::SIGKILL);
    let _ = worker.child.wait();
    no_process_left(&mark, Duration::from_secs(5)).await;
}

/// The shim itself is killed from outside (an operator, the OOM killer):
/// its job's processes come to the worker, which kills them.
async fn descendants_die_when_their_shim_is_killed(db: Db) {
    let mark = marker(&db);
    let id = db.enqueue(
        &["--env", &mark, "--max-attempts", "1"],
        &["sh", "-c", &escaping_script("sleep 300")],
    );
    let mut worker = db.worker(&["--poll-interval", "100ms"]);
    wait_state(&db, id, JobState::Running).await;
    // The shim carries the job's environment, marker included.
    let shim = eventually("the job's shim", LONG, || {
        let mine = processes_with_env(&mark)
            .into_iter()
            .find(|p| p.contains("__job-shim"));
        async move { mine }
    })
    .await;
    let shim_pid: i32 = shim.split(':').next().unwrap().parse().unwrap();
    unsafe { libc::kill(shim_pid, libc::SIGKILL) };
    let started = Instant::now();
    no_process_left(&mark, Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_state(&db, id, JobState::Failed).await;
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(LONG), 0);
}

macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Db::postgres(stringify!($test)).await).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Db::sqlite(stringify!($test)).await).await;
                }
            )*
        }
    };
}

on_both! {
    descendants_die_when_the_job_ends,
    descendants_die_when_the_job_is_stopped,
    descendants_die_with_a_sigkilled_worker,
    descendants_die_when_their_shim_is_killed,
}

/// A library user's `ProcessExecutor` without the shim (`dockhand worker`
/// always has one): the job's command leads its own process group, and
/// what it leaves in that group is killed once it exits. (cargo-mutants:
/// the executor's `pgid > 0` guard turned into `== 0` survived every test,
/// since the shim kills a job's leftovers itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_shim_a_jobs_group_dies_with_it() {
    use dockhand::executor::{ExecEvent, Executor, ProcessExecutor};
    use dockhand::job::{ClaimedJob, JobId, JobSpec, Lease, LeaseToken};

    let value = format!("noshim-{}", std::process::id());
    let mark = format!("DOCKHAND_TEST_MARK={value}");
    let mut spec = JobSpec {
        command: vec![
            "sh".into(),
            "-c".into(),
            "sleep 300 >/dev/null 2>&1 & echo started".into(),
        ],
        ..JobSpec::default()
    };
    spec.env.insert("DOCKHAND_TEST_MARK".into(), value);
    let job = ClaimedJob {
        lease: Lease {
            job: JobId(1),
            token: LeaseToken(1),
        },
        queue: "default".into(),
        spec,
        attempts: 0,
        interruptions: 0,
        waited: Duration::ZERO,
    };
    let mut executor = ProcessExecutor::new(None);
    let (events, mut received) = tokio::sync::mpsc::channel(8);
    executor.start(job, events);
    let exited = tokio::time::timeout(LONG, async {
        while let Some(event) = received.recv().await {
            if let ExecEvent::Exited { exit, output, .. } = event {
                return Some((exit, output));
            }
        }
        None
    })
    .await
    .expect("the job to exit within 30 s")
    .expect("an Exited event");
    assert_eq!(exited.1, b"started\n", "{exited:?}");
    no_process_left(&mark, Duration::from_secs(5)).await;
}

#[test]
fn the_job_user_is_checked_at_start() {
    let dir = support::job_dir();
    let url = format!("sqlite://{}", dir.path().join("u.db").display());
    let out = Command::new(bin())
        .args([
            "--database-url",
            &url,
            "worker",
            "--job-user",
            "no-such-user-here",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown job user"), "{stderr}");
}
