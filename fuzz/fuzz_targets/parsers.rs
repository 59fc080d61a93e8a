//! Arbitrary bytes into dockhand's flag value parsers (durations, retention, memory, CPUs, process limits, times, env, cron): see
//! `dockhand_testkit::inputs::parsers` for what must hold.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run parsers corpus/parsers`; the
//! saved corpus replays on stable in `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockhand_testkit::inputs::parsers(data));
