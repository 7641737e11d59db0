//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the same
//! checks the fuzz targets run (`pct_passthrough::fuzzcheck`), on stable,
//! as an ordinary test: every input the fuzzer kept still holds every
//! invariant.

use std::path::{Path, PathBuf};

use pct_passthrough::fuzzcheck::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_corpus_file_holds_every_invariant() {
    let mut failures = Vec::new();
    for (target, check) in TARGETS {
        let files = files(target);
        assert!(!files.is_empty(), "no corpus for {target}");
        for path in files {
            let data = std::fs::read(&path).unwrap();
            if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every target has a corpus and no other directory is there; the corpus
/// stays small enough to keep in the repository.
#[test]
fn the_corpus_is_small_and_complete() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(dirs, names);
    let mut total = 0;
    for (target, _) in TARGETS {
        for path in files(target) {
            let len = std::fs::metadata(&path).unwrap().len();
            assert!(len <= 64 * 1024, "{} is {len} bytes", path.display());
            total += 1;
        }
    }
    assert!(
        total <= 400,
        "{total} corpus files; minimize (README, Fuzzing)"
    );
}

/// The fuzz crate has one target per check, each calling it.
#[test]
fn every_check_has_a_fuzz_target() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (target, _) in TARGETS {
        let src = std::fs::read_to_string(dir.join(format!("{target}.rs"))).unwrap();
        assert!(
            src.contains(&format!("pct_passthrough::fuzzcheck::{target}(data)")),
            "{target}.rs does not run its check"
        );
    }
}
