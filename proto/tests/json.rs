//! `to_json` renders messages as `crictl -o json` does.

use std::collections::HashMap;

use bosun_proto::{cri, to_json};
use serde_json::json;

#[test]
fn pod_sandbox_renders_like_crictl() {
    let sandbox = cri::PodSandbox {
        id: "p1".into(),
        metadata: Some(cri::PodSandboxMetadata {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        state: cri::PodSandboxState::SandboxReady.into(),
        created_at: 123,
        labels: HashMap::from([("app".to_owned(), "web".to_owned())]),
        annotations: HashMap::new(),
        runtime_handler: String::new(),
    };
    let rendered = to_json(&sandbox).expect("PodSandbox is a runtime.v1 message");
    // The zero enum value, zero integers, empty strings and empty maps are shown, as crictl does.
    assert_eq!(
        rendered,
        json!({
            "id": "p1",
            "metadata": {"name": "web", "uid": "u1", "namespace": "default", "attempt": 0},
            "state": "SANDBOX_READY",
            "createdAt": "123",
            "labels": {"app": "web"},
            "annotations": {},
            "runtimeHandler": "",
        })
    );
}

#[test]
fn unset_messages_are_omitted_and_odd_names_keep_their_json_names() {
    let status = cri::ContainerStatus {
        state: cri::ContainerState::ContainerExited.into(),
        exit_code: 137,
        finished_at: 5,
        mounts: vec![cri::Mount {
            uid_mappings: vec![cri::IdMapping {
                host_id: 1000,
                container_id: 0,
                length: 1,
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let rendered = to_json(&status).expect("ContainerStatus is a runtime.v1 message");
    let object = rendered
        .as_object()
        .expect("a message renders as a JSON object");
    for unset in ["metadata", "image", "resources", "user"] {
        assert!(
            !object.contains_key(unset),
            "{unset} is unset and must be omitted: {rendered}"
        );
    }
    assert_eq!(rendered["state"], "CONTAINER_EXITED");
    assert_eq!(rendered["exitCode"], 137);
    assert_eq!(rendered["finishedAt"], "5");
    assert_eq!(rendered["startedAt"], "0");
    assert_eq!(rendered["logPath"], "");
    assert_eq!(rendered["stopSignal"], "RUNTIME_DEFAULT");
    assert_eq!(rendered["mounts"][0]["uidMappings"][0]["hostId"], 1000);
    assert_eq!(rendered["mounts"][0]["gidMappings"], json!([]));
    assert_eq!(rendered["mounts"][0]["propagation"], "PROPAGATION_PRIVATE");

    let config = cri::ContainerConfig {
        cdi_devices: vec![cri::CdiDevice {
            name: "vendor.com/gpu=0".into(),
        }],
        ..Default::default()
    };
    let rendered = to_json(&config).expect("ContainerConfig is a runtime.v1 message");
    assert_eq!(
        rendered["CDIDevices"],
        json!([{"name": "vendor.com/gpu=0"}])
    );
}

#[test]
fn wrapped_uint64_renders_as_string() {
    let usage = cri::MemoryUsage {
        timestamp: 1,
        working_set_bytes: Some(cri::UInt64Value { value: 4096 }),
        ..Default::default()
    };
    let rendered = to_json(&usage).expect("MemoryUsage is a runtime.v1 message");
    assert_eq!(
        rendered,
        json!({"timestamp": "1", "workingSetBytes": {"value": "4096"}})
    );
}
