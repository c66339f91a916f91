//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) and every input that once crashed a fuzz
//! target (`fuzz/regressions/<target>/`) through the targets' own entry points, on stable Rust
//! and without cargo-fuzz: a fixed crash stays fixed in the ordinary test run.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

fn files(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(folder) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    files
}

/// What one input gave: nothing when it behaved, else what was wrong. A seed named `err_*` must
/// be refused and any other seed accepted; a crash input may be either (a file that crashed a
/// loader may be valid after the fix), as long as it returns.
fn replay(target: harness::Target, path: &Path, seed: bool) -> Option<String> {
    let bytes = std::fs::read(path).unwrap();
    let must_fail = path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("err_");
    match std::panic::catch_unwind(|| target(&bytes)) {
        Err(_) => Some("panicked".into()),
        Ok(Ok(())) if must_fail => Some("was accepted".into()),
        Ok(Ok(())) => None,
        Ok(Err(e)) if seed && !must_fail => Some(format!("was refused: {e}")),
        // Every refusal names the file at fault (the harness's scratch folder).
        Ok(Err(e)) if !e.to_string().contains("oodbox-fuzz") => {
            Some(format!("was refused without naming the file: {e}"))
        }
        Ok(Err(_)) => None,
    }
}

#[test]
fn corpus_and_crash_inputs_replay_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (name, target) in harness::TARGETS {
        let seeds = files(&root.join("corpus").join(name));
        assert!(seeds.len() >= 2, "fuzz/corpus/{name} holds too few seeds");
        let crashes = files(&root.join("regressions").join(name));
        let inputs = seeds
            .iter()
            .map(|p| (p, true))
            .chain(crashes.iter().map(|p| (p, false)));
        for (path, seed) in inputs {
            replayed += 1;
            if let Some(problem) = replay(*target, path, seed) {
                failures.push(format!("{}: {problem}", path.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(replayed > 40, "only {replayed} inputs replayed");
}
