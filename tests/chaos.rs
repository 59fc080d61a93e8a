//! Fleet chaos: three real `dockhand worker` processes (every other one
//! started with `--prefetch 4`) on one PostgreSQL database run a mixed
//! workload while a seeded driver SIGKILLs workers,
//! rolls them with TERM, double-TERMs them, pauses them past their lease and
//! restarts the PostgreSQL server. Then the chaos stops, a healthy fleet
//! empties the queue, and the run is judged: nothing lost, every success's
//! side effect present, every duplicate explained, no stale write accepted,
//! truthful exit codes, no job process left.
//!
//! CI runs a short form (about two minutes). The long form, several seeds:
//! `scripts/chaos --secs 1200 --seeds 1,2,3` (see docs/RELIABILITY.md).
//! Knobs: `DOCKHAND_CHAOS_SEED`, `DOCKHAND_CHAOS_SECS`, `DOCKHAND_CHAOS_JOBS`,
//! `DOCKHAND_CHAOS_REPORT` (a file the result row is appended to).
//!
//! Runs on its own cluster (`DOCKHAND_TEST_PG_CHAOS`, set up by
//! `./scripts/test`) because it restarts the server.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use dockhand::job::{JobSpec, JobState, NewJob};
use dockhand::store::{PostgresStore, Store};
use support::{processes_with_env, Db, Worker};

/// Worker flags: short timeouts so every path (drain, deadline, kill grace,
/// lease expiry) is taken many times in a short run.
const LEASE: Duration = Duration::from_secs(4);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
const KILL_GRACE: Duration = Duration::from_secs(1);
/// The shell's store grace (ShellConfig::store_timeout) plus slack for a
/// loaded 2-core machine: the design's exit bound.
const EXIT_BOUND: Duration =
    Duration::from_secs(SHUTDOWN_TIMEOUT.as_secs() + KILL_GRACE.as_secs() + 5 + 2);
const FLEET: usize = 3;
/// The worker flags, from the constants the driver and the checks rely on.
fn worker_args() -> Vec<String> {
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    vec![
        "--concurrency".into(),
        "8".into(),
        "--lease".into(),
        ms(LEASE),
        "--shutdown-timeout".into(),
        ms(SHUTDOWN_TIMEOUT),
        "--kill-grace".into(),
        ms(KILL_GRACE),
        "--poll-interval".into(),
        "500ms".into(),
    ]
}

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with ./scripts/test"))
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// splitmix64: the driver's only source of randomness, seeded.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What a job does; stored in its env so the checks read it back from the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Quick,
    Slow,
    IgnoresTerm,
    Flaky,
    TimesOut,
    Fails,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Quick => "quick",
            Kind::Slow => "slow",
            Kind::IgnoresTerm => "ignores-term",
            Kind::Flaky => "flaky",
            Kind::TimesOut => "times-out",
            Kind::Fails => "fails",
        }
    }
    fn parse(s: &str) -> Kind {
        [
            Kind::Quick,
            Kind::Slow,
            Kind::IgnoresTerm,
            Kind::Flaky,
            Kind::TimesOut,
            Kind::Fails,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .unwrap_or_else(|| panic!("unknown job kind {s:?}"))
    }
    fn draw(rng: &mut Rng) -> Kind {
        match rng.below(100) {
            0..=59 => Kind::Quick,
            60..=74 => Kind::Slow,
            75..=81 => Kind::IgnoresTerm,
            82..=89 => Kind::Flaky,
            90..=94 => Kind::TimesOut,
            _ => Kind::Fails,
        }
    }
    /// Whether a run that is left alone ends `succeeded`.
    fn should_succeed(self) -> bool {
        !matches!(self, Kind::TimesOut | Kind::Fails)
    }
}

/// A job of a random kind: a shell script whose side effect is one line,
/// `JOB_ID WORKER_PID`, appended to the effects log as its last act.
fn job(rng: &mut Rng, dir: &str, run: &str) -> NewJob {
    let kind = Kind::draw(rng);
    // The job's parent is its shim; the shim's parent is the worker. Read
    // first: once the worker is SIGKILLed the shim's parent is init, and a
    // run may still reach its last act before its shim stops it.
    let worker = "w=$(cut -d' ' -f4 /proc/$PPID/stat); ";
    let effect = format!("echo \"$DOCKHAND_JOB_ID $w\" >> {dir}/effects.log");
    let sleep = |rng: &mut Rng, lo, hi| format!("{:.3}", rng.millis(lo, hi).as_secs_f64());
    let script = match kind {
        Kind::Quick => effect,
        Kind::Slow => format!("sleep {}; {effect}", sleep(rng, 300, 3000)),
        Kind::IgnoresTerm => format!("trap '' TERM; sleep {}; {effect}", sleep(rng, 1500, 5000)),
        // Fails its first run, succeeds on the retry.
        Kind::Flaky => format!(
            "if [ -e {dir}/marks/$DOCKHAND_JOB_ID ]; then {effect}; \
             else touch {dir}/marks/$DOCKHAND_JOB_ID; exit 3; fi"
        ),
        Kind::TimesOut => format!("sleep 30; {effect}"),
        Kind::Fails => "exit 7".to_string(),
    };
    let mut new = NewJob::new(vec!["sh".into(), "-c".into(), format!("{worker}{script}")]);
    new.spec = JobSpec {
        env: BTreeMap::from([
            ("CHAOS_RUN".to_string(), run.to_string()),
            ("CHAOS_KIND".to_string(), kind.name().to_string()),
        ]),
        timeout_ms: (kind == Kind::TimesOut).then_some(1000),
        ..std::mem::take(&mut new.spec)
    };
    new.max_attempts = match kind {
        Kind::Flaky => 3,
        Kind::TimesOut => 2,
        Kind::Fails => 1,
        _ => 3,
    };
    new
}

/// What happened to one worker process.
#[derive(Default)]
struct Fate {
    killed: bool,
    paused: bool,
    termed: Option<Instant>,
    double_termed: bool,
    exit: Option<i32>,
    exit_after: Option<Duration>,
}

struct Fleet {
    db: Db,
    /// Workers taking jobs (a paused one counts).
    active: Vec<Worker>,
    /// Workers sent TERM, not yet exited.
    leaving: Vec<Worker>,
    fates: BTreeMap<i32, Fate>,
    /// Paused workers and when to resume them.
    paused: Vec<(i32, Instant)>,
    late_exits: Vec<String>,
    /// Workers started so far: every other one prefetches.
    spawned: usize,
}

impl Fleet {
    fn spawn(&mut self) {
        let mut args = worker_args();
        // Half the fleet holds jobs ahead of its slots, so signals, kills
        // and pauses also meet prefetched jobs.
        if self.spawned % 2 == 1 {
            args.extend(["--prefetch".into(), "4".into()]);
        }
        self.spawned += 1;
        let worker = self
            .db
            .worker(&args.iter().map(String::as_str).collect::<Vec<_>>());
        self.fates.insert(worker.pid(), Fate::default());
        self.active.push(worker);
    }

    fn fate(&mut self, pid: i32) -> &mut Fate {
        self.fates.entry(pid).or_default()
    }

    /// An active, running (not paused) worker's index.
    fn pick(&self, rng: &mut Rng) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.active.len())
            .filter(|&i| !self.paused.iter().any(|(p, _)| *p == self.active[i].pid()))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[rng.below(candidates.len() as u64) as usize])
    }

    fn kill(&mut self, rng: &mut Rng) -> bool {
        let Some(i) = self.pick(rng) else {
            return false;
        };
        let mut worker = self.active.remove(i);
        let pid = worker.pid();
        worker.signal(libc::SIGKILL);
        let _ = worker.child.wait();
        self.fate(pid).killed = true;
        self.spawn();
        true
    }

    /// Rolling restart: the replacement first, then TERM (twice if `double`).
    fn term(&mut self, rng: &mut Rng, double: bool) -> bool {
        let Some(i) = self.pick(rng) else {
            return false;
        };
        self.spawn();
        let worker = self.active.remove(i);
        let pid = worker.pid();
        worker.signal(libc::SIGTERM);
        self.fate(pid).termed = Some(Instant::now());
        if double {
            std::thread::sleep(rng.millis(0, 1500));
            // Not reaped before collect_exits, so even a worker whose quick
            // drain already ended takes the signal (harmlessly, as a zombie).
            worker.signal(libc::SIGTERM);
            self.fate(pid).double_termed = true;
        }
        self.leaving.push(worker);
        true
    }

    fn pause(&mut self, rng: &mut Rng) -> bool {
        let Some(i) = self.pick(rng) else {
            return false;
        };
        let pid = self.active[i].pid();
        self.active[i].signal(libc::SIGSTOP);
        self.fate(pid).paused = true;
        // Past the lease, so its jobs are reaped and run elsewhere meanwhile.
        let resume = Instant::now() + LEASE + rng.millis(1000, 3000);
        self.paused.push((pid, resume));
        true
    }

    fn resume_due(&mut self, now: Instant) {
        let due: Vec<i32> = self
            .paused
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        for pid in due {
            // SAFETY: plain syscall; the worker is our child and not yet reaped.
            unsafe { libc::kill(pid, libc::SIGCONT) };
            self.paused.retain(|(p, _)| *p != pid);
        }
    }

    /// Collect the exit codes of leaving workers that are done.
    fn collect_exits(&mut self) {
        let mut still = Vec::new();
        for mut worker in std::mem::take(&mut self.leaving) {
            let pid = worker.pid();
            match worker.child.try_wait() {
                Ok(Some(status)) => {
                    let fate = self.fates.entry(pid).or_default();
                    fate.exit = Some(status.code().unwrap_or(-1));
                    fate.exit_after = fate.termed.map(|t| t.elapsed());
                }
                _ => {
                    let since = self.fates[&pid].termed.map(|t| t.elapsed());
                    if since.is_some_and(|s| s > EXIT_BOUND * 3) {
                        self.late_exits.push(format!(
                            "worker {pid} still running {since:?} after TERM:\n{}",
                            worker.stderr()
                        ));
                        worker.signal(libc::SIGKILL);
                        let _ = worker.child.wait();
                        continue;
                    }
                    still.push(worker);
                }
            }
        }
        self.leaving = still;
    }
}

#[derive(Default)]
struct Tally {
    kills: u32,
    terms: u32,
    double_terms: u32,
    pauses: u32,
    pg_restarts: u32,
}

fn pg_restart(cluster: &str) -> (SystemTime, SystemTime) {
    let (version, name) = cluster.split_once(' ').expect("VERSION NAME");
    let start = SystemTime::now();
    let status = Command::new("pg_ctlcluster")
        .args([version, name, "restart", "-m", "fast"])
        .status()
        .expect("run pg_ctlcluster");
    assert!(status.success(), "pg_ctlcluster restart failed");
    (start, SystemTime::now())
}

/// The worker pid in a worker id `host-pid-xxxx`.
fn pid_of(worker_id: &str) -> i32 {
    let mut parts = worker_id.rsplitn(3, '-');
    parts.next();
    parts
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("worker id {worker_id:?} has no pid"))
}

struct Event {
    job: i64,
    kind: String,
    worker: Option<String>,
    token: Option<i64>,
    detail: Option<String>,
    at: SystemTime,
}

/// A job as the judgement needs it.
struct JobRow {
    id: i64,
    state: JobState,
    error: Option<String>,
    worker_id: Option<String>,
    kind: Kind,
}

/// id, state, error, lease owner, CHAOS_KIND.
type JobSql = (i64, String, Option<String>, Option<String>, Option<String>);

/// Every job, straight from the table: the store's `list` is capped (10,000
/// rows) for people, and a long run has more.
fn all_jobs(rt: &tokio::runtime::Runtime, store: &PostgresStore) -> Vec<JobRow> {
    let rows: Vec<JobSql> = rt
        .block_on(
            sqlx::query_as(
                "SELECT id, state, error, lease_owner, spec->'env'->>'CHAOS_KIND' \
                 FROM jobs ORDER BY id",
            )
            .fetch_all(store.pool()),
        )
        .expect("read jobs");
    rows.into_iter()
        .map(|(id, state, error, worker_id, kind)| JobRow {
            id,
            state: state
                .parse()
                .unwrap_or_else(|_| panic!("job {id} has state {state:?}")),
            error,
            worker_id,
            kind: Kind::parse(kind.as_deref().unwrap_or("?")),
        })
        .collect()
}

/// job_id, kind, worker_id, lease_token, detail, at (epoch seconds).
type EventRow = (
    i64,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    f64,
);

fn is_interruption(e: &Event) -> bool {
    e.kind == "interrupted"
        || (e.kind == "failed" && e.detail.as_deref() == Some("worker shutdown"))
}

#[test]
fn fleet_survives_chaos_losing_nothing() {
    let seed = match std::env::var("DOCKHAND_CHAOS_SEED") {
        Ok(s) => s.parse().expect("DOCKHAND_CHAOS_SEED is a number"),
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000)
            .unwrap_or(1),
    };
    let secs = env_num("DOCKHAND_CHAOS_SECS", 75);
    let total_jobs = env_num("DOCKHAND_CHAOS_JOBS", 1000);
    let replay = format!(
        "DOCKHAND_CHAOS_SEED={seed} DOCKHAND_CHAOS_SECS={secs} DOCKHAND_CHAOS_JOBS={total_jobs} \
         scripts/chaos"
    );
    eprintln!("chaos seed {seed}: {secs}s of chaos, {total_jobs} jobs; replay: {replay}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = env("DOCKHAND_TEST_PG_CHAOS_CLUSTER");
    let base = env("DOCKHAND_TEST_PG_CHAOS");
    // Its own database on the chaos cluster, dropped with the fleet.
    let postgres = rt.block_on(support::fresh_postgres_database_on(&base, "chaos"));
    let url = postgres.url.clone();
    let store = rt.block_on(async {
        let store = PostgresStore::connect_with(&url, 2).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    });
    // Jobs run as `nobody` (a root worker's default job user): they write here.
    let dir = support::job_dir();
    let scratch = dir.path().display().to_string();
    std::fs::create_dir(dir.path().join("marks")).expect("marks dir");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("marks"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .expect("chmod marks dir");
    }
    let run_marker = format!("chaos-{seed}-{}", std::process::id());
    let mut rng = Rng(seed);
    let mut fleet = Fleet {
        db: Db {
            url: url.clone(),
            dir: support::job_dir(),
            postgres: Some(postgres),
        },
        active: Vec::new(),
        leaving: Vec::new(),
        fates: BTreeMap::new(),
        paused: Vec::new(),
        late_exits: Vec::new(),
        spawned: 0,
    };
    for _ in 0..FLEET {
        fleet.spawn();
    }

    // ---- chaos -------------------------------------------------------------
    let mut tally = Tally::default();
    let mut restarts: Vec<(SystemTime, SystemTime)> = Vec::new();
    let start = Instant::now();
    let chaos_for = Duration::from_secs(secs);
    // Jobs arrive through the first two thirds of the chaos, so it always meets work.
    let feed_for = chaos_for * 2 / 3;
    let mut enqueued = 0u64;
    let mut pending: Vec<NewJob> = Vec::new();
    let mut next_action = start + rng.millis(1000, 3000);
    while start.elapsed() < chaos_for {
        let now = Instant::now();
        let due = if feed_for.is_zero() || start.elapsed() >= feed_for {
            total_jobs
        } else {
            total_jobs * start.elapsed().as_millis() as u64 / feed_for.as_millis() as u64
        };
        let drawn = enqueued + pending.len() as u64;
        pending.extend((drawn..due.max(drawn)).map(|_| job(&mut rng, &scratch, &run_marker)));
        // All or nothing; a batch refused during a restart is offered again next tick.
        if !pending.is_empty() && rt.block_on(store.enqueue_many(&pending)).is_ok() {
            enqueued += pending.len() as u64;
            pending.clear();
        }
        fleet.resume_due(now);
        fleet.collect_exits();
        if now >= next_action {
            match rng.below(100) {
                0..=24 => tally.kills += u32::from(fleet.kill(&mut rng)),
                25..=49 => tally.terms += u32::from(fleet.term(&mut rng, false)),
                50..=64 => tally.double_terms += u32::from(fleet.term(&mut rng, true)),
                65..=84 => tally.pauses += u32::from(fleet.pause(&mut rng)),
                _ => {
                    restarts.push(pg_restart(&cluster));
                    tally.pg_restarts += 1;
                }
            }
            next_action = Instant::now() + rng.millis(1000, 4000);
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // ---- healing -------------------------------------------------------------
    for (pid, _) in std::mem::take(&mut fleet.paused) {
        // SAFETY: plain syscall to our own child.
        unsafe { libc::kill(pid, libc::SIGCONT) };
    }
    let drawn = enqueued + pending.len() as u64;
    pending.extend((drawn..total_jobs).map(|_| job(&mut rng, &scratch, &run_marker)));
    if !pending.is_empty() {
        rt.block_on(store.enqueue_many(&pending))
            .expect("enqueue after the chaos");
    }
    let heal_start = Instant::now();
    let heal_limit = Duration::from_secs(180);
    let jobs = loop {
        fleet.collect_exits();
        let jobs = all_jobs(&rt, &store);
        let open = jobs
            .iter()
            .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
            .count();
        if open == 0 && fleet.leaving.is_empty() {
            break jobs;
        }
        if heal_start.elapsed() > heal_limit {
            let open: Vec<String> = jobs
                .iter()
                .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
                .take(20)
                .map(|j| format!("{} {:?} {:?}", j.id, j.state, j.worker_id))
                .collect();
            panic!(
                "seed {seed}: {} jobs still open {heal_limit:?} after the chaos stopped \
                 (first: {open:?}); replay: {replay}",
                open.len()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let healing = heal_start.elapsed();
    // The last fleet goes the way a rolling restart ends: TERM, drain, exit.
    for worker in std::mem::take(&mut fleet.active) {
        worker.signal(libc::SIGTERM);
        fleet.fate(worker.pid()).termed = Some(Instant::now());
        fleet.leaving.push(worker);
    }
    while !fleet.leaving.is_empty() {
        fleet.collect_exits();
        std::thread::sleep(Duration::from_millis(50));
    }

    // ---- judgement ----------------------------------------------------------
    let events: Vec<Event> = rt.block_on(async {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT job_id, kind, worker_id, lease_token, detail, \
                 extract(epoch FROM at)::float8 FROM job_events ORDER BY job_id, id",
        )
        .fetch_all(store.pool())
        .await
        .expect("read job_events");
        rows.into_iter()
            .map(|(job, kind, worker, token, detail, at)| Event {
                job,
                kind,
                worker,
                token,
                detail,
                at: SystemTime::UNIX_EPOCH + Duration::from_secs_f64(at),
            })
            .collect()
    });
    let mut by_job: BTreeMap<i64, Vec<&Event>> = BTreeMap::new();
    for event in &events {
        by_job.entry(event.job).or_default().push(event);
    }
    let effects = std::fs::read_to_string(dir.path().join("effects.log")).unwrap_or_default();
    let mut effect_runs: BTreeMap<i64, Vec<i32>> = BTreeMap::new();
    for line in effects.lines() {
        let (job, pid) = line
            .split_once(' ')
            .and_then(|(j, p)| Some((j.parse().ok()?, p.parse().ok()?)))
            .unwrap_or_else(|| panic!("bad effects line {line:?}"));
        effect_runs.entry(job).or_default().push(pid);
    }

    let mut failures: Vec<String> = Vec::new();
    let mut states: BTreeMap<&str, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<Kind, u64> = BTreeMap::new();
    let mut quarantined = 0u64;
    let mut missing_effects = Vec::new();
    let mut unexpected = Vec::new();
    for j in &jobs {
        let kind = j.kind;
        *kinds.entry(kind).or_default() += 1;
        *states.entry(j.state.as_str()).or_default() += 1;
        let ran = effect_runs.get(&j.id).map_or(0, Vec::len);
        if j.state == JobState::Succeeded && ran == 0 {
            missing_effects.push(j.id);
        }
        let interrupted_out = j
            .error
            .as_deref()
            .is_some_and(|e| e.contains("max_interruptions"));
        if interrupted_out {
            quarantined += 1;
        }
        let fine = match (kind.should_succeed(), j.state) {
            (true, JobState::Succeeded) => true,
            (true, JobState::Failed) => interrupted_out,
            (false, JobState::Failed) => true,
            _ => false,
        };
        if !fine {
            unexpected.push(format!(
                "{} {} {:?} {:?}",
                j.id,
                kind.name(),
                j.state,
                j.error
            ));
        }
    }
    if jobs.len() as u64 != total_jobs {
        failures.push(format!(
            "{} jobs in the database, {total_jobs} enqueued",
            jobs.len()
        ));
    }
    if !missing_effects.is_empty() {
        failures.push(format!(
            "succeeded without a side effect: {missing_effects:?}"
        ));
    }
    if !unexpected.is_empty() {
        failures.push(format!("unexpected final states: {unexpected:?}"));
    }

    // Fencing: every accepted write carries the job's live lease, or is
    // the late outcome of a lease that expired and was reaped while nobody
    // claimed, retried or cancelled the job since (the store's rule: the
    // run did happen; running it again would repeat it).
    let mut stale_refused = 0u64;
    let mut late_accepted = 0u64;
    let mut stale_accepted = Vec::new();
    for (job, evs) in &by_job {
        let mut live: Option<i64> = None;
        let mut expired: Option<i64> = None;
        for e in evs {
            match e.kind.as_str() {
                "claimed" => {
                    if live.is_some() {
                        stale_accepted
                            .push(format!("job {job}: claimed while lease {live:?} was live"));
                    }
                    live = e.token;
                    expired = None;
                }
                "retried" | "cancelled" | "cancel-requested" => expired = None,
                "succeeded" | "failed" | "retry-scheduled" | "interrupted" | "handed-back"
                    if live.is_none() && e.token.is_some() && e.token == expired =>
                {
                    late_accepted += 1;
                    expired = None;
                }
                "stale-write-refused" => {
                    stale_refused += 1;
                    if e.token == live {
                        stale_accepted
                            .push(format!("job {job}: write with the live lease refused"));
                    }
                }
                "lease-expired" | "succeeded" | "failed" | "retry-scheduled" | "interrupted"
                | "handed-back"
                    if e.token.is_some() =>
                {
                    if e.token != live {
                        stale_accepted.push(format!(
                            "job {job}: {} with lease {:?} while {live:?} was live",
                            e.kind, e.token
                        ));
                    }
                    if e.kind == "lease-expired" {
                        expired = e.token;
                    }
                    live = None;
                }
                _ => {}
            }
        }
    }
    if !stale_accepted.is_empty() {
        failures.push(format!("stale writes accepted: {stale_accepted:?}"));
    }

    // Duplicates: a side effect that ran more than once, and why.
    let restarted_near = |from: SystemTime, to: SystemTime| {
        restarts.iter().any(|(s, e)| *s <= to && *e + LEASE >= from)
    };
    let mut causes: BTreeMap<String, u64> = BTreeMap::new();
    let mut duplicates = 0u64;
    for (job, pids) in &effect_runs {
        if pids.len() < 2 {
            continue;
        }
        duplicates += 1;
        let evs = by_job.get(job).cloned().unwrap_or_default();
        // Every run but the one whose success was recorded needs a reason.
        let succeeded_token = evs
            .iter()
            .find(|e| e.kind == "succeeded")
            .and_then(|e| e.token);
        let mut reasons = BTreeSet::new();
        for (i, e) in evs.iter().enumerate() {
            if e.kind != "claimed" || e.token == succeeded_token {
                continue;
            }
            let Some(worker) = &e.worker else { continue };
            let pid = pid_of(worker);
            // A run orphaned before it read its worker's pid names init.
            let orphaned = pids.contains(&1) && fleet.fates.get(&pid).is_some_and(|f| f.killed);
            if !pids.contains(&pid) && !orphaned {
                continue;
            }
            let end = evs[i + 1..]
                .iter()
                .find(|x| x.token == e.token && x.kind != "claimed");
            let fate = fleet.fates.get(&pid);
            let reason = match end.map(|x| x.kind.as_str()) {
                Some("lease-expired") | Some("stale-write-refused") => {
                    if fate.is_some_and(|f| f.killed) {
                        "SIGKILL of its worker"
                    } else if fate.is_some_and(|f| f.paused) {
                        "worker paused past its lease"
                    } else if restarted_near(e.at, end.map_or(e.at, |x| x.at)) {
                        "database restart past the lease"
                    } else {
                        "UNEXPLAINED lease expiry"
                    }
                }
                Some("retry-scheduled") | Some("failed")
                    if end
                        .and_then(|x| x.detail.as_deref())
                        .is_some_and(|d| d.contains("timed out")) =>
                {
                    "per-job timeout"
                }
                Some("interrupted") | Some("failed") if end.is_some_and(|x| is_interruption(x)) => {
                    if fate.is_some_and(|f| f.double_termed) {
                        "double TERM (forced stop)"
                    } else {
                        "killed at the shutdown deadline"
                    }
                }
                _ => continue,
            };
            reasons.insert(reason);
        }
        if reasons.is_empty() {
            reasons.insert("UNEXPLAINED");
        }
        for reason in &reasons {
            *causes.entry(reason.to_string()).or_default() += 1;
            if reason.starts_with("UNEXPLAINED") {
                let history: Vec<String> = evs
                    .iter()
                    .map(|e| format!("{} {:?} {:?} {:?}", e.kind, e.worker, e.token, e.detail))
                    .collect();
                failures.push(format!(
                    "job {job}: side effect ran {} times ({pids:?}), {reason}: {history:?}",
                    pids.len()
                ));
            }
        }
    }

    // Exit codes: 0 only if nothing it held was interrupted; 75 only if something was.
    // Per worker pid: (recorded an interruption, had a lease expire).
    let mut held: BTreeMap<i32, (bool, bool)> = BTreeMap::new();
    for e in &events {
        if let Some(worker) = &e.worker {
            let entry = held.entry(pid_of(worker)).or_default();
            entry.0 |= is_interruption(e);
            entry.1 |= e.kind == "lease-expired";
        }
    }
    let mut exits: BTreeMap<String, u64> = BTreeMap::new();
    for (pid, fate) in &fleet.fates {
        if fate.killed {
            *exits.entry("SIGKILL (by the driver)".into()).or_default() += 1;
            continue;
        }
        let Some(code) = fate.exit else { continue };
        *exits.entry(format!("exit {code}")).or_default() += 1;
        let (interrupted, expired) = held.get(pid).copied().unwrap_or_default();
        let truthful = match code {
            0 => !interrupted,
            75 => interrupted || expired,
            _ => false,
        };
        if !truthful {
            failures.push(format!(
                "worker {pid} exited {code} (interrupted: {interrupted}, lease expired: {expired})"
            ));
        }
        if let Some(after) = fate.exit_after {
            if after > EXIT_BOUND && !fate.paused {
                failures.push(format!("worker {pid} took {after:?} to exit after TERM"));
            }
        }
    }
    failures.extend(fleet.late_exits.iter().cloned());

    // No job process outlives the fleet (the watchdog kills a SIGKILLed worker's jobs).
    let needle = format!("CHAOS_RUN={run_marker}");
    let mut leftovers = processes_with_env(&needle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !leftovers.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        leftovers = processes_with_env(&needle);
    }
    if !leftovers.is_empty() {
        failures.push(format!("job processes left: {leftovers:?}"));
    }

    // ---- the table ---------------------------------------------------------
    let lost = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
        .count();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "chaos seed {seed} ({secs}s of chaos, healed in {healing:.1?})"
    );
    let _ = writeln!(table, "  replay:           {replay}");
    let _ = writeln!(table, "  jobs:             {} ({kinds:?})", jobs.len());
    let _ = writeln!(table, "  final states:     {states:?}");
    let _ = writeln!(table, "  lost:             {lost}");
    let _ = writeln!(
        table,
        "  quarantined:      {quarantined} (interrupted 3 times)"
    );
    let _ = writeln!(table, "  effects missing:  {}", missing_effects.len());
    let _ = writeln!(table, "  duplicates:       {duplicates} {causes:?}");
    let _ = writeln!(
        table,
        "  stale refused:    {stale_refused} (accepted: {}; late outcomes of reaped leases accepted: {late_accepted})",
        stale_accepted.len()
    );
    let _ = writeln!(
        table,
        "  chaos:            {} SIGKILL, {} TERM, {} double TERM, {} pauses, {} PG restarts",
        tally.kills, tally.terms, tally.double_terms, tally.pauses, tally.pg_restarts
    );
    let _ = writeln!(table, "  worker exits:     {exits:?}");
    let _ = writeln!(table, "  processes left:   {}", leftovers.len());
    eprintln!("{table}");
    if let Ok(path) = std::env::var("DOCKHAND_CHAOS_REPORT") {
        use std::io::Write;
        let row = format!(
            "| {seed} | {secs} | {} | {lost} | {quarantined} | {} | {duplicates} {causes:?} | {stale_refused} / {} | {} | {} | {} | {} | {} | {exits:?} | {} |\n",
            jobs.len(),
            missing_effects.len(),
            stale_accepted.len(),
            tally.kills,
            tally.terms,
            tally.double_terms,
            tally.pauses,
            tally.pg_restarts,
            leftovers.len(),
        );
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = file.write_all(row.as_bytes());
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} problem(s):\n{}\n{table}",
        failures.len(),
        failures.join("\n")
    );
    assert!(tally.kills + tally.terms + tally.double_terms + tally.pauses + tally.pg_restarts > 0);
}
