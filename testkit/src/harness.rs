//! A model of the world around the machine, and a checker of its invariants.
//!
//! The harness plays the store, the executor and the clock. It is driven by
//! typed operations ([`Op`]) — from proptest strategies, from the fuzzer's
//! bytes, or written by hand in snapshot scenarios — and checks every
//! invariant (docs/ARCHITECTURE.md) that the machine alone must keep, after
//! every step, independently of the machine's own assertions.
//! [`Harness::finish`] then heals every fault and requires the machine to
//! stop within its bound.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use arbitrary::Arbitrary;

use dockhand::job::{
    ClaimedJob, Completion, Exit, JobId, JobSpec, JobState, Lease, LeaseToken, Outcome,
    RecordResult,
};
use dockhand::machine::trace::Trace;
use dockhand::machine::{
    Action, Config, Event, HeartbeatAnswer, Instant, JobSignal, Machine, Phase, Signal,
    StoreFailure, EXIT_INTERRUPTED, EXIT_OK,
};

/// How a simulated job behaves once started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Arbitrary)]
pub struct Behavior {
    /// Runs this long then exits; `None`: never exits on its own (stuck).
    pub run_ms: Option<u16>,
    /// Ignores TERM (only KILL ends it).
    pub ignores_term: bool,
    /// Exit code when it exits on its own.
    pub exit_code: u8,
    /// Per-job timeout, if any.
    pub timeout_ms: Option<u16>,
}

impl Behavior {
    /// Exits with 0 after `ms`.
    pub fn quick(ms: u16) -> Self {
        Behavior {
            run_ms: Some(ms),
            ignores_term: false,
            exit_code: 0,
            timeout_ms: None,
        }
    }

    /// Never exits on its own and ignores TERM.
    pub fn stuck() -> Self {
        Behavior {
            run_ms: None,
            ignores_term: true,
            exit_code: 0,
            timeout_ms: None,
        }
    }
}

/// Which signal the operator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Arbitrary)]
pub enum SignalOp {
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGUSR1.
    Usr1,
}

/// One step of a test: time passing, a signal, or one reply from the world.
#[derive(Clone, Debug, PartialEq, Eq, Arbitrary)]
pub enum Op {
    /// Let this many milliseconds pass (timers and job exits happen in order).
    Advance(u16),
    /// The operator sends a signal.
    Signal(SignalOp),
    /// Answer the claim in flight with these jobs (cut to what was asked).
    ClaimOk(Vec<Behavior>),
    /// The claim in flight fails before it commits (transient).
    ClaimErr,
    /// The claim in flight commits these jobs, but its reply is lost (a
    /// timeout): the machine only sees a transient failure.
    ClaimLost(Vec<Behavior>),
    /// Answer the claim in flight with a newer claim of the n-th job the
    /// machine holds: the store reaped our lease and the job was claimed
    /// again, by this worker.
    ClaimAgain(u8),
    /// The oldest pending start succeeds.
    StartOk,
    /// The oldest pending start fails; `true`: for want of an engine (the
    /// worker's fault, not the job's).
    StartErr(bool),
    /// The oldest record batch is written.
    RecordOk,
    /// The oldest record batch fails (transient: unreachable).
    RecordErr,
    /// The store refuses the oldest record batch as invalid (permanent).
    RecordInvalid,
    /// The oldest record batch is written except its first item, refused
    /// (stale lease: another worker claimed the job).
    RecordRefuseFirst,
    /// The oldest heartbeat succeeds.
    HeartbeatOk,
    /// The oldest heartbeat fails.
    HeartbeatErr,
    /// The oldest heartbeat reports the first of its leases lost.
    HeartbeatLoseFirst,
    /// The oldest heartbeat reports a cancel of the first of its jobs.
    HeartbeatCancelFirst,
    /// The reap in flight succeeds.
    ReapOk,
    /// The reap in flight fails.
    ReapErr,
    /// The n-th live job exits on its own now with this code.
    Exit(u8, u8),
    /// A cancel for the n-th live job arrives.
    Cancel(u8),
    /// A new-jobs wake-up.
    Wake,
    /// The last store reply is delivered again (duplicates and late replies).
    Duplicate,
}

/// Small configurations the fuzzer and property tests choose among.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Arbitrary)]
pub struct ConfigChoice {
    /// 1..=4 after mapping.
    pub concurrency: u8,
    /// 1..=3 after mapping.
    pub batch: u8,
    /// Selects among a few timing sets.
    pub timing: u8,
    /// 0 for half the values, else 1..=3 after mapping.
    pub prefetch: u8,
}

impl ConfigChoice {
    /// The machine configuration this choice stands for.
    pub fn config(self) -> Config {
        let (poll, shutdown, grace, lease) = match self.timing % 3 {
            0 => (100, 1000, 500, 3000),
            1 => (250, 3000, 1000, 900),
            _ => (50, 0, 200, 600),
        };
        Config {
            concurrency: u32::from(self.concurrency % 4) + 1,
            prefetch: if self.prefetch < 128 {
                0
            } else {
                u32::from(self.prefetch % 3) + 1
            },
            batch_max: u32::from(self.batch % 3) + 1,
            poll_interval: Duration::from_millis(poll),
            shutdown_timeout: Duration::from_millis(shutdown),
            kill_grace: Duration::from_millis(grace),
            lease: Duration::from_millis(lease),
            store_grace: Duration::from_millis(700),
            max_store_backoff: Duration::from_millis(400),
        }
    }
}

/// A whole fuzz or property case.
#[derive(Clone, Debug, Arbitrary)]
pub struct Case {
    /// The configuration.
    pub config: ConfigChoice,
    /// The steps.
    pub ops: Vec<Op>,
}

impl Case {
    /// The case that fuzzer bytes stand for (`None` when they are too short).
    pub fn from_bytes(data: &[u8]) -> Option<Case> {
        Case::arbitrary(&mut arbitrary::Unstructured::new(data)).ok()
    }
}

/// Most ops one case runs, so a fuzz input cannot run forever.
pub const MAX_OPS: usize = 2_000;

#[derive(Clone, Debug)]
struct Proc {
    lease: Lease,
    behavior: Behavior,
    started_at: Instant,
    exit_at: Option<Instant>,
    signalled: bool,
    /// Set when the proc got TERM/KILL for a reason the harness knows is not
    /// a shutdown (its own timeout, a cancel, a lost lease).
    not_shutdown: bool,
}

/// A heartbeat the machine sent and the world has not answered yet.
#[derive(Clone, Debug)]
struct PendingHeartbeat {
    request: u64,
    sent_at: Instant,
    leases: Vec<Lease>,
    recover: Vec<u64>,
}

/// The world around one machine, and what the checker remembers.
pub struct Harness {
    machine: Machine,
    config: Config,
    now: Instant,
    trace: Trace,
    record_trace: bool,
    auto: bool,
    hold_claims: bool,
    claimed_once: bool,
    next_id: i64,
    behaviors: BTreeMap<JobId, Behavior>,
    /// Request, max and send time of each claim in flight, oldest first
    /// (answered in that order).
    claim_pending: VecDeque<(u64, u32, Instant)>,
    starts: VecDeque<Lease>,
    procs: BTreeMap<JobId, Proc>,
    records: VecDeque<(u64, Vec<Completion>)>,
    heartbeats: VecDeque<PendingHeartbeat>,
    reap_pending: Option<u64>,
    /// The store's latest claim of every job it handed out.
    current: BTreeMap<JobId, Lease>,
    /// Every lease handed to the machine.
    given: BTreeSet<Lease>,
    /// When the machine sent the call that last set each lease's expiry.
    lease_start: BTreeMap<Lease, Instant>,
    /// Claims that committed but whose reply was lost, with their jobs.
    lost_claims: BTreeMap<u64, Vec<ClaimedJob>>,
    /// Claims the machine saw fail transiently and has not yet asked about
    /// in a successful heartbeat.
    uncertain: BTreeSet<u64>,
    due_exits: VecDeque<(JobId, Lease, Exit)>,
    last_reply: Option<Event>,
    // checker memory
    first_signal: Option<Instant>,
    handed_back_ok: BTreeSet<Lease>,
    started: BTreeSet<Lease>,
    acked: BTreeSet<Lease>,
    cancelled: BTreeSet<JobId>,
    stopped_by_shutdown: BTreeSet<Lease>,
    /// How each run ended, as told to the machine.
    exits: BTreeMap<Lease, Exit>,
    /// Single outcomes the store refused as invalid.
    refused_invalid: BTreeSet<Lease>,
    /// Runs whose start failed for want of an engine: they must go back to
    /// the queue without using an attempt.
    engine_away: BTreeSet<Lease>,
    /// Outcomes whose write failed transiently and that are not written yet.
    unflushed: BTreeSet<Lease>,
    /// Runs the machine told the executor to let go of.
    released: BTreeSet<Lease>,
    interrupted_emitted: bool,
    /// A heartbeat failed after the first signal: the machine may give up
    /// on recovering lost claims.
    recovery_given_up: BTreeSet<u64>,
    exit: Option<(Instant, i32)>,
    store_healthy: bool,
    /// In auto mode, answer this many record batches with a permanent refusal.
    refuse_records: u32,
    /// In auto mode, the next heartbeat reports its first lease lost.
    lose_lease: bool,
    /// In auto mode, the next heartbeat reports this job's lease lost.
    lose_job: Option<JobId>,
}

/// A broken invariant, with the trace that led to it.
#[derive(Debug)]
pub struct Violation {
    /// What was broken.
    pub message: String,
    /// The last trace lines.
    pub trace_tail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- trace tail ---\n{}",
            self.message, self.trace_tail
        )
    }
}

type Check = Result<(), Violation>;

fn transient(message: &str) -> StoreFailure {
    StoreFailure::transient(message)
}

impl Harness {
    /// A harness around a new machine. `auto` answers starts, records and
    /// heartbeats at once (for readable scenarios); otherwise only ops do.
    pub fn new(config: Config, auto: bool) -> Self {
        let machine = match Machine::new(config.clone(), Instant::ZERO) {
            Ok(machine) => machine,
            Err(error) => panic!("harness config must be valid: {error}"),
        };
        assert_eq!(
            machine.config(),
            &config,
            "the machine runs with the configuration it was given"
        );
        let mut harness = Harness {
            machine,
            config,
            now: Instant::ZERO,
            trace: Trace::new(Instant::ZERO),
            record_trace: true,
            auto,
            hold_claims: false,
            claimed_once: false,
            next_id: 1,
            behaviors: BTreeMap::new(),
            claim_pending: VecDeque::new(),
            starts: VecDeque::new(),
            procs: BTreeMap::new(),
            records: VecDeque::new(),
            heartbeats: VecDeque::new(),
            reap_pending: None,
            current: BTreeMap::new(),
            given: BTreeSet::new(),
            lease_start: BTreeMap::new(),
            lost_claims: BTreeMap::new(),
            uncertain: BTreeSet::new(),
            due_exits: VecDeque::new(),
            last_reply: None,
            first_signal: None,
            handed_back_ok: BTreeSet::new(),
            started: BTreeSet::new(),
            acked: BTreeSet::new(),
            cancelled: BTreeSet::new(),
            stopped_by_shutdown: BTreeSet::new(),
            exits: BTreeMap::new(),
            refused_invalid: BTreeSet::new(),
            engine_away: BTreeSet::new(),
            unflushed: BTreeSet::new(),
            released: BTreeSet::new(),
            interrupted_emitted: false,
            recovery_given_up: BTreeSet::new(),
            exit: None,
            store_healthy: true,
            refuse_records: 0,
            lose_lease: false,
            lose_job: None,
        };
        // The machine's first actions (its claim) come out of `new`.
        if let Err(violation) = harness.drain() {
            panic!("{violation}");
        }
        harness
    }

    /// Keep only a short trace (fuzzing and property runs).
    pub fn quiet(mut self) -> Self {
        self.record_trace = false;
        self
    }

    /// The trace so far.
    pub fn trace(&self) -> String {
        self.trace.render()
    }

    /// The machine under test.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Current time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The exit, once the machine stopped: when and with which code.
    pub fn exit(&self) -> Option<(Instant, i32)> {
        self.exit
    }

    /// Run a whole case: its ops, then the healing phase.
    pub fn run_case(case: &Case) -> Check {
        let mut harness = Harness::new(case.config.config(), false).quiet();
        for op in case.ops.iter().take(MAX_OPS) {
            harness.step(op)?;
        }
        harness.finish()
    }

    /// Apply one op.
    pub fn step(&mut self, op: &Op) -> Check {
        match op {
            Op::Advance(ms) => self.advance(Duration::from_millis(u64::from(*ms)))?,
            Op::Signal(signal) => {
                let signal = match signal {
                    SignalOp::Term => Signal::Term,
                    SignalOp::Int => Signal::Int,
                    SignalOp::Usr1 => Signal::Usr1,
                };
                self.signal(signal)?;
            }
            Op::ClaimOk(behaviors) => {
                if let Some((request, max, sent_at)) = self.claim_pending.pop_front() {
                    let jobs = behaviors
                        .iter()
                        .take(max as usize)
                        .map(|b| self.new_job(*b, sent_at))
                        .collect();
                    self.deliver(Event::ClaimReply {
                        request,
                        result: Ok(jobs),
                    })?;
                }
            }
            Op::ClaimErr => {
                if let Some((request, _, _)) = self.claim_pending.pop_front() {
                    self.uncertain.insert(request);
                    let result = Err(transient("connection refused"));
                    self.deliver(Event::ClaimReply { request, result })?;
                }
            }
            Op::ClaimLost(behaviors) => {
                if let Some((request, max, sent_at)) = self.claim_pending.pop_front() {
                    let jobs: Vec<ClaimedJob> = behaviors
                        .iter()
                        .take(max as usize)
                        .map(|b| self.new_job(*b, sent_at))
                        .collect();
                    self.lost_claims.insert(request, jobs);
                    self.uncertain.insert(request);
                    let result = Err(transient("no answer within 1000ms"));
                    self.deliver(Event::ClaimReply { request, result })?;
                }
            }
            Op::ClaimAgain(n) => self.claim_again(*n)?,
            Op::StartOk => {
                if let Some(lease) = self.starts.pop_front() {
                    self.start_ok(lease)?;
                }
            }
            Op::StartErr(transient) => {
                if let Some(lease) = self.starts.pop_front() {
                    let error = if *transient {
                        self.engine_away.insert(lease);
                        "Docker engine unreachable: connection refused"
                    } else {
                        "no such file or directory"
                    };
                    self.deliver(Event::StartFailed {
                        lease,
                        error: error.into(),
                        transient: *transient,
                    })?;
                }
            }
            Op::RecordOk => self.answer_record(RecordAnswer::Ok)?,
            Op::RecordErr => self.answer_record(RecordAnswer::Unreachable)?,
            Op::RecordInvalid => self.answer_record(RecordAnswer::Invalid)?,
            Op::RecordRefuseFirst => self.answer_record(RecordAnswer::RefuseFirst)?,
            Op::HeartbeatOk => self.answer_heartbeat(HbAnswer::Ok)?,
            Op::HeartbeatErr => self.answer_heartbeat(HbAnswer::Err)?,
            Op::HeartbeatLoseFirst => self.answer_heartbeat(HbAnswer::LoseFirst)?,
            Op::HeartbeatCancelFirst => self.answer_heartbeat(HbAnswer::CancelFirst)?,
            Op::ReapOk => self.answer_reap(true)?,
            Op::ReapErr => self.answer_reap(false)?,
            Op::Exit(n, code) => {
                if let Some(id) = self.nth_proc(*n) {
                    if let Some(proc_) = self.procs.remove(&id) {
                        let exit = Exit::Code(i32::from(*code));
                        self.exits.insert(proc_.lease, exit);
                        self.deliver(Event::JobExited {
                            lease: proc_.lease,
                            exit,
                            output: format!("job {id} output\n").into_bytes(),
                        })?;
                    }
                }
            }
            Op::Cancel(n) => {
                if let Some(id) = self.nth_proc(*n) {
                    self.cancelled.insert(id);
                    self.deliver(Event::CancelRequested { job: id })?;
                }
            }
            Op::Wake => self.deliver(Event::Wake)?,
            Op::Duplicate => {
                if let Some(event) = self.last_reply.clone() {
                    // A repeated or late store reply must change nothing
                    // harmful. (Executor events come exactly once: that is
                    // the executor's contract, and a repeat is a violation.)
                    self.deliver(event)?;
                }
            }
        }
        Ok(())
    }

    /// Send a signal.
    pub fn signal(&mut self, signal: Signal) -> Check {
        if signal == Signal::Usr1 {
            let before = self.machine.status();
            let phase = self.machine.phase();
            self.trace_event(&Event::Signal(signal));
            self.machine.handle(Event::Signal(signal), self.now);
            let mut reports = 0;
            let mut others = Vec::new();
            while let Some(action) = self.machine.poll_action() {
                self.trace_action(&action);
                match action {
                    Action::ReportStatus(status) => {
                        reports += 1;
                        if !same_state(&status, &before) {
                            return self.violation("SIGUSR1 report differs from the state");
                        }
                    }
                    other => others.push(other),
                }
            }
            self.drain_notes();
            let stopped = phase == Phase::Stopped;
            if (!stopped && reports != 1) || !others.is_empty() || self.machine.phase() != phase {
                return self.violation("SIGUSR1 must emit one report and change nothing");
            }
            if !same_state(&self.machine.status(), &before) {
                return self.violation("SIGUSR1 changed the machine's state");
            }
            return Ok(());
        }
        let first = self.first_signal.is_none() && self.exit.is_none();
        let idle = first
            && self.procs.is_empty()
            && self.starts.is_empty()
            && self.claim_pending.is_empty()
            && self.uncertain.is_empty()
            && self.machine.held() == 0;
        if first {
            self.first_signal = Some(self.now);
        }
        self.deliver(Event::Signal(signal))?;
        if idle && self.exit.is_none() {
            return self.violation("an idle worker did not exit at once on its first signal");
        }
        Ok(())
    }

    /// Let time pass, firing timers and job exits in order.
    pub fn advance(&mut self, by: Duration) -> Check {
        let target = self.now + by;
        // A machine whose timers never advance would spin here forever; a
        // bound turns that into a violation that says what it saw.
        let mut fired_at_same_instant = 0u32;
        let mut last_fired = None;
        loop {
            if self.exit.is_some() {
                break;
            }
            let next_exit = self
                .procs
                .iter()
                .filter_map(|(id, p)| p.exit_at.map(|at| (at, *id)))
                .min();
            let next_timer = self.machine.poll_timeout();
            let next = match (next_exit, next_timer) {
                (Some((e, _)), Some(t)) => e.min(t),
                (Some((e, _)), None) => e,
                (None, Some(t)) => t,
                (None, None) => break,
            };
            if next > target {
                break;
            }
            self.now = self.now.max(next);
            match next_exit {
                Some((at, id)) if at <= next => {
                    let Some(proc_) = self.procs.remove(&id) else {
                        continue;
                    };
                    let exit = Exit::Code(i32::from(proc_.behavior.exit_code % 3));
                    self.exits.insert(proc_.lease, exit);
                    self.deliver(Event::JobExited {
                        lease: proc_.lease,
                        exit,
                        output: format!("job {id} output\n").into_bytes(),
                    })?;
                }
                _ => {
                    if last_fired == Some(self.now) {
                        fired_at_same_instant += 1;
                        if fired_at_same_instant > 1_000 {
                            return self.violation(&format!(
                                "the machine's timer fired 1,000 times at {} and is still due: its timers do not advance",
                                dockhand::machine::fmt_duration(self.now.saturating_since(Instant::ZERO))
                            ));
                        }
                    } else {
                        fired_at_same_instant = 0;
                        last_fired = Some(self.now);
                    }
                    self.deliver(Event::TimerFired)?
                }
            }
            self.check_leases()?;
        }
        self.now = self.now.max(target);
        self.check_leases()
    }

    /// In auto mode, make the store fail (or work again) for records,
    /// heartbeats and reaps, as an outage would (scenarios). The machine
    /// finds out at its next call.
    pub fn set_store_healthy(&mut self, healthy: bool) -> Check {
        self.store_healthy = healthy;
        self.drain()
    }

    /// In auto mode, refuse the next `n` record batches as invalid, as a
    /// database refuses a value it cannot store (scenarios).
    pub fn refuse_records(&mut self, n: u32) {
        self.refuse_records = n;
    }

    /// In auto mode, the next heartbeat reports its first lease lost (the
    /// store reaped it, or another worker claimed the job) (scenarios).
    pub fn lose_next_lease(&mut self) {
        self.lose_lease = true;
    }

    /// In auto mode, the next heartbeat reports `job`'s lease lost
    /// (scenarios).
    pub fn lose_lease_of(&mut self, job: JobId) {
        self.lose_job = Some(job);
    }

    /// Answer the claim in flight with these jobs (scenarios). In auto mode,
    /// later claims are answered with no jobs unless held.
    pub fn answer_claim(&mut self, behaviors: &[Behavior]) -> Check {
        self.claimed_once = true;
        self.step(&Op::ClaimOk(behaviors.to_vec()))
    }

    /// In auto mode, leave claims unanswered until [`Harness::answer_claim`].
    pub fn hold_claims(&mut self, hold: bool) {
        self.hold_claims = hold;
    }

    /// Deliver any event (scenarios).
    pub fn deliver(&mut self, event: Event) -> Check {
        if self.exit.is_some() {
            self.machine.handle(event, self.now);
            if self.machine.poll_action().is_some() {
                return self.violation("an action after the exit");
            }
            return Ok(());
        }
        self.trace_event(&event);
        if let Event::CancelRequested { job } = event {
            self.cancelled.insert(job);
        }
        // Claim replies are not repeated: the shell delivers each at most
        // once (a timed-out call is dropped, never answered late).
        if matches!(
            event,
            Event::RecordReply { .. } | Event::HeartbeatReply { .. } | Event::ReapReply { .. }
        ) {
            self.last_reply = Some(event.clone());
        }
        self.machine.handle(event, self.now);
        self.drain()
    }

    /// Heal every fault, stop the worker if nobody did, and require it to
    /// exit within its bound (liveness).
    pub fn finish(mut self) -> Check {
        self.auto = true;
        self.store_healthy = true;
        if let Some((request, _, _)) = self.claim_pending.pop_front() {
            self.deliver(Event::ClaimReply {
                request,
                result: Ok(Vec::new()),
            })?;
        }
        self.answer_everything()?;
        if self.first_signal.is_none() && self.exit.is_none() {
            self.signal(Signal::Term)?;
        }
        let Some(signal_at) = self.first_signal else {
            return Ok(());
        };
        let bound = self.config.exit_bound();
        let mut rounds = 0;
        while self.exit.is_none() {
            rounds += 1;
            if rounds > 100_000 {
                return self.violation("the healing phase did not converge");
            }
            self.answer_everything()?;
            if self.exit.is_some() {
                break;
            }
            let step = Duration::from_millis(50);
            if self.now.saturating_since(signal_at) > bound + step {
                return self.violation(&format!(
                    "not stopped {} after the first signal (bound {}): liveness broken",
                    dockhand::machine::fmt_duration(self.now.saturating_since(signal_at)),
                    dockhand::machine::fmt_duration(bound)
                ));
            }
            self.advance(step)?;
        }
        Ok(())
    }

    fn answer_everything(&mut self) -> Check {
        for _ in 0..10_000 {
            if let Some(lease) = self.starts.pop_front() {
                self.start_ok(lease)?;
            } else if !self.records.is_empty() {
                self.answer_record(RecordAnswer::Ok)?;
            } else if !self.heartbeats.is_empty() {
                self.answer_heartbeat(HbAnswer::Ok)?;
            } else if self.reap_pending.is_some() {
                self.answer_reap(true)?;
            } else if let Some((request, _, _)) = self.claim_pending.pop_front() {
                self.deliver(Event::ClaimReply {
                    request,
                    result: Ok(Vec::new()),
                })?;
            } else if let Some((_, lease, exit)) = self.due_exits.pop_front() {
                self.exits.insert(lease, exit);
                self.deliver(Event::JobExited {
                    lease,
                    exit,
                    output: Vec::new(),
                })?;
            } else {
                return Ok(());
            }
        }
        self.violation("answering the machine did not converge")
    }

    // ----- the world ----------------------------------------------------------

    fn new_job(&mut self, behavior: Behavior, sent_at: Instant) -> ClaimedJob {
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.behaviors.insert(id, behavior);
        let lease = Lease {
            job: id,
            token: LeaseToken(1),
        };
        self.hand_out(lease, sent_at)
    }

    /// The store gives `lease` to the machine by a call sent at `sent_at`.
    fn hand_out(&mut self, lease: Lease, sent_at: Instant) -> ClaimedJob {
        let id = lease.job;
        let behavior = self
            .behaviors
            .get(&id)
            .copied()
            .unwrap_or(Behavior::quick(10));
        self.current.insert(id, lease);
        self.given.insert(lease);
        self.lease_start.insert(lease, sent_at);
        ClaimedJob {
            lease,
            queue: "default".into(),
            spec: JobSpec {
                command: vec!["job".into(), id.to_string()],
                timeout_ms: behavior.timeout_ms.map(u64::from),
                ..JobSpec::default()
            },
            attempts: 0,
            interruptions: 0,
            waited: Duration::ZERO,
        }
    }

    /// Answer the claim in flight with a newer claim of a job the machine
    /// holds (its lease was reaped, the job claimed again).
    fn claim_again(&mut self, n: u8) -> Check {
        let held: Vec<JobId> = self
            .current
            .iter()
            .filter(|(_, lease)| self.given.contains(lease) && !self.acked.contains(lease))
            .map(|(id, _)| *id)
            .collect();
        let (Some((request, _, sent_at)), false) =
            (self.claim_pending.front().copied(), held.is_empty())
        else {
            return Ok(());
        };
        self.claim_pending.pop_front();
        let id = held[n as usize % held.len()];
        let old = self.current[&id];
        let lease = Lease {
            job: id,
            token: LeaseToken(old.token.0 + 1),
        };
        let job = self.hand_out(lease, sent_at);
        if self.first_signal.is_some() {
            self.handed_back_ok.insert(lease);
        }
        self.deliver(Event::ClaimReply {
            request,
            result: Ok(vec![job]),
        })?;
        // Two runs of one job must never overlap: the old one is killed at once.
        match self.procs.get(&id) {
            Some(proc_) if proc_.lease == old => self.violation(&format!(
                "job {id} was claimed again but its run under the old lease was not killed"
            )),
            _ => Ok(()),
        }
    }

    /// The simulated process of a started job.
    fn spawn_proc(&mut self, lease: Lease) {
        let behavior = self
            .behaviors
            .get(&lease.job)
            .copied()
            .unwrap_or(Behavior::quick(10));
        self.procs.insert(
            lease.job,
            Proc {
                lease,
                behavior,
                started_at: self.now,
                exit_at: behavior
                    .run_ms
                    .map(|ms| self.now + Duration::from_millis(u64::from(ms))),
                signalled: false,
                not_shutdown: false,
            },
        );
    }

    fn start_ok(&mut self, lease: Lease) -> Check {
        self.spawn_proc(lease);
        self.deliver(Event::JobStarted { lease })
    }

    fn nth_proc(&self, n: u8) -> Option<JobId> {
        if self.procs.is_empty() {
            return None;
        }
        self.procs
            .keys()
            .nth(n as usize % self.procs.len())
            .copied()
    }

    /// The store's answer to one outcome: written if its lease is the job's
    /// latest claim (running, or reaped without a new claim), else refused.
    fn store_record(&mut self, c: &Completion) -> Result<RecordResult, Violation> {
        let lease = c.lease;
        if self.current.get(&lease.job) != Some(&lease) {
            return Ok(RecordResult::Refused);
        }
        if !self.acked.insert(lease) {
            return Err(self
                .violation(&format!("job {} recorded twice under one lease", lease.job))
                .unwrap_err());
        }
        self.unflushed.remove(&lease);
        // What a store would make of it (the machine only reports it).
        let state = match c.outcome {
            Outcome::Succeeded => JobState::Succeeded,
            Outcome::Cancelled => JobState::Cancelled,
            Outcome::Failed { .. } | Outcome::Interrupted { .. } | Outcome::HandBack => {
                JobState::Queued
            }
        };
        Ok(RecordResult::Recorded { state })
    }

    fn answer_record(&mut self, how: RecordAnswer) -> Check {
        let Some((request, batch)) = self.records.pop_front() else {
            return Ok(());
        };
        let result = match how {
            RecordAnswer::Unreachable => {
                self.unflushed.extend(batch.iter().map(|c| c.lease));
                Err(transient("connection reset"))
            }
            RecordAnswer::Invalid => {
                if let [only] = batch.as_slice() {
                    let degradable = matches!(
                        only.outcome,
                        Outcome::Succeeded | Outcome::Failed { .. } | Outcome::Cancelled
                    );
                    if degradable && self.refused_invalid.insert(only.lease) {
                        // It comes back as a failure without output.
                    } else {
                        // Refused for good: the machine leaves it to its lease.
                        self.unflushed.remove(&only.lease);
                    }
                }
                Err(StoreFailure::permanent(
                    "invalid byte sequence for encoding \"UTF8\": 0x00",
                ))
            }
            RecordAnswer::Ok | RecordAnswer::RefuseFirst => {
                let mut results = Vec::new();
                for (i, completion) in batch.iter().enumerate() {
                    let id = completion.lease.job;
                    if how == RecordAnswer::RefuseFirst && i == 0 {
                        // Another worker claimed the job meanwhile.
                        let lease = completion.lease;
                        let newer = Lease {
                            job: id,
                            token: LeaseToken(lease.token.0 + 100),
                        };
                        if self.current.get(&id) == Some(&lease) {
                            self.current.insert(id, newer);
                        }
                        self.unflushed.remove(&lease);
                        results.push((id, RecordResult::Refused));
                        continue;
                    }
                    let result = self.store_record(completion)?;
                    if result == RecordResult::Refused {
                        self.unflushed.remove(&completion.lease);
                    }
                    results.push((id, result));
                }
                Ok(results)
            }
        };
        self.deliver(Event::RecordReply { request, result })
    }

    fn answer_heartbeat(&mut self, how: HbAnswer) -> Check {
        let Some(hb) = self.heartbeats.pop_front() else {
            return Ok(());
        };
        if how == HbAnswer::Err {
            if self.first_signal.is_some() {
                self.recovery_given_up.extend(hb.recover.iter().copied());
            }
            let result = Err(transient("timeout"));
            return self.deliver(Event::HeartbeatReply {
                request: hb.request,
                result,
            });
        }
        let mut answer = HeartbeatAnswer::default();
        for lease in &hb.leases {
            if self.current.get(&lease.job) == Some(lease) {
                self.lease_start.insert(*lease, hb.sent_at);
            } else {
                answer.lost.push(lease.job);
            }
        }
        let lose = match how {
            HbAnswer::LoseFirst => hb.leases.first(),
            HbAnswer::Lose(job) => hb.leases.iter().find(|lease| lease.job == job),
            _ => None,
        };
        match how {
            HbAnswer::LoseFirst | HbAnswer::Lose(_) => {
                if let Some(lease) = lose {
                    if !answer.lost.contains(&lease.job) {
                        // Reaped: nobody else has it, but it is not ours now.
                        answer.lost.push(lease.job);
                        self.lease_start.remove(lease);
                    }
                }
            }
            HbAnswer::CancelFirst => {
                if let Some(lease) = hb.leases.first() {
                    self.cancelled.insert(lease.job);
                    answer.cancelled.push(lease.job);
                }
            }
            HbAnswer::Ok | HbAnswer::Err => {}
        }
        for claim in &hb.recover {
            self.uncertain.remove(claim);
            if let Some(jobs) = self.lost_claims.remove(claim) {
                for job in jobs {
                    if self.current.get(&job.lease.job) == Some(&job.lease) {
                        self.lease_start.insert(job.lease, hb.sent_at);
                        if self.first_signal.is_some() {
                            self.handed_back_ok.insert(job.lease);
                        }
                        answer.recovered.push(job);
                    }
                }
            }
        }
        let lost = answer.lost.clone();
        self.deliver(Event::HeartbeatReply {
            request: hb.request,
            result: Ok(answer),
        })?;
        for id in lost {
            self.check_killed(id)?;
        }
        Ok(())
    }

    fn answer_reap(&mut self, ok: bool) -> Check {
        let Some(request) = self.reap_pending.take() else {
            return Ok(());
        };
        let result = if ok {
            Ok(0)
        } else {
            Err(transient("connection refused"))
        };
        self.deliver(Event::ReapReply { request, result })
    }

    /// An outcome whose write failed and that the store would still accept
    /// (its lease is the job's latest claim).
    fn unflushed_outcome(&self) -> Option<Lease> {
        self.unflushed
            .iter()
            .find(|lease| self.current.get(&lease.job) == Some(lease))
            .copied()
    }

    /// A job whose lease was lost must be killed at once, not given a grace.
    fn check_killed(&mut self, id: JobId) -> Check {
        if self.procs.contains_key(&id) {
            return self.violation(&format!(
                "job {id} lost its lease but is still alive: it must be killed at once"
            ));
        }
        Ok(())
    }

    /// No run may outlive the time at which the store may give its job to
    /// someone else (its lease, counted from the call that last set it).
    fn check_leases(&mut self) -> Check {
        if self.exit.is_some() {
            return Ok(());
        }
        let now = self.now;
        let lease = self.config.lease;
        let late = self.procs.values().find(|p| {
            self.lease_start
                .get(&p.lease)
                .is_some_and(|start| now > *start + lease)
        });
        if let Some(proc_) = late {
            let id = proc_.lease.job;
            return self.violation(&format!(
                "job {id} is still alive after its lease could have expired in the store"
            ));
        }
        Ok(())
    }

    /// Take every action and note the machine has, checking each; then, in
    /// auto mode, answer what the world answers at once.
    fn drain(&mut self) -> Check {
        loop {
            // Notes first: a transition reads before the actions it causes.
            self.drain_notes();
            while let Some(action) = self.machine.poll_action() {
                self.trace_action(&action);
                self.check_and_apply(action)?;
            }
            self.drain_notes();
            self.check_state()?;
            if let Some((_, lease, exit)) = self.due_exits.pop_front() {
                let event = Event::JobExited {
                    lease,
                    exit,
                    output: Vec::new(),
                };
                self.trace_event(&event);
                self.exits.insert(lease, exit);
                self.machine.handle(event, self.now);
                continue;
            }
            if self.auto && self.exit.is_none() && self.answer_one_automatically()? {
                continue;
            }
            return Ok(());
        }
    }

    /// In auto mode, answer one pending call as a healthy (or, after
    /// [`Harness::set_store_healthy`], an unreachable) store would.
    fn answer_one_automatically(&mut self) -> Result<bool, Violation> {
        if let Some(lease) = self.starts.pop_front() {
            self.spawn_proc(lease);
            let event = Event::JobStarted { lease };
            self.trace_event(&event);
            self.machine.handle(event, self.now);
            return Ok(true);
        }
        if !self.store_healthy {
            if let Some((request, batch)) = self.records.pop_front() {
                self.unflushed.extend(batch.iter().map(|c| c.lease));
                let event = Event::RecordReply {
                    request,
                    result: Err(transient("connection refused")),
                };
                self.trace_event(&event);
                self.machine.handle(event, self.now);
                return Ok(true);
            }
            if let Some(hb) = self.heartbeats.pop_front() {
                if self.first_signal.is_some() {
                    self.recovery_given_up.extend(hb.recover.iter().copied());
                }
                let event = Event::HeartbeatReply {
                    request: hb.request,
                    result: Err(transient("connection refused")),
                };
                self.trace_event(&event);
                self.machine.handle(event, self.now);
                return Ok(true);
            }
            if let Some(request) = self.reap_pending.take() {
                let event = Event::ReapReply {
                    request,
                    result: Err(transient("connection refused")),
                };
                self.trace_event(&event);
                self.machine.handle(event, self.now);
                return Ok(true);
            }
        }
        if self.refuse_records > 0 && !self.records.is_empty() {
            self.refuse_records -= 1;
            self.answer_record(RecordAnswer::Invalid)?;
            return Ok(true);
        }
        if let Some((request, batch)) = self.records.pop_front() {
            let mut results = Vec::new();
            for completion in &batch {
                let result = self.store_record(completion)?;
                results.push((completion.lease.job, result));
            }
            let event = Event::RecordReply {
                request,
                result: Ok(results),
            };
            self.trace_event(&event);
            self.machine.handle(event, self.now);
            return Ok(true);
        }
        if !self.heartbeats.is_empty() {
            // The same answer as the op, with its checks.
            let how = if std::mem::take(&mut self.lose_lease) {
                HbAnswer::LoseFirst
            } else if let Some(job) = self.lose_job.take() {
                HbAnswer::Lose(job)
            } else {
                HbAnswer::Ok
            };
            self.answer_heartbeat(how)?;
            return Ok(true);
        }
        if let Some(request) = self.reap_pending.take() {
            let event = Event::ReapReply {
                request,
                result: Ok(0),
            };
            self.trace_event(&event);
            self.machine.handle(event, self.now);
            return Ok(true);
        }
        if self.claimed_once && !self.hold_claims {
            if let Some((request, _, _)) = self.claim_pending.pop_front() {
                let event = Event::ClaimReply {
                    request,
                    result: Ok(Vec::new()),
                };
                self.trace_event(&event);
                self.machine.handle(event, self.now);
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn check_and_apply(&mut self, action: Action) -> Check {
        if self.exit.is_some() {
            return self.violation("an action after the exit");
        }
        match action {
            Action::Claim { request, max } => {
                if self.first_signal.is_some() {
                    return self.violation("claim after the first shutdown signal");
                }
                // One claim at a time; a prefetching machine may pipeline two.
                let at_once = if self.config.prefetch > 0 { 2 } else { 1 };
                if self.claim_pending.len() >= at_once {
                    return self
                        .violation(&format!("claim number {} in flight at once", at_once + 1));
                }
                if let Some(lease) = self.unflushed_outcome() {
                    return self.violation(&format!(
                        "claim while the outcome of job {} waits to be written after a failure (it must be flushed first)",
                        lease.job
                    ));
                }
                // Claims may carry up to the prefetch beyond the free slots
                // (the machine asserts its own count of waiting jobs), all
                // claims in flight together.
                let alive = self.procs.len() + self.starts.len();
                let asked: usize = self.claim_pending.iter().map(|c| c.1 as usize).sum();
                let capacity = (self.config.concurrency + self.config.prefetch) as usize;
                if max == 0
                    || max > self.config.batch_max
                    || alive + asked + max as usize > capacity
                {
                    return self.violation(&format!(
                        "claim of {max} exceeds free slots or the batch limit"
                    ));
                }
                self.claim_pending.push_back((request, max, self.now));
            }
            Action::Start { job } => {
                let lease = job.lease;
                let id = lease.job;
                if !self.given.contains(&lease) {
                    return self.violation(&format!("job {id} started with a lease never given"));
                }
                if self.handed_back_ok.contains(&lease) {
                    return self.violation(&format!(
                        "job {id} from a claim answered after the signal was started"
                    ));
                }
                if self.first_signal.is_some() {
                    return self
                        .violation(&format!("job {id} started after the first shutdown signal"));
                }
                if !self.started.insert(lease) {
                    return self.violation(&format!("job {id} started twice under one lease"));
                }
                if self.procs.contains_key(&id) || self.starts.iter().any(|l| l.job == id) {
                    return self.violation(&format!(
                        "job {id} started while another run of it is alive"
                    ));
                }
                self.starts.push_back(lease);
                let alive = self.procs.len() + self.starts.len();
                if alive > self.config.concurrency as usize {
                    return self.violation("more jobs running than concurrency allows");
                }
            }
            Action::Signal { job, signal } => {
                let now = self.now;
                let shutting_down = self.first_signal.is_some();
                let cancelled = self.cancelled.contains(&job);
                let lease_gone = |lease: &Lease| {
                    self.current.get(&lease.job) != Some(lease)
                        || self.lease_start.get(lease).is_none_or(|start| {
                            now + self.config.lease / 4 >= *start + self.config.lease
                        })
                };
                let stopped_for_lease = self.procs.get(&job).is_some_and(|p| lease_gone(&p.lease));
                if let Some(proc_) = self.procs.get_mut(&job) {
                    let timed_out = proc_.behavior.timeout_ms.is_some_and(|ms| {
                        now.saturating_since(proc_.started_at)
                            >= Duration::from_millis(u64::from(ms))
                    });
                    if !proc_.signalled
                        && (timed_out || cancelled || stopped_for_lease || !shutting_down)
                    {
                        proc_.not_shutdown = true;
                    }
                    proc_.signalled = true;
                    if !proc_.not_shutdown {
                        self.stopped_by_shutdown.insert(proc_.lease);
                    }
                    let ends = match signal {
                        JobSignal::Term => !proc_.behavior.ignores_term,
                        JobSignal::Kill => true,
                    };
                    if ends {
                        let lease = proc_.lease;
                        self.procs.remove(&job);
                        let sig = if signal == JobSignal::Kill { 9 } else { 15 };
                        self.due_exits.push_back((job, lease, Exit::Signal(sig)));
                    }
                }
            }
            Action::Record {
                request,
                completions,
            } => {
                if completions.is_empty() || completions.len() > self.config.batch_max as usize {
                    return self.violation("record batch empty or over the batch limit");
                }
                for c in &completions {
                    self.check_completion(c)?;
                }
                self.records.push_back((request, completions));
            }
            Action::Heartbeat {
                request,
                leases,
                recover,
                ..
            } => {
                self.heartbeats.push_back(PendingHeartbeat {
                    request,
                    sent_at: self.now,
                    leases,
                    recover,
                });
            }
            Action::Reap { request } => {
                if self.reap_pending.is_some() {
                    return self.violation("a second reap while one is in flight");
                }
                if let Some(lease) = self.unflushed_outcome() {
                    return self.violation(&format!(
                        "reap while the outcome of job {} waits to be written after a failure (our own reap could supersede it)",
                        lease.job
                    ));
                }
                self.reap_pending = Some(request);
            }
            Action::Release { lease } => {
                if !self.given.contains(&lease) {
                    return self.violation(&format!(
                        "release of job {} with a lease never given",
                        lease.job
                    ));
                }
                if self.procs.get(&lease.job).is_some_and(|p| p.lease == lease)
                    || self.starts.contains(&lease)
                {
                    return self.violation(&format!(
                        "job {} released while its run is still alive",
                        lease.job
                    ));
                }
                if !self.released.insert(lease) {
                    return self.violation(&format!("job {} released twice", lease.job));
                }
            }
            Action::ReportStatus(_) => {}
            Action::Exit { code } => self.check_exit(code)?,
        }
        Ok(())
    }

    fn check_completion(&mut self, c: &Completion) -> Check {
        let lease = c.lease;
        let id = lease.job;
        if !self.given.contains(&lease) {
            return self.violation(&format!(
                "record for job {id} with a lease it was never given"
            ));
        }
        if self.refused_invalid.contains(&lease) {
            // The store refused this outcome as invalid: it comes back as a
            // plain failure without output.
            return match &c.outcome {
                Outcome::Failed { error, .. } if error.contains("refused") && c.output.is_empty() => {
                    Ok(())
                }
                other => self.violation(&format!(
                    "job {id}'s outcome was refused as invalid but came back as {} instead of a failure without output",
                    other.name()
                )),
            };
        }
        // Exit 0 is success whatever signal the job was sent before: the
        // work is done, and running it again would repeat its side effects.
        let exited_ok = self.exits.get(&lease).is_some_and(|e| e.success());
        if exited_ok != (c.outcome == Outcome::Succeeded) {
            return self.violation(&format!(
                "job {id} exited {:?} but was recorded {}",
                self.exits.get(&lease),
                c.outcome.name()
            ));
        }
        if self.engine_away.contains(&lease)
            && !matches!(c.outcome, Outcome::HandBack | Outcome::Cancelled)
        {
            return self.violation(&format!(
                "job {id} could not start for want of an engine but was recorded {}, using an attempt",
                c.outcome.name()
            ));
        }
        match &c.outcome {
            Outcome::HandBack => {
                if self.started.contains(&lease) && !self.engine_away.contains(&lease) {
                    return self.violation(&format!("job {id} handed back after it was started"));
                }
            }
            Outcome::Interrupted { .. } => {
                self.interrupted_emitted = true;
                if self.first_signal.is_none() {
                    return self.violation(&format!("job {id} interrupted without a shutdown"));
                }
            }
            Outcome::Failed { .. } if self.stopped_by_shutdown.contains(&lease) => {
                return self.violation(&format!(
                    "job {id} was stopped by the shutdown but recorded as a failed attempt"
                ));
            }
            // A prefetched job cancelled before it started: nothing ran.
            Outcome::Cancelled if !self.started.contains(&lease) => {
                if !self.cancelled.contains(&id) {
                    return self.violation(&format!(
                        "job {id} recorded cancelled without a start or a cancel"
                    ));
                }
            }
            Outcome::Failed { .. } | Outcome::Succeeded | Outcome::Cancelled => {
                if !self.started.contains(&lease) {
                    // A start that failed still counts as started here.
                    return self
                        .violation(&format!("job {id} has an outcome but was never started"));
                }
            }
        }
        Ok(())
    }

    fn check_exit(&mut self, code: i32) -> Check {
        let now = self.now;
        // A write still in flight matters only if the store would accept it.
        let live_records = self
            .records
            .iter()
            .filter(|(_, batch)| {
                batch
                    .iter()
                    .any(|c| self.current.get(&c.lease.job) == Some(&c.lease))
            })
            .count();
        let unfinished = self.procs.len() + self.starts.len() + live_records;
        let bound = self.config.exit_bound();
        let Some(signal_at) = self.first_signal else {
            return self.violation("exit without a shutdown signal");
        };
        let took = now.saturating_since(signal_at);
        if took > bound {
            return self.violation(&format!(
                "exit {} after the signal, past the bound {}",
                dockhand::machine::fmt_duration(took),
                dockhand::machine::fmt_duration(bound)
            ));
        }
        if unfinished > 0 && took < bound {
            return self.violation(
                "exit before every job was finished and recorded, and before the exit deadline",
            );
        }
        let unrecovered = self
            .lost_claims
            .keys()
            .find(|claim| !self.recovery_given_up.contains(claim));
        if let (Some(claim), true) = (unrecovered, took < bound) {
            return self.violation(&format!(
                "exit without recovering claim {claim}, whose reply was lost, though the store could be reached"
            ));
        }
        // Every run is let go of before the exit (a container removed once
        // its outcome is written, not at the exit or never).
        // Giving up at the exit deadline, the machine kills what still runs:
        // another worker starts the job once its lease expires.
        if let Some(proc_) = self.procs.values().next() {
            return self.violation(&format!("exit leaves job {} running", proc_.lease.job));
        }
        let alive: BTreeSet<Lease> = self
            .procs
            .values()
            .map(|p| p.lease)
            .chain(self.starts.iter().copied())
            .collect();
        if let Some(lease) = self
            .started
            .iter()
            .find(|l| !self.released.contains(l) && !alive.contains(l))
        {
            return self.violation(&format!(
                "exit without releasing the run of job {} (lease {})",
                lease.job, lease.token
            ));
        }
        if code == EXIT_OK && (self.interrupted_emitted || unfinished > 0) {
            return self.violation("exit 0 although a job was interrupted or left unrecorded");
        }
        if code != EXIT_OK && code != EXIT_INTERRUPTED {
            return self.violation(&format!("exit code {code} is neither 0 nor 75"));
        }
        // What the machine reports (the embed API and `/status` read it)
        // is the code it exits with.
        if self.machine.exit_code() != Some(code) {
            return self.violation(&format!(
                "exit {code}, but the machine reports exit code {:?}",
                self.machine.exit_code()
            ));
        }
        self.exit = Some((now, code));
        // The worker process ends: whatever still runs dies with it (the
        // shell kills what is left; the watchdog if it was SIGKILLed).
        self.procs.clear();
        self.starts.clear();
        Ok(())
    }

    fn check_state(&mut self) -> Check {
        let alive = self.procs.len() + self.starts.len();
        if alive > self.config.concurrency as usize {
            return self.violation("more jobs alive than concurrency allows");
        }
        if self.machine.phase() == Phase::Stopped && self.exit.is_none() {
            return self.violation("stopped without an exit action");
        }
        Ok(())
    }

    fn drain_notes(&mut self) {
        while let Some(note) = self.machine.poll_note() {
            if self.record_trace {
                self.trace.note(&note);
            }
        }
    }

    fn trace_event(&mut self, event: &Event) {
        if self.record_trace && !matches!(event, Event::TimerFired) {
            self.trace.event(self.now, event);
        }
    }

    fn trace_action(&mut self, action: &Action) {
        if self.record_trace {
            self.trace.action(self.now, action);
        }
    }

    fn violation(&self, message: &str) -> Check {
        let trace = self.trace.render();
        let lines: Vec<&str> = trace.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        Err(Violation {
            message: format!("invariant broken at {}: {message}", self.now),
            trace_tail: tail,
        })
    }
}

/// Equal but for elapsed times, which move with the clock.
fn same_state(a: &dockhand::machine::Status, b: &dockhand::machine::Status) -> bool {
    let jobs =
        |s: &dockhand::machine::Status| s.jobs.iter().map(|j| (j.id, j.state)).collect::<Vec<_>>();
    a.phase == b.phase && a.signals == b.signals && a.counters == b.counters && jobs(a) == jobs(b)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum HbAnswer {
    Ok,
    Err,
    LoseFirst,
    /// This job's lease, if the heartbeat holds it.
    Lose(JobId),
    CancelFirst,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RecordAnswer {
    Ok,
    Unreachable,
    Invalid,
    RefuseFirst,
}
