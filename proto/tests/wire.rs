//! Hand-computed encodings of fields spread over the file. Each expected byte string follows
//! from the upstream field number and type alone (tag = number << 3 | wire type), so a wrong
//! number or type in the `.proto` fails here even if the golden listing were re-blessed.

use bosun_proto::cri;
use prost::Message;

/// Asserts that `msg` encodes to exactly `bytes` and that `bytes` decode back to `msg`.
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(msg: &M, bytes: &[u8]) {
    assert_eq!(msg.encode_to_vec(), bytes, "encoding {msg:?}");
    assert_eq!(&M::decode(bytes).expect("decoding the expected bytes"), msg);
}

#[test]
fn pod_sandbox_metadata_fields_are_1_to_4() {
    let metadata = cri::PodSandboxMetadata {
        name: "a".into(),
        uid: "b".into(),
        namespace: "c".into(),
        attempt: 1,
    };
    assert_wire(
        &metadata,
        &[0x0a, 1, b'a', 0x12, 1, b'b', 0x1a, 1, b'c', 0x20, 1],
    );
}

#[test]
fn exec_sync_timeout_is_field_3_varint() {
    assert_wire(
        &cri::ExecSyncRequest {
            timeout: 5,
            ..Default::default()
        },
        &[0x18, 5],
    );
}

#[test]
fn list_containers_filter_is_field_1() {
    let request = cri::ListContainersRequest {
        filter: Some(cri::ContainerFilter {
            pod_sandbox_id: "p".into(),
            ..Default::default()
        }),
    };
    // ContainerFilter.pod_sandbox_id is field 3, nested in field 1.
    assert_wire(&request, &[0x0a, 3, 0x1a, 1, b'p']);
}

#[test]
fn container_status_log_path_is_field_15() {
    // 15 << 3 | 2 = 0x7a.
    assert_wire(
        &cri::ContainerStatus {
            log_path: "x".into(),
            ..Default::default()
        },
        &[0x7a, 1, b'x'],
    );
}

#[test]
fn container_status_stop_signal_is_field_19() {
    // 19 << 3 = 152 = varint 0x98 0x01; SIGKILL = 13.
    let status = cri::ContainerStatus {
        stop_signal: cri::Signal::Sigkill.into(),
        ..Default::default()
    };
    assert_wire(&status, &[0x98, 0x01, 13]);
}

#[test]
fn sandbox_run_as_group_is_field_8() {
    let context = cri::LinuxSandboxSecurityContext {
        run_as_group: Some(cri::Int64Value { value: 7 }),
        ..Default::default()
    };
    assert_wire(&context, &[0x42, 2, 0x08, 7]);
}

#[test]
fn container_supplemental_groups_policy_is_field_17() {
    // 17 << 3 = 136 = varint 0x88 0x01; Strict = 1.
    let context = cri::LinuxContainerSecurityContext {
        supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict.into(),
        ..Default::default()
    };
    assert_wire(&context, &[0x88, 0x01, 1]);
}

#[test]
fn image_spec_user_specified_image_is_field_18() {
    // 18 << 3 | 2 = 146 = varint 0x92 0x01.
    let spec = cri::ImageSpec {
        user_specified_image: "u".into(),
        ..Default::default()
    };
    assert_wire(&spec, &[0x92, 0x01, 1, b'u']);
}

#[test]
fn mount_recursive_read_only_and_image_sub_path_are_8_and_10() {
    let mount = cri::Mount {
        recursive_read_only: true,
        image_sub_path: "p".into(),
        ..Default::default()
    };
    assert_wire(&mount, &[0x40, 1, 0x52, 1, b'p']);
}

#[test]
fn exec_and_attach_number_stdin_and_tty_differently() {
    assert_wire(
        &cri::ExecRequest {
            stdin: true,
            ..Default::default()
        },
        &[0x20, 1],
    );
    assert_wire(
        &cri::ExecRequest {
            tty: true,
            ..Default::default()
        },
        &[0x18, 1],
    );
    assert_wire(
        &cri::AttachRequest {
            stdin: true,
            ..Default::default()
        },
        &[0x10, 1],
    );
    assert_wire(
        &cri::AttachRequest {
            tty: true,
            ..Default::default()
        },
        &[0x18, 1],
    );
}

#[test]
fn port_forward_ports_are_packed_field_2() {
    // 443 = varint 0xbb 0x03.
    let request = cri::PortForwardRequest {
        pod_sandbox_id: String::new(),
        port: vec![80, 443],
    };
    assert_wire(&request, &[0x12, 3, 80, 0xbb, 0x03]);
}

#[test]
fn pod_sandbox_status_response_timestamp_is_field_4() {
    let response = cri::PodSandboxStatusResponse {
        timestamp: 9,
        ..Default::default()
    };
    assert_wire(&response, &[0x20, 9]);
}

#[test]
fn psi_avg10_is_field_2_double() {
    let data = cri::PsiData {
        avg10: 1.0,
        ..Default::default()
    };
    let mut expected = vec![0x11];
    expected.extend_from_slice(&1.0f64.to_le_bytes());
    assert_wire(&data, &expected);
}

#[test]
fn container_event_type_is_field_2() {
    let event = cri::ContainerEventResponse {
        container_event_type: cri::ContainerEventType::ContainerDeletedEvent.into(),
        ..Default::default()
    };
    assert_wire(&event, &[0x10, 3]);
}

#[test]
fn image_size_is_field_4_uint64() {
    assert_wire(
        &cri::Image {
            size: 300,
            ..Default::default()
        },
        &[0x20, 0xac, 0x02],
    );
}
