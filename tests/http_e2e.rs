//! `worker --http`: real HTTP requests to the real binary; `status` of the fleet.

mod support;

use std::time::Duration;

use dockhand::job::{JobId, JobState};
use dockhand::store::Store;
use support::{eventually, http_get, Db};

const LONG: Duration = Duration::from_secs(30);

fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = metrics.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus exposition");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_on_term_while_health_stays_up() {
    let db = Db::postgres("http_readiness").await;
    for _ in 0..3 {
        db.enqueue(&[], &["true"]);
    }
    let slow = db.enqueue(&[], &["sleep", "2"]);
    let mut worker = db.worker(&["--http", "127.0.0.1:0", "--poll-interval", "100ms"]);
    let addr = worker.http_addr();
    let store = db.store().await;
    eventually("the slow job to run", LONG, || {
        let store = store.clone();
        async move {
            store
                .get(JobId(slow))
                .await
                .unwrap()
                .filter(|j| j.state == JobState::Running)
        }
    })
    .await;
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    let metrics = eventually("three successes in /metrics", LONG, || {
        let body = http_get(&addr, "/metrics").1;
        async move {
            (sample(&body, "dockhand_jobs_total", &[("outcome", "succeeded")]) == 3.0)
                .then_some(body)
        }
    })
    .await;
    assert_eq!(
        sample(
            &metrics,
            "dockhand_jobs_claimed_total",
            &[("queue", "default")]
        ),
        4.0
    );
    assert_eq!(sample(&metrics, "dockhand_jobs_running", &[]), 1.0);
    assert_eq!(
        sample(&metrics, "dockhand_phase", &[("phase", "running")]),
        1.0
    );
    assert!(
        metrics.contains("dockhand_pickup_latency_seconds_bucket"),
        "{metrics}"
    );
    // /status lags the loop by at most 100ms (it is published throttled).
    let status = eventually("/status to show only the slow job", LONG, || {
        let (code, body) = http_get(&addr, "/status");
        assert_eq!(code, 200);
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        let only_slow = status["jobs"]
            .as_array()
            .map(|j| j.len() == 1 && j[0]["id"] == slow);
        async move { (only_slow == Some(true)).then_some(status) }
    })
    .await;
    assert_eq!(status["phase"], "running");
    assert_eq!(status["counters"]["succeeded"], 3);

    worker.signal(libc::SIGTERM);
    worker.wait_for_line("running -> draining", LONG);
    // The job still runs: not ready (no new traffic), still healthy (alive).
    assert_eq!(http_get(&addr, "/readyz").0, 503);
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let status: serde_json::Value = serde_json::from_str(&http_get(&addr, "/status").1).unwrap();
    assert_eq!(status["phase"], "draining");
    let metrics = http_get(&addr, "/metrics").1;
    assert_eq!(
        sample(&metrics, "dockhand_phase", &[("phase", "draining")]),
        1.0
    );
    assert_eq!(worker.wait(LONG), 0, "{}", worker.stderr());
    assert_eq!(
        store.get(JobId(slow)).await.unwrap().unwrap().state,
        JobState::Succeeded
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_live_workers_then_a_lost_one() {
    let db = Db::postgres("fleet_status").await;
    let mut a = db.worker(&["--lease", "1s"]);
    let mut b = db.worker(&["--lease", "1s"]);
    let out = db.cli(&["status", "--json", "--lease", "1s"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{status}");
    assert!(
        workers
            .iter()
            .all(|w| w["lost"] == false && w["phase"] == "running"),
        "{status}"
    );
    let pids: Vec<i64> = workers.iter().map(|w| w["pid"].as_i64().unwrap()).collect();
    assert!(pids.contains(&(a.pid() as i64)) && pids.contains(&(b.pid() as i64)));

    a.signal(libc::SIGKILL);
    let _ = a.child.wait();
    let status = eventually("the killed worker to be presumed lost", LONG, || {
        let out = db.cli(&["status", "--json", "--lease", "1s"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let lost = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["lost"] == true)
            .count();
        async move { (lost == 1).then_some(status) }
    })
    .await;
    let workers = status["workers"].as_array().unwrap();
    let lost = workers.iter().find(|w| w["lost"] == true).unwrap();
    assert_eq!(lost["pid"], a.pid() as i64);
    let text = String::from_utf8_lossy(&db.cli(&["status", "--lease", "1s"]).stdout).into_owned();
    assert!(text.contains("lost"), "{text}");
    b.signal(libc::SIGTERM);
    assert_eq!(b.wait(LONG), 0);
    let out = db.cli(&["status", "--json", "--lease", "1s"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["workers"].as_array().unwrap().len(),
        1,
        "a stopped worker deregisters: {status}"
    );
}

#[test]
fn http_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let out = std::process::Command::new(support::bin())
        .args(["--database-url", &url, "worker", "--http", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot serve HTTP on"), "{stderr}");
}
