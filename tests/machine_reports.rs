//! What the machine reports about itself, which the shell, `/status`, the
//! shutdown summary and the embedding API read: jobs held and alive,
//! leases given up, the exit code, its configuration, notes dropped.
//! (Mutation testing found these unchecked by the scenario and property
//! tests; see docs/VERIFICATION.md.)

use std::time::Duration;

use dockhand::job::{
    ClaimedJob, Exit, HeartbeatAnswer, JobId, JobSignal, JobSpec, JobState, Lease, LeaseToken,
    Outcome, RecordResult,
};
use dockhand::machine::trace::{Trace, MAX_TRACE_LINES};
use dockhand::machine::{
    Action, Config, Event, Instant, Machine, Signal, StoreFailure, What, MAX_NOTES,
};
use dockhand_testkit::harness::{Behavior, Harness, Op};

fn config() -> Config {
    Config {
        concurrency: 3,
        prefetch: 0,
        batch_max: 3,
        poll_interval: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(10),
        kill_grace: Duration::from_secs(5),
        lease: Duration::from_secs(15),
        store_grace: Duration::from_secs(5),
        max_store_backoff: Duration::from_secs(2),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn held_and_alive_follow_the_jobs_and_the_exit_code_comes_last() {
    let mut h = Harness::new(config(), true);
    assert_eq!(h.machine().config(), &config());
    h.answer_claim(&[Behavior::quick(1000), Behavior::quick(3000)])
        .unwrap();
    assert_eq!((h.machine().held(), h.machine().alive()), (2, 2));
    h.advance(ms(1500)).unwrap();
    assert_eq!((h.machine().held(), h.machine().alive()), (1, 1));
    h.signal(Signal::Term).unwrap();
    assert_eq!(h.machine().exit_code(), None, "still draining");
    h.advance(ms(2000)).unwrap();
    assert_eq!((h.machine().held(), h.machine().alive()), (0, 0));
    assert_eq!(h.machine().exit_code(), Some(0));
    assert_eq!(h.machine().abandoned().count(), 0);
    assert_eq!(h.machine().notes_dropped(), 0);
}

#[test]
fn a_lease_left_at_the_exit_deadline_is_reported_abandoned() {
    let mut h = Harness::new(config(), true);
    h.answer_claim(&[Behavior::quick(2000)]).unwrap();
    h.advance(ms(1000)).unwrap();
    h.signal(Signal::Term).unwrap();
    h.set_store_healthy(false).unwrap();
    h.advance(ms(25_000)).unwrap();
    assert_eq!(h.machine().exit_code(), Some(75));
    let abandoned: Vec<JobId> = h.machine().abandoned().map(|l| l.job).collect();
    assert_eq!(abandoned, vec![JobId(1)]);
}

#[test]
fn notes_nobody_reads_are_dropped_and_counted() {
    // A store that fails every other claim: each change (down, up) is a
    // note, and nobody polls the notes.
    let mut machine = Machine::new(config(), Instant::ZERO).expect("valid config");
    let mut now = Instant::ZERO;
    let mut answered_claims = 0;
    let mut rounds = 0;
    while answered_claims < 2 * MAX_NOTES + 100 {
        // A machine that stops claiming would loop here for ever: fail
        // with what it did instead.
        rounds += 1;
        assert!(
            rounds < 100 * MAX_NOTES,
            "the machine stopped claiming after {answered_claims} claims"
        );
        let mut answered = false;
        while let Some(action) = machine.poll_action() {
            if let Action::Claim { request, .. } = action {
                let result = if answered_claims % 2 == 0 {
                    Err(StoreFailure::transient("connection refused"))
                } else {
                    Ok(Vec::new())
                };
                machine.handle(Event::ClaimReply { request, result }, now);
                answered_claims += 1;
                answered = true;
            }
        }
        if !answered {
            now = machine.poll_timeout().expect("a timer is set");
            machine.handle(Event::TimerFired, now);
        }
    }
    assert!(
        machine.notes_dropped() > 0,
        "{} notes kept, none dropped",
        MAX_NOTES
    );
    let kept = std::iter::from_fn(|| machine.poll_note()).count();
    assert!(kept <= MAX_NOTES, "{kept} notes kept");
}

#[test]
fn the_status_report_tells_running_from_stopping() {
    let mut h = Harness::new(config(), true);
    h.answer_claim(&[Behavior::stuck()]).unwrap();
    h.advance(ms(500)).unwrap();
    let states = |h: &Harness| -> Vec<&'static str> {
        h.machine().status().jobs.iter().map(|j| j.state).collect()
    };
    assert_eq!(states(&h), vec!["running"]);
    h.signal(Signal::Term).unwrap();
    assert_eq!(states(&h), vec!["running"], "a drain lets the job run");
    h.signal(Signal::Term).unwrap();
    assert_eq!(states(&h), vec!["stopping"], "the second signal stops it");
}

#[test]
fn the_held_bound_is_twice_concurrency_and_batch() {
    // The documented bound (claims stay within it; recovered and late
    // claims may add a batch or two): 2 × (3 + 3), plus any prefetch.
    let h = Harness::new(config(), true);
    assert_eq!(h.machine().max_held(), 12);
    let h = Harness::new(
        Config {
            prefetch: 5,
            ..config()
        },
        true,
    );
    assert_eq!(h.machine().max_held(), 17);
}

#[test]
fn a_wake_up_while_running_claims_at_once_and_not_while_draining() {
    let mut h = Harness::new(config(), true);
    h.answer_claim(&[Behavior::quick(60_000)]).unwrap();
    h.advance(ms(100)).unwrap();
    let claims = |h: &Harness| h.trace().matches("action  claim").count();
    let before = claims(&h);
    h.deliver(Event::Wake).unwrap();
    assert_eq!(claims(&h), before + 1, "{}", h.trace());
    h.answer_claim(&[]).unwrap();
    h.signal(Signal::Term).unwrap();
    let draining = claims(&h);
    h.deliver(Event::Wake).unwrap();
    assert_eq!(claims(&h), draining, "{}", h.trace());
}

/// A config whose claims come in batches smaller than the concurrency.
fn wide(concurrency: u32, batch_max: u32) -> Config {
    Config {
        concurrency,
        prefetch: 0,
        batch_max,
        ..config()
    }
}

fn claims(h: &Harness) -> usize {
    h.trace().matches("action  claim").count()
}

#[test]
fn a_full_batch_is_followed_by_another_claim_at_once() {
    // A claim that comes back full says more jobs wait: claim again now,
    // not at the next poll.
    let mut h = Harness::new(wide(8, 2), true);
    h.hold_claims(true);
    h.answer_claim(&[Behavior::quick(60_000), Behavior::quick(60_000)])
        .unwrap();
    assert_eq!(claims(&h), 2, "{}", h.trace());
    h.answer_claim(&[Behavior::quick(60_000)]).unwrap();
    h.advance(ms(100)).unwrap();
    assert_eq!(
        claims(&h),
        2,
        "a short batch waits for the poll: {}",
        h.trace()
    );
}

#[test]
fn few_free_slots_beside_running_jobs_wait_for_a_worthwhile_batch() {
    // Concurrency 8: a claim is worth it once a quarter (2) of the slots
    // are free, or when nothing runs.
    let mut h = Harness::new(wide(8, 8), true);
    h.answer_claim(&[Behavior::quick(60_000); 7]).unwrap();
    h.advance(ms(5_000)).unwrap();
    assert_eq!(claims(&h), 1, "one slot free: {}", h.trace());
    assert_eq!(h.machine().alive(), 7);
}

#[test]
fn a_cancelled_job_that_ignores_term_is_killed_after_the_grace() {
    let mut h = Harness::new(config(), true);
    h.answer_claim(&[Behavior::stuck()]).unwrap();
    h.advance(ms(100)).unwrap();
    h.deliver(Event::CancelRequested { job: JobId(1) }).unwrap();
    assert!(h.trace().contains("send SIGTERM to job 1"), "{}", h.trace());
    assert!(
        !h.trace().contains("send SIGKILL to job 1"),
        "{}",
        h.trace()
    );
    // kill_grace is 5 s.
    h.advance(ms(5_100)).unwrap();
    assert!(h.trace().contains("send SIGKILL to job 1"), "{}", h.trace());
    assert_eq!(h.machine().alive(), 0);
}

#[test]
fn every_recorded_outcome_is_counted_by_its_kind() {
    let mut h = Harness::new(config(), true);
    // The harness exits with `exit_code % 3`.
    let fails = Behavior {
        exit_code: 1,
        ..Behavior::quick(200)
    };
    let obeys = Behavior {
        run_ms: None,
        ..Behavior::quick(0)
    };
    h.answer_claim(&[Behavior::quick(100), fails, obeys])
        .unwrap();
    h.advance(ms(1_000)).unwrap();
    // The third is stopped at the drain deadline: interrupted.
    h.signal(Signal::Term).unwrap();
    h.advance(ms(20_000)).unwrap();
    let c = h.machine().counters();
    assert_eq!(
        (c.claimed, c.succeeded, c.failed, c.interrupted),
        (3, 1, 1, 1),
        "{}",
        h.trace()
    );
}

#[test]
fn an_outcome_that_meets_a_store_known_down_is_written_before_any_claim() {
    // Manual mode: every store call waits for its answer.
    let mut h = Harness::new(config(), false);
    h.step(&Op::ClaimOk(vec![Behavior::quick(3_000)])).unwrap();
    h.step(&Op::StartOk).unwrap();
    h.advance(ms(2_000)).unwrap();
    // The poll's claim fails: the store is down, as far as we know.
    h.step(&Op::ClaimErr).unwrap();
    // The job ends; its outcome goes out at once and must land before
    // anything could supersede it.
    h.advance(ms(1_000)).unwrap();
    assert!(h.trace().contains("action  record job 1"), "{}", h.trace());
    let before = claims(&h);
    h.advance(ms(6_000)).unwrap();
    assert_eq!(
        claims(&h),
        before,
        "a claim before the write: {}",
        h.trace()
    );
    h.step(&Op::RecordOk).unwrap();
    h.advance(ms(3_000)).unwrap();
    assert!(
        claims(&h) > before,
        "claims again once written: {}",
        h.trace()
    );
}

#[test]
fn a_trace_keeps_its_first_lines_and_counts_the_rest() {
    let mut trace = Trace::new(Instant::ZERO);
    assert!(trace.is_empty());
    trace.line(Instant::ZERO, "note", "one");
    assert_eq!(trace.len(), 1);
    assert!(!trace.is_empty());
    assert!(!trace.render().contains("not kept"), "{}", trace.render());
    for _ in 0..MAX_TRACE_LINES + 4 {
        trace.line(Instant::ZERO, "note", "more");
    }
    assert_eq!(trace.len(), MAX_TRACE_LINES);
    let text = trace.render();
    assert!(
        text.ends_with("... 5 more lines not kept\n"),
        "{}",
        &text[text.len() - 80..]
    );
}

#[test]
fn a_drain_gives_up_recovering_lost_claims_when_a_heartbeat_fails() {
    let mut h = Harness::new(config(), false);
    // The claim commits a job but its reply is lost: the machine will ask
    // for it with its heartbeats.
    h.step(&Op::ClaimLost(vec![Behavior::quick(60_000)]))
        .unwrap();
    h.signal(Signal::Term).unwrap();
    h.advance(ms(5_000)).unwrap();
    assert!(h.trace().contains("recover claims [1]"), "{}", h.trace());
    let asked = h.trace().matches("recover claims").count();
    h.step(&Op::HeartbeatErr).unwrap();
    // Shutting down: no waiting on the store for those jobs; their leases
    // bring them back.
    h.advance(ms(5_000)).unwrap();
    assert!(h.trace().contains("heartbeat (draining"), "{}", h.trace());
    assert_eq!(
        h.trace().matches("recover claims").count(),
        asked,
        "asked again after giving up: {}",
        h.trace()
    );
}

#[test]
fn abandoned_leases_are_remembered_up_to_their_bound_oldest_dropped_first() {
    use dockhand::machine::MAX_ABANDONED;
    let mut h = Harness::new(config(), true).quiet();
    // Every outcome is refused, even the plainest: each job is left to its
    // lease, one abandoned lease per job.
    h.refuse_records(u32::MAX);
    h.hold_claims(true);
    let total = MAX_ABANDONED + 3;
    for n in 1..=total {
        h.answer_claim(&[Behavior::quick(10)]).unwrap();
        h.advance(ms(2_100)).unwrap();
        let kept = h.machine().abandoned().count();
        assert_eq!(kept, n.min(MAX_ABANDONED), "after {n} jobs");
    }
    let abandoned: Vec<i64> = h.machine().abandoned().map(|l| l.job.0).collect();
    let first_kept = (total - MAX_ABANDONED + 1) as i64;
    assert_eq!(abandoned.first(), Some(&first_kept), "the oldest go first");
    assert_eq!(abandoned.last(), Some(&(total as i64)));
}

/// Concurrency 1 with one job prefetched; claims of up to two.
fn prefetching() -> Config {
    Config {
        prefetch: 1,
        ..wide(1, 2)
    }
}

#[test]
fn a_claim_asks_for_the_prefetch_beyond_the_free_slots() {
    let mut h = Harness::new(
        Config {
            prefetch: 4,
            ..wide(4, 8)
        },
        true,
    );
    h.hold_claims(true);
    assert!(h.trace().contains("claim up to 8"), "{}", h.trace());
    h.answer_claim(&[Behavior::quick(60_000); 6]).unwrap();
    assert_eq!((h.machine().alive(), h.machine().queued()), (4, 2));
    // A short batch: the next claim waits for the poll, and asks for the two
    // that still fit the prefetch (a quarter of the eight is worth a claim).
    assert!(!h.trace().contains("claim up to 2"), "{}", h.trace());
    h.advance(config().poll_interval).unwrap();
    assert!(h.trace().contains("claim up to 2"), "{}", h.trace());
}

#[test]
fn a_cancelled_prefetched_job_is_recorded_cancelled_without_starting() {
    let mut h = Harness::new(prefetching(), true);
    h.answer_claim(&[Behavior::quick(60_000), Behavior::quick(100)])
        .unwrap();
    assert_eq!(h.machine().queued(), 1, "{}", h.trace());
    h.deliver(Event::CancelRequested { job: JobId(2) }).unwrap();
    let trace = h.trace();
    assert!(trace.contains("record job 2 cancelled"), "{trace}");
    assert!(!trace.contains("start job 2"), "{trace}");
    assert_eq!(h.machine().queued(), 0);
}

#[test]
fn a_prefetched_job_whose_lease_runs_short_goes_back_unstarted() {
    let mut h = Harness::new(prefetching(), true);
    h.answer_claim(&[Behavior::quick(60_000), Behavior::quick(100)])
        .unwrap();
    // No heartbeat gets through: the lease (15 s) is not extended, and the
    // waiting job goes back a quarter lease before it would expire.
    h.set_store_healthy(false).unwrap();
    h.advance(ms(11_000)).unwrap();
    assert_eq!(h.machine().queued(), 1, "{}", h.trace());
    h.advance(ms(500)).unwrap();
    let trace = h.trace();
    assert!(
        trace.contains("job 2: prefetched, and its lease ran short"),
        "{trace}"
    );
    assert_eq!(h.machine().queued(), 0);
    h.set_store_healthy(true).unwrap();
    h.advance(ms(1_000)).unwrap();
    let trace = h.trace();
    assert!(trace.contains("record job 2 handed back"), "{trace}");
    assert!(!trace.contains("start job 2"), "{trace}");
}

#[test]
fn a_prefetched_job_starts_when_a_slot_frees() {
    let mut h = Harness::new(prefetching(), true);
    h.answer_claim(&[Behavior::quick(1_000), Behavior::quick(100)])
        .unwrap();
    assert!(!h.trace().contains("start job 2"), "{}", h.trace());
    h.advance(ms(1_000)).unwrap();
    assert!(h.trace().contains("start job 2"), "{}", h.trace());
    assert_eq!((h.machine().alive(), h.machine().queued()), (1, 0));
}

#[test]
fn a_prefetching_worker_has_at_most_two_claims_in_flight() {
    let mut h = Harness::new(
        Config {
            prefetch: 4,
            ..wide(4, 2)
        },
        true,
    );
    h.hold_claims(true);
    // A full batch: more jobs wait, so the next claim goes at once.
    h.answer_claim(&[Behavior::quick(100), Behavior::quick(100)])
        .unwrap();
    assert_eq!(claims(&h), 2, "{}", h.trace());
    // The jobs end and their outcomes are written while that claim is
    // unanswered: a second claim joins it, and no third.
    h.advance(ms(100)).unwrap();
    assert_eq!(claims(&h), 3, "{}", h.trace());
    h.advance(config().poll_interval).unwrap();
    assert_eq!(claims(&h), 3, "{}", h.trace());
    // Without a prefetch, the same world has one claim in flight.
    let mut h = Harness::new(wide(4, 2), true);
    h.hold_claims(true);
    h.answer_claim(&[Behavior::quick(100), Behavior::quick(100)])
        .unwrap();
    h.advance(ms(100)).unwrap();
    h.advance(config().poll_interval).unwrap();
    assert_eq!(claims(&h), 2, "{}", h.trace());
}

#[test]
fn a_prefetched_job_whose_lease_is_lost_is_let_go_unstarted() {
    let mut h = Harness::new(prefetching(), true);
    h.answer_claim(&[Behavior::quick(60_000), Behavior::quick(100)])
        .unwrap();
    h.lose_lease_of(JobId(2));
    // The next heartbeat (every lease/3 = 5 s) reports it lost.
    h.advance(ms(5_100)).unwrap();
    let trace = h.trace();
    assert!(trace.contains("release job 2"), "{trace}");
    assert!(!trace.contains("start job 2"), "{trace}");
    assert!(!trace.contains("record job 2"), "{trace}");
    assert_eq!(h.machine().queued(), 0);
    assert_eq!(h.machine().counters().lost, 1, "{trace}");
}

#[test]
fn heartbeats_keep_a_prefetched_jobs_lease() {
    let mut h = Harness::new(prefetching(), true);
    h.answer_claim(&[Behavior::quick(60_000), Behavior::quick(100)])
        .unwrap();
    // Four leases (15 s) later it still waits, its lease extended by every
    // heartbeat, not handed back as running short.
    h.advance(ms(60_000 - 100)).unwrap();
    let trace = h.trace();
    assert_eq!(h.machine().queued(), 1, "{trace}");
    assert!(!trace.contains("lease ran short"), "{trace}");
    h.advance(ms(200)).unwrap();
    assert!(h.trace().contains("start job 2"), "{}", h.trace());
}

#[test]
fn outcomes_waiting_for_their_write_hold_back_claims() {
    // Manual mode, and no outcome write is ever answered: concurrency 3
    // holds at most twice 3 jobs (finished ones waiting for their write
    // count), so claims stop there however often jobs are offered.
    let mut h = Harness::new(wide(3, 3), false);
    for _ in 0..10 {
        h.step(&Op::ClaimOk(vec![Behavior::quick(10); 3])).unwrap();
        for _ in 0..3 {
            h.step(&Op::StartOk).unwrap();
        }
        h.advance(config().poll_interval).unwrap();
    }
    assert_eq!(
        (h.machine().held(), h.machine().alive()),
        (6, 0),
        "{}",
        h.trace()
    );
}

#[test]
fn with_nothing_running_a_claim_goes_for_the_last_free_slot() {
    // Manual mode, no outcome write answered, each claim answered with one
    // job: concurrency 8 (a worthwhile batch is 2) fills its held bound of
    // 16 to the last job, because with nothing running a claim of one is
    // still worth it.
    let mut h = Harness::new(wide(8, 8), false);
    for _ in 0..24 {
        h.step(&Op::ClaimOk(vec![Behavior::quick(10)])).unwrap();
        h.step(&Op::StartOk).unwrap();
        h.advance(config().poll_interval).unwrap();
    }
    assert_eq!(
        (h.machine().held(), h.machine().alive()),
        (16, 0),
        "{}",
        h.trace()
    );
}

// ----- driven by hand: replies the harness never makes -----------------------

/// A job as a claim hands it over.
fn claimed(job: i64, token: i64) -> ClaimedJob {
    ClaimedJob {
        lease: Lease {
            job: JobId(job),
            token: LeaseToken(token),
        },
        queue: "default".into(),
        spec: JobSpec {
            command: vec!["true".into()],
            ..JobSpec::default()
        },
        attempts: 0,
        interruptions: 0,
        waited: Duration::ZERO,
    }
}

/// Everything the machine asks for now, and the notes it wrote.
fn take(machine: &mut Machine) -> (Vec<Action>, Vec<What>) {
    let actions = std::iter::from_fn(|| machine.poll_action()).collect();
    let notes = std::iter::from_fn(|| machine.poll_note())
        .map(|note| note.what)
        .collect();
    (actions, notes)
}

/// Drive `machine` from `now` by its own timers: every action it asks for
/// goes to `answer` (which may feed events back, at the same instant),
/// until `answer` says it has seen enough or the machine exits. Returns the
/// instant reached and every note written on the way; fails if neither
/// happens within `rounds` timers.
fn drive(
    machine: &mut Machine,
    mut now: Instant,
    rounds: usize,
    mut answer: impl FnMut(&mut Machine, Action, Instant) -> bool,
) -> (Instant, Vec<What>) {
    let mut notes = Vec::new();
    for _ in 0..rounds {
        let mut enough = false;
        loop {
            let (actions, more) = take(machine);
            notes.extend(more);
            if actions.is_empty() {
                break;
            }
            for action in actions {
                enough |= answer(machine, action, now);
            }
        }
        if enough || machine.exit_code().is_some() {
            return (now, notes);
        }
        now = machine.poll_timeout().expect("a timer is set");
        machine.handle(Event::TimerFired, now);
    }
    panic!("nothing seen after {rounds} timers, at {now}: {notes:?}");
}

/// A machine starting job 1 (token 1: the executor has not answered yet),
/// claimed by its first claim, whose request id is returned.
fn starting_job_one() -> (Machine, u64) {
    let mut machine = Machine::new(config(), Instant::ZERO).expect("valid config");
    let (actions, _) = take(&mut machine);
    let Some(Action::Claim { request, .. }) = actions.first().cloned() else {
        panic!("a new machine claims first: {actions:?}");
    };
    let now = Instant::ZERO;
    let result = Ok(vec![claimed(1, 1)]);
    machine.handle(Event::ClaimReply { request, result }, now);
    let (actions, _) = take(&mut machine);
    assert!(
        matches!(actions.as_slice(), [Action::Start { job }] if job.lease.job == JobId(1)),
        "{actions:?}"
    );
    (machine, request)
}

/// A machine running job 1 (token 1), claimed by its first claim, whose
/// request id is returned.
fn running_job_one() -> (Machine, u64) {
    let (mut machine, request) = starting_job_one();
    machine.handle(
        Event::JobStarted {
            lease: claimed(1, 1).lease,
        },
        Instant::ZERO,
    );
    take(&mut machine);
    (machine, request)
}

/// The outcomes the machine asks to write in `actions`.
fn recorded(actions: &[Action]) -> Vec<(JobId, Outcome)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Record { completions, .. } => Some(completions),
            _ => None,
        })
        .flatten()
        .map(|c| (c.lease.job, c.outcome.clone()))
        .collect()
}

#[test]
fn a_start_that_fails_after_the_lease_was_lost_writes_nothing() {
    // The heartbeat reports job 1's lease lost while its executor is still
    // starting it (nothing to signal yet). When the start fails, the lease
    // is not ours to write with: the job is left to whoever holds it now.
    let (mut machine, _) = starting_job_one();
    let (now, _) = drive(&mut machine, Instant::ZERO, 20, |machine, action, now| {
        let Action::Heartbeat { request, .. } = action else {
            return false;
        };
        let result = Ok(HeartbeatAnswer {
            lost: vec![JobId(1)],
            ..HeartbeatAnswer::default()
        });
        machine.handle(Event::HeartbeatReply { request, result }, now);
        true
    });
    let failed = Event::StartFailed {
        lease: claimed(1, 1).lease,
        error: "no such image".into(),
        transient: false,
    };
    machine.handle(failed, now);
    let (actions, _) = take(&mut machine);
    assert_eq!(recorded(&actions), Vec::new(), "{actions:?}");
    assert_eq!(machine.counters().lost, 1);
    let abandoned: Vec<Lease> = machine.abandoned().copied().collect();
    assert_eq!(abandoned, vec![claimed(1, 1).lease]);
}

#[test]
fn a_job_cancelled_while_starting_whose_start_fails_is_cancelled() {
    // A user cancels job 1 while its executor is starting it (nothing to
    // signal yet), then the start fails: the user's cancel is the answer,
    // not a failure that uses an attempt (or a hand-back that queues it).
    for transient in [false, true] {
        let (mut machine, _) = starting_job_one();
        let now = Instant::ZERO + Duration::from_millis(10);
        machine.handle(Event::CancelRequested { job: JobId(1) }, now);
        let (actions, _) = take(&mut machine);
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Signal { .. })),
            "nothing runs yet to be signalled: {actions:?}"
        );
        let failed = Event::StartFailed {
            lease: claimed(1, 1).lease,
            error: "no such image".into(),
            transient,
        };
        machine.handle(failed, now);
        let (actions, _) = take(&mut machine);
        assert_eq!(
            recorded(&actions),
            vec![(JobId(1), Outcome::Cancelled)],
            "transient {transient}: {actions:?}"
        );
    }
}

#[test]
fn a_late_claim_reply_hands_back_only_what_is_not_held_and_is_counted() {
    // The reply to a claim already answered comes again (a retried call
    // whose first answer did arrive): job 1 runs here under that claim, job
    // 2 is nobody's. Job 2 goes back at once; job 1 is left alone.
    let (mut machine, request) = running_job_one();
    let result = Ok(vec![claimed(1, 1), claimed(2, 2)]);
    machine.handle(Event::ClaimReply { request, result }, Instant::ZERO);
    let (actions, notes) = take(&mut machine);
    assert_eq!(machine.counters().late_replies, 1);
    let handed_back: Vec<(JobId, &Outcome)> = actions
        .iter()
        .filter_map(|action| match action {
            Action::Record { completions, .. } => Some(completions),
            _ => None,
        })
        .flatten()
        .map(|c| (c.lease.job, &c.outcome))
        .collect();
    assert_eq!(
        handed_back,
        vec![(JobId(2), &Outcome::HandBack)],
        "{actions:?}"
    );
    assert_eq!(notes, vec![What::HandedBack { job: JobId(2) }]);
    assert_eq!(machine.abandoned().count(), 0, "job 1's lease is kept");
    assert_eq!(machine.alive(), 1, "job 1 runs on");
}

#[test]
fn a_newer_claim_of_a_finished_unrecorded_job_supersedes_its_outcome() {
    // Job 1 ended but its outcome is not written yet; the store reaped the
    // lease meanwhile and hands the job to us again with a new token.
    // The old outcome can never be written: it is dropped and counted, and
    // the new claim runs.
    let (mut machine, _) = running_job_one();
    let mut now = Instant::ZERO + Duration::from_millis(500);
    let exit = Event::JobExited {
        lease: claimed(1, 1).lease,
        exit: Exit::Code(0),
        output: Vec::new(),
    };
    machine.handle(exit, now);
    let mut claim = None;
    // The outcome's write is left unanswered (a slow database): claims go
    // on beside it.
    (now, _) = drive(&mut machine, now, 20, |_, action, _| {
        if let Action::Claim { request, .. } = action {
            claim = Some(request);
        }
        claim.is_some()
    });
    let request = claim.expect("the machine claims beside the write");
    assert_eq!(machine.counters().superseded, 0);
    let result = Ok(vec![claimed(1, 5)]);
    machine.handle(Event::ClaimReply { request, result }, now);
    let (actions, notes) = take(&mut machine);
    assert_eq!(machine.counters().superseded, 1, "{actions:?}");
    assert!(
        actions.contains(&Action::Release {
            lease: claimed(1, 1).lease
        }),
        "{actions:?}"
    );
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Start { job } if job.lease == claimed(1, 5).lease)),
        "{actions:?}"
    );
    assert!(
        notes.contains(&What::ClaimedAgain {
            job: JobId(1),
            old: LeaseToken(1),
            alive: false
        }),
        "{notes:?}"
    );
}

#[test]
fn a_job_alive_past_its_kill_at_the_exit_deadline_is_not_killed_twice() {
    // A job that outlives its KILL (a process stuck in the kernel, an
    // engine that does not answer) while the store is unreachable: at the
    // exit deadline its lease is left to expire and the worker exits. It
    // was sent KILL once already; the executor's clean-up at exit is what
    // is left, not another KILL.
    let (mut machine, _) = running_job_one();
    let now = Instant::ZERO + Duration::from_secs(1);
    machine.handle(Event::Signal(Signal::Term), now);
    let mut signals = Vec::new();
    let (_, notes) = drive(&mut machine, now, 100, |machine, action, now| {
        match action {
            Action::Signal { job, signal } => signals.push((job, signal)),
            Action::Heartbeat { request, .. } => {
                let result = Err(StoreFailure::transient("connection refused"));
                machine.handle(Event::HeartbeatReply { request, result }, now);
            }
            _ => {}
        }
        false
    });
    assert_eq!(machine.exit_code(), Some(75), "{notes:?}");
    assert_eq!(
        signals,
        vec![(JobId(1), JobSignal::Term), (JobId(1), JobSignal::Kill)],
        "{notes:?}"
    );
    assert!(
        notes.contains(&What::LeftToLease {
            job: JobId(1),
            alive: true
        }),
        "{notes:?}"
    );
}

#[test]
fn a_full_reply_of_jobs_already_held_is_no_backlog() {
    // A store that answers every claim with a job this worker already runs
    // (a replayed reply, a store bug): nothing new was taken, so nothing
    // says more jobs wait. Claiming again at once on such a reply would
    // loop against the store at full speed; claims stay at the poll's pace.
    let (mut machine, _) = running_job_one();
    let mut now = Instant::ZERO;
    let mut claims = 0;
    for _ in 0..1_000 {
        // Answer at once, as long as claims come at this instant.
        for _ in 0..100 {
            let (actions, _) = take(&mut machine);
            let mut answered = false;
            for action in actions {
                if let Action::Claim { request, max } = action {
                    claims += 1;
                    answered = true;
                    let result = Ok(vec![claimed(1, 1); max as usize]);
                    machine.handle(Event::ClaimReply { request, result }, now);
                }
            }
            if !answered {
                break;
            }
        }
        if now >= Instant::ZERO + Duration::from_secs(10) {
            break;
        }
        now = machine.poll_timeout().expect("a timer is set");
        machine.handle(Event::TimerFired, now);
    }
    // One claim per poll (every 2 s) over 10 s.
    assert!(claims <= 6, "{claims} claims in 10 s");
    assert!(claims >= 4, "the polls go on: {claims} claims in 10 s");
    assert_eq!(machine.alive(), 1);
}

/// Job 1 exits with `output`; the outcome the machine asks to write.
fn exit_with(output: Vec<u8>) -> (Machine, u64, dockhand::job::Completion) {
    let (mut machine, _) = running_job_one();
    let exit = Event::JobExited {
        lease: claimed(1, 1).lease,
        exit: Exit::Code(0),
        output,
    };
    machine.handle(exit, Instant::ZERO + Duration::from_millis(10));
    let (actions, _) = take(&mut machine);
    let Some((request, completion)) = actions.into_iter().find_map(|action| match action {
        Action::Record {
            request,
            mut completions,
        } => Some((request, completions.remove(0))),
        _ => None,
    }) else {
        panic!("the outcome is written at once");
    };
    (machine, request, completion)
}

#[test]
fn only_the_tail_of_a_long_output_is_written() {
    use dockhand::job::OUTPUT_LIMIT;
    let long: Vec<u8> = (0..OUTPUT_LIMIT + 1000).map(|i| (i % 251) as u8).collect();
    let (_, _, completion) = exit_with(long.clone());
    assert_eq!(completion.output.len(), OUTPUT_LIMIT);
    assert_eq!(completion.output, long[1000..], "the last bytes, in order");
    let short = b"a few bytes\n\xff\x00 of anything".to_vec();
    let (_, _, completion) = exit_with(short.clone());
    assert_eq!(completion.output, short, "a short output is kept whole");
}

#[test]
fn an_outcome_the_store_refuses_is_let_go_and_counted() {
    // The store refuses the write (the lease went stale meanwhile): the
    // job is not ours any more; nothing is retried.
    let (mut machine, request, _) = exit_with(Vec::new());
    let result = Ok(vec![(JobId(1), RecordResult::Refused)]);
    machine.handle(
        Event::RecordReply { request, result },
        Instant::ZERO + Duration::from_millis(20),
    );
    let (actions, notes) = take(&mut machine);
    assert_eq!(machine.counters().refused, 1);
    assert!(
        notes.contains(&What::OutcomeRefused { job: JobId(1) }),
        "{notes:?}"
    );
    assert_eq!(recorded(&actions), Vec::new(), "not written again");
    assert_eq!(machine.held(), 0);
}

/// Answer the record in `actions` (there must be one) with `result`.
fn answer_record(
    machine: &mut Machine,
    actions: &[Action],
    now: Instant,
    result: impl FnOnce(
        &[dockhand::job::Completion],
    ) -> Result<Vec<(JobId, RecordResult)>, StoreFailure>,
) {
    let Some((request, completions)) = actions.iter().find_map(|action| match action {
        Action::Record {
            request,
            completions,
        } => Some((*request, completions)),
        _ => None,
    }) else {
        panic!("a record was asked for: {actions:?}");
    };
    let result = result(completions);
    machine.handle(Event::RecordReply { request, result }, now);
}

fn written(
    completions: &[dockhand::job::Completion],
    state: JobState,
) -> Vec<(JobId, RecordResult)> {
    completions
        .iter()
        .map(|c| (c.lease.job, RecordResult::Recorded { state }))
        .collect()
}

#[test]
fn hand_backs_and_cancels_are_counted_once_written() {
    let (mut machine, request) = running_job_one();
    let now = Instant::ZERO + Duration::from_millis(10);
    // A late reply brings job 2, which goes back.
    let result = Ok(vec![claimed(2, 2)]);
    machine.handle(Event::ClaimReply { request, result }, now);
    let (actions, _) = take(&mut machine);
    answer_record(&mut machine, &actions, now, |c| {
        Ok(written(c, JobState::Queued))
    });
    take(&mut machine);
    // Job 1 is cancelled and obeys its TERM.
    machine.handle(Event::CancelRequested { job: JobId(1) }, now);
    let (actions, _) = take(&mut machine);
    assert!(
        actions.contains(&Action::Signal {
            job: JobId(1),
            signal: JobSignal::Term
        }),
        "{actions:?}"
    );
    let exit = Event::JobExited {
        lease: claimed(1, 1).lease,
        exit: Exit::Signal(15),
        output: Vec::new(),
    };
    machine.handle(exit, now);
    let (actions, _) = take(&mut machine);
    assert_eq!(recorded(&actions), vec![(JobId(1), Outcome::Cancelled)]);
    answer_record(&mut machine, &actions, now, |c| {
        Ok(written(c, JobState::Cancelled))
    });
    let c = machine.counters();
    assert_eq!((c.handed_back, c.cancelled), (1, 1));
}

#[test]
fn an_outcome_refused_for_good_is_written_plain_then_left_to_its_lease() {
    // The store refuses the outcome as a value it cannot store (not an
    // outage): it is written again as a plain failure without its output;
    // refused again, the job is left to its lease, and the worker's exit
    // code says work was left behind.
    let (mut machine, request, _) = exit_with(b"\x00 bytes the store will not take".to_vec());
    let now = Instant::ZERO + Duration::from_millis(20);
    let result = Err(StoreFailure::permanent("invalid byte sequence"));
    machine.handle(Event::RecordReply { request, result }, now);
    assert_eq!(machine.counters().store_errors, 1);
    let (actions, _) = take(&mut machine);
    let plain = recorded(&actions);
    assert!(
        matches!(
            plain.as_slice(),
            [(
                JobId(1),
                Outcome::Failed {
                    exit_code: Some(0),
                    ..
                }
            )]
        ),
        "{actions:?}"
    );
    assert_eq!(machine.counters().invalid, 1);
    answer_record(&mut machine, &actions, now, |_| {
        Err(StoreFailure::permanent("invalid byte sequence"))
    });
    let (actions, notes) = take(&mut machine);
    assert_eq!(recorded(&actions), Vec::new(), "not written a third time");
    assert!(
        notes.contains(&What::OutcomeInvalid {
            job: JobId(1),
            failure: StoreFailure::permanent("invalid byte sequence"),
            left_to_lease: true
        }),
        "{notes:?}"
    );
    let abandoned: Vec<Lease> = machine.abandoned().copied().collect();
    assert_eq!(abandoned, vec![claimed(1, 1).lease]);
    // Nothing else happened: without the job left behind, the exit would
    // be 0.
    let now = now + Duration::from_millis(10);
    machine.handle(Event::Signal(Signal::Term), now);
    drive(&mut machine, now, 100, |machine, action, now| {
        if let Action::Heartbeat { request, .. } = action {
            let result = Ok(HeartbeatAnswer::default());
            machine.handle(Event::HeartbeatReply { request, result }, now);
        }
        false
    });
    assert_eq!(machine.exit_code(), Some(75));
}

#[test]
fn every_failed_store_call_is_counted() {
    // The first failure also marks the store down (one note); each one is
    // counted (`/metrics`' store errors), not only the first.
    let mut machine = Machine::new(config(), Instant::ZERO).expect("valid config");
    let mut failed = 0;
    drive(&mut machine, Instant::ZERO, 100, |machine, action, now| {
        if let Action::Claim { request, .. } = action {
            let result = Err(StoreFailure::transient("connection refused"));
            machine.handle(Event::ClaimReply { request, result }, now);
            failed += 1;
        }
        failed == 3
    });
    assert_eq!(failed, 3, "the machine claims again after a failure");
    assert_eq!(machine.counters().store_errors, 3);
}

#[test]
fn a_drain_asks_for_lost_claims_at_once() {
    // A claim whose reply was lost may have taken jobs. Shutting down, the
    // worker asks the store for them at once (a heartbeat naming the claim),
    // to hand them back before it exits, not at the next heartbeat.
    let mut machine = Machine::new(config(), Instant::ZERO).expect("valid config");
    let (actions, _) = take(&mut machine);
    let Some(Action::Claim { request, .. }) = actions.first().cloned() else {
        panic!("a new machine claims first: {actions:?}");
    };
    let now = Instant::ZERO + Duration::from_millis(100);
    let result = Err(StoreFailure::transient("no answer within 1000ms"));
    machine.handle(Event::ClaimReply { request, result }, now);
    take(&mut machine);
    machine.handle(Event::Signal(Signal::Term), now);
    let (actions, _) = take(&mut machine);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Heartbeat { recover, .. } if recover == &vec![request])),
        "{actions:?}"
    );
}

#[test]
#[should_panic(expected = "breaks the driver's contract")]
fn an_event_that_breaks_the_drivers_contract_is_loud_in_debug_builds() {
    // The executor reports a start of a run the machine never asked for: a
    // bug in the driver. Release builds count and ignore it (`/status`);
    // debug builds, which every test runs, stop at once.
    let mut machine = Machine::new(config(), Instant::ZERO).expect("valid config");
    take(&mut machine);
    machine.handle(
        Event::JobStarted {
            lease: claimed(9, 9).lease,
        },
        Instant::ZERO,
    );
}

#[test]
fn a_finished_runs_kill_timer_does_not_cut_short_the_next_runs_grace() {
    // Run 1 of job 1 (timeout 1 s) gets TERM at its timeout, KILL due 5 s
    // later, but exits at once. The job fails, comes back, and this worker
    // claims it again (run 2), which also times out and ignores TERM: its
    // KILL is due a full grace after its own TERM, not at run 1's old time.
    let mut spec = JobSpec {
        command: vec!["sleep".into(), "60".into()],
        ..JobSpec::default()
    };
    spec.timeout_ms = Some(1_000);
    let job = |token: i64| ClaimedJob {
        spec: spec.clone(),
        ..claimed(1, token)
    };
    let at = |ms: u64| Instant::ZERO + Duration::from_millis(ms);
    let mut machine = Machine::new(config(), Instant::ZERO).expect("valid config");
    let mut now = Instant::ZERO;
    let mut term_at = Vec::new();
    let mut kill_at = Vec::new();
    let mut token = 0;
    for _ in 0..200 {
        // Answer everything asked at this instant, and what that asks.
        loop {
            let (actions, _) = take(&mut machine);
            if actions.is_empty() {
                break;
            }
            for action in actions {
                match action {
                    Action::Claim { request, .. } => {
                        let result = Ok(if token < 2 {
                            token += 1;
                            vec![job(token)]
                        } else {
                            Vec::new()
                        });
                        machine.handle(Event::ClaimReply { request, result }, now);
                    }
                    Action::Start { job } => {
                        machine.handle(Event::JobStarted { lease: job.lease }, now);
                    }
                    Action::Signal { job, signal } => {
                        assert_eq!(job, JobId(1));
                        match signal {
                            JobSignal::Term => term_at.push(now),
                            JobSignal::Kill => kill_at.push(now),
                        }
                        // Run 1 obeys its TERM; run 2 ignores it.
                        if token == 1 && signal == JobSignal::Term {
                            let exit = Event::JobExited {
                                lease: job_lease(1, 1),
                                exit: Exit::Signal(15),
                                output: Vec::new(),
                            };
                            machine.handle(exit, now);
                        }
                    }
                    Action::Record {
                        request,
                        completions,
                    } => {
                        let result = Ok(written(&completions, JobState::Queued));
                        machine.handle(Event::RecordReply { request, result }, now);
                    }
                    Action::Heartbeat { request, .. } => {
                        let result = Ok(HeartbeatAnswer::default());
                        machine.handle(Event::HeartbeatReply { request, result }, now);
                    }
                    _ => {}
                }
            }
        }
        if !kill_at.is_empty() || now > at(30_000) {
            break;
        }
        now = machine.poll_timeout().expect("a timer is set");
        machine.handle(Event::TimerFired, now);
    }
    assert_eq!(token, 2, "job 1 was claimed twice");
    assert_eq!(term_at.len(), 2, "each run had its TERM at its timeout");
    assert_eq!(
        kill_at,
        vec![term_at[1] + config().kill_grace],
        "run 2's KILL comes a grace after its TERM ({term_at:?})"
    );
    assert!(
        term_at[1] < term_at[0] + config().kill_grace,
        "the runs overlap the old grace"
    );
}

fn job_lease(job: i64, token: i64) -> Lease {
    claimed(job, token).lease
}
