//! Golden tests for the Service compiler: each `tests/golden/<case>.yaml` holds Services and
//! EndpointSlices (a first line `# node: NAME` names the node, `node-a` otherwise); the
//! matching `<case>.golden` holds what `compile` must make of them, one line per frontend and
//! then one per problem. `BOSUN_BLESS=1` rewrites the `.golden` files from the output; read
//! the diff before committing it.

use std::{
    fs,
    path::{Path, PathBuf},
};

use bosun_netdp::service::{compile, Compiled};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;

const DEFAULT_NODE: &str = "node-a";

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let bless = std::env::var_os("BOSUN_BLESS").is_some_and(|v| v == "1");

    let mut cases: Vec<PathBuf> = fs::read_dir(&dir)
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
    for entry in fs::read_dir(&dir).unwrap() {
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

/// Reads one case and renders what `compile` makes of it.
fn run_case(path: &Path) -> Result<String, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading: {e}"))?;
    let node = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("# node:"))
        .map(str::trim)
        .unwrap_or(DEFAULT_NODE);

    let mut services = Vec::new();
    let mut slices = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {i}: not YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        match kind {
            "Service" => services.push(
                serde_yaml::from_value::<Service>(value)
                    .map_err(|e| format!("document {i}: not a Service: {e}"))?,
            ),
            "EndpointSlice" => slices.push(
                serde_yaml::from_value::<EndpointSlice>(value)
                    .map_err(|e| format!("document {i}: not an EndpointSlice: {e}"))?,
            ),
            other => return Err(format!("document {i}: unexpected kind {other:?}")),
        }
    }

    let compiled = compile(&services, &slices, node);
    check_invariants(&compiled)?;
    // The input's order must not matter: which Service keeps a contested frontend, and which
    // copy of a duplicated endpoint counts, are decided by names.
    services.reverse();
    slices.reverse();
    if compile(&services, &slices, node) != compiled {
        return Err("the output changes when the input is reversed".into());
    }
    Ok(render(&compiled))
}

/// What every output must satisfy whatever the case: the documented ordering.
fn check_invariants(compiled: &Compiled) -> Result<(), String> {
    if !compiled
        .services
        .windows(2)
        .all(|w| w[0].frontend < w[1].frontend)
    {
        return Err("services are not sorted by frontend, or a frontend repeats".into());
    }
    for service in &compiled.services {
        if !service.backends.windows(2).all(|w| w[0] < w[1]) {
            return Err(format!(
                "{}: backends are not sorted and unique",
                service.frontend
            ));
        }
    }
    Ok(())
}

/// One line per frontend, then one per problem.
fn render(compiled: &Compiled) -> String {
    let mut out = String::new();
    for service in &compiled.services {
        let affinity = match service.affinity_timeout {
            Some(seconds) => format!("ClientIP/{seconds}s"),
            None => "none".to_owned(),
        };
        let backends: Vec<String> = service.backends.iter().map(|b| b.to_string()).collect();
        out.push_str(&format!(
            "{} {} affinity={} backends=[{}]\n",
            service.frontend,
            service.name,
            affinity,
            backends.join(" ")
        ));
    }
    for problem in &compiled.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    if out.is_empty() {
        out.push_str("(nothing)\n");
    }
    out
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
