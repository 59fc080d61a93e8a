//! Named shutdown scenarios rendered as traces and reviewed as snapshots.
//!
//! Each line is an event (what happened), an action (what the machine asked
//! for), a phase transition or a job note, with the time since the worker
//! started. The worker binary prints the phase and job lines at exit.
//! Every scenario also runs under the harness's invariant checker.
//!
//! Review changes with `cargo insta review`; CI runs with `INSTA_UPDATE=no`.

use std::time::Duration;

use dockhand::job::JobId;
use dockhand::machine::{Config, Event, Signal};
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

fn quick(ms: u16) -> Behavior {
    Behavior::quick(ms)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Run a scenario against a harness in auto mode and return its trace.
fn scenario(
    f: impl FnOnce(&mut Harness) -> Result<(), dockhand_testkit::harness::Violation>,
) -> String {
    let mut h = Harness::new(config(), true);
    if let Err(violation) = f(&mut h) {
        panic!("{violation}");
    }
    assert!(
        h.exit().is_some(),
        "scenario must end with an exit:\n{}",
        h.trace()
    );
    h.trace()
}

#[test]
fn idle_term() {
    let trace = scenario(|h| {
        h.answer_claim(&[])?;
        h.advance(ms(300))?;
        h.signal(Signal::Term)
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn term_while_three_jobs_finish_in_time() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(2000), quick(4000), quick(6000)])?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(6000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn int_drains_like_term() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(1500)])?;
        h.advance(ms(500))?;
        h.signal(Signal::Int)?;
        h.advance(ms(2000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn stuck_job_times_out_then_is_killed_and_requeued() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(1000), Behavior::stuck()])?;
        h.advance(ms(500))?;
        h.signal(Signal::Term)?;
        h.advance(ms(20_000))
    });
    insta::assert_snapshot!(trace);
}

/// A job that ignores TERM but finishes with exit 0 inside the kill grace is
/// done: it is recorded succeeded (not requeued to run its side effects
/// again), and the worker exits 0. The chaos test found this.
#[test]
fn job_ignoring_term_that_finishes_in_the_grace_succeeded() {
    let trace = scenario(|h| {
        h.answer_claim(&[Behavior {
            run_ms: Some(12_000),
            ignores_term: true,
            exit_code: 0,
            timeout_ms: None,
        }])?;
        h.advance(ms(500))?;
        h.signal(Signal::Term)?;
        h.advance(ms(20_000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn double_term_forces_the_stop() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(8000), quick(9000)])?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(2000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(1000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn triple_term_kills_at_once() {
    let trace = scenario(|h| {
        h.answer_claim(&[Behavior::stuck(), quick(9000)])?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(1000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn usr1_while_running_and_while_draining() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(5000), quick(7000)])?;
        h.advance(ms(1200))?;
        h.signal(Signal::Usr1)?;
        h.advance(ms(800))?;
        h.signal(Signal::Term)?;
        h.advance(ms(1000))?;
        h.signal(Signal::Usr1)?;
        h.advance(ms(6000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn claim_in_flight_when_term_arrives_is_handed_back() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(1000)])?;
        // The poll after the job ends sends a claim; TERM arrives before its reply.
        h.hold_claims(true);
        h.advance(ms(2000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(100))?;
        h.answer_claim(&[quick(1000), quick(1000)])
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn store_down_during_drain_then_back() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(2000), quick(3000)])?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.set_store_healthy(false)?;
        h.advance(ms(4000))?;
        h.set_store_healthy(true)?;
        h.advance(ms(3000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn store_down_past_the_exit_deadline() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(2000)])?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.set_store_healthy(false)?;
        h.advance(ms(25_000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn job_fails_non_zero_during_drain() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(3000), quick(4000)])?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)?;
        h.advance(ms(500))?;
        // The first live job exits on its own with code 3.
        h.step(&Op::Exit(0, 3))?;
        h.advance(ms(4000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn per_job_timeout_while_running() {
    let trace = scenario(|h| {
        let slow = Behavior {
            run_ms: Some(60_000),
            ignores_term: false,
            exit_code: 0,
            timeout_ms: Some(2000),
        };
        h.answer_claim(&[slow])?;
        h.advance(ms(3000))?;
        h.signal(Signal::Term)
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn cancel_of_a_running_job() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(30_000), quick(1500)])?;
        h.advance(ms(1000))?;
        h.deliver(Event::CancelRequested { job: JobId(1) })?;
        h.advance(ms(1000))?;
        h.signal(Signal::Term)
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn wake_up_while_draining_claims_nothing() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(3000)])?;
        h.advance(ms(500))?;
        h.signal(Signal::Term)?;
        h.deliver(Event::Wake)?;
        h.advance(ms(2500))?;
        h.deliver(Event::Wake)?;
        h.advance(ms(1000))
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn lost_lease_kills_the_job_at_once() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(60_000)])?;
        // The store reaped the lease (or another worker claimed the job):
        // the next heartbeat says so. No grace: another copy may already run.
        h.lose_next_lease();
        h.advance(ms(5100))?;
        h.signal(Signal::Term)
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn store_down_longer_than_the_lease_flushes_before_claiming() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(2000), quick(60_000)])?;
        h.advance(ms(1000))?;
        // Down for longer than the 15 s lease: the running job is stopped
        // before its lease can expire; the finished one waits to be written.
        h.set_store_healthy(false)?;
        h.advance(ms(20_000))?;
        // Back: the outcomes go first; only then a claim and a reap.
        h.set_store_healthy(true)?;
        h.advance(ms(2500))?;
        h.signal(Signal::Term)
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn an_outcome_the_store_refuses_is_isolated_and_recorded_as_failed() {
    let trace = scenario(|h| {
        h.answer_claim(&[quick(1000), quick(1000)])?;
        // A short outage makes both outcomes wait, so they go out together.
        h.set_store_healthy(false)?;
        h.advance(ms(1500))?;
        // The store refuses the batch, then the first outcome alone; the
        // failure without output that replaces it is accepted.
        h.refuse_records(2);
        h.set_store_healthy(true)?;
        h.advance(ms(500))?;
        h.signal(Signal::Term)
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn a_claim_whose_reply_was_lost_is_recovered_by_the_next_heartbeat() {
    let trace = scenario(|h| {
        h.answer_claim(&[])?;
        h.hold_claims(true);
        h.advance(ms(2000))?;
        // The poll's claim commits one job but its reply never arrives.
        h.step(&Op::ClaimLost(vec![quick(1000)]))?;
        h.hold_claims(false);
        h.advance(ms(5000))?;
        h.signal(Signal::Term)
    });
    insta::assert_snapshot!(trace);
}

#[test]
fn term_before_the_first_claim_is_sent_claims_nothing() {
    // The machine was created (its first claim queued) but the driver read a
    // pending TERM before performing any action.
    let mut machine =
        dockhand::machine::Machine::new(config(), dockhand::machine::Instant::ZERO).unwrap();
    machine.handle(
        Event::Signal(Signal::Term),
        dockhand::machine::Instant::from_millis(1),
    );
    let mut trace = dockhand::machine::trace::Trace::new(dockhand::machine::Instant::ZERO);
    while let Some(note) = machine.poll_note() {
        trace.note(&note);
    }
    while let Some(action) = machine.poll_action() {
        trace.action(dockhand::machine::Instant::from_millis(1), &action);
    }
    insta::assert_snapshot!(trace.render());
}

/// With a prefetch, a claim carries jobs beyond the free slots; they start
/// in claim order as slots free up, and those still waiting at the first
/// signal go back to the queue, never started.
#[test]
fn prefetched_jobs_start_as_slots_free_and_go_back_at_the_signal() {
    let mut h = Harness::new(
        Config {
            prefetch: 2,
            batch_max: 5,
            ..config()
        },
        true,
    );
    let run = |h: &mut Harness| {
        h.hold_claims(true);
        h.answer_claim(&[
            quick(1000),
            quick(5000),
            quick(5000),
            quick(500),
            quick(500),
        ])?;
        h.hold_claims(false);
        // Job 1 ends: job 4, the first prefetched, takes its slot.
        h.advance(ms(1000))?;
        h.advance(ms(200))?;
        // Job 5 still waits when TERM comes.
        h.signal(Signal::Term)?;
        h.advance(ms(6000))
    };
    if let Err(violation) = run(&mut h) {
        panic!("{violation}");
    }
    assert!(h.exit().is_some(), "no exit:\n{}", h.trace());
    insta::assert_snapshot!(h.trace());
}
