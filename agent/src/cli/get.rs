//! `bosun get pods|events|services|endpoints|networkpolicies`: what the daemon manages, as
//! Kubernetes objects (`v1.Pod`, `v1.Event`, `v1.Service`, `discovery.k8s.io/v1.EndpointSlice`,
//! `networking.k8s.io/v1.NetworkPolicy`), printed as kubectl prints them.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::output::{self, Table};

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(subcommand)]
    pub what: GetWhat,
}

#[derive(Debug, Subcommand)]
pub enum GetWhat {
    /// Pods the daemon runs, with their status.
    Pods(GetPodsArgs),
    /// What happened to the pods and the node (pulls, starts, restarts, failures), newest last.
    Events(GetEventsArgs),
    /// Services the service proxy serves (desired state; `bosun dp services` shows the maps).
    #[command(alias = "svc")]
    Services(GetListArgs),
    /// EndpointSlices: from manifests and computed from static pods' IPs and readiness.
    #[command(alias = "endpointslices", alias = "ep")]
    Endpoints(GetListArgs),
    /// NetworkPolicies the daemon enforces (`bosun dp policies` shows the pods' interfaces).
    #[command(alias = "netpol", alias = "networkpolicy")]
    Networkpolicies(GetListArgs),
}

#[derive(Debug, Args)]
pub struct GetListArgs {
    /// Only objects with this name.
    pub name: Option<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<GetFormat>,
    /// The daemon's root directory, where its API socket is.
    #[arg(long, default_value = super::run::DEFAULT_ROOT_DIR)]
    pub root_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GetFormat {
    Wide,
    Json,
    Yaml,
}

impl GetFormat {
    /// The format of `-o json|yaml`; `None` for a table.
    fn structured(format: Option<GetFormat>) -> Option<output::Format> {
        match format {
            Some(GetFormat::Json) => Some(output::Format::Json),
            Some(GetFormat::Yaml) => Some(output::Format::Yaml),
            Some(GetFormat::Wide) | None => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct GetPodsArgs {
    /// Only this pod.
    pub name: Option<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<GetFormat>,
    /// The daemon's root directory, where its API socket is.
    #[arg(long, default_value = super::run::DEFAULT_ROOT_DIR)]
    pub root_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct GetEventsArgs {
    /// Only the events of this object: `pod/NAME`, `node/NAME`, or a pod's NAME.
    #[arg(long = "for", value_name = "[KIND/]NAME", value_parser = parse_involved)]
    pub for_object: Option<Involved>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<GetFormat>,
    /// The daemon's root directory, where its API socket is.
    #[arg(long, default_value = super::run::DEFAULT_ROOT_DIR)]
    pub root_dir: PathBuf,
}

/// The object of `--for`: the kinds bosun records events of, and a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Involved {
    kind: &'static str,
    name: String,
}

impl Involved {
    fn field_selector(&self) -> String {
        format!(
            "involvedObject.kind={},involvedObject.name={}",
            self.kind, self.name
        )
    }
}

/// Parses `--for`: `pod/NAME` (also `pods/`, `po/`), `node/NAME` (`nodes/`, `no/`), or a bare
/// pod NAME.
fn parse_involved(s: &str) -> Result<Involved, String> {
    let (kind, name) = match s.split_once('/') {
        Some((kind, name)) => match kind.to_ascii_lowercase().as_str() {
            "pod" | "pods" | "po" => ("Pod", name),
            "node" | "nodes" | "no" => ("Node", name),
            _ => {
                return Err(format!(
                    "unknown kind {kind:?}: bosun records events of pods and of the node"
                ))
            }
        },
        None => ("Pod", s),
    };
    // Object names are DNS subdomains; these would change the meaning of the selector.
    if name.is_empty() || name.contains([',', '=', '!', '/', ' ']) {
        return Err(format!("{name:?} is not an object name"));
    }
    Ok(Involved {
        kind,
        name: name.to_owned(),
    })
}

pub async fn get(args: &GetArgs) -> Result<()> {
    match &args.what {
        GetWhat::Pods(args) => get_pods(args).await,
        GetWhat::Events(args) => get_events(args).await,
        GetWhat::Services(args) => get_services(args).await,
        GetWhat::Endpoints(args) => get_endpoints(args).await,
        GetWhat::Networkpolicies(args) => get_network_policies(args).await,
    }
}

async fn get_network_policies(args: &GetListArgs) -> Result<()> {
    let mut policies =
        bosun::api::get_network_policies(&bosun::daemon::api_socket(&args.root_dir)).await?;
    if let Some(name) = &args.name {
        policies.retain(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        if policies.is_empty() {
            anyhow::bail!("networkpolicy {name:?} not found");
        }
    }
    if let Some(format) = GetFormat::structured(args.output) {
        return print_objects(&policies, args.name.is_some(), format);
    }
    let mut table = Table::new(&["NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES"]);
    for policy in &policies {
        let spec = policy.spec.clone().unwrap_or_default();
        let types = spec.policy_types.clone().unwrap_or_else(|| {
            let mut types = vec!["Ingress".to_owned()];
            if spec.egress.is_some() {
                types.push("Egress".to_owned());
            }
            types
        });
        table.row(vec![
            policy.metadata.namespace.clone().unwrap_or_default(),
            policy.metadata.name.clone().unwrap_or_default(),
            selector_text(spec.pod_selector.as_ref()),
            types.join(","),
        ]);
    }
    table.print()
}

/// A label selector as kubectl prints it: `app=web,tier in (a,b)`, or `<none>` for one that
/// selects everything.
fn selector_text(selector: Option<&LabelSelector>) -> String {
    let Some(selector) = selector else {
        return "<none>".to_owned();
    };
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        terms.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            "DoesNotExist" => format!("!{}", e.key),
            other => format!("{} {other} ({values})", e.key),
        });
    }
    if terms.is_empty() {
        "<none>".to_owned()
    } else {
        terms.join(",")
    }
}

async fn get_services(args: &GetListArgs) -> Result<()> {
    let mut services = bosun::api::get_services(&bosun::daemon::api_socket(&args.root_dir)).await?;
    if let Some(name) = &args.name {
        services.retain(|s| s.metadata.name.as_deref() == Some(name.as_str()));
        if services.is_empty() {
            anyhow::bail!("service {name:?} not found");
        }
    }
    if let Some(format) = GetFormat::structured(args.output) {
        return print_objects(&services, args.name.is_some(), format);
    }
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
    ];
    if args.output == Some(GetFormat::Wide) {
        header.push("SELECTOR");
    }
    let mut table = Table::new(&header);
    for service in &services {
        table.row(service_row(service, args.output == Some(GetFormat::Wide)));
    }
    table.print()
}

/// A row of `kubectl get services` (with the namespace, as `-A` prints it).
fn service_row(service: &Service, wide: bool) -> Vec<String> {
    let none = || "<none>".to_owned();
    let spec = service.spec.clone().unwrap_or_default();
    let ports: Vec<String> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p.port),
                None => format!("{}/{protocol}", p.port),
            }
        })
        .collect();
    let external: Vec<String> = spec.external_ips.clone().unwrap_or_default();
    let mut row = vec![
        service.metadata.namespace.clone().unwrap_or_default(),
        service.metadata.name.clone().unwrap_or_default(),
        spec.type_.clone().unwrap_or_else(|| "ClusterIP".into()),
        spec.cluster_ip.clone().unwrap_or_else(none),
        if external.is_empty() {
            none()
        } else {
            external.join(",")
        },
        if ports.is_empty() {
            none()
        } else {
            ports.join(",")
        },
    ];
    if wide {
        let selector: Vec<String> = spec
            .selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        row.push(if selector.is_empty() {
            none()
        } else {
            selector.join(",")
        });
    }
    row
}

async fn get_endpoints(args: &GetListArgs) -> Result<()> {
    let mut slices =
        bosun::api::get_endpoint_slices(&bosun::daemon::api_socket(&args.root_dir)).await?;
    if let Some(name) = &args.name {
        slices.retain(|s| {
            s.metadata.name.as_deref() == Some(name.as_str())
                || service_of(s) == Some(name.as_str())
        });
        if slices.is_empty() {
            anyhow::bail!("no EndpointSlice named {name:?} or of a Service {name:?}");
        }
    }
    if let Some(format) = GetFormat::structured(args.output) {
        return print_objects(&slices, false, format);
    }
    let mut table = Table::new(&[
        "NAMESPACE",
        "NAME",
        "SERVICE",
        "ADDRESSTYPE",
        "PORTS",
        "ENDPOINTS",
        "NOT-READY",
    ]);
    for slice in &slices {
        table.row(endpoint_slice_row(slice));
    }
    table.print()
}

/// The Service an EndpointSlice belongs to.
fn service_of(slice: &EndpointSlice) -> Option<&str> {
    slice
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")
        .map(String::as_str)
}

/// A row of `kubectl get endpointslices`, with the not-ready addresses in a column of their
/// own (kubectl shows only ready ones).
fn endpoint_slice_row(slice: &EndpointSlice) -> Vec<String> {
    let none = || "<none>".to_owned();
    let ports: Vec<String> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.port.map(|n| n.to_string()))
        .collect();
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for endpoint in &slice.endpoints {
        let is_ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        let addresses = endpoint.addresses.join(",");
        if is_ready {
            ready.push(addresses);
        } else {
            not_ready.push(addresses);
        }
    }
    let list = |v: Vec<String>| if v.is_empty() { none() } else { v.join(",") };
    vec![
        slice.metadata.namespace.clone().unwrap_or_default(),
        slice.metadata.name.clone().unwrap_or_default(),
        service_of(slice).map_or_else(none, str::to_owned),
        slice.address_type.clone(),
        list(ports),
        list(ready),
        list(not_ready),
    ]
}

async fn get_pods(args: &GetPodsArgs) -> Result<()> {
    let mut pods = bosun::api::get_pods(&bosun::daemon::api_socket(&args.root_dir)).await?;
    if let Some(name) = &args.name {
        pods.retain(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        if pods.is_empty() {
            anyhow::bail!("pod {name:?} not found");
        }
    }
    if let Some(format) = GetFormat::structured(args.output) {
        return print_objects(&pods, args.name.is_some(), format);
    }
    let wide = args.output == Some(GetFormat::Wide);
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if wide {
        header.extend(["IP", "NODE"]);
    }
    let mut table = Table::new(&header);
    let now = bosun::events::now();
    for pod in &pods {
        let mut row = vec![
            pod.metadata.name.clone().unwrap_or_default(),
            ready_column(pod),
            status_column(pod),
            restarts_column(pod, now),
            since(
                pod.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| t.0),
                now,
            ),
        ];
        if wide {
            let status = pod.status.as_ref();
            row.push(
                status
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_else(|| "<none>".into()),
            );
            row.push(
                pod.spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            );
        }
        table.row(row);
    }
    table.print()
}

async fn get_events(args: &GetEventsArgs) -> Result<()> {
    let selector = args.for_object.as_ref().map(Involved::field_selector);
    let mut events = bosun::api::get_events(
        &bosun::daemon::api_socket(&args.root_dir),
        selector.as_deref(),
    )
    .await?;
    sort_events(&mut events);
    if let Some(format) = GetFormat::structured(args.output) {
        return print_objects(&events, false, format);
    }
    if events.is_empty() {
        // As kubectl: nothing on stdout, a note on stderr, success.
        eprintln!("No events found.");
        return Ok(());
    }
    let wide = args.output == Some(GetFormat::Wide);
    events_table(&events, wide, bosun::events::now()).print()
}

/// Prints objects as `kubectl get -o json|yaml` does: the one object asked for by name
/// alone, anything else as a `List`.
fn print_objects<T: Serialize>(items: &[T], single: bool, format: output::Format) -> Result<()> {
    let value = match items {
        [item] if single => serde_json::to_value(item)?,
        _ => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
    };
    output::print_value(&value, format)
}

/// When an event was first seen: `firstTimestamp`, or `eventTime` for events that only
/// have that.
fn first_seen(event: &Event) -> Option<Timestamp> {
    event
        .first_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| event.event_time.as_ref().map(|t| t.0))
}

/// When an event was last seen: `lastTimestamp`, or when it was first seen.
fn last_seen(event: &Event) -> Option<Timestamp> {
    event
        .last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| first_seen(event))
}

/// Oldest first, as `kubectl events` sorts them. The sort is stable and the daemon lists
/// events in the order it last saw them, so events of the same second keep that order
/// (timestamps travel with second precision).
fn sort_events(events: &mut [Event]) {
    events.sort_by_key(last_seen);
}

/// kubectl's event columns; `-o wide` adds SUBOBJECT, SOURCE, FIRST SEEN, COUNT and NAME.
fn events_table(events: &[Event], wide: bool, now: Timestamp) -> Table {
    let header: &[&str] = if wide {
        &[
            "LAST SEEN",
            "TYPE",
            "REASON",
            "OBJECT",
            "SUBOBJECT",
            "SOURCE",
            "MESSAGE",
            "FIRST SEEN",
            "COUNT",
            "NAME",
        ]
    } else {
        &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    };
    let mut table = Table::new(header);
    for event in events {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let object = bosun::events::short_object(&event.involved_object);
        // One event, one line: a multi-line message would break the table.
        let message = text(&event.message)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut row = vec![
            since(last_seen(event), now),
            text(&event.type_),
            text(&event.reason),
            object,
        ];
        if wide {
            row.extend([
                text(&event.involved_object.field_path),
                source_column(event),
                message,
                since(first_seen(event), now),
                event.count.unwrap_or(1).to_string(),
                text(&event.metadata.name),
            ]);
        } else {
            row.push(message);
        }
        table.row(row);
    }
    table
}

/// `SOURCE`: `component, host`, from `source` or else the reporting fields.
fn source_column(event: &Event) -> String {
    let source = event.source.as_ref();
    let pick = |a: Option<&String>, b: &Option<String>| {
        a.filter(|s| !s.is_empty())
            .or(b.as_ref())
            .cloned()
            .unwrap_or_default()
    };
    let component = pick(
        source.and_then(|s| s.component.as_ref()),
        &event.reporting_component,
    );
    let host = pick(
        source.and_then(|s| s.host.as_ref()),
        &event.reporting_instance,
    );
    if host.is_empty() {
        component
    } else {
        format!("{component}, {host}")
    }
}

fn statuses(pod: &Pod) -> (&[ContainerStatus], &[ContainerStatus]) {
    let status = pod.status.as_ref();
    (
        status
            .and_then(|s| s.init_container_statuses.as_deref())
            .unwrap_or_default(),
        status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default(),
    )
}

fn sidecar_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.clone())
        .collect()
}

/// `READY`: ready containers (sidecars included) out of all of them.
fn ready_column(pod: &Pod) -> String {
    let (init, regular) = statuses(pod);
    let sidecars = sidecar_names(pod);
    let total = pod.spec.as_ref().map_or(0, |s| s.containers.len()) + sidecars.len();
    let ready = regular.iter().filter(|s| s.ready).count()
        + init
            .iter()
            .filter(|s| s.ready && sidecars.contains(&s.name))
            .count();
    format!("{ready}/{total}")
}

/// `STATUS`, as kubectl words it: the phase, or the reason a container gives.
fn status_column(pod: &Pod) -> String {
    let (init, regular) = statuses(pod);
    let sidecars = sidecar_names(pod);
    let mut reason = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let init_total = init.len();
    for (i, s) in init.iter().enumerate() {
        let state = s.state.clone().unwrap_or_default();
        if let Some(t) = &state.terminated {
            if t.exit_code == 0 {
                continue;
            }
            reason = format!(
                "Init:{}",
                t.reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code))
            );
            return reason;
        }
        if sidecars.contains(&s.name) && s.started == Some(true) {
            continue;
        }
        if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
            if w != "PodInitializing" {
                return format!("Init:{w}");
            }
        }
        return format!("Init:{i}/{init_total}");
    }
    let mut running = false;
    for s in regular.iter().rev() {
        let state = s.state.clone().unwrap_or_default();
        if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
            reason = w;
        } else if let Some(t) = &state.terminated {
            reason = t
                .reason
                .clone()
                .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code));
        } else if state.running.is_some() && s.ready {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".into();
    }
    reason
}

/// `RESTARTS`: the sum over containers, with how long ago the last one was.
fn restarts_column(pod: &Pod, now: Timestamp) -> String {
    let (init, regular) = statuses(pod);
    let restarts: i32 = init.iter().chain(regular).map(|s| s.restart_count).sum();
    let last = init
        .iter()
        .chain(regular)
        .filter_map(|s| {
            s.last_state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .as_ref()
                .map(|t| t.0)
        })
        .max();
    match last {
        Some(t) if restarts > 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    }
}

/// How long before `now` a moment was, as kubectl prints ages; `<unknown>` for no moment.
fn since(moment: Option<Timestamp>, now: Timestamp) -> String {
    match moment {
        Some(t) => kubectl_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

/// kubectl's ages (`HumanDuration`): `45s`, `3m12s`, `25m`, `5h3m`, `20h`, `3d4h`, `40d`,
/// `2y30d`. A moment up to a second ahead (clock skew) is `0s`; further ahead, `<invalid>`.
fn kubectl_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (minutes, hours) = (s / 60, s / 3600);
    let days = hours / 24;
    let two_units = |big: i64, big_unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if minutes < 10 => two_units(minutes, "m", s % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => two_units(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => two_units(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => two_units(days / 365, "y", days % 365, "d"),
        _ => format!("{}y", days / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).expect("a valid time")
    }

    /// A recorder's events at known times, as the daemon would serve them.
    fn events() -> Vec<Event> {
        let event = |object: serde_json::Value,
                     type_: &str,
                     reason: &str,
                     message: &str,
                     first: i64,
                     last: i64,
                     count: i32,
                     name: &str| {
            serde_json::from_value::<Event>(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "involvedObject": object,
                "type": type_,
                "reason": reason,
                "message": message,
                "count": count,
                "firstTimestamp": Timestamp::from_second(1_700_000_000 + first).expect("time").to_string(),
                "lastTimestamp": Timestamp::from_second(1_700_000_000 + last).expect("time").to_string(),
                "source": {"component": "bosun", "host": "node-1"},
            }))
            .expect("a valid event")
        };
        let web = serde_json::json!({"kind": "Pod", "name": "web-node-1", "namespace": "default", "fieldPath": "spec.containers{app}"});
        let node = serde_json::json!({"kind": "Node", "name": "node-1"});
        vec![
            event(
                web.clone(),
                "Warning",
                "BackOff",
                "Back-off restarting\nfailed container",
                100,
                290,
                5,
                "web-node-1.a",
            ),
            event(
                node,
                "Warning",
                "FailedValidation",
                "bad.yaml: not a pod",
                0,
                0,
                1,
                "node-1.b",
            ),
            event(
                web,
                "Normal",
                "Pulled",
                "  Container image \"busybox\" already present  ",
                60,
                60,
                1,
                "web-node-1.c",
            ),
        ]
    }

    #[test]
    fn events_print_as_kubectl_prints_them() {
        let mut events = events();
        sort_events(&mut events);
        assert_eq!(
            events_table(&events, false, at(300)).render(),
            "LAST SEEN   TYPE      REASON             OBJECT           MESSAGE\n\
             5m          Warning   FailedValidation   node/node-1      bad.yaml: not a pod\n\
             4m          Normal    Pulled             pod/web-node-1   Container image \"busybox\" already present\n\
             10s         Warning   BackOff            pod/web-node-1   Back-off restarting failed container\n"
        );
        assert_eq!(
            events_table(&events[2..], true, at(300)).render(),
            "LAST SEEN   TYPE      REASON    OBJECT           SUBOBJECT              SOURCE          MESSAGE                                FIRST SEEN   COUNT   NAME\n\
             10s         Warning   BackOff   pod/web-node-1   spec.containers{app}   bosun, node-1   Back-off restarting failed container   3m20s        5       web-node-1.a\n"
        );
    }

    #[test]
    fn events_sort_by_last_seen_keeping_the_daemons_order_for_ties() {
        let mut events = events();
        events.swap(0, 2);
        events[0].last_timestamp = events[1].last_timestamp.clone();
        sort_events(&mut events);
        let names: Vec<_> = events
            .iter()
            .filter_map(|e| e.metadata.name.as_deref())
            .collect();
        assert_eq!(names, ["web-node-1.c", "node-1.b", "web-node-1.a"]);
    }

    #[test]
    fn events_without_a_last_timestamp_fall_back_to_the_first() {
        let mut event = events().remove(0);
        event.last_timestamp = None;
        assert_eq!(last_seen(&event), Some(at(100)));
        event.first_timestamp = None;
        assert_eq!(since(last_seen(&event), at(0)), "<unknown>");
    }

    #[test]
    fn for_names_a_pod_or_the_node() {
        let involved = |kind, name: &str| Involved {
            kind,
            name: name.into(),
        };
        assert_eq!(parse_involved("web"), Ok(involved("Pod", "web")));
        assert_eq!(parse_involved("pod/web"), Ok(involved("Pod", "web")));
        assert_eq!(parse_involved("Pods/web"), Ok(involved("Pod", "web")));
        assert_eq!(parse_involved("no/n1"), Ok(involved("Node", "n1")));
        assert_eq!(
            involved("Pod", "web").field_selector(),
            "involvedObject.kind=Pod,involvedObject.name=web"
        );
        assert!(parse_involved("deployment/web")
            .unwrap_err()
            .contains("unknown kind \"deployment\""));
        assert!(parse_involved("pod/").is_err());
        assert!(parse_involved("web,reason=x").is_err());
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 3 * 60, "5h3m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (7 * 86_400, "7d"),
            (40 * 86_400, "40d"),
            (2 * 365 * 86_400 + 30 * 86_400, "2y30d"),
            (9 * 365 * 86_400, "9y"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(kubectl_duration(seconds), expected, "{seconds}s");
        }
    }
}
