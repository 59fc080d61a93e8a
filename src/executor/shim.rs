//! The job shim: the leader of every process job, so that no descendant of a
//! job outlives it.
//!
//! A job's command may start processes that leave its process group
//! (`setsid`, `setpgid`, a double fork): signalling the group misses them.
//! So the worker does not exec the command itself; it execs its own binary
//! as `dockhand __job-shim PROGRAM ARG...`, which
//!
//! - marks itself a *child subreaper*: every orphan in the job's tree is
//!   re-parented to the shim, never to init, whatever it does;
//! - runs the command in a process group of its own and forwards SIGTERM,
//!   SIGINT and SIGHUP to that group;
//! - on SIGUSR2 (the worker's KILL, or the watchdog's when the worker died)
//!   kills every process below it;
//! - when the command exits, kills whatever it left behind, reaps it all,
//!   and exits with the command's status (re-raising its signal, if any).
//!
//! The shim is a plain single-threaded process: signals are taken
//! synchronously with `sigwaitinfo`, no handler runs.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::time::Duration;

/// The argument that makes the `dockhand` binary a job shim.
pub const SHIM_ARG: &str = "__job-shim";

/// The signal that asks a shim to kill everything below it now.
pub const KILL_ALL: i32 = libc::SIGUSR2;

/// Most rounds of killing descendants (each round kills all that exist).
const MAX_ROUNDS: usize = 10_000;

/// Run as the shim for `command` (program and arguments); never returns.
pub fn run(command: &[OsString]) -> ! {
    let Some((program, args)) = command.split_first() else {
        fail("no command given");
    };
    // SAFETY: plain prctl and signal-mask calls on this single-threaded process.
    unsafe {
        if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
            fail("cannot become a child subreaper");
        }
    }
    let signals = [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        KILL_ALL,
        libc::SIGCHLD,
    ];
    // SAFETY: a zeroed sigset is what sigemptyset fills anyway.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset; these calls only read and write it.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut command = std::process::Command::new(program);
    command.args(args).process_group(0);
    // SAFETY: between fork and exec only async-signal-safe calls. The
    // command starts as if the shim were not there: nothing blocked (std
    // keeps the mask across spawn), the usual signals at their defaults.
    unsafe {
        command.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for signal in [
                libc::SIGTERM,
                libc::SIGINT,
                libc::SIGHUP,
                libc::SIGQUIT,
                libc::SIGUSR1,
                libc::SIGUSR2,
                libc::SIGCHLD,
                libc::SIGPIPE,
            ] {
                libc::signal(signal, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => fail(&format!(
            "cannot run {}: {error}",
            program.to_string_lossy()
        )),
    };
    let main = child.id() as i32;
    let mut status = None;
    while status.is_none() {
        // SAFETY: a zeroed siginfo is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `info` are valid; blocks until a signal is pending.
        let signal = unsafe { libc::sigwaitinfo(&set, &mut info) };
        match signal {
            libc::SIGCHLD => reap(main, &mut status),
            KILL_ALL => kill_descendants(main, &mut status),
            // SAFETY: plain syscall on the command's own process group.
            sig if sig > 0 => unsafe {
                libc::kill(-main, sig);
            },
            _ => {}
        }
    }
    // Whatever the command left behind goes with it.
    kill_descendants(main, &mut status);
    match status {
        Some(Status::Code(code)) => std::process::exit(code),
        Some(Status::Signal(signal)) => {
            // SAFETY: restore the default action and raise the same signal,
            // so the worker sees the command's death, not the shim's exit.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(signal);
            }
            std::process::exit(128 + signal);
        }
        None => std::process::exit(1),
    }
}

enum Status {
    Code(i32),
    Signal(i32),
}

/// Reap every child that has exited, keeping the command's status when it
/// is among them.
fn reap(main: i32, status: &mut Option<Status>) {
    loop {
        let mut raw = 0;
        // SAFETY: plain waitpid on any child, not blocking.
        let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        if pid == main {
            if libc::WIFEXITED(raw) {
                *status = Some(Status::Code(libc::WEXITSTATUS(raw)));
            } else if libc::WIFSIGNALED(raw) {
                *status = Some(Status::Signal(libc::WTERMSIG(raw)));
            }
        }
    }
}

/// SIGKILL every process below the shim, round after round (an orphan of a
/// killed child is re-parented to the shim and met in the next round),
/// reaping as it goes, until none is left.
fn kill_descendants(main: i32, status: &mut Option<Status>) {
    let me = std::process::id() as i32;
    for _ in 0..MAX_ROUNDS {
        let children = children_of(me);
        if children.is_empty() {
            break;
        }
        for child in &children {
            // SAFETY: plain syscalls on our own children (and their groups).
            unsafe {
                libc::kill(-*child, libc::SIGKILL);
                libc::kill(*child, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
        reap(main, status);
    }
    reap(main, status);
}

/// The live children of `parent`, from `/proc` (zombies are reaped, not listed).
pub(crate) fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) && state != Some("Z") {
            children.push(pid);
        }
    }
    children
}

fn fail(message: &str) -> ! {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "dockhand: {message}");
    std::process::exit(127)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_knows_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        assert!(children_of(me).contains(&(child.id() as i32)));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!children_of(me).contains(&(child.id() as i32)));
    }
}
