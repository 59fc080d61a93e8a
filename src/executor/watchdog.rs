//! Job processes must not outlive the worker, even when the worker is
//! SIGKILLed and gets no chance to clean up.
//!
//! `PR_SET_PDEATHSIG` alone does not do it: it reaches only the direct child
//! (not the rest of the job's process group), and in a multi-threaded runtime
//! it fires when the *thread* that forked the child exits. So the worker forks
//! a watchdog at start-up, before any thread exists. The worker tells it, over
//! a pipe, which process groups are live ("+PGID" / "-PGID" lines). The write
//! end is close-on-exec and held only by the worker, so when the worker dies —
//! however it dies — the kernel closes it, the watchdog reads EOF, asks every
//! group leader still listed to kill its whole tree (SIGUSR2: a job shim
//! kills every descendant, even those that left the group), waits a moment,
//! SIGKILLs every group, and exits.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// The worker's end of the watchdog pipe. Cloning shares the pipe.
#[derive(Clone, Debug)]
pub struct Watchdog {
    pipe: Arc<Mutex<File>>,
    pid: i32,
}

/// How long the watchdog waits for job shims to kill their trees before it
/// SIGKILLs their groups itself.
const SHIM_GRACE_MS: u32 = 2000;

impl Watchdog {
    /// Fork the watchdog process.
    ///
    /// # Safety
    /// Must be called while the process has a single thread (before the tokio
    /// runtime is built): after `fork` the child only calls async-signal-safe
    /// functions and never returns.
    pub unsafe fn spawn() -> io::Result<Watchdog> {
        let mut fds = [0; 2];
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(io::Error::last_os_error());
        }
        let (read_fd, write_fd) = (fds[0], fds[1]);
        match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                libc::close(write_fd);
                watch(read_fd)
            }
            child => {
                libc::close(read_fd);
                let file = File::from(OwnedFd::from_raw_fd(write_fd));
                Ok(Watchdog {
                    pipe: Arc::new(Mutex::new(file)),
                    pid: child,
                })
            }
        }
    }

    /// The watchdog's process id (a child of the worker).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Start guarding a process group.
    pub fn guard(&self, pgid: i32) {
        self.send(&format!("+{pgid}\n"));
    }

    /// A process group is gone; stop guarding it.
    pub fn release(&self, pgid: i32) {
        self.send(&format!("-{pgid}\n"));
    }

    fn send(&self, line: &str) {
        // Lines are shorter than PIPE_BUF, so each write is atomic; a failed
        // write means the watchdog died, and there is nothing better to do.
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        let _ = pipe.write_all(line.as_bytes());
    }
}

/// The watchdog's whole life. Only async-signal-safe calls, no allocation
/// beyond a fixed buffer and a bounded set.
unsafe fn watch(fd: i32) -> ! {
    // Ctrl-C reaches the terminal's whole foreground group; the watchdog must
    // outlive the worker's drain, so it ignores what the worker handles.
    libc::signal(libc::SIGINT, libc::SIG_IGN);
    libc::signal(libc::SIGTERM, libc::SIG_IGN);
    libc::signal(libc::SIGHUP, libc::SIG_IGN);
    libc::signal(libc::SIGUSR1, libc::SIG_IGN);
    let mut groups: BTreeSet<i32> = BTreeSet::new();
    let mut buf = [0u8; 4096];
    let mut line = [0u8; 32];
    let mut len = 0usize;
    loop {
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
            break;
        }
        if n < 0 {
            continue;
        }
        for &byte in &buf[..n as usize] {
            if byte == b'\n' {
                apply(&line[..len], &mut groups);
                len = 0;
            } else if len < line.len() {
                line[len] = byte;
                len += 1;
            }
        }
    }
    // A job shim leads its group: it kills every descendant of its job,
    // also those that left the group. A plain job leader just dies of it.
    for pgid in &groups {
        libc::kill(*pgid, libc::SIGUSR2);
    }
    let mut waited = 0;
    while waited < SHIM_GRACE_MS && groups.iter().any(|pgid| libc::kill(*pgid, 0) == 0) {
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        };
        libc::nanosleep(&pause, std::ptr::null_mut());
        waited += 10;
    }
    for pgid in &groups {
        libc::kill(-pgid, libc::SIGKILL);
    }
    libc::_exit(0)
}

fn apply(line: &[u8], groups: &mut BTreeSet<i32>) {
    let Some((&op, digits)) = line.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(digits) else {
        return;
    };
    let Ok(pgid) = text.parse::<i32>() else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    match op {
        // Bounded: a worker runs at most MAX_CONCURRENCY jobs at once.
        b'+' if groups.len() < 4 * crate::machine::MAX_CONCURRENCY as usize => {
            groups.insert(pgid);
        }
        b'-' => {
            groups.remove(&pgid);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MAX_CONCURRENCY;

    fn applied(lines: &[&str]) -> BTreeSet<i32> {
        let mut groups = BTreeSet::new();
        for line in lines {
            apply(line.as_bytes(), &mut groups);
        }
        groups
    }

    #[test]
    fn groups_are_guarded_and_released_by_their_lines() {
        assert_eq!(applied(&["+12", "+13", "-12"]), BTreeSet::from([13]));
        // A release of a group never guarded changes nothing.
        assert_eq!(applied(&["+12", "-14"]), BTreeSet::from([12]));
        // Group 1 and below are never guarded: the watchdog's kill(-1, ..)
        // would signal every process it may signal, and 0 its own group.
        // Lines it cannot read are skipped.
        assert_eq!(
            applied(&["+1", "+0", "+-5", "x12", "+", "", "+12a", "12", "+2"]),
            BTreeSet::from([2])
        );
    }

    #[test]
    fn the_guarded_set_is_bounded_and_a_release_makes_room() {
        let bound = 4 * MAX_CONCURRENCY as i32;
        let mut groups = BTreeSet::new();
        for pgid in 2..2 + bound + 10 {
            apply(format!("+{pgid}").as_bytes(), &mut groups);
        }
        assert_eq!(groups.len(), bound as usize);
        assert_eq!(groups.last(), Some(&(1 + bound)), "the first ones are kept");
        apply(b"-2", &mut groups);
        apply(b"+5000000", &mut groups);
        assert!(groups.contains(&5_000_000), "a release makes room");
        assert_eq!(groups.len(), bound as usize);
    }
}
