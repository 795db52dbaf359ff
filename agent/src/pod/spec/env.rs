//! A container's environment (kubelet's `makeEnvironmentVariables`), the Service
//! environment variables (`getServiceEnvVarMap`, `envvars.FromServices`), the downward API
//! for environment variables, and `$(VAR)` expansion (`third_party/forked/golang/expansion`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, Service};

use super::quantity::ParsedQuantity;
use super::resources::{
    self, ContainerResources, CPU, EPHEMERAL_STORAGE, HUGEPAGES_PREFIX, MEMORY,
};
use super::{NodeContext, RuntimeFacts, SpecError};
use crate::store::ObjectGetter;

/// Expands `$(NAME)` references in `input` (Kubernetes' `expansion.Expand`): a name that
/// `lookup` knows is replaced by its value, an unknown one is left as written, `$$` is a
/// literal `$` (so `$$(NAME)` yields `$(NAME)`), and a `$` followed by anything else, or an
/// unterminated `$(`, is kept as is.
///
/// Go's version copies a `$` and the single *byte* after it; for a non-ASCII character that
/// garbles the UTF-8. Here the whole character is copied.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let mut chars = after.chars();
        match chars.next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = chars.as_str();
            }
            Some('(') => {
                let inner = chars.as_str();
                match inner.find(')') {
                    Some(close) => {
                        let name = &inner[..close];
                        match lookup(name) {
                            Some(value) => out.push_str(&value),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        rest = &inner[close + 1..];
                    }
                    None => {
                        out.push_str("$(");
                        rest = inner;
                    }
                }
            }
            Some(other) => {
                out.push('$');
                out.push(other);
                rest = chars.as_str();
            }
        }
    }
    out.push_str(rest);
    out
}

/// Environment variables in the order they were first defined, each with its last value.
/// kubelet builds the list from a Go map, so its order is random; first-definition order is
/// one of its possible outputs, and stable.
#[derive(Debug, Default)]
pub(crate) struct Environment {
    order: Vec<String>,
    values: HashMap<String, String>,
}

impl Environment {
    fn set(&mut self, name: &str, value: String) {
        if self.values.insert(name.to_owned(), value).is_none() {
            self.order.push(name.to_owned());
        }
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub fn into_pairs(mut self) -> Vec<(String, String)> {
        self.order
            .into_iter()
            .map(|name| {
                let value = self.values.remove(&name).unwrap_or_default();
                (name, value)
            })
            .collect()
    }
}

/// Everything `make_environment` needs besides the container.
pub(crate) struct EnvContext<'a> {
    pub pod: &'a Pod,
    pub ctx: &'a NodeContext,
    pub facts: &'a RuntimeFacts,
    pub resources: &'a ContainerResources,
    /// The container's field path, `spec.containers[0]`.
    pub path: &'a str,
    /// The ConfigMaps and Secrets `envFrom` and `valueFrom` refer to, and the Services of
    /// the service environment variables.
    pub objects: &'a dyn ObjectGetter,
}

/// The container's environment: `envFrom` sources, then `env` in order, each `value`
/// expanded against the variables defined before it and the Service variables, then the
/// Service variables that neither defined. A missing ConfigMap, Secret or key fails unless
/// the reference is optional, in which case it is skipped, as kubelet does; `envFrom` keys
/// that are not valid variable names are skipped too (kubelet records them in an event).
///
/// The Services are read as they are: kubelet refuses to build the environment of a pod
/// from the API server before its Service informer has listed once, and here the caller
/// waits for that instead (see [`services_pending`]).
pub(crate) fn make_environment(
    container: &Container,
    env: &EnvContext<'_>,
) -> Result<Environment, SpecError> {
    let services = service_environment(env.pod, env.objects);
    let mut result = Environment::default();
    let namespace = env.pod.metadata.namespace.as_deref().unwrap_or("default");
    for (index, source) in container.env_from.iter().flatten().enumerate() {
        let path = format!("{}.envFrom[{index}]", env.path);
        let prefix = source.prefix.as_deref().unwrap_or_default();
        let data: Option<Vec<(String, String)>> = if let Some(reference) = &source.config_map_ref {
            match env.objects.config_map(namespace, &reference.name) {
                Some(object) => Some(
                    object
                        .data
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                ),
                None if reference.optional.unwrap_or(false) => None,
                None => {
                    return Err(not_found(
                        format!("{path}.configMapRef"),
                        "ConfigMap",
                        namespace,
                        &reference.name,
                    ))
                }
            }
        } else if let Some(reference) = &source.secret_ref {
            match env.objects.secret(namespace, &reference.name) {
                Some(object) => Some(
                    object
                        .data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                        .collect(),
                ),
                None if reference.optional.unwrap_or(false) => None,
                None => {
                    return Err(not_found(
                        format!("{path}.secretRef"),
                        "Secret",
                        namespace,
                        &reference.name,
                    ))
                }
            }
        } else {
            None
        };
        for (key, value) in data.into_iter().flatten() {
            let name = format!("{prefix}{key}");
            if is_env_var_name(&name) {
                result.set(&name, value);
            }
        }
    }
    for (index, var) in container.env.iter().flatten().enumerate() {
        let path = format!("{}.env[{index}]", env.path);
        if let Some(value) = resolve(var, &result, &services, env, &path)? {
            result.set(&var.name, value);
        }
    }
    for (name, value) in services.into_pairs() {
        if !result.contains(&name) {
            result.set(&name, value);
        }
    }
    Ok(result)
}

/// One variable's value; `None` when an optional source is missing and the variable is
/// skipped. `$(NAME)` in a value is looked up in what the container defined before it, then
/// in the Service variables (kubelet's `MappingFuncFor(tmpEnv, serviceEnv)`).
fn resolve(
    var: &EnvVar,
    defined: &Environment,
    services: &Environment,
    env: &EnvContext<'_>,
    path: &str,
) -> Result<Option<String>, SpecError> {
    let value = var.value.as_deref().unwrap_or_default();
    if !value.is_empty() {
        return Ok(Some(expand(value, |name| {
            defined.get(name).or_else(|| services.get(name))
        })));
    }
    let Some(source) = &var.value_from else {
        return Ok(Some(String::new()));
    };
    let path = format!("{path}.valueFrom");
    if let Some(field) = &source.field_ref {
        let api_version = field.api_version.as_deref().unwrap_or("v1");
        if !api_version.is_empty() && api_version != "v1" {
            return Err(SpecError::Invalid {
                path: format!("{path}.fieldRef.apiVersion"),
                value: api_version.to_owned(),
                reason: "only v1 is supported".into(),
            });
        }
        return pod_field_value(
            &field.field_path,
            env,
            &format!("{path}.fieldRef.fieldPath"),
        )
        .map(Some);
    }
    if let Some(field) = &source.resource_field_ref {
        return container_resource_value(field, env, &format!("{path}.resourceFieldRef")).map(Some);
    }
    let optional_or = |optional: Option<bool>, path: String, what: &str| {
        if optional.unwrap_or(false) {
            Ok(None)
        } else {
            Err(unavailable(path, what))
        }
    };
    let namespace = env.pod.metadata.namespace.as_deref().unwrap_or("default");
    let missing = |optional: Option<bool>, path: String, message: String| {
        if optional.unwrap_or(false) {
            Ok(None)
        } else {
            Err(SpecError::ObjectNotFound { path, message })
        }
    };
    if let Some(key) = &source.config_map_key_ref {
        let path = format!("{path}.configMapKeyRef");
        let Some(object) = env.objects.config_map(namespace, &key.name) else {
            return missing(
                key.optional,
                path,
                format!("configmap \"{}\" not found", key.name),
            );
        };
        return match object.data.as_ref().and_then(|d| d.get(&key.key)) {
            Some(value) => Ok(Some(value.clone())),
            None => missing(
                key.optional,
                path,
                format!(
                    "couldn't find key {} in ConfigMap {namespace}/{}",
                    key.key, key.name
                ),
            ),
        };
    }
    if let Some(key) = &source.secret_key_ref {
        let path = format!("{path}.secretKeyRef");
        let Some(object) = env.objects.secret(namespace, &key.name) else {
            return missing(
                key.optional,
                path,
                format!("secret \"{}\" not found", key.name),
            );
        };
        return match object.data.as_ref().and_then(|d| d.get(&key.key)) {
            Some(value) => Ok(Some(String::from_utf8_lossy(&value.0).into_owned())),
            None => missing(
                key.optional,
                path,
                format!(
                    "couldn't find key {} in Secret {namespace}/{}",
                    key.key, key.name
                ),
            ),
        };
    }
    if let Some(key) = &source.file_key_ref {
        return optional_or(key.optional, format!("{path}.fileKeyRef"), "env files");
    }
    Ok(Some(String::new()))
}

/// The Service kubelet gives every pod the variables of, whatever its `enableServiceLinks`
/// (its `masterServices`), in the `default` namespace.
const MASTER_SERVICE: &str = "kubernetes";
const MASTER_SERVICE_NAMESPACE: &str = "default";

/// Whether `pod` must wait before its environment is built: it came from the API server,
/// whose Services have not been listed yet (kubelet's `serviceHasSynced`). Static pods do not
/// wait, as with kubelet: they must be able to start without an API server.
pub fn services_pending(pod: &Pod, objects: &dyn ObjectGetter) -> bool {
    crate::source::from_api(pod) && objects.services_pending()
}

/// The Service environment variables of `pod` (kubelet's `getServiceEnvVarMap`): with
/// `enableServiceLinks` (unset reads as the API's default, true) those of every Service of
/// the pod's namespace, and always those of the `kubernetes` Service of `default` unless a
/// Service of that name in the pod's namespace already gave them. Services without a cluster
/// IP (headless, ExternalName) give none.
///
/// kubelet walks the Services in its informer's (random) order; here they go by name, and
/// where two Services' variables collide (`a-port-80-tcp` and `a`'s port 80), the later name
/// wins.
fn service_environment(pod: &Pod, objects: &dyn ObjectGetter) -> Environment {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut chosen: BTreeMap<String, Arc<Service>> = BTreeMap::new();
    if links {
        for service in objects.services(namespace) {
            if let Some(name) = service
                .metadata
                .name
                .clone()
                .filter(|_| has_cluster_ip(&service))
            {
                chosen.insert(name, service);
            }
        }
    }
    if let Some(master) = objects
        .service(MASTER_SERVICE_NAMESPACE, MASTER_SERVICE)
        .filter(|s| has_cluster_ip(s))
    {
        chosen.entry(MASTER_SERVICE.to_owned()).or_insert(master);
    }
    let mut result = Environment::default();
    for (name, service) in &chosen {
        service_variables(&mut result, name, service);
    }
    result
}

/// Whether the Service has a cluster IP to link to (`v1helper.IsServiceIPSet`). An
/// ExternalName Service has none in the API; one from a manifest is skipped whatever it says.
fn has_cluster_ip(service: &Service) -> bool {
    let Some(spec) = &service.spec else {
        return false;
    };
    let ip = spec.cluster_ip.as_deref().unwrap_or_default();
    !ip.is_empty() && ip != "None" && spec.type_.as_deref() != Some("ExternalName")
}

/// One Service's variables (`envvars.FromServices`): `NAME_SERVICE_HOST`,
/// `NAME_SERVICE_PORT` (the first port) and `NAME_SERVICE_PORT_PORTNAME` for each named
/// port, then Docker's link variables (`makeLinkVariables`): `NAME_PORT` for the first port,
/// and `NAME_PORT_<port>_<PROTO>` with `_PROTO`, `_PORT` and `_ADDR` for each. A Service
/// without ports (which the API server refuses; kubelet would crash on it) has the host only.
fn service_variables(out: &mut Environment, name: &str, service: &Service) {
    let prefix = name.replace('-', "_").to_uppercase();
    let spec = service.spec.as_ref();
    let ip = spec.and_then(|s| s.cluster_ip.clone()).unwrap_or_default();
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    out.set(&format!("{prefix}_SERVICE_HOST"), ip.clone());
    let Some(first) = ports.first() else {
        return;
    };
    let service_port = format!("{prefix}_SERVICE_PORT");
    out.set(&service_port, first.port.to_string());
    for port in ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let port_name = port_name.replace('-', "_").to_uppercase();
            out.set(
                &format!("{service_port}_{port_name}"),
                port.port.to_string(),
            );
        }
    }
    // `net.JoinHostPort`: an IPv6 address in brackets.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    for (index, port) in ports.iter().enumerate() {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        let lower = protocol.to_lowercase();
        let url = format!("{lower}://{host}:{}", port.port);
        if index == 0 {
            out.set(&format!("{prefix}_PORT"), url.clone());
        }
        let port_prefix = format!("{prefix}_PORT_{}_{}", port.port, protocol.to_uppercase());
        out.set(&port_prefix, url);
        out.set(&format!("{port_prefix}_PROTO"), lower);
        out.set(&format!("{port_prefix}_PORT"), port.port.to_string());
        out.set(&format!("{port_prefix}_ADDR"), ip.clone());
    }
}

fn not_found(path: String, kind: &str, namespace: &str, name: &str) -> SpecError {
    SpecError::ObjectNotFound {
        path,
        message: format!("{kind} {namespace}/{name} not found"),
    }
}

/// A valid environment variable name, as the API server checks `envFrom` keys
/// (`IsEnvVarName`): printable ASCII but `=`, not starting with a digit.
fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
}

fn unavailable(path: String, what: &str) -> SpecError {
    SpecError::Unsupported {
        path,
        what: format!("{what} (not available to bosun yet; mark it optional to skip it)"),
    }
}

/// The downward API for an environment variable's `fieldRef` (kubelet's
/// `podFieldSelectorRuntimeValue`, restricted to the paths API validation allows for env).
fn pod_field_value(
    field_path: &str,
    env: &EnvContext<'_>,
    path: &str,
) -> Result<String, SpecError> {
    let pod = env.pod;
    let metadata = &pod.metadata;
    let spec = pod.spec.as_ref();
    let pod_ips = sort_pod_ips(&env.facts.pod_ips, &env.ctx.host_ip);
    let pod_ip = pod_ips
        .first()
        .cloned()
        .unwrap_or_else(|| env.facts.pod_ip.clone());
    let value = match field_path {
        "metadata.name" => metadata.name.clone().unwrap_or_default(),
        "metadata.namespace" => metadata.namespace.clone().unwrap_or_default(),
        "metadata.uid" => metadata.uid.clone().unwrap_or_default(),
        // kubelet sets a static pod's nodeName to its own; an API pod bound here has it.
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| env.ctx.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => env.ctx.host_ip.clone(),
        "status.podIP" => pod_ip,
        "status.podIPs" => pod_ips.join(","),
        other => match subscripted(other) {
            Some(("metadata.labels", key)) => metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(key).cloned())
                .unwrap_or_default(),
            Some(("metadata.annotations", key)) => metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(key).cloned())
                .unwrap_or_default(),
            _ => {
                return Err(SpecError::Invalid {
                    path: path.to_owned(),
                    value: other.to_owned(),
                    reason: "not a field the downward API offers to environment variables".into(),
                })
            }
        },
    };
    Ok(value)
}

/// `metadata.labels['key']` → (`metadata.labels`, `key`).
fn subscripted(field_path: &str) -> Option<(&str, &str)> {
    let inner = field_path.strip_suffix("']")?;
    let (path, key) = inner.split_once("['")?;
    (!path.is_empty()).then_some((path, key))
}

/// At most one pod IP of each family, the node's family first (kubelet's `sortPodIPs`).
fn sort_pod_ips(pod_ips: &[String], host_ip: &str) -> Vec<String> {
    let host_v6 = host_ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6());
    let first_of = |v6: bool| {
        pod_ips
            .iter()
            .find(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6() == v6))
            .cloned()
    };
    [first_of(host_v6), first_of(!host_v6)]
        .into_iter()
        .flatten()
        .collect()
}

/// The downward API for `resourceFieldRef` (kubelet's `containerResourceRuntimeValue` on
/// limits defaulted to the node's allocatable): the value divided by the divisor (default 1),
/// rounded up. Unset CPU, memory and ephemeral-storage limits read as the node's allocatable.
fn container_resource_value(
    field: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    env: &EnvContext<'_>,
    path: &str,
) -> Result<String, SpecError> {
    // Which container's resources, and whether its limits default to allocatable: kubelet
    // defaults the container being started and the pod's regular containers, but an init
    // container named here keeps its own (possibly empty) limits.
    let target = field.container_name.as_deref().filter(|n| !n.is_empty());
    let (resources, default_limits) = match target {
        None => (env.resources.clone(), true),
        Some(name) => {
            let spec = env.pod.spec.as_ref();
            let regular = spec.and_then(|s| {
                s.containers
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.name == name)
                    .map(|(i, c)| (c, format!("spec.containers[{i}]"), true))
            });
            let init = || {
                spec.and_then(|s| {
                    s.init_containers
                        .iter()
                        .flatten()
                        .enumerate()
                        .find(|(_, c)| c.name == name)
                        .map(|(i, c)| (c, format!("spec.initContainers[{i}]"), false))
                })
            };
            let Some((container, container_path, defaulted)) = regular.or_else(init) else {
                return Err(SpecError::Invalid {
                    path: format!("{path}.containerName"),
                    value: name.to_owned(),
                    reason: "no container of this name in the pod".into(),
                });
            };
            (
                ContainerResources::of(container, &container_path)?,
                defaulted,
            )
        }
    };
    let divisor = match &field.divisor {
        Some(divisor) => resources::parse_quantity(divisor, &format!("{path}.divisor"))?,
        None => ParsedQuantity::ZERO,
    };
    let divisor = if divisor.is_zero() {
        ParsedQuantity::from_units(1)
    } else {
        divisor
    };
    let allocatable = |name: &str| match name {
        CPU => Some(ParsedQuantity::from_milli(
            env.ctx.node.allocatable_cpu_millis,
        )),
        MEMORY => Some(ParsedQuantity::from_units(
            env.ctx.node.allocatable_memory_bytes,
        )),
        EPHEMERAL_STORAGE => Some(ParsedQuantity::from_units(
            env.ctx.node.allocatable_ephemeral_storage_bytes,
        )),
        _ => None,
    };
    let unsupported = || SpecError::Invalid {
        path: format!("{path}.resource"),
        value: field.resource.clone(),
        reason: "must be limits or requests of cpu, memory, ephemeral-storage or hugepages-*"
            .into(),
    };
    let (list, name) = field.resource.split_once('.').ok_or_else(unsupported)?;
    let quantity = match list {
        "requests" => resources.request(name),
        "limits" => {
            let limit = resources.limit(name);
            match allocatable(name) {
                Some(node) if default_limits && limit.is_zero() => node,
                _ => limit,
            }
        }
        _ => return Err(unsupported()),
    };
    let (value, per) = if name == CPU {
        (quantity.milli_value(), divisor.milli_value())
    } else if name == MEMORY || name == EPHEMERAL_STORAGE || name.starts_with(HUGEPAGES_PREFIX) {
        (quantity.value(), divisor.value())
    } else {
        return Err(unsupported());
    };
    divide_ceil(value, per)
        .map(|ratio| ratio.to_string())
        .ok_or_else(|| SpecError::Invalid {
            path: format!("{path}.divisor"),
            value: field
                .divisor
                .as_ref()
                .map(|d| d.0.clone())
                .unwrap_or_default(),
            reason: "must be positive".into(),
        })
}

/// `ceil(value / divisor)` computed in floating point, as kubelet does
/// (`math.Ceil(float64(v) / float64(d))`), so results agree at the edges. `None` for a
/// non-positive divisor.
fn divide_ceil(value: i64, divisor: i64) -> Option<i64> {
    if divisor <= 0 {
        return None;
    }
    Some((value as f64 / divisor as f64).ceil() as i64)
}

#[cfg(test)]
#[path = "service_env_tests.rs"]
mod service_env_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion_matches_kubernetes() {
        for (input, expected) in [
            ("$(A)", "alpha"),
            ("x$(A)y", "xalphay"),
            ("$(A)$(A)", "alphaalpha"),
            ("$(NOPE)", "$(NOPE)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$alpha"),
            ("$$$$(A)", "$$(A)"),
            ("$$", "$"),
            ("a$", "a$"),
            ("$", "$"),
            ("$A", "$A"),
            ("$(A", "$(A"),
            ("$(", "$("),
            ("$()", "$()"),
            ("$(EMPTY)x", "x"),
            ("$((A))", "$((A))"),
            ("$(A)$", "alpha$"),
            ("$é$(A)", "$éalpha"),
            ("no refs", "no refs"),
        ] {
            assert_eq!(expand(input, lookup), expected, "{input:?}");
        }
    }

    #[test]
    fn pod_ips_put_the_node_family_first() {
        let ips = [
            "fd00::5".to_owned(),
            "10.0.0.5".to_owned(),
            "10.0.0.6".to_owned(),
        ];
        assert_eq!(sort_pod_ips(&ips, "192.168.1.10"), ["10.0.0.5", "fd00::5"]);
        assert_eq!(sort_pod_ips(&ips, "fd00::1"), ["fd00::5", "10.0.0.5"]);
        assert!(sort_pod_ips(&[], "192.168.1.10").is_empty());
    }

    #[test]
    fn subscripted_paths_split_at_the_bracket() {
        assert_eq!(
            subscripted("metadata.labels['app.kubernetes.io/name']"),
            Some(("metadata.labels", "app.kubernetes.io/name"))
        );
        assert_eq!(subscripted("metadata.labels"), None);
        assert_eq!(subscripted("['x']"), None);
    }

    #[test]
    fn division_rounds_up_like_kubelet() {
        assert_eq!(divide_ceil(250, 1000), Some(1));
        assert_eq!(divide_ceil(2000, 1000), Some(2));
        assert_eq!(divide_ceil(134_217_728, 1_048_576), Some(128));
        assert_eq!(divide_ceil(1, 0), None);
    }
}
