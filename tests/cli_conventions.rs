//! The command line follows the conventions users expect: help on a bare
//! call, tips, completions and a man page, `--json` wherever something is
//! printed, `DOCKHAND_*` variables for worker flags, sysexits codes, and no
//! database created by a command that only reads.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use support::{bin, Db};

fn run(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("DATABASE_URL_FILE")
        .output()
        .expect("run dockhand")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

#[test]
fn a_bare_call_prints_the_help_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("Usage: dockhand"), "{err}");
    assert!(err.contains("Commands:"), "{err}");
    assert!(!err.contains("error:"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn help_shows_examples_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--help"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for needle in ["Examples:", "Exit codes:", "66", "75", "78", "Linux only"] {
        assert!(help.contains(needle), "{needle} missing:\n{help}");
    }
}

#[test]
fn a_command_without_double_dash_gets_a_tip() {
    let dir = tempfile::tempdir().unwrap();
    for (args, usage) in [
        (
            &["enqueue", "echo", "hi"][..],
            "dockhand enqueue [OPTIONS] -- echo",
        ),
        (
            &["schedule", "add", "x", "--cron", "* * * * *", "echo"][..],
            "dockhand schedule add NAME --cron EXPR [OPTIONS] -- echo",
        ),
    ] {
        let out = run(args, dir.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("tip:") && err.contains(usage), "{err}");
    }
    // clap's own tips are kept too.
    let out = run(&["enqueue", "--bogus"], dir.path());
    assert!(text(&out.stderr).contains("tip: to pass '--bogus' as a value"));
}

#[test]
fn completions_and_man_page() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, needle) in [
        ("bash", "_dockhand()"),
        ("zsh", "#compdef dockhand"),
        ("fish", "complete -c dockhand"),
    ] {
        let out = run(&["completions", shell], dir.path());
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(needle), "{shell}: {script}");
        assert!(script.contains("schedule"), "{shell} knows the subcommands");
    }
    let out = run(&["man"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(page.contains(".TH dockhand 1"), "{page}");
    assert!(page.contains("Exit codes"), "{page}");
    assert!(
        !dir.path().join("dockhand.db").exists(),
        "neither needs a database"
    );
}

#[test]
fn read_only_commands_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("tpyo.db");
    let url = format!("sqlite://{}", typo.display());
    for args in [
        &["jobs"][..],
        &["show", "1"],
        &["logs", "1"],
        &["status"],
        &["queues"],
        &["schedule", "list"],
    ] {
        let mut full = vec!["--database-url", &url];
        full.extend_from_slice(args);
        let out = run(&full, dir.path());
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{args:?}: {err}");
        assert!(err.contains("no database file"), "{args:?}: {err}");
        assert!(!typo.exists(), "{args:?} created {}", typo.display());
    }
    // The default database too, and a command that writes still creates it.
    let out = run(&["jobs"], dir.path());
    assert_eq!(out.status.code(), Some(78));
    assert!(!dir.path().join("dockhand.db").exists());
    let out = run(&["migrate"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(dir.path().join("dockhand.db").exists());
    let out = run(&["jobs"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A database URL (or a `--from-file` line) with a newline in it still gets
/// a one-line error, with the password hidden (found by the `urls` fuzz
/// target: the URL was printed as it was, newlines and all).
#[test]
fn an_error_about_odd_input_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &[
            "--database-url",
            "mysql://u:hunter22@h/db\nsecond line",
            "jobs",
        ],
        dir.path(),
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(
        err.contains("second line") && !err.contains("hunter22"),
        "{err}"
    );
    let file = dir.path().join("jobs.jsonl");
    std::fs::write(&file, "{\"command\":[\"a\"],\"queue\":\"bad\\nqueue\"}\n").unwrap();
    let out = run(
        &["enqueue", "--from-file", file.to_str().unwrap()],
        dir.path(),
    );
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_that_prints_has_json() {
    let db = Db::sqlite("json").await;
    let json = |args: &[&str]| -> serde_json::Value {
        let out = db.cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out.stdout)))
    };
    assert_eq!(
        json(&["migrate", "--json"])["schema_version"],
        dockhand::store::SCHEMA_VERSION
    );
    let enqueued = json(&["enqueue", "--json", "--unique-key", "k", "--", "true"]);
    let id = enqueued["jobs"][0]["id"].as_i64().unwrap();
    assert_eq!(enqueued["jobs"][0]["existed"], false);
    let again = json(&["enqueue", "--json", "--unique-key", "k", "--", "true"]);
    assert_eq!(
        again["jobs"][0],
        serde_json::json!({ "id": id, "existed": true })
    );
    assert!(json(&["jobs", "--json"]).is_array());
    assert_eq!(json(&["show", &id.to_string(), "--json"])["id"], id);
    assert!(json(&["queues", "--json"])["queues"].is_array());
    assert!(json(&["status", "--json"])["workers"].is_array());
    assert_eq!(json(&["pause", "q", "--json"])["changed"], true);
    assert_eq!(json(&["resume", "q", "--json"])["paused"], false);
    assert_eq!(
        json(&["cancel", &id.to_string(), "--json"])["jobs"][0]["ok"],
        true
    );
    assert_eq!(
        json(&["retry", "--state", "cancelled", "--json"])["count"],
        1
    );
    assert_eq!(
        json(&["schedule", "add", "s", "--cron", "@daily", "--json", "--", "true"])["replaced"],
        false
    );
    assert_eq!(
        json(&["schedule", "list", "--json"])["schedules"][0]["name"],
        "s"
    );
    assert_eq!(
        json(&["schedule", "remove", "s", "--json"])["removed"],
        true
    );
    assert_eq!(json(&["prune", "--older-than", "1d", "--json"])["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_flags_come_from_dockhand_variables() {
    let db = Db::sqlite("env").await;
    // A bad value from a variable is a usage error like the flag's.
    let out = Command::new(bin())
        .args(["--database-url", &db.url, "worker"])
        .env("DOCKHAND_CONCURRENCY", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("concurrency"));
    let mut worker = db.worker_with_env(
        &[],
        &[
            ("DOCKHAND_QUEUES", "mail,reports"),
            ("DOCKHAND_CONCURRENCY", "3"),
            ("DOCKHAND_LEASE", "9s"),
        ],
    );
    let out = db.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = &status["workers"][0];
    assert_eq!(
        me["queues"],
        serde_json::json!(["mail", "reports"]),
        "{status}"
    );
    assert_eq!(me["concurrency"], 3, "{status}");
    assert_eq!(me["lease_ms"], 9_000, "{status}");
    worker.signal(libc::SIGTERM);
    assert_eq!(worker.wait(Duration::from_secs(20)), 0);
}
