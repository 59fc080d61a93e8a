//! Property tests: random operation sequences against the machine, every
//! invariant checked after every step, then a healing phase that requires the
//! worker to stop within its bound.
//!
//! Replay a failure: proptest prints the minimal failing case and stores its
//! seed in `tests/machine_props.proptest-regressions`, which is replayed first
//! on every later run.

use dockhand_testkit::harness::{Behavior, Case, ConfigChoice, Harness, Op, SignalOp};
use proptest::prelude::*;

fn behavior() -> impl Strategy<Value = Behavior> {
    (
        prop_oneof![3 => (1u16..3000).prop_map(Some), 1 => Just(None)],
        prop::bool::weighted(0.25),
        0u8..3,
        prop_oneof![3 => Just(None), 1 => (50u16..2000).prop_map(Some)],
    )
        .prop_map(|(run_ms, ignores_term, exit_code, timeout_ms)| Behavior {
            run_ms,
            ignores_term,
            exit_code,
            timeout_ms,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u16..1500).prop_map(Op::Advance),
        2 => prop_oneof![Just(SignalOp::Term), Just(SignalOp::Int), Just(SignalOp::Usr1)].prop_map(Op::Signal),
        6 => prop::collection::vec(behavior(), 0..4).prop_map(Op::ClaimOk),
        1 => Just(Op::ClaimErr),
        1 => prop::collection::vec(behavior(), 1..3).prop_map(Op::ClaimLost),
        1 => any::<u8>().prop_map(Op::ClaimAgain),
        6 => Just(Op::StartOk),
        1 => any::<bool>().prop_map(Op::StartErr),
        5 => Just(Op::RecordOk),
        1 => Just(Op::RecordErr),
        1 => Just(Op::RecordInvalid),
        1 => Just(Op::RecordRefuseFirst),
        3 => Just(Op::HeartbeatOk),
        1 => Just(Op::HeartbeatErr),
        1 => Just(Op::HeartbeatLoseFirst),
        1 => Just(Op::HeartbeatCancelFirst),
        2 => Just(Op::ReapOk),
        1 => Just(Op::ReapErr),
        2 => (any::<u8>(), 0u8..3).prop_map(|(n, c)| Op::Exit(n, c)),
        1 => any::<u8>().prop_map(Op::Cancel),
        1 => Just(Op::Wake),
        1 => Just(Op::Duplicate),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>()),
        prop::collection::vec(op(), 0..120),
    )
        .prop_map(|((concurrency, batch, timing, prefetch), ops)| Case {
            config: ConfigChoice {
                concurrency,
                batch,
                timing,
                prefetch,
            },
            ops,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4000),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    /// Every invariant holds after every step, and the machine always stops
    /// within its bound once signals stop and the store recovers.
    #[test]
    fn invariants_hold_under_any_schedule(case in case()) {
        if let Err(violation) = Harness::run_case(&case) {
            prop_assert!(false, "{violation}\nconfig: {:?}", case.config.config());
        }
    }
}

/// Replays the failing case with a full trace, for reading.
#[test]
fn a_busy_schedule_reaches_stopped() {
    let case = Case {
        config: ConfigChoice {
            concurrency: 2,
            batch: 2,
            timing: 0,
            prefetch: 0,
        },
        ops: vec![
            Op::ClaimOk(vec![Behavior::quick(500), Behavior::stuck()]),
            Op::StartOk,
            Op::StartOk,
            Op::Advance(200),
            Op::Signal(SignalOp::Term),
            Op::Advance(600),
            Op::RecordErr,
            Op::Advance(1500),
        ],
    };
    Harness::run_case(&case).unwrap();
}
