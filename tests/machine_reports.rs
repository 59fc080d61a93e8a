//! What the machine reports about itself, which the shell, `/status`, the
//! shutdown summary and the embedding API read: jobs held and alive,
//! leases given up, the exit code, its configuration, notes dropped.
//! (Mutation testing found these unchecked by the scenario and property
//! tests; see docs/VERIFICATION.md.)

use std::time::Duration;

use dockhand::job::JobId;
use dockhand::machine::{Action, Config, Event, Instant, Machine, Signal, StoreFailure, MAX_NOTES};
use dockhand_testkit::harness::{Behavior, Harness};

fn config() -> Config {
    Config {
        concurrency: 3,
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
    // claims may add a batch or two): 2 × (3 + 3).
    let h = Harness::new(config(), true);
    assert_eq!(h.machine().max_held(), 12);
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
