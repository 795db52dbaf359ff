//! What the compilers' golden tests share: running every case of a directory against its
//! `.golden` file, rewriting them under `BOSUN_BLESS=1`, and a line diff for failures.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Runs `run_case` on every `<case>.yaml` in `dir` and compares its output with
/// `<case>.golden`; with `BOSUN_BLESS=1`, writes the output there instead. Panics with every
/// failure at once.
pub fn check_dir(dir: &Path, run_case: impl Fn(&Path) -> Result<String, String>) {
    let bless = std::env::var_os("BOSUN_BLESS").is_some_and(|v| v == "1");

    let mut cases: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir.display());

    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_stem().unwrap().to_string_lossy().into_owned();
        let golden = case.with_extension("golden");
        let actual = match run_case(case) {
            Ok(actual) => actual,
            Err(message) => {
                failures.push(format!("{name}: {message}"));
                continue;
            }
        };
        if bless {
            fs::write(&golden, &actual)
                .unwrap_or_else(|e| panic!("writing {}: {e}", golden.display()));
            continue;
        }
        match fs::read_to_string(&golden) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{name}: output differs from {} (- expected, + actual):\n{}",
                golden.display(),
                diff(&expected, &actual)
            )),
            Err(e) => failures.push(format!(
                "{name}: reading {}: {e} (BOSUN_BLESS=1 writes it)",
                golden.display()
            )),
        }
    }

    // A golden file whose case was removed or renamed tests nothing.
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "golden") && !path.with_extension("yaml").exists()
        {
            failures.push(format!("{}: no matching .yaml case", path.display()));
        }
    }

    assert!(
        failures.is_empty(),
        "{} of {} golden cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// A line diff (longest common subsequence), enough for files of a few dozen lines.
fn diff(expected: &str, actual: &str) -> String {
    let a: Vec<&str> = expected.lines().collect();
    let b: Vec<&str> = actual.lines().collect();
    let mut common = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            common[i][j] = if a[i] == b[j] {
                common[i + 1][j + 1] + 1
            } else {
                common[i + 1][j].max(common[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = String::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || common[i + 1][j] >= common[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}
