//! Test-only switches that plant known bugs, so the simulation can prove it
//! catches them. Compiled in only with the `planted` feature (the simulation
//! crate enables it); even then every bug is off unless a test switches it on
//! for its own thread. Without the feature, [`active`] is a constant `false`.

/// A bug the simulation must catch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// The machine keeps polling and claims while Draining.
    ClaimWhileDraining,
    /// The machine stops heartbeating once Draining.
    NoHeartbeatWhileDraining,
    /// The in-memory store counts an interruption as an attempt.
    InterruptionUsesAttempt,
}

#[cfg(feature = "planted")]
thread_local! {
    static ACTIVE: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Switch a bug on (or all off) for the current thread.
#[cfg(feature = "planted")]
pub fn set(bug: Option<Bug>) {
    ACTIVE.with(|active| active.set(bug));
}

/// Whether `bug` is planted on this thread.
#[inline]
pub fn active(bug: Bug) -> bool {
    #[cfg(feature = "planted")]
    {
        ACTIVE.with(|active| active.get() == Some(bug))
    }
    #[cfg(not(feature = "planted"))]
    {
        let _ = bug;
        false
    }
}
