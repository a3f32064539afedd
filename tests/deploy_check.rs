//! The deployment files pass deploy/check.sh (docker-compose config, kustomize render, strict
//! Kubernetes schema validation, cross-file agreement), and the script catches broken copies.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::repo_root;

/// Exit status deploy/check.sh uses when a tool it needs is not installed.
const SKIPPED: i32 = 77;

fn run_check(root: &Path) -> Output {
    Command::new("bash")
        .arg(repo_root().join("deploy/check.sh"))
        .arg(root)
        .output()
        .expect("bash runs deploy/check.sh")
}

/// Runs the check on `root`; `None` when the script reports missing tools (outside CI).
fn check(root: &Path) -> Option<Output> {
    let output = run_check(root);
    if output.status.code() == Some(SKIPPED) {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr).trim());
        return None;
    }
    Some(output)
}

fn describe(output: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Copies deploy/ and configs/ into a fresh folder laid out like the repository.
fn copy_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["deploy", "deploy/k8s", "configs"] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        for entry in std::fs::read_dir(repo_root().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(
                    &path,
                    dir.path().join(folder).join(path.file_name().unwrap()),
                )
                .unwrap();
            }
        }
    }
    dir
}

fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path = root.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(from),
        "{file} no longer contains {from:?}; update this test"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn deploy_files_pass_check() {
    let Some(output) = check(&repo_root()) else {
        return;
    };

    assert!(output.status.success(), "{}", describe(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("deploy check passed"));
}

#[test]
fn deploy_check_catches_short_grace_period() {
    let copy = copy_tree();
    edit(
        copy.path(),
        "deploy/k8s/worker-deployment.yaml",
        "terminationGracePeriodSeconds: 150",
        "terminationGracePeriodSeconds: 60",
    );

    let Some(output) = check(copy.path()) else {
        return;
    };

    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("terminationGracePeriodSeconds 60 leaves less than"),
        "{}",
        describe(&output)
    );
}

#[test]
fn deploy_check_catches_unknown_field() {
    let copy = copy_tree();
    edit(
        copy.path(),
        "deploy/k8s/coordinator-job.yaml",
        "backoffLimit: 4",
        "backofLimit: 4",
    );

    let Some(output) = check(copy.path()) else {
        return;
    };

    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        describe(&output).contains("'backofLimit' was unexpected"),
        "{}",
        describe(&output)
    );
}

#[test]
fn deploy_check_catches_compose_error() {
    let copy = copy_tree();
    edit(
        copy.path(),
        "deploy/docker-compose.yml",
        "stop_grace_period: 150s",
        "stop_grace_period: 60s",
    );

    let Some(output) = check(copy.path()) else {
        return;
    };

    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(
        describe(&output).contains("stop_grace_period 60s leaves less than"),
        "{}",
        describe(&output)
    );
}

#[test]
fn cuda_feature_reaches_candle() {
    let read = |path: &str| -> toml::Value {
        toml::from_str(&std::fs::read_to_string(repo_root().join(path)).unwrap()).unwrap()
    };
    let features = |manifest: &toml::Value| -> Vec<String> {
        let list = manifest["features"]["cuda"]
            .as_array()
            .expect("a cuda feature");
        list.iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };

    let root = features(&read("Cargo.toml"));
    let workers = features(&read("workers/Cargo.toml"));

    assert!(
        root.contains(&"capfilt-workers/cuda".to_string()),
        "{root:?}"
    );
    assert!(
        workers.contains(&"candle-core/cuda".to_string()),
        "{workers:?}"
    );
    assert!(
        workers.contains(&"candle-nn/cuda".to_string()),
        "{workers:?}"
    );
    let dockerfile = std::fs::read_to_string(repo_root().join("deploy/Dockerfile.cuda")).unwrap();
    assert!(
        dockerfile.contains("cargo build --release --locked --features cuda"),
        "the CUDA image builds the cuda feature"
    );
}
