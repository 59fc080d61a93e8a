//! Drives the state machine with an arbitrary sequence of typed operations
//! and fails on any broken invariant (and on any assertion in the machine).
//!
//! Run (cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP enables them on
//! the stable toolchain):
//!   cargo install cargo-fuzz
//!   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run machine corpus/machine
//! The checked-in corpus also runs on stable as `tests/fuzz_corpus.rs`.
#![no_main]

use dockhand_testkit::harness::{Case, Harness};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(case) = Case::from_bytes(data) {
        if let Err(violation) = Harness::run_case(&case) {
            panic!("{violation}");
        }
    }
});
