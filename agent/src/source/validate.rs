//! The checks the API server would make on a pod before accepting it, limited to what a
//! node needs to run it safely. Messages follow the API server's (`field: unsupported
//! value ...`) so they read the same as what `kubectl apply` would print.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::strict::Problem;
use crate::pod::volume::{
    check_item_path, check_sub_path, format_mode, volume_sources, HOST_PATH_TYPES,
};

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
pub(super) const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
/// An init container may only restart `Always`, which makes it a sidecar.
const INIT_RESTART_POLICIES: &[&str] = &["Always"];
const MOUNT_PROPAGATIONS: &[&str] = &["None", "HostToContainer", "Bidirectional"];
/// The largest file mode of configMap, secret, downwardAPI and projected files.
const MAX_FILE_MODE: i32 = 0o777;

/// The longest object name the API server accepts (a DNS-1123 subdomain).
pub(super) const MAX_SUBDOMAIN: usize = 253;
/// The longest namespace or container name (a DNS-1123 label).
pub(super) const MAX_LABEL: usize = 63;

/// Checks a pod as written in a manifest (before defaults), for the node `node_name`
/// whose name kubelet will append to the pod's.
pub(crate) fn validate_pod(pod: &Pod, node_name: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let meta = &pod.metadata;

    match meta.name.as_deref() {
        None | Some("") => problems.push(Problem::new("metadata.name", "required value")),
        Some(name) => {
            if let Err(why) = check_subdomain(name) {
                problems.push(invalid("metadata.name", name, &why));
            } else {
                let full = static_pod_name(name, node_name);
                if full.len() > MAX_SUBDOMAIN {
                    let why = format!(
                        "with the node name appended the pod name \"{full}\" is {} characters, \
                         more than {MAX_SUBDOMAIN}",
                        full.len()
                    );
                    problems.push(invalid("metadata.name", name, &why));
                }
            }
        }
    }
    if let Some(namespace) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        if let Err(why) = check_label(namespace) {
            problems.push(invalid("metadata.namespace", namespace, &why));
        }
    }

    let Some(spec) = pod.spec.as_ref() else {
        problems.push(Problem::new("spec", "required value"));
        return problems;
    };
    check_one_of(
        &mut problems,
        "spec.restartPolicy",
        spec.restart_policy.as_deref(),
        RESTART_POLICIES,
    );
    check_one_of(
        &mut problems,
        "spec.dnsPolicy",
        spec.dns_policy.as_deref(),
        DNS_POLICIES,
    );
    if spec.containers.is_empty() {
        problems.push(Problem::new("spec.containers", "required value"));
    }

    // Container names share one namespace across init and regular containers: the runtime
    // and the logs address them by name alone.
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let volume_names: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let init = spec.init_containers.iter().flatten().enumerate();
    for (index, container) in init {
        let path = format!("spec.initContainers[{index}]");
        check_container(&mut problems, &path, container, &mut names);
        check_volume_mounts(&mut problems, &path, container, &volume_names);
        check_one_of(
            &mut problems,
            &format!("{path}.restartPolicy"),
            container.restart_policy.as_deref(),
            INIT_RESTART_POLICIES,
        );
    }
    for (index, container) in spec.containers.iter().enumerate() {
        let path = format!("spec.containers[{index}]");
        check_container(&mut problems, &path, container, &mut names);
        check_volume_mounts(&mut problems, &path, container, &volume_names);
        if container.restart_policy.is_some() {
            problems.push(Problem::new(
                format!("{path}.restartPolicy"),
                "forbidden: may only be set on init containers",
            ));
        }
    }

    let mut volumes: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, volume) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{index}].name");
        if volume.name.is_empty() {
            problems.push(Problem::new(field, "required value"));
        } else if let Err(why) = check_label(&volume.name) {
            problems.push(invalid(&field, &volume.name, &why));
        } else if let Some(first) = volumes.insert(&volume.name, index) {
            problems.push(duplicate(
                &field,
                &volume.name,
                &format!("spec.volumes[{first}].name"),
            ));
        }
        check_volume_source(&mut problems, &format!("spec.volumes[{index}]"), volume);
    }
    problems
}

/// A container's `volumeMounts`, as the API server checks them.
fn check_volume_mounts(
    problems: &mut Vec<Problem>,
    path: &str,
    container: &Container,
    volumes: &BTreeSet<&str>,
) {
    let mut mount_paths: BTreeMap<&str, String> = BTreeMap::new();
    for (index, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let path = format!("{path}.volumeMounts[{index}]");
        let name_field = format!("{path}.name");
        if mount.name.is_empty() {
            problems.push(Problem::new(name_field, "required value"));
        } else if !volumes.contains(mount.name.as_str()) {
            let message = format!("not found: {:?} is not in spec.volumes", mount.name);
            problems.push(Problem::new(name_field, message));
        }
        let path_field = format!("{path}.mountPath");
        if mount.mount_path.is_empty() {
            problems.push(Problem::new(&path_field, "required value"));
        } else if let Some(first) = mount_paths.get(mount.mount_path.as_str()) {
            problems.push(duplicate(&path_field, &mount.mount_path, first));
        } else {
            mount_paths.insert(&mount.mount_path, path_field);
        }
        let sub_path = mount.sub_path.as_deref().unwrap_or_default();
        if let Err(why) = check_sub_path(sub_path) {
            problems.push(invalid(&format!("{path}.subPath"), sub_path, why));
        }
        let sub_path_expr = mount.sub_path_expr.as_deref().unwrap_or_default();
        if !sub_path.is_empty() && !sub_path_expr.is_empty() {
            let why = "subPathExpr and subPath are mutually exclusive";
            problems.push(invalid(&format!("{path}.subPathExpr"), sub_path_expr, why));
        }
        let propagation_field = format!("{path}.mountPropagation");
        let propagation = mount.mount_propagation.as_deref();
        check_one_of(
            problems,
            &propagation_field,
            propagation,
            MOUNT_PROPAGATIONS,
        );
        let privileged = container
            .security_context
            .as_ref()
            .and_then(|s| s.privileged)
            .unwrap_or(false);
        if propagation == Some("Bidirectional") && !privileged {
            problems.push(Problem::new(
                propagation_field,
                "forbidden: Bidirectional mount propagation is available only to privileged \
                 containers",
            ));
        }
    }
}

/// A volume's source, as the API server checks it: exactly one, and the fields bosun relies
/// on well formed. Sources bosun cannot mount are accepted here, as kubelet accepts them;
/// the pod then fails to start with an error naming the volume.
fn check_volume_source(problems: &mut Vec<Problem>, path: &str, volume: &Volume) {
    match volume_sources(volume).len() {
        0 => problems.push(Problem::new(path, "must specify a volume type")),
        1 => {}
        _ => problems.push(Problem::new(
            path,
            "may not specify more than 1 volume type",
        )),
    }
    if let Some(host_path) = &volume.host_path {
        let field = format!("{path}.hostPath.path");
        if host_path.path.is_empty() {
            problems.push(Problem::new(field, "required value"));
        } else if let Err(why) = check_sub_path(host_path.path.trim_start_matches('/')) {
            problems.push(invalid(&field, &host_path.path, why));
        }
        let type_field = format!("{path}.hostPath.type");
        check_one_of(
            problems,
            &type_field,
            host_path.type_.as_deref(),
            HOST_PATH_TYPES,
        );
    }
    if let Some(config_map) = &volume.config_map {
        let path = format!("{path}.configMap");
        if config_map.name.is_empty() {
            problems.push(Problem::new(format!("{path}.name"), "required value"));
        }
        check_file_mode(
            problems,
            &format!("{path}.defaultMode"),
            config_map.default_mode,
        );
        check_key_to_paths(problems, &path, config_map.items.as_deref());
    }
    if let Some(secret) = &volume.secret {
        let path = format!("{path}.secret");
        if secret.secret_name.as_deref().unwrap_or_default().is_empty() {
            problems.push(Problem::new(format!("{path}.secretName"), "required value"));
        }
        check_file_mode(
            problems,
            &format!("{path}.defaultMode"),
            secret.default_mode,
        );
        check_key_to_paths(problems, &path, secret.items.as_deref());
    }
    if let Some(downward_api) = &volume.downward_api {
        let path = format!("{path}.downwardAPI");
        check_file_mode(
            problems,
            &format!("{path}.defaultMode"),
            downward_api.default_mode,
        );
        check_downward_api_files(problems, &path, downward_api.items.as_deref());
    }
    if let Some(projected) = &volume.projected {
        let path = format!("{path}.projected");
        check_file_mode(
            problems,
            &format!("{path}.defaultMode"),
            projected.default_mode,
        );
        for (index, source) in projected.sources.iter().flatten().enumerate() {
            let path = format!("{path}.sources[{index}]");
            if let Some(config_map) = &source.config_map {
                check_key_to_paths(
                    problems,
                    &format!("{path}.configMap"),
                    config_map.items.as_deref(),
                );
            }
            if let Some(secret) = &source.secret {
                check_key_to_paths(problems, &format!("{path}.secret"), secret.items.as_deref());
            }
            if let Some(downward_api) = &source.downward_api {
                let path = format!("{path}.downwardAPI");
                check_downward_api_files(problems, &path, downward_api.items.as_deref());
            }
        }
    }
}

/// The `items` of a configMap or secret source under `path`.
fn check_key_to_paths(problems: &mut Vec<Problem>, path: &str, items: Option<&[KeyToPath]>) {
    for (index, item) in items.unwrap_or_default().iter().enumerate() {
        let path = format!("{path}.items[{index}]");
        if item.key.is_empty() {
            problems.push(Problem::new(format!("{path}.key"), "required value"));
        }
        check_file_path(problems, &format!("{path}.path"), &item.path);
        check_file_mode(problems, &format!("{path}.mode"), item.mode);
    }
}

/// The `items` of a downwardAPI volume or projection under `path`.
fn check_downward_api_files(
    problems: &mut Vec<Problem>,
    path: &str,
    items: Option<&[DownwardAPIVolumeFile]>,
) {
    for (index, item) in items.unwrap_or_default().iter().enumerate() {
        let path = format!("{path}.items[{index}]");
        check_file_path(problems, &format!("{path}.path"), &item.path);
        check_file_mode(problems, &format!("{path}.mode"), item.mode);
    }
}

fn check_file_path(problems: &mut Vec<Problem>, field: &str, path: &str) {
    if path.is_empty() {
        problems.push(Problem::new(field, "required value"));
    } else if let Err(why) = check_item_path(path) {
        problems.push(invalid(field, path, why));
    }
}

fn check_file_mode(problems: &mut Vec<Problem>, field: &str, mode: Option<i32>) {
    let Some(mode) = mode else {
        return;
    };
    if !(0..=MAX_FILE_MODE).contains(&mode) {
        let value = format_mode(mode);
        problems.push(Problem::new(
            field,
            format!(
                "invalid value {value}: must be a number between 0 and 0777 (octal), both \
                 inclusive"
            ),
        ));
    }
}

/// kubelet's name for a static pod: the manifest's name, a dash, and the node name in
/// lower case, so mirror pods of different nodes do not collide in the API server.
pub(crate) fn static_pod_name(name: &str, node_name: &str) -> String {
    format!("{name}-{}", node_name.to_lowercase())
}

fn check_container<'a>(
    problems: &mut Vec<Problem>,
    path: &str,
    container: &'a Container,
    names: &mut BTreeMap<&'a str, String>,
) {
    let name_field = format!("{path}.name");
    if container.name.is_empty() {
        problems.push(Problem::new(&name_field, "required value"));
    } else if let Err(why) = check_label(&container.name) {
        problems.push(invalid(&name_field, &container.name, &why));
    } else if let Some(first) = names.get(container.name.as_str()) {
        problems.push(duplicate(&name_field, &container.name, first));
    } else {
        names.insert(&container.name, name_field);
    }

    if container
        .image
        .as_deref()
        .is_none_or(|image| image.trim().is_empty())
    {
        problems.push(Problem::new(format!("{path}.image"), "required value"));
    }
    check_one_of(
        problems,
        &format!("{path}.imagePullPolicy"),
        container.image_pull_policy.as_deref(),
        PULL_POLICIES,
    );

    for (index, port) in container.ports.iter().flatten().enumerate() {
        let port_path = format!("{path}.ports[{index}]");
        let container_port = format!("{port_path}.containerPort");
        check_required_port(problems, &container_port, port.container_port);
        // hostPort 0 is the same as leaving it out.
        if let Some(host_port) = port.host_port.filter(|p| *p != 0) {
            check_port(problems, &format!("{port_path}.hostPort"), host_port);
        }
        if let Some(name) = port.name.as_deref() {
            if let Err(why) = check_port_name(name) {
                problems.push(invalid(&format!("{port_path}.name"), name, &why));
            }
        }
        check_one_of(
            problems,
            &format!("{port_path}.protocol"),
            port.protocol.as_deref(),
            PROTOCOLS,
        );
    }

    let probes = [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ];
    for (probe_name, probe) in probes {
        let Some(probe) = probe else {
            continue;
        };
        let probe_path = format!("{path}.{probe_name}");
        if let Some(http_get) = &probe.http_get {
            check_target_port(
                problems,
                &format!("{probe_path}.httpGet.port"),
                &http_get.port,
            );
        }
        if let Some(tcp_socket) = &probe.tcp_socket {
            let field = format!("{probe_path}.tcpSocket.port");
            check_target_port(problems, &field, &tcp_socket.port);
        }
        if let Some(grpc) = &probe.grpc {
            check_required_port(problems, &format!("{probe_path}.grpc.port"), grpc.port);
        }
    }
    let lifecycle = container.lifecycle.as_ref();
    let handlers = [
        ("postStart", lifecycle.and_then(|l| l.post_start.as_ref())),
        ("preStop", lifecycle.and_then(|l| l.pre_stop.as_ref())),
    ];
    for (handler_name, handler) in handlers {
        let Some(handler) = handler else {
            continue;
        };
        let handler_path = format!("{path}.lifecycle.{handler_name}");
        if let Some(http_get) = &handler.http_get {
            let field = format!("{handler_path}.httpGet.port");
            check_target_port(problems, &field, &http_get.port);
        }
        if let Some(tcp_socket) = &handler.tcp_socket {
            let field = format!("{handler_path}.tcpSocket.port");
            check_target_port(problems, &field, &tcp_socket.port);
        }
    }
}

/// k8s-openapi decodes a missing port number as 0, so 0 means it was left out.
pub(super) fn check_required_port(problems: &mut Vec<Problem>, field: &str, port: i32) {
    if port == 0 {
        problems.push(Problem::new(field, "required value"));
    } else {
        check_port(problems, field, port);
    }
}

/// A probe's or handler's port: a number, or the name of one of the container's ports.
fn check_target_port(problems: &mut Vec<Problem>, field: &str, port: &IntOrString) {
    match port {
        IntOrString::Int(number) => check_required_port(problems, field, *number),
        IntOrString::String(name) if name.is_empty() => {
            problems.push(Problem::new(field, "required value"));
        }
        IntOrString::String(name) => {
            if let Err(why) = check_port_name(name) {
                problems.push(invalid(field, name, &why));
            }
        }
    }
}

pub(super) fn check_port(problems: &mut Vec<Problem>, field: &str, port: i32) {
    if !(1..=65535).contains(&port) {
        problems.push(Problem::new(
            field,
            format!("invalid value {port}: must be between 1 and 65535, inclusive"),
        ));
    }
}

/// An IANA service name, what a named port must be (RFC 6335).
pub(super) fn check_port_name(name: &str) -> Result<(), String> {
    const RULE: &str = "must be an IANA service name: at most 15 characters, lowercase \
                        letters, digits and '-', with at least one letter, no '--', and \
                        starting and ending with a letter or digit";
    let valid = name.len() <= 15
        && is_label(name)
        && name.bytes().any(|c| c.is_ascii_lowercase())
        && !name.contains("--");
    if valid {
        Ok(())
    } else {
        Err(RULE.to_string())
    }
}

pub(super) fn check_one_of(
    problems: &mut Vec<Problem>,
    field: &str,
    value: Option<&str>,
    supported: &[&str],
) {
    let Some(value) = value else {
        return;
    };
    if !supported.contains(&value) {
        problems.push(unsupported(field, value, supported));
    }
}

/// `field: unsupported value "x": supported values: "a", "b"`.
pub(crate) fn unsupported(field: &str, value: &str, supported: &[&str]) -> Problem {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    Problem::new(
        field,
        format!(
            "unsupported value {value:?}: supported values: {}",
            list.join(", ")
        ),
    )
}

pub(super) fn invalid(field: &str, value: &str, why: &str) -> Problem {
    Problem::new(field, format!("invalid value {value:?}: {why}"))
}

pub(super) fn duplicate(field: &str, value: &str, first: &str) -> Problem {
    Problem::new(
        field,
        format!("duplicate value {value:?}: already used by {first}"),
    )
}

/// A DNS-1123 label: what namespaces, container and volume names must be.
pub(crate) fn check_label(value: &str) -> Result<(), String> {
    const RULE: &str = "must be a lowercase RFC 1123 label: at most 63 characters, lowercase \
                        letters, digits and '-', starting and ending with a letter or digit";
    if value.len() > MAX_LABEL || !is_label(value) {
        return Err(RULE.to_string());
    }
    Ok(())
}

/// A DNS-1123 subdomain: what object names must be.
pub(crate) fn check_subdomain(value: &str) -> Result<(), String> {
    const RULE: &str = "must be a lowercase RFC 1123 subdomain: at most 253 characters, \
                        lowercase letters, digits, '-' and '.', each dot-separated part \
                        starting and ending with a letter or digit";
    if value.len() > MAX_SUBDOMAIN || !value.split('.').all(is_label) {
        return Err(RULE.to_string());
    }
    Ok(())
}

pub(super) fn is_label(part: &str) -> bool {
    let alphanumeric = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = part.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            alphanumeric(first)
                && alphanumeric(last)
                && bytes.iter().all(|&c| alphanumeric(c) || c == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        for good in ["a", "web", "web-1", "1web", "a".repeat(63).as_str()] {
            assert!(check_label(good).is_ok(), "{good}");
            assert!(check_subdomain(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "Web",
            "web_1",
            "web.1",
            "a".repeat(64).as_str(),
        ] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
        assert!(check_subdomain("web.example-1.com").is_ok());
        for bad in ["", ".web", "web.", "web..com", "Web.com", "web_1"] {
            assert!(check_subdomain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_names() {
        for good in ["http", "metrics-1", "h2c", "a"] {
            assert!(check_port_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "80",
            "-http",
            "http-",
            "my--port",
            "HTTP",
            "a-very-long-port-name",
        ] {
            assert!(check_port_name(bad).is_err(), "{bad:?}");
        }
    }

    fn problems_of(yaml: &str) -> Vec<String> {
        let pod: Pod = serde_yaml::from_str(yaml).expect("fixture parses");
        validate_pod(&pod, "node-a")
            .into_iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect()
    }

    #[test]
    fn volume_sources_are_checked() {
        let problems = problems_of(
            r#"
metadata: {name: web}
spec:
  containers: [{name: app, image: nginx}]
  volumes:
  - {name: none}
  - {name: two, emptyDir: {}, hostPath: {path: /tmp}}
  - {name: host, hostPath: {path: /var/../etc, type: Dir}}
  - name: conf
    configMap:
      name: ""
      defaultMode: 0o1000
      items: [{key: "", path: ../x, mode: -1}, {key: k, path: ..data}]
  - {name: creds, secret: {items: [{key: k, path: /abs}]}}
  - name: info
    downwardAPI: {items: [{path: "", fieldRef: {fieldPath: metadata.name}}]}
  - name: all
    projected:
      sources:
      - configMap: {name: c, items: [{key: k, path: a/../../b}]}
  - {name: claim, persistentVolumeClaim: {claimName: data}}
"#,
        );
        assert_eq!(
            problems,
            [
                "spec.volumes[0]: must specify a volume type",
                "spec.volumes[1]: may not specify more than 1 volume type",
                r#"spec.volumes[2].hostPath.path: invalid value "/var/../etc": must not contain '..'"#,
                r#"spec.volumes[2].hostPath.type: unsupported value "Dir": supported values: "", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice""#,
                "spec.volumes[3].configMap.name: required value",
                "spec.volumes[3].configMap.defaultMode: invalid value 0o1000: must be a number between 0 and 0777 (octal), both inclusive",
                "spec.volumes[3].configMap.items[0].key: required value",
                r#"spec.volumes[3].configMap.items[0].path: invalid value "../x": must not contain '..'"#,
                "spec.volumes[3].configMap.items[0].mode: invalid value -1: must be a number between 0 and 0777 (octal), both inclusive",
                r#"spec.volumes[3].configMap.items[1].path: invalid value "..data": must not start with '..'"#,
                "spec.volumes[4].secret.secretName: required value",
                r#"spec.volumes[4].secret.items[0].path: invalid value "/abs": must be a relative path"#,
                "spec.volumes[5].downwardAPI.items[0].path: required value",
                r#"spec.volumes[6].projected.sources[0].configMap.items[0].path: invalid value "a/../../b": must not contain '..'"#,
            ]
        );
    }

    #[test]
    fn volume_mounts_are_checked() {
        let problems = problems_of(
            "
metadata: {name: web}
spec:
  initContainers:
  - name: init
    image: busybox
    volumeMounts: [{name: nope, mountPath: /x}]
  containers:
  - name: app
    image: nginx
    volumeMounts:
    - {name: data, mountPath: /data}
    - {name: data, mountPath: /data, subPath: ../up}
    - {name: '', mountPath: ''}
    - {name: data, mountPath: /a, subPath: a, subPathExpr: $(B)}
    - {name: data, mountPath: /b, mountPropagation: Bidirectional}
    - {name: data, mountPath: /c, mountPropagation: Sideways}
  - name: priv
    image: nginx
    securityContext: {privileged: true}
    volumeMounts: [{name: data, mountPath: /data, mountPropagation: Bidirectional}]
  volumes: [{name: data, emptyDir: {}}]
",
        );
        assert_eq!(
            problems,
            [
                r#"spec.initContainers[0].volumeMounts[0].name: not found: "nope" is not in spec.volumes"#,
                r#"spec.containers[0].volumeMounts[1].mountPath: duplicate value "/data": already used by spec.containers[0].volumeMounts[0].mountPath"#,
                r#"spec.containers[0].volumeMounts[1].subPath: invalid value "../up": must not contain '..'"#,
                "spec.containers[0].volumeMounts[2].name: required value",
                "spec.containers[0].volumeMounts[2].mountPath: required value",
                r#"spec.containers[0].volumeMounts[3].subPathExpr: invalid value "$(B)": subPathExpr and subPath are mutually exclusive"#,
                "spec.containers[0].volumeMounts[4].mountPropagation: forbidden: Bidirectional mount propagation is available only to privileged containers",
                r#"spec.containers[0].volumeMounts[5].mountPropagation: unsupported value "Sideways": supported values: "None", "HostToContainer", "Bidirectional""#,
            ]
        );
    }

    #[test]
    fn static_pod_name_lowercases_the_node() {
        assert_eq!(static_pod_name("etcd", "Node-A"), "etcd-node-a");
    }
}
