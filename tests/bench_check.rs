//! `dockhand bench --check BASELINE.json`, the regression guard, on the real
//! binary: a run far worse than its baseline fails naming the measures, one
//! far better passes, and a baseline made with other settings is refused
//! before anything runs. The baselines are edited by orders of magnitude,
//! so no verdict here depends on how fast this machine is.

mod support;

use std::process::Output;

use serde_json::Value;
use support::Db;

const ARGS: [&str; 9] = [
    "bench",
    "--jobs",
    "100",
    "--concurrency",
    "4",
    "--lease",
    "1s",
    "--process-jobs",
    "100",
];

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scale every measure of a `bench --json` output: `better` > 1 makes each
/// one better than measured (throughput up, times and memory down).
fn scaled(run: &Value, better: f64) -> Value {
    let mut run = run.clone();
    let scale = |value: &mut Value, by: f64| {
        let number = value.as_f64().expect("a number");
        *value = serde_json::json!(number * by);
    };
    scale(&mut run["bulk_enqueue_jobs_per_s"], better);
    scale(&mut run["process_jobs_per_s"], better);
    for round in run["throughput"].as_array_mut().expect("rounds") {
        scale(&mut round["jobs_per_s"], better);
    }
    for pointer in [
        "/pickup_latency_ms/p50",
        "/pickup_latency_ms/p99",
        "/idle_term_to_exit_ms",
        "/last_job_done_to_exit_ms",
        "/abandoned_claim_rerun_ms",
        "/rss_kib/idle",
        "/rss_kib/under_load",
    ] {
        scale(run.pointer_mut(pointer).expect(pointer), 1.0 / better);
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_checked_against_its_baseline_by_ratio() {
    let db = Db::sqlite("bench_check").await;
    let mut args = ARGS.to_vec();
    args.push("--json");
    let out = db.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let measured: Value = serde_json::from_str(&stdout(&out)).expect("bench --json");
    assert_eq!(measured["jobs"], 100);
    assert!(measured["check"].is_null(), "no check without --check");

    // A baseline a thousand times better than this machine can do: exit 1,
    // one line on stderr naming what regressed. (Times below a millisecond
    // are compared with a millisecond added, so only the measures that are
    // surely far from it are named here.)
    let fast = db.path("fast.json");
    std::fs::write(&fast, scaled(&measured, 1000.0).to_string()).unwrap();
    let mut args = ARGS.to_vec();
    args.extend(["--check", &fast, "--json"]);
    let out = db.cli(&args);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let checked: Value = serde_json::from_str(&stdout(&out)).expect("bench --json");
    let regressed: Vec<&str> = checked["check"]["measures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["regressed"] == true)
        .map(|m| m["measure"].as_str().unwrap())
        .collect();
    for measure in [
        "bulk_enqueue_jobs_per_s",
        "process_jobs_per_s",
        "jobs_per_s at concurrency 4",
        "abandoned_claim_rerun_ms",
        "rss_kib.idle",
        "rss_kib.under_load",
    ] {
        assert!(regressed.contains(&measure), "{measure}: {regressed:?}");
    }
    assert_eq!(checked["check"]["regressions"], regressed.len());
    let err = stderr(&out);
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "{} measure(s) worse than the baseline by more than 30 %",
            regressed.len()
        )),
        "{err}"
    );
    assert!(last.contains("jobs_per_s at concurrency 4"), "{err}");

    // A thousand times worse: nothing regressed, exit 0; --json carries
    // the verdicts.
    let slow = db.path("slow.json");
    std::fs::write(&slow, scaled(&measured, 0.001).to_string()).unwrap();
    let mut args = ARGS.to_vec();
    args.extend(["--check", &slow, "--json", "--tolerance", "50"]);
    let out = db.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let checked: Value = serde_json::from_str(&stdout(&out)).expect("bench --json");
    assert_eq!(checked["check"]["regressions"], 0);
    assert_eq!(checked["check"]["tolerance_percent"], 50);
    let measures = checked["check"]["measures"].as_array().unwrap();
    assert_eq!(measures.len(), 10);
    assert!(measures.iter().all(|m| m["regressed"] == false));
    assert!(measures.iter().all(|m| m["ratio"].as_f64().unwrap() > 10.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baseline_that_cannot_be_compared_is_refused_before_running() {
    let db = Db::sqlite("bench_check_refused").await;
    let baseline = db.path("baseline.json");
    let made = serde_json::json!({
        "database": "postgres://dockhand:xxxxx@db/dockhand",
        "jobs": 100,
        "backlog": 0,
        "process_jobs": 100,
        "lease_ms": 1000,
        "throughput": [{"concurrency": 4, "jobs": 100, "jobs_per_s": 1000.0}],
    });
    std::fs::write(&baseline, made.to_string()).unwrap();
    let garbage = db.path("garbage.json");
    std::fs::write(&garbage, "{\"jobs\": ").unwrap();
    let missing = db.path("missing.json");
    for (file, needle) in [
        (&baseline, "was made with postgres database"),
        (&garbage, "not a `dockhand bench --json` output"),
        (&missing, "cannot read"),
    ] {
        let mut args = ARGS.to_vec();
        args.extend(["--check", file]);
        let out = db.cli(&args);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
        assert!(stdout(&out).is_empty(), "ran anyway: {}", stdout(&out));
    }
    let out = db.cli(&["bench", "--tolerance", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}
