//! Every command in README.md runs: the quick start on the bundled shapes model, and "Bring your
//! own model" on the YOLO11 `best.pt` fixture with a small mixed-size shapes world standing in
//! for the user's data.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The commands of README's ```sh blocks under `heading`, continuation lines joined and comments
/// dropped.
fn commands_under(readme: &str, heading: &str) -> Vec<String> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("README has no section `{heading}`"));
    let mut commands = Vec::new();
    for block in section.split("```sh\n").skip(1) {
        let body = block.split("```").next().unwrap();
        let joined = body.replace("\\\n", " ");
        commands.extend(
            joined
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    commands
}

/// Runs a README command in `dir` with the built binary in place of `cargo run --release --`
/// or `oodbox`; fails the test with its output when it fails.
fn run(command: &str, dir: &Path) {
    let rest = command
        .strip_prefix("cargo run --release -- ")
        .or_else(|| command.strip_prefix("oodbox "))
        .unwrap_or_else(|| panic!("not an oodbox command: {command}"));
    let output = Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .args(rest.split_whitespace())
        .arg("--quiet")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{command}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn link(from: &Path, to: &Path) {
    std::os::unix::fs::symlink(from, to).unwrap();
}

#[test]
fn the_quick_start_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let commands = commands_under(&readme, "Quick start: the command line");
    assert_eq!(commands.len(), 4, "{commands:?}");
    let dir = tempfile::tempdir().unwrap();
    for part in ["models", "assets"] {
        link(&repo().join(part), &dir.path().join(part));
    }
    for command in &commands {
        run(command, dir.path());
    }
    for written in ["annotated", "detections.json", "knn.safetensors"] {
        assert!(dir.path().join(written).exists(), "{written}");
    }
}

#[test]
fn bring_your_own_model_runs_as_written() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let commands = commands_under(&readme, "Bring your own model");
    assert_eq!(commands.len(), 3, "{commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    link(
        &repo().join("tests/fixtures/yolo11/best.pt"),
        &p.join("best.pt"),
    );
    run(
        "oodbox synth --out . --seed 3 --train 200 --val 20 --test 40 --object-size 0.045,0.7",
        p,
    );
    link(&p.join("images/test_ood_far"), &p.join("unknowns"));
    for command in &commands {
        run(command, p);
    }
    for written in ["knn.safetensors", "report", "annotated", "detections.json"] {
        assert!(p.join(written).exists(), "{written}");
    }
}
