//! Arbitrary edits of a SQLite database's rows behind the store's back,
//! then every query the store has: see `dockhand_testkit::inputs::Rows`.
//!
//! Run: `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run rows corpus/rows`; the
//! saved corpus replays on stable in `tests/fuzz_corpus.rs`.
#![no_main]

use std::sync::OnceLock;

use dockhand_testkit::inputs::Rows;
use libfuzzer_sys::fuzz_target;

/// One database for the whole run: each input restores the rows it edited.
static ROWS: OnceLock<std::sync::Mutex<Rows>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let rows = ROWS.get_or_init(|| std::sync::Mutex::new(Rows::new()));
    let rows = rows.lock().unwrap_or_else(|p| p.into_inner());
    rows.check(data);
});
