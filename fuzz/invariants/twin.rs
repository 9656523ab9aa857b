//! What the stable proptest twins of the fuzz targets share (only they include this file): the
//! committed corpus, and strategies that edit its inputs the way a fuzzer's mutator would.

use std::path::PathBuf;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// `fuzz/corpus/<target>/` of this repository.
pub(crate) fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of a target's committed corpus (seeds and kept regressions), by name, sorted.
pub(crate) fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (name, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Runs `check` on every file of a target's corpus; returns how many there were.
pub(crate) fn run_corpus(target: &str, check: impl Fn(&[u8])) -> usize {
    let files = corpus(target);
    for (name, bytes) in &files {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(bytes)));
        assert!(
            result.is_ok(),
            "corpus input {target}/{name} breaks an invariant (see the panic above)"
        );
    }
    files.len()
}

/// One edit of an input: overwrite, insert, delete, or duplicate a range, at a position.
#[derive(Debug, Clone)]
pub(crate) enum Edit {
    Overwrite(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

/// Bytes that matter to the parsers under test, more often than any other.
fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        3 => prop::sample::select(b"=,;%: \t\r\n.-_0aAzZ\x00\x7f\xc3\xa9\xff".to_vec()),
        1 => any::<u8>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), interesting_byte()).prop_map(|(at, b)| Edit::Overwrite(at, b)),
        (
            any::<usize>(),
            prop_oneof![
                prop::collection::vec(interesting_byte(), 1..4),
                prop::sample::select(vec![
                    b"prodbox.sandbox=".to_vec(),
                    b"prodbox.token=".to_vec(),
                    b",prodbox.actor=x".to_vec(),
                    b"\nbaggage: ".to_vec(),
                    b"\nuberctx-prodbox.sandbox: ".to_vec(),
                    b"sd-routing-key=".to_vec(),
                    b"%25".to_vec(),
                    b"%C3%A9".to_vec(),
                ]),
            ]
        )
            .prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
        (any::<usize>(), 1..8usize).prop_map(|(at, len)| Edit::Delete(at, len)),
        (any::<usize>(), 1..16usize).prop_map(|(at, len)| Edit::Duplicate(at, len)),
    ]
}

/// `input` with `edits` applied, positions taken modulo its length.
pub(crate) fn apply(mut input: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = input.len();
        match edit {
            Edit::Overwrite(at, b) if len > 0 => input[at % len] = *b,
            Edit::Insert(at, bytes) => {
                let at = at % (len + 1);
                input.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(at, n) if len > 0 => {
                let at = at % len;
                input.drain(at..(at + n).min(len));
            }
            Edit::Duplicate(at, n) if len > 0 => {
                let at = at % len;
                let part = input[at..(at + n).min(len)].to_vec();
                input.splice(at..at, part);
            }
            _ => {}
        }
    }
    input
}

/// A file of the corpus with up to `max_edits` edits.
pub(crate) fn mutated_corpus(
    target: &str,
    max_edits: usize,
) -> impl Strategy<Value = Vec<u8>> + use<> {
    let files: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, bytes)| bytes).collect();
    (
        prop::sample::select(files),
        prop::collection::vec(edit(), 0..=max_edits),
    )
        .prop_map(|(input, edits)| apply(input, &edits))
}

/// Runs `check` on `cases` inputs from `strategy`, failing with the smallest failing input.
/// Returns how many ran.
pub(crate) fn run<S: Strategy>(cases: u32, strategy: S, check: impl Fn(&S::Value)) -> u32
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        // Failures are kept as corpus files (`regression-*`), not as proptest seeds.
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(error) = runner.run(&strategy, |value| {
        check(&value);
        Ok(())
    }) {
        panic!("{error}");
    }
    cases
}
