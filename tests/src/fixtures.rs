//! CRI configs for the pods and containers tests run on a [`TestNode`]: sandboxes under the
//! node's cgroup parent with a log directory in the node's directory, busybox containers.

use std::collections::HashMap;
use std::path::PathBuf;

use bosun_cri::api;

use crate::images::BUSYBOX_IMAGE;
use crate::node::TestNode;

/// A pod sandbox config named `name` in namespace `default`, on the node's CNI network,
/// with its cgroups under the node's cgroup parent (so the node's cleanup finds them).
pub fn sandbox_config(node: &TestNode, name: &str) -> api::PodSandboxConfig {
    let uid = format!("uid-{name}");
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.clone(),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        hostname: name.to_owned(),
        log_directory: log_directory(node, name).display().to_string(),
        labels: HashMap::from([("app".to_owned(), name.to_owned())]),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/pod-{uid}", node.cgroup_parent()),
            security_context: Some(api::LinuxSandboxSecurityContext::default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Where a sandbox made by [`sandbox_config`] keeps its containers' logs.
pub fn log_directory(node: &TestNode, pod_name: &str) -> PathBuf {
    node.dir().join("pods").join(pod_name)
}

/// A busybox container running `sh -c script`, logging to `NAME/0.log` in the sandbox's log
/// directory.
pub fn busybox_container(name: &str, script: &str) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(bosun_cri::image_spec(BUSYBOX_IMAGE)),
        command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("container".to_owned(), name.to_owned())]),
        // As kubelet sets it: the container has its own PID namespace (PID 1 is its own
        // process, not the pause process), and shares the pod's network and IPC.
        linux: Some(api::LinuxContainerConfig {
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A script that prints a line on each stream, then waits, exiting 0 on SIGTERM
/// (PID 1 ignores SIGTERM unless it traps it).
pub const SERVE_FOREVER: &str =
    "echo hello-stdout; echo hello-stderr >&2; trap 'exit 0' TERM; while true; do sleep 1; done";
