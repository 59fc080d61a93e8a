//! Arbitrary bytes into dockhand's `enqueue --from-file` line parser: see
//! `dockhand_testkit::inputs::enqueue_line` for what must hold.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run enqueue_line corpus/enqueue_line`; the
//! saved corpus replays on stable in `tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dockhand_testkit::inputs::enqueue_line(data));
