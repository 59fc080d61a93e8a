//! Deterministic simulation of dockhand workers (turmoil).
//!
//! One world per seed: a database host serving the in-memory store over
//! the simulated network (a datagram per call, one per answer), 1–4 worker
//! hosts each running the real shell and machine with simulated job
//! processes, and an operator that sends TERM / INT /
//! USR1, crashes and restarts hosts, partitions them from the database and
//! makes the store fail or lag. Every world draws its own parameters from its
//! seed (swarm testing). Invariants are checked after every step; then every
//! fault heals, a healthy worker joins, and every job must reach a final
//! state.
//!
//! The same seed gives the same trace, byte for byte: all randomness comes
//! from the seed, all time is simulated, all maps are ordered.
//!
//! Replay a seed: `DOCKHAND_SEED=123 cargo test -p dockhand-sim --test sweep replay -- --nocapture`
//! (with `DOCKHAND_SIM_DEBUG=1`, every worker's machine events, actions and
//! notes go to stderr as well).

pub mod executor;
pub mod protocol;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use dockhand::job::{ClaimedJob, Completion, JobId, JobState, LeaseToken, NewJob};
use dockhand::machine::{Config, Signal};
use dockhand::shell::{self, ShellConfig};
use dockhand::store::{JobFilter, MemoryStore, Store, WorkerInfo};
use tokio::sync::mpsc;

use executor::{Behavior, SimExecutor};
use protocol::{ClaimLog, Faults, RemoteStore, ReplyFate};

/// A bug the simulation plants in its own parts, never in dockhand's code,
/// to prove that its checks catch what the bug breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The operator's TERM/INT never reach the workers (the operator
    /// believes they did): workers go on claiming after "their" signal.
    SignalsNotDelivered,
    /// A draining worker's heartbeats are dropped on the way to the store
    /// but look answered: its leases expire under its running jobs.
    HeartbeatsDroppedWhileDraining,
    /// The database ignores the claims a heartbeat asks it to recover: a
    /// claim whose reply was lost keeps its jobs leased to a worker that
    /// never starts them, until the lease expires.
    RecoveryIgnored,
    /// The worker's store client takes a refusal for good (a value the
    /// database cannot store) for an outage: the outcome is retried forever.
    PermanentErrorsLookTransient,
    /// The worker's store client drops the leases a heartbeat reports lost:
    /// a run whose lease the store gave away goes on beside the new one.
    LostLeasesIgnored,
}

/// Simulated time per step.
pub const TICK: Duration = Duration::from_millis(25);
/// Longest a store call may take before the shell counts it failed.
const STORE_TIMEOUT: Duration = Duration::from_secs(1);
/// The shell's limit on deregistering at exit, added to the exit bound.
const DEREGISTER_SLACK: Duration = Duration::from_secs(2);
/// The healing phase gives up after this long.
const HEALING_LIMIT: Duration = Duration::from_secs(180);

/// A world's parameters, drawn from its seed.
#[derive(Clone, Debug)]
pub struct Params {
    /// Worker hosts.
    pub workers: usize,
    /// Jobs per worker.
    pub concurrency: u32,
    /// Claim batch limit.
    pub batch: u32,
    /// Drain time after the first signal.
    pub shutdown_timeout: Duration,
    /// TERM to KILL.
    pub kill_grace: Duration,
    /// Lease.
    pub lease: Duration,
    /// Poll interval.
    pub poll: Duration,
    /// How long the operator makes trouble.
    pub chaos: Duration,
    /// Chance per step of a signal to some worker.
    pub signal_rate: f64,
    /// Chance per step of a crash.
    pub crash_rate: f64,
    /// Chance per step of a partition.
    pub partition_rate: f64,
    /// Chance per step of a database outage seen by every worker, lasting up
    /// to three leases.
    pub outage_rate: f64,
    /// Chance per step that the operator cancels a job (queued, running,
    /// being recorded, or already final).
    pub cancel_rate: f64,
    /// Chance that a store call fails.
    pub store_error_rate: f64,
    /// Longest extra delay of a store call.
    pub store_delay: Duration,
    /// Longest network latency.
    pub latency: Duration,
    /// The jobs: behaviour, timeout, max attempts, delay.
    pub jobs: Vec<(Behavior, Option<Duration>, u32, Duration)>,
    /// Chance that the reply to a successful claim is lost (the jobs stay
    /// claimed) or comes late, up to twice the worker's store timeout.
    pub claim_reply_fault: f64,
    /// A job whose outcomes the database refuses for good: any outcome
    /// carrying output (a value it cannot store), and the first N outcomes
    /// of any kind.
    pub poison: Option<(JobId, u32)>,
    /// Chance per step that the database's clock jumps ahead, by up to two
    /// leases: leases expire and backoffs end that much sooner.
    pub clock_jump_rate: f64,
    /// Jobs each worker may hold waiting for a slot (0 in two worlds of three).
    pub prefetch: u32,
}

impl Params {
    /// Draw a world from `seed`.
    pub fn draw(seed: u64) -> Params {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x6a09_e667_f3bc_c909);
        let ms =
            |rng: &mut fastrand::Rng, lo: u64, hi: u64| Duration::from_millis(rng.u64(lo..=hi));
        // Rates are per step: scaled by the tick, a world sees as many
        // faults per simulated second whatever the tick.
        let per_step = TICK.as_secs_f64() / 0.010;
        let chance =
            |rng: &mut fastrand::Rng, max: f64| if rng.bool() { 0.0 } else { rng.f64() * max };
        let rate = |rng: &mut fastrand::Rng, max: f64| chance(rng, max) * per_step;
        let lease = ms(&mut rng, 600, 4000);
        let mut jobs = Vec::new();
        for _ in 0..rng.usize(3..=24) {
            let kind = rng.u8(0..10);
            let behavior = match kind {
                0..=3 => Behavior {
                    run: Some(ms(&mut rng, 10, 800)),
                    ignores_term: false,
                    code: 0,
                },
                4..=5 => Behavior {
                    run: Some(ms(&mut rng, 1000, 8000)),
                    ignores_term: rng.bool(),
                    code: 0,
                },
                6 => Behavior {
                    run: None,
                    ignores_term: rng.bool(),
                    code: 0,
                },
                7 => Behavior {
                    run: Some(ms(&mut rng, 10, 500)),
                    ignores_term: false,
                    code: rng.i32(1..=3),
                },
                _ => Behavior {
                    run: Some(ms(&mut rng, 2000, 6000)),
                    ignores_term: rng.bool(),
                    code: 0,
                },
            };
            // A job that never ends must have a timeout, or nothing could finish it.
            let timeout = match (behavior.run, kind) {
                (None, _) | (_, 8) => Some(ms(&mut rng, 300, 3000)),
                _ if rng.u8(0..6) == 0 => Some(ms(&mut rng, 300, 5000)),
                _ => None,
            };
            let delay = if rng.u8(0..4) == 0 {
                ms(&mut rng, 0, 5000)
            } else {
                Duration::ZERO
            };
            jobs.push((behavior, timeout, rng.u32(1..=3), delay));
        }
        Params {
            workers: rng.usize(1..=4),
            concurrency: rng.u32(1..=4),
            batch: rng.u32(1..=4),
            shutdown_timeout: ms(&mut rng, 0, 5000),
            kill_grace: ms(&mut rng, 100, 2000),
            lease,
            poll: ms(&mut rng, 20, 500),
            chaos: ms(&mut rng, 5_000, 30_000),
            signal_rate: rate(&mut rng, 0.01),
            crash_rate: rate(&mut rng, 0.003),
            partition_rate: rate(&mut rng, 0.003),
            outage_rate: rate(&mut rng, 0.002),
            cancel_rate: rate(&mut rng, 0.01),
            store_error_rate: chance(&mut rng, 0.3),
            store_delay: ms(&mut rng, 0, 300),
            latency: ms(&mut rng, 1, 100),
            // Drawn last, so the faults drawn before keep their values.
            claim_reply_fault: chance(&mut rng, 0.3),
            poison: if rng.u8(0..3) == 0 {
                Some((JobId(rng.i64(1..=jobs.len() as i64)), rng.u32(0..=2)))
            } else {
                None
            },
            clock_jump_rate: rate(&mut rng, 0.002),
            prefetch: if rng.u8(0..3) == 0 { rng.u32(1..=4) } else { 0 },
            jobs,
        }
    }

    fn machine(&self) -> Config {
        Config {
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            batch_max: self.batch,
            poll_interval: self.poll,
            shutdown_timeout: self.shutdown_timeout,
            kill_grace: self.kill_grace,
            lease: self.lease,
            store_grace: Duration::from_secs(2),
            max_store_backoff: Duration::from_millis(500),
        }
    }
}

/// How one worker incarnation ended.
#[derive(Clone, Debug)]
struct ExitRecord {
    worker: String,
    host: String,
    code: i32,
    at: Duration,
    fatal: Option<String>,
    trace: String,
    abandoned: Vec<dockhand::job::Lease>,
}

/// State shared between the hosts and the checker (one thread: the lock is
/// never contended; it only satisfies `Send` bounds).
#[derive(Default)]
pub struct Shared {
    store: Option<MemoryStore>,
    signals: BTreeMap<String, mpsc::Sender<Signal>>,
    incarnations: BTreeMap<String, u32>,
    current: BTreeMap<String, String>,
    /// Simulated processes alive: (worker, job) → lease token.
    pub alive: BTreeMap<(String, JobId), LeaseToken>,
    /// Every claim a worker actually started: (worker, job, token).
    pub started: BTreeSet<(String, JobId, i64)>,
    /// Simulated milliseconds, the store's clock: set after every step, so
    /// the operator's calls from outside the hosts read simulated time too.
    clock: Arc<std::sync::atomic::AtomicI64>,
    /// Starts in order, for the checker: (worker, job, simulated time).
    pub starts: Vec<(String, JobId, Duration)>,
    exits: Vec<ExitRecord>,
    claims: Vec<ClaimLog>,
    fault_rng: Option<fastrand::Rng>,
    plant: Option<Plant>,
    store_error_rate: f64,
    store_delay: Duration,
    store_errors_injected: u64,
    last_store_error: Option<Duration>,
    claim_reply_fault: f64,
    claim_replies_lost: u64,
    claim_replies_late: u64,
    /// Leases whose claim reply was lost or late: (job, token) → (when the
    /// store claimed it, how long until the worker could know).
    faulted_claims: BTreeMap<(JobId, i64), (Duration, Duration)>,
    /// Workers with a claim whose reply was lost or late.
    faulted_workers: BTreeSet<String>,
    /// The poisoned job and how many outcomes of any kind are still refused.
    poison: Option<(JobId, u32)>,
    outcomes_refused: u64,
    /// When the database refused an outcome of any kind for good: the
    /// worker then leaves the job to its lease.
    refused_whole: Vec<(JobId, Duration)>,
}

fn lock(shared: &Arc<Mutex<Shared>>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

struct SharedFaults(Arc<Mutex<Shared>>);

impl Faults for SharedFaults {
    fn next(&self) -> (bool, Duration) {
        let mut shared = lock(&self.0);
        let (rate, max_delay) = (shared.store_error_rate, shared.store_delay);
        let Some(rng) = shared.fault_rng.as_mut() else {
            return (false, Duration::ZERO);
        };
        let fail = rate > 0.0 && rng.f64() < rate;
        let delay = Duration::from_millis(rng.u64(0..=max_delay.as_millis() as u64));
        if fail {
            shared.store_errors_injected += 1;
            shared.last_store_error = turmoil::sim_elapsed();
        }
        (fail, delay)
    }

    fn log_claim(&self, claim: ClaimLog) {
        lock(&self.0).claims.push(claim);
    }

    fn claim_reply(&self, worker: &str, jobs: &[ClaimedJob]) -> ReplyFate {
        let mut shared = lock(&self.0);
        let rate = shared.claim_reply_fault;
        let Some(rng) = shared.fault_rng.as_mut() else {
            return ReplyFate::Deliver;
        };
        if rate == 0.0 || rng.f64() >= rate {
            return ReplyFate::Deliver;
        }
        // How long until the worker can know the reply is not coming: at
        // once when the connection closes, at its store timeout when the
        // reply is slower than that.
        let (fate, unknown_for) = if rng.bool() {
            shared.claim_replies_lost += 1;
            (ReplyFate::Lose, Duration::ZERO)
        } else {
            let late = Duration::from_millis(rng.u64(1..=2 * STORE_TIMEOUT.as_millis() as u64));
            shared.claim_replies_late += 1;
            (ReplyFate::Delay(late), late.min(STORE_TIMEOUT))
        };
        let at = turmoil::sim_elapsed().unwrap_or_default();
        shared.faulted_workers.insert(worker.to_string());
        for job in jobs {
            shared
                .faulted_claims
                .insert((job.lease.job, job.lease.token.0), (at, unknown_for));
        }
        fate
    }

    fn refuse_record(&self, completions: &[Completion]) -> Option<String> {
        let mut shared = lock(&self.0);
        let (job, whole) = shared.poison?;
        let outcome = completions.iter().find(|c| c.lease.job == job)?;
        let why = if whole > 0 {
            shared.poison = Some((job, whole - 1));
            let at = turmoil::sim_elapsed().unwrap_or_default();
            shared.refused_whole.push((job, at));
            "row is locked by an integrity check"
        } else if !outcome.output.is_empty() {
            "invalid byte sequence in the output"
        } else {
            return None;
        };
        shared.outcomes_refused += 1;
        Some(format!("job {job}: {why} (refused for good)"))
    }

    fn ignores_recovery(&self) -> bool {
        lock(&self.0).plant == Some(Plant::RecoveryIgnored)
    }
}

/// Poll a future that completes without waiting (the in-memory store's).
fn now_or_never<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("the in-memory store never waits"),
    }
}

/// A world's result.
#[derive(Debug)]
pub struct Report {
    /// The trace.
    pub trace: String,
    /// FNV-1a of the trace.
    pub hash: u64,
    /// Counts for the summary.
    pub stats: Stats,
}

/// What happened in a world.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Signals sent.
    pub signals: u64,
    /// Crashes.
    pub crashes: u64,
    /// Partitions.
    pub partitions: u64,
    /// Store errors injected.
    pub store_errors: u64,
    /// Claim replies lost or delayed.
    pub claim_reply_faults: u64,
    /// Outcomes the database refused for good.
    pub outcomes_refused: u64,
    /// Jumps of the database's clock.
    pub clock_jumps: u64,
    /// Jobs.
    pub jobs: u64,
    /// Worker incarnations that exited.
    pub exits: u64,
    /// Simulated time.
    pub simulated: Duration,
}

/// A broken invariant, with what it takes to replay it.
#[derive(Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The world.
    pub params: String,
    /// What broke.
    pub message: String,
    /// The last lines of the trace.
    pub trace_tail: String,
    /// The whole trace.
    pub trace: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} broke an invariant: {}",
            self.seed, self.message
        )?;
        writeln!(f, "world: {}", self.params)?;
        writeln!(f, "--- trace tail ---\n{}", self.trace_tail)?;
        write!(
            f,
            "replay: DOCKHAND_SEED={} cargo test -p dockhand-sim --test sweep replay -- --nocapture",
            self.seed
        )
    }
}

struct World {
    seed: u64,
    params: Params,
    trace: String,
    stats: Stats,
    shared: Arc<Mutex<Shared>>,
    first_signal: BTreeMap<String, Duration>,
    /// Per worker host: when it was last disturbed (partitioned, repaired, crashed).
    disturbed: BTreeMap<String, Duration>,
    partitioned: BTreeSet<String>,
    crashed: BTreeMap<String, Duration>,
    /// When each incarnation ended (crash or exit): its leases expire legitimately after.
    ended: BTreeMap<String, Duration>,
    /// Leases workers said they gave up (worker, job, token).
    abandoned: BTreeSet<(String, JobId, i64)>,
    /// When the operator first cancelled each job.
    cancels: BTreeMap<JobId, Duration>,
    exited_hosts: BTreeMap<String, Duration>,
    repairs: Vec<(Duration, String)>,
    exits_seen: usize,
    claims_seen: usize,
    starts_seen: usize,
    /// Jumps of the database's clock: (store time just after, total ahead).
    clock_jumps: Vec<(Duration, Duration)>,
    /// Jobs alive on two workers at once, since when.
    overlaps: BTreeMap<JobId, Duration>,
    rng: fastrand::Rng,
}

fn hosts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i}")).collect()
}

impl World {
    fn line(&mut self, at: Duration, text: impl fmt::Display) {
        let _ = writeln!(
            self.trace,
            "{:>4}.{:03}s  {text}",
            at.as_secs(),
            at.subsec_millis()
        );
    }

    fn fail(&self, message: impl Into<String>) -> Failure {
        let lines: Vec<&str> = self.trace.lines().collect();
        Failure {
            seed: self.seed,
            params: format!("{:?}", self.params),
            message: message.into(),
            trace_tail: lines[lines.len().saturating_sub(40)..].join("\n"),
            trace: self.trace.clone(),
        }
    }

    fn store(&self) -> Option<MemoryStore> {
        lock(&self.shared).store.clone()
    }

    fn send_signal(&mut self, at: Duration, host: &str, signal: Signal) {
        let (sender, worker) = {
            let shared = lock(&self.shared);
            (
                shared.signals.get(host).cloned(),
                shared.current.get(host).cloned(),
            )
        };
        let (Some(sender), Some(worker)) = (sender, worker) else {
            return;
        };
        let planted = lock(&self.shared).plant == Some(Plant::SignalsNotDelivered);
        if (planted && signal != Signal::Usr1) || sender.try_send(signal).is_ok() {
            self.stats.signals += 1;
            if signal != Signal::Usr1 {
                self.first_signal.entry(worker.clone()).or_insert(at);
            }
            self.line(at, format_args!("operator: {signal} to {worker}"));
        }
    }

    /// Checks after every step.
    fn check_step(&mut self, now: Duration) -> Result<(), Failure> {
        let (new_claims, new_exits, new_starts, alive) = {
            let shared = lock(&self.shared);
            (
                shared.claims[self.claims_seen..].to_vec(),
                shared.exits[self.exits_seen..].to_vec(),
                shared.starts[self.starts_seen..].to_vec(),
                shared.alive.clone(),
            )
        };
        self.claims_seen += new_claims.len();
        self.exits_seen += new_exits.len();
        self.starts_seen += new_starts.len();
        for claim in new_claims {
            if !claim.jobs.is_empty() {
                self.line(
                    claim.sent_at,
                    format_args!("{} claimed {:?}", claim.worker, claim.jobs),
                );
            }
            if let Some(signal) = self.first_signal.get(&claim.worker) {
                if claim.sent_at > *signal + 2 * TICK {
                    return Err(self.fail(format!(
                        "{} sent a claim at {:?}, after its first shutdown signal at {signal:?}",
                        claim.worker, claim.sent_at
                    )));
                }
            }
        }
        // A claim reply that arrives after the first signal is handed back:
        // those jobs never start (nor do recovered ones).
        for (worker, job, at) in new_starts {
            if let Some(signal) = self.first_signal.get(&worker) {
                if at > *signal + 2 * TICK {
                    return Err(self.fail(format!(
                        "{worker} started job {job} at {at:?}, after its first shutdown signal at {signal:?}: a claim reply after the signal must be handed back"
                    )));
                }
            }
        }
        self.check_overlaps(&alive, now)?;
        let mut per_worker: BTreeMap<&str, u32> = BTreeMap::new();
        for (worker, _) in alive.keys() {
            *per_worker.entry(worker).or_default() += 1;
        }
        if let Some((worker, n)) = per_worker
            .iter()
            .find(|(_, n)| **n > self.params.concurrency)
        {
            return Err(self.fail(format!(
                "{worker} runs {n} jobs, above concurrency {}",
                self.params.concurrency
            )));
        }
        if let Some(store) = self.store() {
            let mut by_job: BTreeMap<JobId, Vec<(&str, LeaseToken)>> = BTreeMap::new();
            for ((worker, job), token) in &alive {
                by_job.entry(*job).or_default().push((worker, *token));
            }
            for (job, holders) in by_job.iter().filter(|(_, h)| h.len() > 1) {
                let row = now_or_never(store.get(*job)).ok().flatten();
                let live = holders
                    .iter()
                    .filter(|(worker, token)| {
                        row.as_ref().is_some_and(|r| {
                            r.state == JobState::Running
                                && r.worker_id.as_deref() == Some(*worker)
                                && r.lease_token == token.0
                        })
                    })
                    .count();
                if live > 1 {
                    return Err(self.fail(format!("job {job} has {live} live leases")));
                }
            }
        }
        for exit in new_exits {
            self.check_exit(&exit, now)?;
        }
        Ok(())
    }

    /// Two runs of one job may overlap only while the older one learns its
    /// lease is gone: from its next heartbeat's answer, or its own lease
    /// timer when the store cannot be reached, then TERM and at most a kill
    /// grace. Longer means a run goes on under a lease the store gave away.
    fn check_overlaps(
        &mut self,
        alive: &BTreeMap<(String, JobId), LeaseToken>,
        now: Duration,
    ) -> Result<(), Failure> {
        let mut holders: BTreeMap<JobId, Vec<&str>> = BTreeMap::new();
        for (worker, job) in alive.keys() {
            holders.entry(*job).or_default().push(worker);
        }
        self.overlaps
            .retain(|job, _| holders.get(job).is_some_and(|h| h.len() > 1));
        let bound =
            self.params.lease + self.params.kill_grace + STORE_TIMEOUT + Duration::from_millis(100);
        for (job, workers) in holders.iter().filter(|(_, h)| h.len() > 1) {
            let since = *self.overlaps.entry(*job).or_insert(now);
            if now.saturating_sub(since) > bound {
                return Err(self.fail(format!(
                    "job {job} has run on {} at once for {:?}, past {bound:?}: a run went on after the store gave its lease away",
                    workers.join(" and "),
                    now.saturating_sub(since)
                )));
            }
        }
        Ok(())
    }

    /// Whether the lease `token` of `job` came from a claim whose reply was
    /// lost or late.
    fn claim_was_faulted(&self, job: JobId, token: i64) -> bool {
        lock(&self.shared)
            .faulted_claims
            .contains_key(&(job, token))
    }

    /// Whether a claim reply to `worker` was lost or late.
    fn had_faulted_claims(&self, worker: &str) -> bool {
        lock(&self.shared).faulted_workers.contains(worker)
    }

    /// Whether the lease `token` of `job` came from a claim whose reply was
    /// lost or late, and expired before its worker could have recovered it:
    /// the worker learns of the loss (at once, or at its store timeout),
    /// asks with its next heartbeat (a third of a lease later at most) and
    /// hears back after a round trip. Expiring later than that means the
    /// recovery failed.
    fn recovery_was_too_late(&self, job: JobId, token: i64, expired: Duration) -> bool {
        let p = &self.params;
        lock(&self.shared)
            .faulted_claims
            .get(&(job, token))
            .is_some_and(|(claimed, unknown_for)| {
                let recovered_by = *claimed
                    + *unknown_for
                    + p.lease / 3
                    + 2 * p.latency
                    + p.store_delay
                    + 3 * TICK;
                expired <= recovered_by
            })
    }

    /// Simulated time of a store timestamp (the store's clock may have jumped ahead).
    fn sim_time(&self, store_ms: i64) -> Duration {
        let at = Duration::from_millis(store_ms.max(0) as u64);
        let ahead = self
            .clock_jumps
            .iter()
            .rev()
            .find(|(after, _)| *after <= at)
            .map_or(Duration::ZERO, |(_, ahead)| *ahead);
        at.saturating_sub(ahead)
    }

    fn check_exit(&mut self, exit: &ExitRecord, _now: Duration) -> Result<(), Failure> {
        self.stats.exits += 1;
        self.exited_hosts.insert(exit.host.clone(), exit.at);
        self.ended.entry(exit.worker.clone()).or_insert(exit.at);
        for lease in &exit.abandoned {
            self.abandoned
                .insert((exit.worker.clone(), lease.job, lease.token.0));
        }
        lock(&self.shared)
            .alive
            .retain(|(worker, _), _| *worker != exit.worker);
        self.line(
            exit.at,
            format_args!("{} exited with {}", exit.worker, exit.code),
        );
        for line in exit.trace.lines() {
            let _ = writeln!(self.trace, "             | {line}");
        }
        if let Some(fatal) = &exit.fatal {
            return if fatal.contains("cannot register") {
                Ok(())
            } else {
                Err(self.fail(format!("{} failed: {fatal}", exit.worker)))
            };
        }
        let Some(signal) = self.first_signal.get(&exit.worker).copied() else {
            return Err(self.fail(format!("{} exited without a shutdown signal", exit.worker)));
        };
        let bound = self.params.machine().exit_bound();
        let took = exit.at.saturating_sub(signal);
        if took > bound + DEREGISTER_SLACK + 3 * TICK {
            return Err(self.fail(format!(
                "{} exited {took:?} after its signal, past the bound {bound:?}",
                exit.worker
            )));
        }
        let Some(store) = self.store() else {
            return Ok(());
        };
        let jobs = now_or_never(store.list(&JobFilter {
            limit: Some(10_000),
            ..JobFilter::default()
        }))
        .map_err(|e| self.fail(e.to_string()))?;
        if exit.code == 0 {
            for job in &jobs {
                let history =
                    now_or_never(store.history(job.id)).map_err(|e| self.fail(e.to_string()))?;
                if history.iter().any(|e| {
                    e.kind == "interrupted" && e.worker_id.as_deref() == Some(exit.worker.as_str())
                }) {
                    return Err(self.fail(format!(
                        "{} exited 0 but interrupted job {}",
                        exit.worker, job.id
                    )));
                }
            }
        }
        if exit.code != 0 && exit.code != 75 {
            return Err(self.fail(format!("{} exited with {}", exit.worker, exit.code)));
        }
        // A worker that nothing disturbed (no partition, outage, store error
        // or slow network) never has to give a lease up: its heartbeats keep
        // every lease alive until the job is recorded. (A lease whose claim
        // reply came late may be short enough to give up; and the jobs of a
        // lost claim, recovered later, may fill every slot a claim in flight
        // counted on, whose jobs are then left to their leases.)
        let recovered_some = self.had_faulted_claims(&exit.worker);
        let given_up: Vec<JobId> = exit
            .abandoned
            .iter()
            .filter(|l| !self.claim_was_faulted(l.job, l.token.0))
            .map(|l| l.job)
            .collect();
        if !given_up.is_empty() && !recovered_some && self.undisturbed(&exit.host) {
            return Err(self.fail(format!(
                "{} gave up the leases of jobs {given_up:?} although nothing disturbed it: heartbeats stopped?",
                exit.worker,
            )));
        }
        // Every job this worker started and still leases in the store must be
        // one it says it abandoned (lease lost or expired, or left at the exit
        // deadline): those go to lease expiry. A claim whose reply was lost
        // (never started) is handled by lease expiry too.
        let started = lock(&self.shared).started.clone();
        if let Some(job) = jobs.iter().find(|j| {
            j.state == JobState::Running
                && j.worker_id.as_deref() == Some(exit.worker.as_str())
                && started.contains(&(exit.worker.clone(), j.id, j.lease_token))
                && !exit
                    .abandoned
                    .iter()
                    .any(|l| l.job == j.id && l.token.0 == j.lease_token)
        }) {
            return Err(self.fail(format!(
                "{} exited leaving job {} running under its lease without abandoning it",
                exit.worker, job.id
            )));
        }
        Ok(())
    }

    /// Whether `host` and the store were healthy for the whole run: no
    /// fault, and a store round trip within a sixth of the lease (the design
    /// rule under which a worker never has to give a lease up: a heartbeat
    /// every third of a lease, answered before the next one is due).
    fn undisturbed(&self, host: &str) -> bool {
        let p = &self.params;
        !self.disturbed.contains_key(host)
            && self.clock_jumps.is_empty()
            && lock(&self.shared).outcomes_refused == 0
            && p.store_error_rate == 0.0
            && p.outage_rate == 0.0
            && 2 * (p.latency + TICK) + p.store_delay <= p.lease / 6
    }

    /// Checks once every job is final.
    fn check_end(&mut self) -> Result<(), Failure> {
        let Some(store) = self.store() else {
            return Err(self.fail("no store"));
        };
        let jobs = now_or_never(store.list(&JobFilter {
            limit: Some(10_000),
            ..JobFilter::default()
        }))
        .map_err(|e| self.fail(e.to_string()))?;
        for job in jobs.iter().rev() {
            let history =
                now_or_never(store.history(job.id)).map_err(|e| self.fail(e.to_string()))?;
            let detail = |e: &dockhand::store::JobEvent| e.detail.clone().unwrap_or_default();
            let runs = history
                .iter()
                .filter(|e| {
                    matches!(e.kind.as_str(), "succeeded" | "retry-scheduled")
                        || (e.kind == "failed" && !detail(e).contains("worker shutdown"))
                        || (e.kind == "cancelled" && detail(e).starts_with("attempt failed"))
                })
                .count() as u32;
            if job.attempts != runs {
                return Err(self.fail(format!(
                    "job {} has attempts = {} but {} runs ended in success or failure (interruptions must not use attempts)",
                    job.id, job.attempts, runs
                )));
            }
            // A cancel is never lost: once asked for, the job is not claimed
            // again and ends cancelled (or succeeded, if its run finished).
            let cancelled_at = history
                .iter()
                .position(|e| matches!(e.kind.as_str(), "cancel-requested" | "cancelled"));
            if let Some(at) = cancelled_at {
                if let Some(claim) = history[at..].iter().find(|e| e.kind == "claimed") {
                    return Err(self.fail(format!(
                        "job {} was claimed again at {}ms after it was cancelled: the cancel was lost",
                        job.id, claim.at
                    )));
                }
                if !matches!(job.state, JobState::Cancelled | JobState::Succeeded) {
                    return Err(self.fail(format!(
                        "job {} was cancelled but ended {}",
                        job.id, job.state
                    )));
                }
            }
            for event in history.iter().filter(|e| e.kind == "lease-expired") {
                let at = self.sim_time(event.at);
                let Some(worker) = event.worker_id.as_deref() else {
                    continue;
                };
                // A lease the worker itself gave up (its local lease timer fired)
                // keeps heartbeating until the job is killed, up to a kill grace
                // later: widen the window by that much. A healthy, reachable
                // worker must never need to give a lease up, though.
                let token = event.lease_token.unwrap_or(-1);
                let gave_up = self
                    .abandoned
                    .contains(&(worker.to_string(), job.id, token));
                let extra = if gave_up {
                    self.params.kill_grace + self.params.lease + Duration::from_secs(1)
                } else {
                    Duration::ZERO
                };
                let host = worker.split('#').next().unwrap_or("");
                let window = self.params.lease + Duration::from_secs(1) + extra;
                let disturbed = self
                    .disturbed
                    .get(host)
                    .is_some_and(|d| at.saturating_sub(*d) < window + self.params.lease)
                    || self.ended.get(worker).is_some_and(|e| *e <= at)
                    || lock(&self.shared)
                        .last_store_error
                        .is_some_and(|e| at.saturating_sub(e) < window + self.params.lease)
                    || self.params.store_error_rate > 0.0
                    || self.recovery_was_too_late(job.id, token, at)
                    // A reply that came late leaves little of the lease: the
                    // worker may rightly stop the job and give the lease up
                    // before a heartbeat renews it.
                    // So may a claim's jobs when recovered ones filled
                    // the slots it counted on.
                    || (gave_up
                        && (self.claim_was_faulted(job.id, token)
                            || self.had_faulted_claims(worker)))
                    || lock(&self.shared).refused_whole.iter().any(|(refused, when)| {
                        *refused == job.id && *when <= at && at < *when + window + self.params.lease
                    })
                    || self.clock_jumps.iter().any(|(after, ahead)| {
                        let jumped_at = after.saturating_sub(*ahead);
                        at + TICK >= jumped_at && at < jumped_at + window + self.params.lease
                    })
                    // A message waits up to a tick for the next step.
                    || 2 * (self.params.latency + TICK) + self.params.store_delay
                        > self.params.lease / 6;
                if !disturbed {
                    let story: String = history
                        .iter()
                        .map(|e| {
                            format!(
                                "\n  {:?} {} {} token {} {}",
                                self.sim_time(e.at),
                                e.kind,
                                e.worker_id.as_deref().unwrap_or("-"),
                                e.lease_token.unwrap_or(-1),
                                e.detail.as_deref().unwrap_or("")
                            )
                        })
                        .collect();
                    let started =
                        lock(&self.shared)
                            .started
                            .contains(&(worker.to_string(), job.id, token));
                    let why = if self.claim_was_faulted(job.id, token) && !started {
                        "the reply to its claim was lost and the claim was not recovered"
                    } else {
                        "heartbeats stopped"
                    };
                    return Err(self.fail(format!(
                        "job {}'s lease expired at {at:?} although {worker} was alive and reachable: {why}; its history:{story}",
                        job.id
                    )));
                }
            }
            self.line(
                self.stats.simulated,
                format_args!(
                    "job {} {} attempts={} interruptions={}",
                    job.id, job.state, job.attempts, job.interruptions
                ),
            );
        }
        Ok(())
    }
}

/// Run the world of `seed`.
pub fn run(seed: u64) -> Result<Report, Failure> {
    run_world(seed, None)
}

/// Run the world of `seed` with a bug planted in the simulation's own parts
/// (tests of the simulation itself).
pub fn run_with(seed: u64, plant: Plant) -> Result<Report, Failure> {
    run_world(seed, Some(plant))
}

fn worker_host(
    sim: &mut turmoil::Sim<'_>,
    host: &str,
    params: &Params,
    shared: &Arc<Mutex<Shared>>,
) {
    let (host_name, config, shared) = (host.to_string(), params.machine(), shared.clone());
    sim.host(host, move || {
        let (host, config, shared) = (host_name.clone(), config.clone(), shared.clone());
        async move {
            let (worker, rx, pid) = {
                let mut s = lock(&shared);
                let n = s.incarnations.entry(host.clone()).or_insert(0);
                *n += 1;
                let n = *n;
                let worker = format!("{host}#{n}");
                let (tx, rx) = mpsc::channel(16);
                s.signals.insert(host.clone(), tx);
                s.current.insert(host.clone(), worker.clone());
                (worker, rx, n)
            };
            let shell_config = ShellConfig {
                worker: WorkerInfo {
                    id: worker.clone(),
                    host: host.clone(),
                    pid,
                    queues: vec!["default".into()],
                    concurrency: config.concurrency,
                    lease: config.lease,
                },
                queues: vec!["default".into()],
                machine: config,
                store_timeout: STORE_TIMEOUT,
                observer: if debug_wanted() {
                    std::sync::Arc::new(DebugObserver(worker.clone()))
                } else {
                    std::sync::Arc::new(dockhand::shell::NoObserver)
                },
                status_to_stderr: false,
            };
            let executor = SimExecutor::new(&worker, shared.clone());
            let store = RemoteStore::new("db").with_plant(lock(&shared).plant);
            let report = shell::run(store, executor, rx, shell_config).await;
            let at = turmoil::sim_elapsed().unwrap_or_default();
            let mut s = lock(&shared);
            s.signals.remove(&host);
            s.exits.push(ExitRecord {
                worker,
                host,
                code: report.code,
                at,
                fatal: report.fatal,
                trace: report.trace,
                abandoned: report.abandoned,
            });
            Ok(())
        }
    });
}

fn run_world(seed: u64, plant: Option<Plant>) -> Result<Report, Failure> {
    let params = Params::draw(seed);
    let shared = Arc::new(Mutex::new(Shared {
        fault_rng: Some(fastrand::Rng::with_seed(seed ^ 0xbb67_ae85_84ca_a73b)),
        plant,
        store_error_rate: params.store_error_rate,
        store_delay: params.store_delay,
        claim_reply_fault: params.claim_reply_fault,
        poison: params.poison,
        ..Shared::default()
    }));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(TICK)
        .simulation_duration(params.chaos + HEALING_LIMIT + Duration::from_secs(120))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(params.latency)
        .build();
    let jobs: Vec<NewJob> = params
        .jobs
        .iter()
        .map(|(behavior, timeout, max_attempts, delay)| {
            let mut job = NewJob::new(behavior.command());
            job.spec.timeout_ms = timeout.map(|t| t.as_millis() as u64);
            job.max_attempts = *max_attempts;
            job.delay = *delay;
            job
        })
        .collect();
    {
        let shared = shared.clone();
        sim.host("db", move || {
            let (shared, jobs) = (shared.clone(), jobs.clone());
            async move {
                // Made inside the host, so its clock is the simulated one.
                let (store, fresh) = {
                    let mut s = lock(&shared);
                    let fresh = s.store.is_none();
                    let clock = s.clock.clone();
                    let store = s
                        .store
                        .get_or_insert_with(|| MemoryStore::with_clock(0, seed, clock))
                        .clone();
                    (store, fresh)
                };
                if fresh {
                    store.enqueue_many(&jobs).await?;
                }
                protocol::serve(store, Rc::new(SharedFaults(shared))).await
            }
        });
    }
    let hosts = hosts(params.workers);
    for host in &hosts {
        worker_host(&mut sim, host, &params, &shared);
    }
    let mut world = World {
        seed,
        stats: Stats {
            jobs: params.jobs.len() as u64,
            ..Stats::default()
        },
        params,
        trace: String::new(),
        shared,
        first_signal: BTreeMap::new(),
        disturbed: BTreeMap::new(),
        partitioned: BTreeSet::new(),
        crashed: BTreeMap::new(),
        ended: BTreeMap::new(),
        abandoned: BTreeSet::new(),
        cancels: BTreeMap::new(),
        exited_hosts: BTreeMap::new(),
        repairs: Vec::new(),
        exits_seen: 0,
        claims_seen: 0,
        starts_seen: 0,
        clock_jumps: Vec::new(),
        overlaps: BTreeMap::new(),
        rng: fastrand::Rng::with_seed(seed ^ 0x3c6e_f372_fe94_f82b),
    };
    let p = world.params.clone();
    world.line(
        Duration::ZERO,
        format_args!("world {seed}: {} workers, {} jobs", p.workers, p.jobs.len()),
    );

    // ---- chaos ----
    let mut restarts: Vec<(Duration, String)> = Vec::new();
    while sim.elapsed() < p.chaos {
        step(&mut sim, &mut world)?;
        let now = sim.elapsed();
        let rng = &mut world.rng;
        let roll = rng.f64();
        let host = hosts[rng.usize(0..hosts.len())].clone();
        if roll < p.signal_rate {
            let signal = match world.rng.u8(0..10) {
                0..=5 => Signal::Term,
                6..=7 => Signal::Int,
                _ => Signal::Usr1,
            };
            if !world.crashed.contains_key(&host) {
                world.send_signal(now, &host, signal);
            }
        } else if roll < p.signal_rate + p.crash_rate
            && !world.crashed.contains_key(&host)
            && sim.is_host_running(host.as_str())
        {
            sim.crash(host.as_str());
            world.stats.crashes += 1;
            world.crashed.insert(host.clone(), now);
            if let Some(worker) = lock(&world.shared).current.get(&host).cloned() {
                world.ended.entry(worker).or_insert(now);
            }
            world.disturbed.insert(host.clone(), now);
            let worker = lock(&world.shared)
                .current
                .get(&host)
                .cloned()
                .unwrap_or_default();
            lock(&world.shared).alive.retain(|(w, _), _| *w != worker);
            lock(&world.shared).signals.remove(&host);
            world.line(now, format_args!("operator: crash {worker} (SIGKILL)"));
            restarts.push((now + Duration::from_millis(world.rng.u64(200..=3000)), host));
        } else if roll < p.signal_rate + p.crash_rate + p.partition_rate + p.outage_rate
            && roll >= p.signal_rate + p.crash_rate + p.partition_rate
        {
            // The database goes away for everyone, for up to three leases.
            let until =
                now + Duration::from_millis(world.rng.u64(100..=3 * p.lease.as_millis() as u64));
            world.stats.partitions += 1;
            world.line(
                now,
                format_args!("operator: database outage until {}ms", until.as_millis()),
            );
            for host in &hosts {
                if world.partitioned.insert(host.clone()) {
                    sim.partition(host.as_str(), "db");
                    world.repairs.push((until, host.clone()));
                }
                world.disturbed.insert(host.clone(), now);
            }
        } else if roll
            < p.signal_rate + p.crash_rate + p.partition_rate + p.outage_rate + p.cancel_rate
            && roll >= p.signal_rate + p.crash_rate + p.partition_rate + p.outage_rate
        {
            let id = JobId(world.rng.i64(1..=p.jobs.len() as i64));
            if let Some(store) = world.store() {
                if let Ok(result) = now_or_never(store.cancel(id)) {
                    world.cancels.entry(id).or_insert(now);
                    world.line(now, format_args!("operator: cancel job {id}: {result:?}"));
                }
            }
        } else if roll
            < p.signal_rate
                + p.crash_rate
                + p.partition_rate
                + p.outage_rate
                + p.cancel_rate
                + p.clock_jump_rate
            && roll
                >= p.signal_rate + p.crash_rate + p.partition_rate + p.outage_rate + p.cancel_rate
        {
            // The database's clock steps ahead (NTP, a VM resumed): every
            // lease ends that much sooner in its eyes.
            if let Some(store) = world.store() {
                let by = Duration::from_millis(world.rng.u64(100..=2 * p.lease.as_millis() as u64));
                store.advance(by);
                let ahead = world.clock_jumps.last().map_or(Duration::ZERO, |j| j.1) + by;
                world.clock_jumps.push((now + ahead, ahead));
                world.stats.clock_jumps += 1;
                world.line(
                    now,
                    format_args!(
                        "operator: the database's clock jumps {}ms ahead",
                        by.as_millis()
                    ),
                );
            }
        } else if roll < p.signal_rate + p.crash_rate + p.partition_rate
            && !world.partitioned.contains(&host)
        {
            sim.partition(host.as_str(), "db");
            world.stats.partitions += 1;
            world.partitioned.insert(host.clone());
            world.disturbed.insert(host.clone(), now);
            world.line(now, format_args!("operator: partition {host} from db"));
            world.repairs.push((
                now + Duration::from_millis(
                    world
                        .rng
                        .u64(200..=(3 * p.lease.as_millis() as u64).max(6000)),
                ),
                host,
            ));
        }
        // Restart crashed hosts and exited workers (a rolling restart), repair partitions.
        let due: Vec<String> = restarts
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, h)| h.clone())
            .collect();
        restarts.retain(|(at, _)| *at > now);
        for host in due {
            world.crashed.remove(&host);
            world.exited_hosts.remove(&host);
            sim.bounce(host.as_str());
            world.line(now, format_args!("operator: start {host}"));
        }
        let exited: Vec<String> = world
            .exited_hosts
            .iter()
            .filter(|(h, _)| !restarts.iter().any(|(_, r)| r == *h))
            .map(|(h, _)| h.clone())
            .collect();
        for host in exited {
            restarts.push((now + Duration::from_millis(world.rng.u64(100..=2000)), host));
        }
        repair_due(&mut sim, &mut world, now);
    }

    // ---- healing ----
    let healed_at = sim.elapsed();
    for host in std::mem::take(&mut world.partitioned) {
        sim.repair(host.as_str(), "db");
        world.disturbed.insert(host.clone(), healed_at);
    }
    world.repairs.clear();
    {
        let mut s = lock(&world.shared);
        s.store_error_rate = 0.0;
        s.store_delay = Duration::ZERO;
        s.claim_reply_fault = 0.0;
    }
    world.line(
        healed_at,
        "operator: heal every fault; a healthy worker joins",
    );
    worker_host(&mut sim, "healer", &p, &world.shared);
    let store = world.store().ok_or_else(|| world.fail("no store"))?;
    loop {
        step(&mut sim, &mut world)?;
        // Counts, not rows: this runs after every step of the healing phase.
        let stats = now_or_never(store.queue_stats()).map_err(|e| world.fail(e.to_string()))?;
        if stats.iter().all(|q| q.ready + q.scheduled + q.running == 0) {
            break;
        }
        if sim.elapsed() > healed_at + HEALING_LIMIT {
            let jobs = now_or_never(store.list(&JobFilter {
                limit: Some(10_000),
                ..JobFilter::default()
            }))
            .map_err(|e| world.fail(e.to_string()))?;
            let open: Vec<String> = jobs
                .iter()
                .filter(|j| !j.state.is_final())
                .map(|j| format!("{} {}", j.id, j.state))
                .collect();
            return Err(world.fail(format!(
                "liveness: jobs not final {HEALING_LIMIT:?} after healing: {open:?}"
            )));
        }
    }
    // ---- shutdown of whoever is still running ----
    let now = sim.elapsed();
    let running: Vec<String> = lock(&world.shared).signals.keys().cloned().collect();
    for host in &running {
        world.send_signal(now, host, Signal::Term);
    }
    let limit = now + p.machine().exit_bound() + DEREGISTER_SLACK + Duration::from_secs(1);
    while !lock(&world.shared).signals.is_empty() {
        if sim.elapsed() > limit {
            return Err(world.fail("workers did not exit after the final SIGTERM"));
        }
        step(&mut sim, &mut world)?;
    }
    world.stats.simulated = sim.elapsed();
    {
        let shared = lock(&world.shared);
        world.stats.store_errors = shared.store_errors_injected;
        world.stats.claim_reply_faults = shared.claim_replies_lost + shared.claim_replies_late;
        world.stats.outcomes_refused = shared.outcomes_refused;
    }
    world.check_end()?;
    let hash = fnv1a(world.trace.as_bytes());
    Ok(Report {
        trace: world.trace,
        hash,
        stats: world.stats,
    })
}

fn step(sim: &mut turmoil::Sim<'_>, world: &mut World) -> Result<(), Failure> {
    if let Err(error) = sim.step() {
        return Err(world.fail(format!("a host failed: {error}")));
    }
    let now = sim.elapsed();
    lock(&world.shared)
        .clock
        .store(now.as_millis() as i64, std::sync::atomic::Ordering::Relaxed);
    world.check_step(now)
}

fn repair_due(sim: &mut turmoil::Sim<'_>, world: &mut World, now: Duration) {
    let due: Vec<String> = world
        .repairs
        .iter()
        .filter(|(at, _)| *at <= now)
        .map(|(_, h)| h.clone())
        .collect();
    world.repairs.retain(|(at, _)| *at > now);
    for host in due {
        sim.repair(host.as_str(), "db");
        world.partitioned.remove(&host);
        world.disturbed.insert(host.clone(), now);
        world.line(now, format_args!("operator: repair {host}"));
    }
}

/// Whether `DOCKHAND_SIM_DEBUG` asks for every worker's events, actions and
/// notes on stderr (to read one seed's story; output only, so the trace and
/// its hash stay the same).
fn debug_wanted() -> bool {
    std::env::var_os("DOCKHAND_SIM_DEBUG").is_some()
}

/// Prints what one worker's machine sees and does, stamped with simulated time.
#[derive(Debug)]
struct DebugObserver(String);

impl DebugObserver {
    fn print(&self, what: &str, item: &dyn fmt::Debug) {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        eprintln!("{:>9.3}s {} {what} {item:?}", at.as_secs_f64(), self.0);
    }
}

impl dockhand::shell::Observer for DebugObserver {
    fn on_action(&self, action: &dockhand::machine::Action) {
        self.print("action", action);
    }
    fn on_event(&self, event: &dockhand::machine::Event) {
        self.print("event", event);
    }
    fn on_note(&self, note: &dockhand::machine::Note) {
        self.print("note", note);
    }
}

/// FNV-1a, 64 bits: a stable hash of a trace.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database answers the worker's registration slowly, then every
    /// other call at once.
    struct SlowRegistration(std::cell::Cell<bool>);

    impl Faults for SlowRegistration {
        fn next(&self) -> (bool, Duration) {
            if self.0.replace(false) {
                (false, Duration::from_millis(900))
            } else {
                (false, Duration::ZERO)
            }
        }
        fn log_claim(&self, _claim: ClaimLog) {}
    }

    /// A registration that takes most of a lease must not eat into the
    /// leases of the first claim: that claim is sent after it, and its jobs
    /// hold their leases from then. (The machine was once made before
    /// registering, stamped its first claim with that older time, and
    /// stopped the job it got as if its lease were running out.)
    #[test]
    fn a_slow_registration_does_not_shorten_the_first_leases() {
        let lease = Duration::from_millis(1200);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let store = MemoryStore::new();
        // Seeded, with a fixed latency: a registration of 900 ms plus two
        // random latencies of up to 100 ms could pass the 1 s store timeout
        // (the worker then exits without claiming), so unseeded this test
        // failed about one run in twenty.
        let mut sim = turmoil::Builder::new()
            .rng_seed(1)
            .min_message_latency(Duration::from_millis(5))
            .max_message_latency(Duration::from_millis(5))
            .tick_duration(TICK)
            .simulation_duration(Duration::from_secs(60))
            .build();
        {
            let store = store.clone();
            sim.host("db", move || {
                let store = store.clone();
                async move {
                    let mut job = NewJob::new(
                        Behavior {
                            run: Some(Duration::from_millis(2000)),
                            ignores_term: false,
                            code: 0,
                        }
                        .command(),
                    );
                    job.max_attempts = 1;
                    store.enqueue_many(&[job]).await?;
                    protocol::serve(store, Rc::new(SlowRegistration(true.into()))).await
                }
            });
        }
        let params = Params {
            workers: 1,
            concurrency: 1,
            batch: 1,
            shutdown_timeout: Duration::from_secs(5),
            kill_grace: Duration::from_secs(1),
            lease,
            poll: Duration::from_millis(100),
            ..Params::draw(0)
        };
        worker_host(&mut sim, "w0", &params, &shared);
        let mut done = None;
        while sim.elapsed() < Duration::from_secs(20) && done.is_none() {
            sim.step().expect("the hosts run");
            let history = now_or_never(store.history(JobId(1))).expect("the store answers");
            done = history
                .iter()
                .any(|e| e.kind == "succeeded" || e.kind == "lease-expired")
                .then_some(history);
        }
        let history = done.expect("the job ended within 20 s");
        let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["enqueued", "claimed", "succeeded"],
            "the first claim's job runs to its end once: {history:?}"
        );
        let started = lock(&shared).started.clone();
        assert!(
            started
                .iter()
                .any(|(_, job, token)| *job == JobId(1) && *token == 1),
            "the first claim is started, not handed back: {started:?}"
        );
    }
}
