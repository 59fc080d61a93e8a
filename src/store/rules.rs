//! The job lifecycle rules as SQL, written once for both SQL backends.
//!
//! What an outcome does to a job (attempts, interruptions, retry with
//! backoff, quarantine, a pending cancel) and what a reap does are decided
//! here. Each backend supplies only its dialect: how to say "now", the
//! backoff expression, how the input row carries its output bytes. The
//! in-memory store implements the same rules in Rust (`memory.rs`), and the
//! conformance suite runs one set of tests over all three.
//!
//! In every expression `j` is the job row *before* the change (SQL `SET`
//! expressions read old values) and `t` is the input row of one outcome:
//! `t.token`, `t.kind`, `t.exit_code`, `t.error`, and the output.

use super::{RETRY_BASE, RETRY_CAP};

/// The end of a quarantined job's error text ([`quarantine_reason`](super::quarantine_reason)).
pub(crate) const QUARANTINE_SUFFIX: &str = " times (max_interruptions); not requeued again";

/// What differs between the SQL backends.
pub(crate) struct Dialect {
    /// The current time as the backend stores it.
    pub now: &'static str,
    /// The output bytes of the input row.
    pub output: &'static str,
    /// When a failed attempt runs again: `now` plus `RETRY_BASE *
    /// 2^j.attempts`, capped at `RETRY_CAP`, with ±25 % jitter (the rule of
    /// [`super::retry_backoff`], built by each backend from those constants).
    pub backoff: String,
    /// False as the backend stores it.
    pub false_: &'static str,
    /// True as the backend stores it.
    pub true_: &'static str,
}

/// `RETRY_BASE` and `RETRY_CAP` in milliseconds, for the backoff expressions.
pub(crate) fn backoff_ms() -> (u128, u128) {
    (RETRY_BASE.as_millis(), RETRY_CAP.as_millis())
}

/// 1 when accepting this outcome undoes an interruption counted by a reap:
/// the lease expired and was reaped (the job is no longer `running`), but
/// nobody claimed the job since, so the run did happen after all. A reap of
/// a job with a pending cancel counted no interruption.
fn undo() -> &'static str {
    "(CASE WHEN j.state <> 'running' AND NOT j.cancel_requested THEN 1 ELSE 0 END)"
}

fn interruptions_before() -> String {
    format!("(j.interruptions - {})", undo())
}

fn quarantine(count: &str) -> String {
    format!("('interrupted ' || ({count}) || '{QUARANTINE_SUFFIX}')")
}

/// The job's state after the outcome `t`.
///
/// A success is final whatever else happened. A pending cancel turns every
/// other outcome into `cancelled`: a failed attempt with retries left, an
/// interruption and a hand-back would otherwise requeue a job the user
/// cancelled.
pub(crate) fn outcome_state() -> String {
    format!(
        "(CASE
            WHEN t.kind = 'succeeded' THEN 'succeeded'
            WHEN t.kind = 'cancelled' OR j.cancel_requested THEN 'cancelled'
            WHEN t.kind = 'failed' AND j.attempts + 1 >= j.max_attempts THEN 'failed'
            WHEN t.kind = 'interrupted' AND {before} + 1 >= j.max_interruptions THEN 'failed'
            ELSE 'queued'
        END)",
        before = interruptions_before()
    )
}

/// `SET` assignments that apply the outcome `t` to the job `j`.
pub(crate) fn outcome_assignments(d: &Dialect) -> String {
    let state = outcome_state();
    let before = interruptions_before();
    format!(
        "attempts = j.attempts + CASE WHEN t.kind IN ('succeeded', 'failed') THEN 1 ELSE 0 END,
        interruptions = {before} + CASE WHEN t.kind = 'interrupted' THEN 1 ELSE 0 END,
        state = {state},
        run_at = CASE WHEN t.kind = 'failed' THEN {backoff} ELSE {now} END,
        exit_code = CASE WHEN t.kind IN ('succeeded', 'failed') THEN t.exit_code ELSE j.exit_code END,
        error = CASE
            WHEN t.kind = 'failed' THEN t.error
            WHEN t.kind = 'succeeded' THEN NULL
            WHEN t.kind = 'interrupted' AND NOT j.cancel_requested AND {before} + 1 >= j.max_interruptions
                THEN {quarantine}
            ELSE j.error END,
        output = CASE WHEN t.kind = 'handed-back' THEN j.output ELSE {output} END,
        started_at = CASE WHEN t.kind = 'handed-back' THEN NULL ELSE j.started_at END,
        finished_at = CASE WHEN {state} IN ('succeeded', 'failed', 'cancelled') THEN {now} ELSE NULL END,
        lease_expires_at = NULL,
        lease_expired = {false_}",
        backoff = d.backoff,
        now = d.now,
        output = d.output,
        quarantine = quarantine(&format!("{before} + 1")),
        false_ = d.false_,
    )
}

/// The fence: an outcome is written only under the job's latest claim,
/// `worker` + `t.token`, while the job runs under it — or after its lease
/// expired and was reaped, as long as nobody claimed the job since (the
/// token is still ours) and no user retried or cancelled it meanwhile
/// (`lease_expired` is cleared by both).
pub(crate) fn outcome_fence(worker: &str) -> String {
    format!(
        "j.lease_owner = {worker} AND j.lease_token = t.token AND (j.state = 'running' OR j.lease_expired)"
    )
}

/// The history entry of an accepted outcome, from the kind and the new
/// state (`state`, an expression).
pub(crate) fn outcome_event(state: &str) -> String {
    format!(
        "(CASE
            WHEN t.kind = 'failed' AND {state} = 'queued' THEN 'retry-scheduled'
            WHEN t.kind IN ('failed', 'interrupted', 'handed-back') AND {state} = 'cancelled' THEN 'cancelled'
            WHEN t.kind = 'interrupted' AND {state} = 'failed' THEN 'failed'
            ELSE t.kind
        END)"
    )
}

/// `SET` assignments of a reap of the expired lease of `j`: the run counts
/// as an interruption (quarantined at `max_interruptions`), unless a cancel
/// is pending, which cancels it. `lease_expired` lets the late outcome of
/// that run still be accepted until somebody claims the job.
pub(crate) fn reap_assignments(d: &Dialect) -> String {
    let quarantined = "j.interruptions + 1 >= j.max_interruptions";
    format!(
        "interruptions = j.interruptions + CASE WHEN j.cancel_requested THEN 0 ELSE 1 END,
        state = CASE WHEN j.cancel_requested THEN 'cancelled'
                     WHEN {quarantined} THEN 'failed'
                     ELSE 'queued' END,
        error = CASE WHEN NOT j.cancel_requested AND {quarantined} THEN {quarantine} ELSE j.error END,
        finished_at = CASE WHEN j.cancel_requested OR {quarantined} THEN {now} ELSE NULL END,
        run_at = {now},
        lease_expires_at = NULL,
        lease_expired = {true_}",
        quarantine = quarantine("j.interruptions + 1"),
        now = d.now,
        true_ = d.true_,
    )
}
