//! Running as PID 1: the entrypoint of a container started without `--init`.
//!
//! PID 1 has two duties a normal process does not. The kernel reparents every
//! orphan in the PID namespace to it, so it must reap them — a job that leaves
//! a background process behind would otherwise fill the process table with
//! zombies, since the worker's runtime only waits for the children it spawned.
//! And signals reach it only through handlers it installed. So when dockhand
//! finds itself PID 1 it forks: the child becomes the worker (with its own
//! handlers and watchdog, exactly as outside a container), and PID 1 stays a
//! tiny init that forwards TERM, INT and USR1 to it, reaps every zombie, and
//! exits with the worker's exit code (128 + signal if it died by one) — so
//! `docker stop` and Kubernetes see the worker's own 0 or 75.

use std::io;

/// The signals the worker acts on; everything else stays with PID 1.
const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

/// If this process is PID 1, fork: return in the child (the worker) and never
/// return in the parent, which supervises until the child exits. Outside a
/// PID namespace of its own (pid ≠ 1) it does nothing.
///
/// # Safety
/// Must be called while the process has a single thread (before the tokio
/// runtime or the watchdog exist).
pub unsafe fn supervise_if_pid1() -> io::Result<()> {
    if libc::getpid() != 1 {
        return Ok(());
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigaddset(&mut set, libc::SIGCHLD);
    for signal in FORWARDED {
        libc::sigaddset(&mut set, signal);
    }
    // Blocked before the fork, so a signal arriving in between waits for
    // sigwaitinfo instead of being lost or taking its default action.
    let mut previous: libc::sigset_t = std::mem::zeroed();
    if libc::sigprocmask(libc::SIG_BLOCK, &set, &mut previous) != 0 {
        return Err(io::Error::last_os_error());
    }
    match libc::fork() {
        -1 => {
            let error = io::Error::last_os_error();
            libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
            Err(error)
        }
        0 => {
            libc::sigprocmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
            Ok(())
        }
        worker => supervise(worker, &set),
    }
}

unsafe fn supervise(worker: libc::pid_t, set: &libc::sigset_t) -> ! {
    loop {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let signal = libc::sigwaitinfo(set, &mut info);
        if FORWARDED.contains(&signal) {
            libc::kill(worker, signal);
            continue;
        }
        // SIGCHLD (or an interrupted wait): reap every child that is done.
        // Several exits may share one SIGCHLD, so loop until none is left.
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
            if pid <= 0 {
                break;
            }
            if pid == worker {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else if libc::WIFSIGNALED(status) {
                    128 + libc::WTERMSIG(status)
                } else {
                    1
                };
                libc::_exit(code);
            }
        }
    }
}
