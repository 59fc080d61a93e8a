//! Test support for dockhand, kept out of the library: the model of the
//! world around the state machine and the checker of its invariants, used by
//! the property tests, the snapshot scenarios, the fuzz target and its corpus
//! replay.

pub mod harness;
#[cfg(feature = "inputs")]
pub mod inputs;
