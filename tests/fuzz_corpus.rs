//! Runs the fuzz target's logic over the checked-in corpus on the stable
//! toolchain, so every saved input (including past crashes) is a regression
//! test. Grow the corpus with `cargo fuzz run machine` (see fuzz/).

use std::path::Path;

use dockhand_testkit::harness::{Case, Harness};

#[test]
fn corpus_inputs_keep_every_invariant() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/machine");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 20,
        "the corpus at {} is too small",
        dir.display()
    );
    let mut decoded = 0;
    for path in &entries {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Some(case) = Case::from_bytes(&data) else {
            continue;
        };
        decoded += 1;
        if let Err(violation) = Harness::run_case(&case) {
            panic!(
                "corpus input {} breaks an invariant:\n{violation}",
                path.display()
            );
        }
    }
    assert!(
        decoded * 2 >= entries.len(),
        "most corpus inputs must decode"
    );
}
