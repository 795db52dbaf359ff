//! The event sink against the in-process fake API server: the requests the real writer
//! makes, where the inline tests use a fake writer.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use serde_json::json;

use super::run;
use crate::cluster::fake_api::FakeApi;
use crate::events::{reason, Recorder};

const EVENTS: &str = "/api/v1/namespaces/default/events";

fn web() -> Pod {
    serde_json::from_value(
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "u1"}}),
    )
    .expect("a pod")
}

/// Records one more back-off of `web` and lets the sink write it.
async fn back_off(recorder: &Recorder) {
    recorder.warning(
        &web(),
        reason::BACK_OFF_PULL_IMAGE,
        "Back-off pulling image",
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
}

fn events(fake: &FakeApi) -> Vec<Event> {
    let all = fake.list("events").into_iter();
    all.map(|e| serde_json::from_value(e).expect("an event"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_repeated_event_is_created_once_then_its_count_patched() {
    let fake = FakeApi::new();
    let recorder = Recorder::new("node-a");
    tokio::spawn(run(fake.client(), recorder.subscribe()));
    for _ in 0..3 {
        back_off(&recorder).await;
    }
    fake.until("the third occurrence", |f| {
        events(f).first().and_then(|e| e.count) == Some(3)
    })
    .await;

    let stored = events(&fake);
    assert_eq!(stored.len(), 1);
    let event = &stored[0];
    assert_eq!(event.reason.as_deref(), Some(reason::BACK_OFF_PULL_IMAGE));
    assert_eq!(event.involved_object.uid.as_deref(), Some("u1"));
    let name = event.metadata.name.clone().expect("a name");
    let path = format!("{EVENTS}/{name}");
    assert_eq!(fake.succeeded("POST", EVENTS), 1);
    assert_eq!(fake.succeeded("PATCH", &path), 2);
    let patch = fake
        .requests()
        .into_iter()
        .find(|r| r.is("PATCH", &path))
        .expect("a patch");
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");

    // Events expire; a repeat of one gone is created again.
    fake.remove("events", "default", &name);
    back_off(&recorder).await;
    fake.until("the event again", |f| !events(f).is_empty())
        .await;
    assert_eq!(events(&fake)[0].count, Some(4));
    assert_eq!(fake.succeeded("POST", EVENTS), 2);
}
