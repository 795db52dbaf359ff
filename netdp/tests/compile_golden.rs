//! Golden tests for the Service compiler: each `tests/golden/<case>.yaml` holds Services and
//! EndpointSlices (a first line `# node: NAME` names the node, `node-a` otherwise); the
//! matching `<case>.golden` holds what `compile` must make of them, one line per frontend and
//! then one per problem. `BOSUN_BLESS=1` rewrites the `.golden` files from the output; read
//! the diff before committing it.

mod golden_support;

use std::{fs, path::Path};

use bosun_netdp::service::{compile_for, Compiled};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde::Deserialize;

const DEFAULT_NODE: &str = "node-a";

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    golden_support::check_dir(&dir, run_case);
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
    // An optional line `# node-addresses: A B` gives the addresses node ports are served on.
    let node_addresses: Vec<std::net::Ipv4Addr> = text
        .lines()
        .find_map(|line| line.strip_prefix("# node-addresses:"))
        .map(|list| {
            list.split_whitespace()
                .filter_map(|a| a.parse().ok())
                .collect()
        })
        .unwrap_or_default();

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

    let compiled = compile_for(&services, &slices, node, &node_addresses);
    check_invariants(&compiled)?;
    // The input's order must not matter: which Service keeps a contested frontend, and which
    // copy of a duplicated endpoint counts, are decided by names.
    services.reverse();
    slices.reverse();
    if compile_for(&services, &slices, node, &node_addresses) != compiled {
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
            "{} {} affinity={} backends=[{}]",
            service.frontend,
            service.name,
            affinity,
            backends.join(" ")
        ));
        if let Some(external) = &service.external {
            let external: Vec<String> = external.iter().map(|t| t.to_string()).collect();
            out.push_str(&format!(" external=[{}]", external.join(" ")));
        }
        out.push('\n');
    }
    for problem in &compiled.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    if out.is_empty() {
        out.push_str("(nothing)\n");
    }
    out
}
