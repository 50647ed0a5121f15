//! `weir test CASES.yaml`: the cases for the reference job in `examples/` and the project's
//! semantic cases in `tests/cases/` pass in every run; a wrong expectation fails with the case,
//! its step and the difference, and exit code 1.

mod support;

use support::{repo_path, weir};

/// Runs `weir test` on `cases` from the repository's root (where the cases' job paths are
/// taken from); answers the exit code and standard output.
fn weir_test(cases: &std::path::Path) -> (Option<i32>, String) {
    let out = weir()
        .arg("test")
        .arg(cases)
        .current_dir(repo_path(""))
        .output()
        .expect("running weir test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (out.status.code(), format!("{stdout}{stderr}"))
}

fn passes(file: &str, cases: usize) {
    let (code, out) = weir_test(&repo_path(file));
    assert_eq!(code, Some(0), "{file}:\n{out}");
    assert!(
        out.contains(&format!("{cases} passed, 0 failed")),
        "{file}:\n{out}"
    );
}

#[test]
fn the_reference_jobs_example_cases_pass() {
    passes("examples/reference-cases.yaml", 5);
}

#[test]
fn window_and_watermark_cases_pass() {
    passes("tests/cases/windows.yaml", 2);
}

#[test]
fn update_mode_reproduces_sparks_watermark_trace() {
    passes("tests/cases/update-mode.yaml", 1);
}

#[test]
fn dedup_reproduces_sparks_within_watermark_trace() {
    passes("tests/cases/dedup.yaml", 1);
}

#[test]
fn sql_expression_cases_pass() {
    passes("tests/cases/sql-expressions.yaml", 1);
}

#[test]
fn a_wrong_expectation_fails_with_its_step_and_the_difference() {
    let text = std::fs::read_to_string(repo_path("examples/reference-cases.yaml")).unwrap();
    let (head, _) = text.split_once("  - name: an event for a window").unwrap();
    // The first case only, with one count wrong.
    let wrong = head.replacen("event_count: 2", "event_count: 3", 1);
    assert_ne!(wrong, head);
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.yaml");
    std::fs::write(&cases, wrong).unwrap();
    let (code, out) = weir_test(&cases);
    assert_eq!(code, Some(1), "{out}");
    for expected in [
        "FAIL  a window is written once the watermark passes its end",
        "run as written: step 4 (expect_emitted):",
        "(- expected, not emitted; + emitted, not expected)",
        "0 passed, 1 failed",
    ] {
        assert!(out.contains(expected), "`{expected}` not in:\n{out}");
    }
    // The expected row and the row emitted instead, side by side.
    let row = |mark: &str, count: &str| {
        out.lines().any(|l| {
            l.starts_with(mark)
                && l.contains("click")
                && l.split_whitespace().any(|cell| cell == count)
        })
    };
    assert!(row("-", "3") && row("+", "2"), "{out}");
}
