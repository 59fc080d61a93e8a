//! Shared test fixtures: a store per backend, each isolated per test.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use dockhand::store::{AnyStore, MemoryStore, PostgresStore, SqliteStore, Store};

pub mod engine;
pub use serde_json;

/// Keeps a test's resources (temp dir, database) alive.
pub enum Guard {
    /// Nothing to keep.
    None,
    /// A temporary directory.
    Dir(tempfile::TempDir),
    /// A PostgreSQL database of the test's own.
    Postgres(PgDatabase),
}

pub async fn memory_store(_name: &str) -> (AnyStore, Guard) {
    (AnyStore::Memory(MemoryStore::new()), Guard::None)
}

pub async fn sqlite_store(_name: &str) -> (AnyStore, Guard) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = SqliteStore::open(&url).await.expect("open sqlite");
    store.migrate().await.expect("migrate sqlite");
    (AnyStore::Sqlite(store), Guard::Dir(dir))
}

/// The test server's URL; its absence is a failure, never a skip.
pub fn postgres_base_url() -> String {
    std::env::var("DOCKHAND_TEST_PG").unwrap_or_else(|_| {
        panic!("DOCKHAND_TEST_PG is not set: run the tests with ./scripts/test, which installs and starts PostgreSQL")
    })
}

/// A test's own PostgreSQL database, dropped (with the roles it was given
/// to) when this goes. Every conformance test makes one, so a mutation run
/// of a hundred suites would otherwise leave thousands on the server.
pub struct PgDatabase {
    /// The database's URL, with the test server's credentials.
    pub url: String,
    name: String,
    roles: Vec<String>,
    /// The server's URL the database was made on, and is dropped through.
    server: String,
}

impl PgDatabase {
    /// The database's name on the server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A role the test made for this database, dropped after it.
    pub fn drop_role_after(&mut self, role: &str) {
        self.roles.push(role.to_string());
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let mut statements = vec![format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )];
        statements.extend(
            self.roles
                .iter()
                .map(|r| format!("DROP ROLE IF EXISTS {r}")),
        );
        // A drop runs inside the test's runtime, which cannot wait on a
        // future here; a thread with its own runtime can. A failure leaves
        // the database to the next `scripts/services.sh`, which drops what
        // is left; it must not turn a passing test into a panic.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let admin = PostgresStore::connect_with(&server, 1)
                    .await
                    .map_err(|e| e.to_string())?;
                for statement in &statements {
                    sqlx::query(statement)
                        .execute(admin.pool())
                        .await
                        .map_err(|e| format!("{statement}: {e}"))?;
                }
                admin.pool().close().await;
                Ok::<(), String>(())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("left for scripts/services.sh to drop: {e}"),
            Err(_) => eprintln!("left for scripts/services.sh to drop: {}", self.name),
        }
    }
}

/// A fresh, empty database on the test server, dropped when the answer goes.
pub async fn fresh_postgres_database(name: &str) -> PgDatabase {
    fresh_postgres_database_on(&postgres_base_url(), name).await
}

/// A fresh, empty database on the server at `base` (a URL ending in
/// `/DATABASE`, e.g. the restart or chaos test's own cluster), dropped when
/// the answer goes. Its name carries the test process's id, so
/// `scripts/services.sh` can drop what a killed run left.
pub async fn fresh_postgres_database_on(base: &str, name: &str) -> PgDatabase {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let db = format!(
        "dht_{}_{}_{}",
        name.chars().take(30).collect::<String>(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let admin = PostgresStore::connect_with(base, 1)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} is not reachable: {e}"));
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(admin.pool())
        .await
        .unwrap_or_else(|e| panic!("create database {db}: {e}"));
    admin.pool().close().await;
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{db}"),
        None => panic!("{base} must end in /DATABASE"),
    };
    PgDatabase {
        url,
        name: db,
        roles: Vec::new(),
        server: base.to_string(),
    }
}

pub async fn postgres_store(name: &str) -> (AnyStore, Guard) {
    let db = fresh_postgres_database(name).await;
    let store = PostgresStore::connect_with(&db.url, 3)
        .await
        .expect("connect");
    store.migrate().await.expect("migrate postgres");
    (AnyStore::Postgres(store), Guard::Postgres(db))
}

/// Time passes for a store's jobs and workers: every job's run time and
/// lease deadline, and every worker's last heartbeat, move `by` earlier, as
/// if that much time went by (the in-memory store moves its clock
/// instead). Used by the conformance suite and the model.
pub async fn time_passes(store: &AnyStore, by: std::time::Duration) {
    let ms = by.as_millis() as i64;
    match store {
        AnyStore::Memory(memory) => memory.advance(by),
        AnyStore::Sqlite(sqlite) => {
            sqlx::query(
                "UPDATE jobs SET run_at = run_at - ?1, lease_expires_at = lease_expires_at - ?1",
            )
            .bind(ms)
            .execute(sqlite.pool())
            .await
            .expect("move the SQLite jobs' times");
            sqlx::query("UPDATE workers SET heartbeat_at = heartbeat_at - ?1")
                .bind(ms)
                .execute(sqlite.pool())
                .await
                .expect("move the SQLite workers' heartbeats");
        }
        AnyStore::Postgres(pg) => {
            sqlx::query(
                "UPDATE jobs SET run_at = run_at - $1 * interval '1 millisecond',
                    lease_expires_at = lease_expires_at - $1 * interval '1 millisecond'",
            )
            .bind(ms)
            .execute(pg.pool())
            .await
            .expect("move the PostgreSQL jobs' times");
            sqlx::query(
                "UPDATE workers SET heartbeat_at = heartbeat_at - $1 * interval '1 millisecond'",
            )
            .bind(ms)
            .execute(pg.pool())
            .await
            .expect("move the PostgreSQL workers' heartbeats");
        }
    }
}

// ---- the real binary -------------------------------------------------------

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A scratch directory that jobs can write to: a root worker runs them as
/// `nobody` (the default job user), and a temporary directory is 0700.
pub fn job_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777))
        .expect("chmod temp dir");
    dir
}

/// A database for one end-to-end test: its URL, and what keeps it alive.
pub struct Db {
    pub url: String,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database this test made, dropped with it.
    pub postgres: Option<PgDatabase>,
}

impl Db {
    pub async fn postgres(name: &str) -> Db {
        let postgres = fresh_postgres_database(name).await;
        Db {
            url: postgres.url.clone(),
            dir: job_dir(),
            postgres: Some(postgres),
        }
    }

    pub async fn sqlite(_name: &str) -> Db {
        let dir = job_dir();
        let url = format!("sqlite://{}", dir.path().join("dockhand.db").display());
        Db {
            url,
            dir,
            postgres: None,
        }
    }

    /// The same database through the library, for assertions.
    pub async fn store(&self) -> AnyStore {
        AnyStore::open(&self.url).await.expect("open store")
    }

    /// A path in this test's scratch directory.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Run a CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--database-url")
            .arg(&self.url)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run dockhand")
    }

    /// `enqueue [opts] -- cmd...`: the new id.
    pub fn enqueue(&self, opts: &[&str], command: &[&str]) -> i64 {
        let mut args = vec!["enqueue"];
        args.extend_from_slice(opts);
        args.push("--");
        args.extend_from_slice(command);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "enqueue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("enqueue printed {stdout:?}, not an id"))
    }

    /// `show ID --json`.
    pub fn show(&self, id: i64) -> serde_json::Value {
        let out = self.cli(&["show", &id.to_string(), "--json"]);
        assert!(
            out.status.success(),
            "show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("show --json prints JSON")
    }

    /// Start a worker and wait until it has registered.
    pub fn worker(&self, args: &[&str]) -> Worker {
        self.worker_with_env(args, &[])
    }

    /// Start a worker with extra environment variables.
    pub fn worker_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Worker {
        let mut all = vec!["worker"];
        all.extend_from_slice(args);
        self.spawn(&all, env, "worker started")
    }

    /// Start `dockhand ui --listen 127.0.0.1:0 ARGS` and wait until it
    /// listens; the process and its address.
    pub fn ui(&self, args: &[&str], env: &[(&str, &str)]) -> (Worker, String) {
        let mut all = vec!["ui", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        let ui = self.spawn(&all, env, "listening on http://");
        let line = ui.wait_for_line("listening on http://", Duration::from_secs(1));
        let start = line.find("http://").unwrap() + "http://".len();
        let addr: String = line[start..].chars().take_while(|c| *c != '/').collect();
        (ui, addr)
    }

    /// Start a long-running command and wait for `ready` on its stderr.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)], ready: &str) -> Worker {
        let child = Command::new(bin())
            .arg("--database-url")
            .arg(&self.url)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn worker");
        let worker = Worker::adopt(child);
        worker.wait_for_line(ready, Duration::from_secs(20));
        worker
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dockhand")
}

/// A running `dockhand worker`.
pub struct Worker {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    exit: Option<i32>,
}

impl Worker {
    /// Takes charge of a `dockhand` process the test started itself (with
    /// its own environment, user or groups): its stderr, if piped, is
    /// collected, and it is killed if the test ends (or fails) before it
    /// exits, so a failed assertion leaves no worker running.
    pub fn adopt(mut child: Child) -> Worker {
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
        }
        Worker {
            child,
            lines,
            exit: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a real signal to the worker process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall to our own child.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Everything the worker wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Wait until a stderr line contains `needle`; panics with the log if not.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                start.elapsed() < limit,
                "no stderr line with {needle:?} within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the exit code (a signal death panics); panics if it takes longer than `limit`.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        if let Some(code) = self.exit {
            return code;
        }
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                let code = status.code().unwrap_or_else(|| {
                    panic!("worker died by a signal: {status:?}\n{}", self.stderr())
                });
                self.exit = Some(code);
                return code;
            }
            assert!(
                start.elapsed() < limit,
                "worker did not exit within {limit:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `check` until it returns Some, or panic after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Live processes whose `/proc/PID/<file>` (NUL-separated) passes `matches`,
/// each as "pid: command line". Zombies have empty files, so never match.
fn processes_where(file: &str, matches: impl Fn(&[u8]) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.chars().all(|c| c.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(content) = std::fs::read(format!("/proc/{pid}/{file}")) else {
            continue;
        };
        if matches(&content) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.push(format!(
                "{pid}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// Every live descendant of `root`, one line each: pid, parent, state, the
/// kernel function it sleeps in, its command line. For failure messages.
pub fn process_tree(root: i32) -> String {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name (which may hold spaces) in parentheses:
        // state, then the parent's pid.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("?").to_string();
        let ppid = fields
            .next()
            .and_then(|p| p.parse::<i32>().ok())
            .unwrap_or(0);
        parent_of.push((pid, ppid, state));
    }
    let mut tree = vec![root];
    let mut lines = Vec::new();
    let mut i = 0;
    while i < tree.len() {
        for (pid, ppid, state) in &parent_of {
            if *ppid == tree[i] {
                tree.push(*pid);
                let wchan =
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                lines.push(format!(
                    "{pid} (parent {ppid}) {state} {wchan}: {}",
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
        i += 1;
    }
    lines.join("\n")
}

/// Processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<String> {
    processes_where("cmdline", |cmdline| {
        String::from_utf8_lossy(cmdline)
            .replace('\0', " ")
            .contains(marker)
    })
}

/// Processes whose command line is exactly `command` (arguments joined by
/// spaces). A job's marker also appears inside the command lines of the
/// shim and the `sh -c` that start it, before the script has run a line:
/// only the process that *is* the marker shows the script got that far.
pub fn processes_exactly(command: &str) -> Vec<String> {
    processes_where("cmdline", |cmdline| {
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.join(" ") == command
    })
}

/// Live processes whose environment holds `needle` (`KEY=value`): tests give
/// their jobs a marker variable, which every process of the job inherits.
pub fn processes_with_env(needle: &str) -> Vec<String> {
    processes_where("environ", |environ| {
        environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes())
    })
}

/// Send `request` as it is (head and body) and read the answer to the
/// end: (status code, head, body).
pub fn http_raw(addr: &str, request: &str) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    // A server that answers early and closes may reset the rest.
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head.to_string(), body.to_string())
}

/// A plain HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (code, _, body) = http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    );
    (code, body)
}

impl Worker {
    /// The address the worker serves HTTP on (started with `--http 127.0.0.1:0`).
    pub fn http_addr(&self) -> String {
        let line = self.wait_for_line("serving HTTP on ", Duration::from_secs(10));
        let start = line.find("serving HTTP on ").unwrap() + "serving HTTP on ".len();
        line[start..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"')
            .collect()
    }
}

/// The locally built test image (`./scripts/test` builds it); a failure, never a skip.
pub fn test_image() -> String {
    std::env::var("DOCKHAND_TEST_IMAGE").unwrap_or_else(|_| {
        panic!("DOCKHAND_TEST_IMAGE is not set: run the tests with ./scripts/test, which builds it")
    })
}

/// Names of the containers (running or not) labelled with this store's instance id.
pub fn containers_of(store_id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--filter",
            &format!("label=dockhand.store={store_id}"),
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .output()
        .expect("docker ps");
    assert!(
        out.status.success(),
        "docker ps failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until job `id` is in state `want` (up to a minute).
pub async fn wait_state(db: &Db, id: i64, want: dockhand::job::JobState) -> dockhand::store::Job {
    wait_state_watching(db, id, want, &[]).await
}

/// `wait_state`, and on a timeout the panic shows what the job became, its
/// history and everything `workers` wrote on stderr: a rare failure must
/// explain itself from one CI log.
pub async fn wait_state_watching(
    db: &Db,
    id: i64,
    want: dockhand::job::JobState,
    workers: &[&Worker],
) -> dockhand::store::Job {
    let limit = Duration::from_secs(60);
    let store = db.store().await;
    let job_id = dockhand::job::JobId(id);
    let start = Instant::now();
    loop {
        let job = store.get(job_id).await.unwrap();
        if let Some(job) = job.as_ref().filter(|j| j.state == want) {
            return job.clone();
        }
        if start.elapsed() >= limit {
            let history = store.history(job_id).await;
            let logs: Vec<String> = workers
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    format!(
                        "--- worker {i} (pid {}), its processes:\n{}\nits stderr:\n{}",
                        w.pid(),
                        process_tree(w.pid()),
                        w.stderr()
                    )
                })
                .collect();
            panic!(
                "timed out after {limit:?} waiting for job {id} to be {want}\n\
                 the job: {job:#?}\nits history: {history:#?}\n{}",
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
