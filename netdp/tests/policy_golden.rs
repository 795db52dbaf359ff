//! Golden tests for the NetworkPolicy compiler: each `tests/policy_golden/<case>.yaml` holds
//! NetworkPolicies, Namespaces and one test-only document of pods:
//!
//! ```yaml
//! kind: Pods
//! pods:
//!   - {namespace: a, name: web, ip: 10.0.0.1, labels: {app: web}, ifindex: 11,
//!      namedPorts: [{name: http, protocol: TCP, port: 8080}]}
//! ```
//!
//! (a pod with `ifindex` is an endpoint on this node; the others are peers only). The matching
//! `<case>.golden` holds what `compile` must make of them: per endpoint, its isolation and its
//! peer prefixes with their port sets, then the problems. `BOSUN_BLESS=1` rewrites the
//! `.golden` files from the output; read the diff before committing it. Every case is also
//! compiled with its input reversed, which must not change the output.

mod golden_support;

use std::{collections::BTreeMap, fs, net::Ipv4Addr, path::Path};

use bosun_netdp::policy::{compile, Compiled, NamedPort, PolicyPod, PolicyTable, PortSet};
use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};
use serde::Deserialize;

/// A pod as the cases write it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TestPod {
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    named_ports: Vec<NamedPort>,
    ifindex: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pods {
    #[allow(
        dead_code,
        reason = "the document's `kind`, read to tell documents apart"
    )]
    kind: String,
    pods: Vec<TestPod>,
}

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/policy_golden");
    golden_support::check_dir(&dir, run_case);
}

/// Reads one case and renders what `compile` makes of it.
fn run_case(path: &Path) -> Result<String, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading: {e}"))?;
    let mut policies = Vec::new();
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| format!("document {i}: not YAML: {e}"))?;
        if value.is_null() {
            continue;
        }
        match value.get("kind").and_then(|k| k.as_str()).unwrap_or("") {
            "NetworkPolicy" => policies.push(
                serde_yaml::from_value::<NetworkPolicy>(value)
                    .map_err(|e| format!("document {i}: not a NetworkPolicy: {e}"))?,
            ),
            "Namespace" => namespaces.push(
                serde_yaml::from_value::<Namespace>(value)
                    .map_err(|e| format!("document {i}: not a Namespace: {e}"))?,
            ),
            "Pods" => {
                let list = serde_yaml::from_value::<Pods>(value)
                    .map_err(|e| format!("document {i}: not a list of pods: {e}"))?;
                pods.extend(list.pods.into_iter().map(|p| PolicyPod {
                    namespace: p.namespace.into(),
                    name: p.name.into(),
                    labels: p.labels.into(),
                    ip: p.ip,
                    named_ports: p.named_ports.into(),
                    ifindex: p.ifindex,
                }));
            }
            other => return Err(format!("document {i}: unexpected kind {other:?}")),
        }
    }

    let compiled = compile(&policies, &namespaces, &pods);
    check_invariants(&compiled)?;
    check_table(&policies, &namespaces, &pods, &compiled)?;
    policies.reverse();
    namespaces.reverse();
    pods.reverse();
    if compile(&policies, &namespaces, &pods) != compiled {
        return Err("the output changes when the input is reversed".into());
    }
    Ok(render(&compiled))
}

/// The incremental table given the same objects holds what the whole compile gives. A case
/// with two objects of one name (a manifest directory can hold them; an object store cannot)
/// is left out.
fn check_table(
    policies: &[NetworkPolicy],
    namespaces: &[Namespace],
    pods: &[PolicyPod],
    compiled: &Compiled,
) -> Result<(), String> {
    let policy_key = |p: &NetworkPolicy| {
        (
            p.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    let policy_keys: std::collections::BTreeSet<_> = policies.iter().map(policy_key).collect();
    let namespace_keys: std::collections::BTreeSet<_> =
        namespaces.iter().map(|n| n.metadata.name.clone()).collect();
    if policy_keys.len() != policies.len() || namespace_keys.len() != namespaces.len() {
        return Ok(());
    }
    let mut table = PolicyTable::new();
    for namespace in namespaces {
        table.set_namespace(
            namespace.metadata.name.as_deref().unwrap_or_default(),
            Some(namespace),
        );
    }
    for policy in policies {
        let (namespace, name) = policy_key(policy);
        table.set_policy(&namespace, &name, Some(policy));
    }
    for (i, pod) in pods.iter().enumerate() {
        table.set_pod(&i.to_string(), Some(std::sync::Arc::new(pod.clone())));
    }
    table.update();
    if table.compiled() != *compiled {
        return Err(format!(
            "the incremental table holds something else:\n{}",
            render(&table.compiled())
        ));
    }
    Ok(())
}

/// What every output must satisfy whatever the case.
fn check_invariants(compiled: &Compiled) -> Result<(), String> {
    for (prefix, set) in &compiled.peers {
        let endpoint = compiled
            .endpoints
            .get(&prefix.endpoint)
            .ok_or_else(|| format!("{prefix:?}: a peer of no endpoint"))?;
        if endpoint.isolated(prefix.direction).is_none() {
            return Err(format!(
                "{prefix:?}: a peer of a direction that is not isolated"
            ));
        }
        let host_bits = u32::MAX
            .checked_shr(u32::from(prefix.prefix_len))
            .unwrap_or(0);
        if prefix.prefix_len > 32 || prefix.address.to_bits() & host_bits != 0 {
            return Err(format!("{prefix:?}: host bits set or too long"));
        }
        check_port_set(set).map_err(|e| format!("{prefix:?}: {e}"))?;
    }
    Ok(())
}

/// The documented shape of a compiled [`PortSet`].
fn check_port_set(set: &PortSet) -> Result<(), String> {
    let ranges: Vec<_> = set.0.iter().collect();
    if ranges.iter().any(|r| r.protocol.is_none()) && ranges.len() != 1 {
        return Err("an any-protocol range with others".into());
    }
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.first > a.last {
            return Err(format!("empty range {a:?}"));
        }
        if a.protocol == b.protocol
            && (a.last >= b.first || (a.last + 1 == b.first && a.policy == b.policy))
        {
            return Err(format!("{a:?} and {b:?} overlap or should be one"));
        }
    }
    Ok(())
}

/// Per endpoint a line, then one per peer prefix; then one per problem.
fn render(compiled: &Compiled) -> String {
    let mut out = String::new();
    for (ifindex, endpoint) in &compiled.endpoints {
        out.push_str(&format!(
            "endpoint {ifindex} {}: ingress={} egress={}\n",
            endpoint.pod,
            endpoint.ingress.as_deref().unwrap_or("open"),
            endpoint.egress.as_deref().unwrap_or("open"),
        ));
        for (prefix, set) in compiled
            .peers
            .iter()
            .filter(|(p, _)| p.endpoint == *ifindex)
        {
            out.push_str(&format!(
                "  {} {}/{}: {}\n",
                prefix.direction,
                prefix.address,
                prefix.prefix_len,
                render_set(set)
            ));
        }
    }
    for problem in &compiled.problems {
        out.push_str(&format!("problem: {problem}\n"));
    }
    if out.is_empty() {
        out.push_str("(nothing)\n");
    }
    out
}

fn render_set(set: &PortSet) -> String {
    if set.0.is_empty() {
        return "nothing".to_owned();
    }
    let ranges: Vec<String> = set
        .0
        .iter()
        .map(|r| match r.protocol {
            None => format!("any ({})", r.policy),
            Some(protocol) if r.first == 0 && r.last == u16::MAX => {
                format!("{protocol} all ({})", r.policy)
            }
            Some(protocol) if r.first == r.last => format!("{protocol} {} ({})", r.first, r.policy),
            Some(protocol) => format!("{protocol} {}-{} ({})", r.first, r.last, r.policy),
        })
        .collect();
    ranges.join(", ")
}
