//! The node's events reach a real API server (kube-apiserver 1.20.2 started by
//! `scripts/control-plane.sh`) with the node identity `system:node:node1`: a repeated pod event
//! is created once and its count patched, and the Node's event lands in `default`.

use std::time::Duration;

use anyhow::{Context, Result};
use bosun::events::{reason, EventType, Recorder};
use bosun_tests::cluster::wait_for;
use bosun_tests::control_plane::{self, ControlPlane};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

const NODE: &str = "node1";

async fn node_client(plane: &ControlPlane) -> Result<kube::Client> {
    let path = plane.node_kubeconfig(NODE).await?;
    let kubeconfig =
        Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the node's kubeconfig")?;
    kube::Client::try_from(config).context("building the node's client")
}

/// The events whose involved object is `kind`/`name`.
fn events_of<'a>(list: &'a Value, kind: &str, name: &str) -> Vec<&'a Value> {
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name)
        .collect()
}

#[tokio::test]
async fn events_are_created_and_their_repeats_patched_with_the_node_identity() -> Result<()> {
    control_plane::require();
    let plane = ControlPlane::start("events").await?;
    let client = node_client(&plane).await?;
    let recorder = Recorder::new(NODE);
    let sink = tokio::spawn(bosun::cluster::events::run(client, recorder.subscribe()));

    // The pod need not exist: kubelet records events of pods it is still admitting.
    let pod = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: Some("0b5c7d3e-0000-4000-8000-000000000001".into()),
        ..ObjectReference::default()
    };
    for _ in 0..3 {
        recorder.record(
            pod.clone(),
            EventType::Warning,
            reason::BACK_OFF_PULL_IMAGE,
            "Back-off pulling image \"nonexistent:latest\"",
        );
        // Apart, so that the repeats reach the API server as patches rather than folded into
        // one create, and the last lands in a later second than the first (timestamps are
        // whole seconds).
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    recorder.record(
        recorder.node_reference(),
        EventType::Normal,
        reason::STARTING,
        "Starting bosun.",
    );

    let list = wait_for(&plane, &["events", "-A"], Duration::from_secs(30), |list| {
        let pod_events = events_of(list, "Pod", "web");
        pod_events.len() == 1
            && pod_events[0]["count"] == 3
            && events_of(list, "Node", NODE).len() == 1
    })
    .await?;

    let pod_event = events_of(&list, "Pod", "web")[0];
    assert_eq!(pod_event["metadata"]["namespace"], "default");
    assert_eq!(pod_event["type"], "Warning");
    assert_eq!(pod_event["reason"], "BackOff");
    assert_eq!(pod_event["source"]["component"], "bosun");
    assert_eq!(pod_event["source"]["host"], NODE);
    assert_ne!(
        pod_event["firstTimestamp"], pod_event["lastTimestamp"],
        "the repeats did not move lastTimestamp: {pod_event:#}"
    );
    let recorded = &recorder.events()[0];
    assert_eq!(
        pod_event["metadata"]["name"].as_str(),
        recorded.metadata.name.as_deref(),
        "the API server's event is not the recorder's"
    );

    let node_event = events_of(&list, "Node", NODE)[0];
    assert_eq!(node_event["metadata"]["namespace"], "default");
    assert_eq!(node_event["type"], "Normal");
    assert_eq!(node_event["reason"], "Starting");
    assert_eq!(node_event["count"], 1);
    assert_eq!(node_event["source"]["component"], "bosun");
    assert_eq!(node_event["source"]["host"], NODE);

    // Once the event exists, a repeat can only reach it as a patch.
    recorder.record(
        pod,
        EventType::Warning,
        reason::BACK_OFF_PULL_IMAGE,
        "Back-off pulling image \"nonexistent:latest\"",
    );
    let list = wait_for(&plane, &["events", "-A"], Duration::from_secs(30), |list| {
        events_of(list, "Pod", "web").first().map(|e| &e["count"]) == Some(&Value::from(4))
    })
    .await?;
    assert_eq!(
        events_of(&list, "Pod", "web")[0]["metadata"]["uid"],
        pod_event["metadata"]["uid"],
        "the repeat was created anew, not patched"
    );
    assert_eq!(recorder.dropped(), 0);

    // The sink ends with the recorder.
    drop(recorder);
    tokio::time::timeout(Duration::from_secs(10), sink)
        .await
        .context("the sink outlived its recorder")??;
    plane.shutdown().await
}
