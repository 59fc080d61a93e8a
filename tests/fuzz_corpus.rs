//! Runs every fuzz target's logic over its checked-in corpus on the stable
//! toolchain, so every saved input (including past crashes) is a regression
//! test. Grow a corpus with `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run
//! TARGET corpus/TARGET` (see fuzz/ and docs/VERIFICATION.md).

use std::path::{Path, PathBuf};

use dockhand_testkit::harness::{Case, Harness};
use dockhand_testkit::inputs;

/// The corpus of `target`, in name order; it must hold at least `min` inputs.
fn corpus(target: &str, min: usize) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= min,
        "the corpus at {} holds {} inputs, fewer than {min}",
        dir.display(),
        entries.len()
    );
    entries
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, data)
        })
        .collect()
}

/// Run `check` on every input of `target`, naming the input that fails.
fn replay(target: &str, min: usize, check: impl Fn(&[u8])) {
    for (path, data) in corpus(target, min) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("corpus input {} fails: {message}", path.display());
        }
    }
}

#[test]
fn machine_corpus_keeps_every_invariant() {
    let entries = corpus("machine", 20);
    let mut decoded = 0;
    for (path, data) in &entries {
        let Some(case) = Case::from_bytes(data) else {
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

#[test]
fn enqueue_line_corpus() {
    replay("enqueue_line", 10, inputs::enqueue_line);
}

#[test]
fn parsers_corpus() {
    replay("parsers", 10, inputs::parsers);
}

#[test]
fn urls_corpus() {
    replay("urls", 10, inputs::urls);
}

#[test]
fn rows_corpus() {
    let rows = inputs::Rows::new();
    replay("rows", 10, |data| rows.check(data));
}

/// The checks can fail: a line that parses is checked for what the store
/// accepts, and a URL's password is looked for in every message.
#[test]
fn the_checks_catch_what_they_look_for() {
    // A line the parser accepts passes; the checks would panic on a line
    // accepted that the store refuses, which parse_line itself prevents.
    inputs::enqueue_line(br#"{"command":["echo","hi"],"timeout":"5s","env":{"A":"b"}}"#);
    let refused = dockhand::cli::parse::parse_line(r#"{"command":[]}"#);
    assert!(refused.is_err(), "an empty command is refused: {refused:?}");
    let error = dockhand::cli::parse::parse_line("{\"command\":[\"a\"],\n\"x\":1}").unwrap_err();
    assert!(!error.contains('\n'), "{error:?}");
    let shown = dockhand::store::AnyStore::check_url("postgres://u:hunter22@h:notaport/db")
        .unwrap_err()
        .to_string();
    assert!(!shown.contains("hunter22"), "{shown}");
}
