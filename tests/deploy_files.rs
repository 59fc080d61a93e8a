//! The deploy files parse, and their timeouts agree with the worker's exit
//! bound (shutdown timeout + kill grace + store grace) with a margin.

use std::time::Duration;

use dockhand::cli::parse_duration;
use dockhand::machine::Config;

fn file(name: &str) -> String {
    let path = format!("{}/deploy/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The worker's exit bound for these `worker` arguments (defaults otherwise).
fn exit_bound(args: &[&str]) -> Duration {
    let mut config = Config::default();
    for arg in args {
        if let Some(v) = arg.strip_prefix("--shutdown-timeout=") {
            config.shutdown_timeout = parse_duration(v).unwrap();
        }
        if let Some(v) = arg.strip_prefix("--kill-grace=") {
            config.kill_grace = parse_duration(v).unwrap();
        }
    }
    config.exit_bound()
}

#[test]
fn kubernetes_grace_period_covers_the_exit_bound() {
    let docs: serde_yaml::Value =
        serde_yaml::from_str(&file("kubernetes.yaml")).expect("valid YAML");
    assert_eq!(docs["kind"], "Deployment");
    assert_eq!(docs["spec"]["replicas"], 2);
    let pod = &docs["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("pod-level grace period");
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let bound = exit_bound(&args);
    assert!(
        Duration::from_secs(grace) >= bound + Duration::from_secs(10),
        "terminationGracePeriodSeconds {grace}s must exceed the exit bound {bound:?} with a margin"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        container["lifecycle"]["preStop"].is_null(),
        "no preStop hook"
    );
    let env = &container["env"][0];
    assert_eq!(env["name"], "DATABASE_URL");
    assert!(
        env["valueFrom"]["secretKeyRef"]["name"].is_string(),
        "the URL comes from a Secret"
    );
    assert!(
        args.iter().any(|a| a.starts_with("--http=")),
        "probes need --http"
    );
}

#[test]
fn systemd_stop_timeout_covers_the_exit_bound() {
    let unit = file("dockhand.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing"))
            .to_string()
    };
    assert_eq!(value("KillSignal"), "SIGTERM");
    assert_eq!(
        value("KillMode"),
        "mixed",
        "systemd must not signal the jobs itself"
    );
    assert!(value("Restart").starts_with("always") || value("Restart").starts_with("on-failure"));
    assert!(value("SuccessExitStatus")
        .split_whitespace()
        .any(|c| c == "75"));
    let exec = value("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().collect();
    let bound = exit_bound(&args);
    let stop = Duration::from_secs(value("TimeoutStopSec").parse().unwrap());
    assert!(
        stop >= bound + Duration::from_secs(10),
        "TimeoutStopSec {stop:?} vs bound {bound:?}"
    );
}

#[test]
fn dockerfile_runs_the_worker_under_an_init() {
    let dockerfile = file("Dockerfile");
    assert!(
        dockerfile.contains("tini"),
        "PID 1 must forward signals and reap orphans"
    );
    assert!(dockerfile.contains("USER dockhand"), "not root");
}
