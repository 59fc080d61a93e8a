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
    // The URL comes from a Secret mounted as a file, never from an
    // environment variable holding the password.
    let env = container["env"].as_sequence().expect("env");
    assert!(
        env.iter().all(|e| e["name"] != "DATABASE_URL"),
        "DATABASE_URL in the environment: {env:?}"
    );
    let file = env
        .iter()
        .find(|e| e["name"] == "DATABASE_URL_FILE")
        .and_then(|e| e["value"].as_str())
        .expect("DATABASE_URL_FILE");
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let mounts = container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts");
    let mounted = mounts.iter().any(|m| {
        let dir = m["mountPath"].as_str().unwrap_or("");
        let secret = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .map(|v| &v["secret"]);
        file.starts_with(&format!("{dir}/"))
            && m["readOnly"] == true
            && secret.is_some_and(|s| s["secretName"] == "dockhand-database")
    });
    assert!(mounted, "{file} is not a read-only mounted Secret");
    let text = self::file("kubernetes.yaml");
    assert!(
        text.contains("kubectl create secret generic dockhand-database"),
        "the file shows how its Secret is created"
    );
    // Not root, and the mounted Secret is readable by the worker's group.
    let user = pod["securityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    assert_ne!(user, 0);
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(user));
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);
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
    // A dedicated user, a writable working directory for the default
    // SQLite file, and the URL as a credential file.
    let user = value("User");
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "User={user}"
    );
    assert_eq!(value("StateDirectory"), "dockhand");
    assert_eq!(value("WorkingDirectory"), "/var/lib/dockhand");
    assert!(value("LoadCredential").starts_with("database-url:"));
    assert_eq!(value("Environment"), "DATABASE_URL_FILE=%d/database-url");
    assert!(
        !unit.contains("DATABASE_URL=") && !unit.contains("--database-url"),
        "the URL must not be in the environment or on the command line"
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
    // The default SQLite file is created in the working directory, so the
    // worker's user must own it.
    let workdir = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("WORKDIR "))
        .expect("a WORKDIR in the final stage");
    assert_ne!(
        workdir, "/",
        "the root directory is not writable by the worker"
    );
    assert!(
        dockerfile.contains(&format!("-o dockhand -g dockhand -m 0700 {workdir}")),
        "{workdir} must be created owned by the worker's user"
    );
}

/// The build context of `deploy/Dockerfile` (the repository root) leaves out
/// build output: checked by building a context image with the real Docker
/// engine and listing what went in.
#[test]
fn docker_build_context_leaves_out_target() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ignore = std::fs::read_to_string(format!("{root}/.dockerignore")).expect(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
    let tag = format!("dockhand-test-context:{}", std::process::id());
    let mut build = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &tag, "-f", "-", root])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker must be installed for this test");
    {
        use std::io::Write;
        let mut stdin = build.stdin.take().unwrap();
        stdin.write_all(b"FROM scratch\nCOPY . /ctx/\n").unwrap();
    }
    let out = build.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker build failed (is the engine running?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = std::process::Command::new("docker")
        .args(["create", &tag, "/none"])
        .output()
        .unwrap();
    assert!(
        id.status.success(),
        "{}",
        String::from_utf8_lossy(&id.stderr)
    );
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    let listing = std::process::Command::new("sh")
        .args(["-c", &format!("docker export {id} | tar -t")])
        .output()
        .unwrap();
    let _ = std::process::Command::new("docker")
        .args(["rm", &id])
        .output();
    let _ = std::process::Command::new("docker")
        .args(["rmi", &tag])
        .output();
    assert!(listing.status.success());
    let files = String::from_utf8_lossy(&listing.stdout);
    assert!(files.lines().any(|f| f == "ctx/Cargo.toml"), "{files}");
    assert!(files.lines().any(|f| f.starts_with("ctx/src/")), "{files}");
    let leaked: Vec<&str> = files
        .lines()
        .filter(|f| f.starts_with("ctx/target/") || f.starts_with("ctx/.git/"))
        .take(5)
        .collect();
    assert!(leaked.is_empty(), "build output in the context: {leaked:?}");
}

/// The autoscaler scales the Deployment of kubernetes.yaml on metrics the
/// worker really exports, taking the max over workers (each exports the
/// whole fleet's backlog), and waits longer than a drain to scale again.
#[test]
fn autoscaling_reads_the_backlog_metrics() {
    let scaled: serde_yaml::Value =
        serde_yaml::from_str(&file("autoscaling.yaml")).expect("valid YAML");
    let deployment: serde_yaml::Value =
        serde_yaml::from_str(&file("kubernetes.yaml")).expect("valid YAML");
    assert_eq!(scaled["kind"], "ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let metrics = dockhand::metrics::Metrics::new();
    metrics.set_queues(&[dockhand::store::QueueStats {
        queue: "q".into(),
        ready: 1,
        ..Default::default()
    }]);
    let exported = metrics.render();
    let triggers = scaled["spec"]["triggers"].as_sequence().expect("triggers");
    assert!(!triggers.is_empty());
    for trigger in triggers {
        let query = trigger["metadata"]["query"].as_str().expect("a query");
        assert!(query.starts_with("max("), "max over workers: {query}");
        let name = query
            .trim_start_matches("max(")
            .split(['{', ')'])
            .next()
            .unwrap();
        assert!(
            exported.lines().any(|l| l.starts_with(name)),
            "{name} is not exported:\n{exported}"
        );
    }
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(scaled["spec"]["cooldownPeriod"].as_u64().unwrap() > grace);
}
