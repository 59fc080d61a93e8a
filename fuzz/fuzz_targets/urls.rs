//! Arbitrary bytes into dockhand's database URL checks and redaction: see
//! `dockhand_testkit::inputs::urls` for what must hold.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run urls corpus/urls`; the
//! saved corpus replays on stable in `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockhand_testkit::inputs::urls(data));
