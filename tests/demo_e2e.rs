//! `dockhand demo` on a fresh machine: no server, a real SIGTERM to itself,
//! a drain, a kill, a requeue, exit 75.

#[test]
fn demo_tells_the_whole_story_and_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dockhand"))
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(75),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for needle in [
        "sending SIGTERM to myself",
        "job 5 slow      succeeded",
        "job 6 stubborn  requeued: interrupted 1 time(s), attempts used 0",
        "job 4 flaky     failed for good",
        "running -> draining: SIGTERM received",
        "killed (SIGKILL)",
        "exit code 75",
        // The test runs as root (in CI): jobs must not.
        if euid_is_root() {
            "jobs run as nobody"
        } else {
            "jobs run as the worker's own user"
        },
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert!(
        !dir.path().join("dockhand.db").exists(),
        "the demo must not touch the working directory"
    );
}

fn euid_is_root() -> bool {
    // SAFETY: a plain syscall without arguments.
    unsafe { libc::geteuid() == 0 }
}
