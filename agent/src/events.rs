//! Kubernetes Events for the node: what happened to a pod (or to the node) and why, as the
//! `core/v1` `Event` objects kubelet records. With no API server to send them to, bosun keeps
//! them in memory and serves them on its local API (`bosun get events`).
//!
//! Repeats of an identical event — same involved object, type, reason and message — are folded
//! into one, as kubelet's event correlator does: its `count` grows and its `lastTimestamp`
//! moves. Memory is bounded: a [`Recorder`] keeps at most its capacity of distinct events
//! ([`DEFAULT_CAPACITY`]) and drops the one seen least recently first. Every occurrence is also
//! logged (Normal at info, Warning at warn), so the log and the events agree.
//!
//! A sink (in a cluster, the task writing events to the API server) takes every occurrence
//! from [`Recorder::subscribe`], as kubelet's event broadcaster hands them to its watchers:
//! folded, so that it can create an event once and then patch its count, through a bounded
//! queue that never blocks the recorder. When a sink falls behind by [`SINK_QUEUE`]
//! occurrences, further ones are dropped for it (and counted) until it catches up, as kubelet's
//! broadcaster drops when its queue is full.
//!
//! This module knows Events and object references. It does not decide what to record (the pod
//! worker and the daemon do) nor how they are served (`api` does) or sent on (`cluster::events`
//! does).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc::{self, error::TrySendError};

/// The `source.component` (and `reportingComponent`) of every event bosun records.
pub const COMPONENT: &str = "bosun";

/// How many distinct events a [`Recorder`] keeps unless told otherwise.
pub const DEFAULT_CAPACITY: usize = 1000;

/// How many occurrences may wait for a sink before further ones are dropped for it: kubelet's
/// `maxQueuedEvents`.
pub const SINK_QUEUE: usize = 1000;

/// An event's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened (a container started).
    Normal,
    /// Something went wrong and someone may need to look (an image pull failed).
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The reasons kubelet gives its events (`pkg/kubelet/events`), so bosun's read the same.
pub mod reason {
    // Containers.
    pub const CREATED_CONTAINER: &str = "Created";
    pub const STARTED_CONTAINER: &str = "Started";
    pub const FAILED_TO_CREATE_CONTAINER: &str = "Failed";
    pub const FAILED_TO_START_CONTAINER: &str = "Failed";
    pub const KILLING_CONTAINER: &str = "Killing";
    pub const BACK_OFF_START_CONTAINER: &str = "BackOff";
    pub const EXCEEDED_GRACE_PERIOD: &str = "ExceededGracePeriod";
    // Images.
    pub const PULLING_IMAGE: &str = "Pulling";
    pub const PULLED_IMAGE: &str = "Pulled";
    pub const FAILED_TO_PULL_IMAGE: &str = "Failed";
    pub const FAILED_TO_INSPECT_IMAGE: &str = "InspectFailed";
    pub const ERR_IMAGE_NEVER_PULL_POLICY: &str = "ErrImageNeverPull";
    pub const BACK_OFF_PULL_IMAGE: &str = "BackOff";
    // Pods and their sandboxes.
    pub const FAILED_TO_KILL_POD: &str = "FailedKillPod";
    pub const SANDBOX_CHANGED: &str = "SandboxChanged";
    pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";
    pub const FAILED_STATUS_POD_SANDBOX: &str = "FailedPodSandBoxStatus";
    pub const FAILED_SYNC: &str = "FailedSync";
    pub const FAILED_MOUNT: &str = "FailedMount";
    // Probes and lifecycle hooks.
    pub const CONTAINER_UNHEALTHY: &str = "Unhealthy";
    pub const CONTAINER_PROBE_WARNING: &str = "ProbeWarning";
    pub const FAILED_POST_START_HOOK: &str = "FailedPostStartHook";
    pub const FAILED_PRE_STOP_HOOK: &str = "FailedPreStopHook";
    // Configuration (a pod source's input) and the node itself.
    pub const FAILED_VALIDATION: &str = "FailedValidation";
    pub const STARTING: &str = "Starting";
}

/// A reference to a pod, as kubelet makes one for the pod's events.
pub fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: Some(
            pod.metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
        ),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        field_path: None,
    }
}

/// A reference to one container of a pod: the pod with a `fieldPath` such as
/// `spec.containers{app}` (kubectl's SUBOBJECT), which kubelet gives container events.
pub fn container_reference(pod: &Pod, container: &str) -> ObjectReference {
    let spec = pod.spec.as_ref();
    let named = |list: Option<&Vec<k8s_openapi::api::core::v1::Container>>| {
        list.is_some_and(|l| l.iter().any(|c| c.name == container))
    };
    let list = if named(spec.and_then(|s| s.init_containers.as_ref())) {
        "initContainers"
    } else if spec.is_some_and(|s| {
        s.ephemeral_containers
            .iter()
            .flatten()
            .any(|c| c.name == container)
    }) {
        "ephemeralContainers"
    } else {
        "containers"
    };
    ObjectReference {
        field_path: Some(format!("spec.{list}{{{container}}}")),
        ..pod_reference(pod)
    }
}

/// The current time. (bosun gets jiff through k8s-openapi, without the `std` feature that
/// gives `Timestamp::now`.)
pub fn now() -> Timestamp {
    let elapsed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(elapsed.as_secs())
        .ok()
        .and_then(|s| Timestamp::new(s, i32::try_from(elapsed.subsec_nanos()).unwrap_or(0)).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// How kubectl names an event's object in its OBJECT column: `pod/web`, `node/n1`.
pub fn short_object(involved: &ObjectReference) -> String {
    let kind = involved.kind.as_deref().unwrap_or_default().to_lowercase();
    match involved.name.as_deref() {
        Some(name) if !name.is_empty() => format!("{kind}/{name}"),
        _ => kind,
    }
}

/// Records the node's events. Clones are cheap and share one log; recording takes its one
/// lock for a moment and never across an `.await`.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    host: String,
    shared: Mutex<Shared>,
    /// Occurrences dropped because a sink's queue was full, over all sinks.
    dropped: AtomicU64,
}

/// What recording changes, under one lock: occurrences reach every sink in the order their
/// counts were given, so a sink never sees a count go back.
#[derive(Debug)]
struct Shared {
    log: EventLog,
    sinks: Vec<Sink>,
}

/// One subscriber's end of its queue.
#[derive(Debug)]
struct Sink {
    queue: mpsc::Sender<Event>,
    /// Whether the last occurrence offered was dropped: a run of drops is logged once.
    overflowing: bool,
}

impl Recorder {
    /// A recorder for the node `host` (the event's `source.host`), keeping
    /// [`DEFAULT_CAPACITY`] events.
    pub fn new(host: impl Into<String>) -> Self {
        Self::with_capacity(host, DEFAULT_CAPACITY)
    }

    /// A recorder keeping at most `capacity` distinct events (at least one).
    pub fn with_capacity(host: impl Into<String>, capacity: usize) -> Self {
        Recorder {
            inner: Arc::new(Inner {
                host: host.into(),
                shared: Mutex::new(Shared {
                    log: EventLog::new(capacity),
                    sinks: Vec::new(),
                }),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// A queue of every occurrence recorded from now on, each as the event stands after it
    /// (current `count` and `lastTimestamp`; the `metadata.name` and `firstTimestamp` of its
    /// first occurrence). Recording never waits for the receiver: when [`SINK_QUEUE`]
    /// occurrences are waiting, further ones are dropped for this receiver and counted in
    /// [`Recorder::dropped`]. Dropping the receiver unsubscribes it.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        self.subscribe_with_queue(SINK_QUEUE)
    }

    fn subscribe_with_queue(&self, queue: usize) -> mpsc::Receiver<Event> {
        let (sender, receiver) = mpsc::channel(queue.max(1));
        self.lock().sinks.push(Sink {
            queue: sender,
            overflowing: false,
        });
        receiver
    }

    /// How many occurrences were dropped because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The node's name, as given to the constructor.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The node as an event's involved object, as kubelet refers to it: kind `Node`, the
    /// node's name as name and UID, no namespace (its events go to `default`).
    pub fn node_reference(&self) -> ObjectReference {
        ObjectReference {
            kind: Some("Node".into()),
            name: Some(self.inner.host.clone()),
            uid: Some(self.inner.host.clone()),
            ..ObjectReference::default()
        }
    }

    /// Records that `reason` happened to `involved`, and logs it.
    pub fn record(
        &self,
        involved: ObjectReference,
        type_: EventType,
        reason: &str,
        message: impl Into<String>,
    ) {
        let message = message.into();
        let object = short_object(&involved);
        let namespace = involved.namespace.clone().unwrap_or_default();
        let field_path = involved.field_path.clone().unwrap_or_default();
        let count = {
            let mut guard = self.lock();
            let shared = &mut *guard;
            let event =
                shared
                    .log
                    .record(&self.inner.host, involved, type_, reason, &message, now());
            offer(&mut shared.sinks, event, &self.inner.dropped);
            event.count.unwrap_or(1)
        };
        macro_rules! log {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    object = %object,
                    namespace = %namespace,
                    field_path = %field_path,
                    reason,
                    count,
                    "{message}"
                )
            };
        }
        match type_ {
            EventType::Normal => log!(tracing::Level::INFO),
            EventType::Warning => log!(tracing::Level::WARN),
        }
    }

    /// Records a Normal event of `pod`.
    pub fn normal(&self, pod: &Pod, reason: &str, message: impl Into<String>) {
        self.record(pod_reference(pod), EventType::Normal, reason, message);
    }

    /// Records a Warning event of `pod`.
    pub fn warning(&self, pod: &Pod, reason: &str, message: impl Into<String>) {
        self.record(pod_reference(pod), EventType::Warning, reason, message);
    }

    /// Every event kept, the one seen least recently first (so in `lastTimestamp` order, to
    /// the nanosecond).
    pub fn events(&self) -> Vec<Event> {
        self.lock().log.events().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Each change to the log is a few map operations that cannot panic halfway in a way
        // that matters: keep recording rather than lose every later event.
        self.inner
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands `event` to every sink without waiting: a full queue drops it (counted in `dropped`),
/// a closed one is forgotten.
fn offer(sinks: &mut Vec<Sink>, event: &Event, dropped: &AtomicU64) {
    sinks.retain_mut(|sink| match sink.queue.try_send(event.clone()) {
        Ok(()) => {
            sink.overflowing = false;
            true
        }
        Err(TrySendError::Full(event)) => {
            dropped.fetch_add(1, Ordering::Relaxed);
            if !sink.overflowing {
                tracing::warn!(
                    event = event.metadata.name.as_deref().unwrap_or_default(),
                    queue = sink.queue.max_capacity(),
                    "an event sink is behind: dropping events for it until it catches up"
                );
            }
            sink.overflowing = true;
            true
        }
        Err(TrySendError::Closed(_)) => false,
    });
}

/// What makes two events the same one (kubelet's `getEventKey`, without the source, which is
/// one per recorder, and without the object's resourceVersion, which changes under it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    api_version: Option<String>,
    field_path: Option<String>,
    type_: Option<String>,
    reason: Option<String>,
    message: Option<String>,
}

impl Key {
    fn of(event: &Event) -> Key {
        let o = &event.involved_object;
        Key {
            kind: o.kind.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            uid: o.uid.clone(),
            api_version: o.api_version.clone(),
            field_path: o.field_path.clone(),
            type_: event.type_.clone(),
            reason: event.reason.clone(),
            message: event.message.clone(),
        }
    }
}

/// The recorder's state: a pure structure, given the time by its caller.
#[derive(Debug)]
struct EventLog {
    capacity: usize,
    /// Events by the sequence number of their last occurrence: least recently seen first.
    by_last_seen: BTreeMap<u64, Event>,
    /// Where each distinct event is in `by_last_seen`.
    index: HashMap<Key, u64>,
    next_seq: u64,
    /// The time in the last name handed out: names stay unique when the clock repeats itself.
    last_name_nanos: i128,
}

impl EventLog {
    fn new(capacity: usize) -> Self {
        EventLog {
            capacity: capacity.max(1),
            by_last_seen: BTreeMap::new(),
            index: HashMap::new(),
            next_seq: 0,
            last_name_nanos: 0,
        }
    }

    /// Records one occurrence at `now` and returns the event as it now stands.
    fn record(
        &mut self,
        host: &str,
        involved: ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
        now: Timestamp,
    ) -> &Event {
        let fresh = self.new_event(host, involved, type_, reason, message, now);
        let key = Key::of(&fresh);
        let seq = self.next_seq;
        self.next_seq += 1;
        let previous = self
            .index
            .insert(key, seq)
            .and_then(|old| self.by_last_seen.remove(&old));
        let event = match previous {
            Some(mut seen) => {
                seen.count = Some(seen.count.unwrap_or(1).saturating_add(1));
                seen.last_timestamp = Some(Time(now));
                // The newest reference carries the object's current resourceVersion.
                seen.involved_object = fresh.involved_object;
                seen
            }
            None => fresh,
        };
        self.by_last_seen.insert(seq, event);
        while self.by_last_seen.len() > self.capacity {
            if let Some((_, dropped)) = self.by_last_seen.pop_first() {
                self.index.remove(&Key::of(&dropped));
            }
        }
        // The newest entry, which capacity (at least one) kept.
        &self.by_last_seen[&seq]
    }

    /// A first occurrence, shaped as kubelet's event recorder makes it.
    fn new_event(
        &mut self,
        host: &str,
        involved: ObjectReference,
        type_: EventType,
        reason: &str,
        message: &str,
        now: Timestamp,
    ) -> Event {
        let nanos = now.as_nanosecond().max(self.last_name_nanos + 1);
        self.last_name_nanos = nanos;
        let name = format!("{}.{nanos:x}", involved.name.as_deref().unwrap_or_default());
        let namespace = involved
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into());
        let host = (!host.is_empty()).then(|| host.to_owned());
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                creation_timestamp: Some(Time(now)),
                ..ObjectMeta::default()
            },
            involved_object: involved,
            type_: Some(type_.as_str().into()),
            reason: Some(reason.into()),
            message: Some(message.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: host.clone(),
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: host,
            ..Event::default()
        }
    }

    fn events(&self) -> impl Iterator<Item = &Event> {
        self.by_last_seen.values()
    }
}

/// A `fieldSelector` over events, as the API server takes one: comma-separated
/// `field=value`, `field==value` or `field!=value` requirements, all of which must hold.
/// Values cannot contain `,` (the API server's `\,` escape is not supported).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    field: Field,
    value: String,
    equal: bool,
}

/// The fields the API server lets one select events by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    MetadataName,
    MetadataNamespace,
    ObjectKind,
    ObjectNamespace,
    ObjectName,
    ObjectUid,
    ObjectApiVersion,
    ObjectResourceVersion,
    ObjectFieldPath,
    Reason,
    ReportingComponent,
    Source,
    Type,
}

impl Field {
    fn parse(label: &str) -> Option<Field> {
        Some(match label {
            "metadata.name" => Field::MetadataName,
            "metadata.namespace" => Field::MetadataNamespace,
            "involvedObject.kind" => Field::ObjectKind,
            "involvedObject.namespace" => Field::ObjectNamespace,
            "involvedObject.name" => Field::ObjectName,
            "involvedObject.uid" => Field::ObjectUid,
            "involvedObject.apiVersion" => Field::ObjectApiVersion,
            "involvedObject.resourceVersion" => Field::ObjectResourceVersion,
            "involvedObject.fieldPath" => Field::ObjectFieldPath,
            "reason" => Field::Reason,
            "reportingComponent" => Field::ReportingComponent,
            "source" => Field::Source,
            "type" => Field::Type,
            _ => return None,
        })
    }

    fn value(self, event: &Event) -> &str {
        let o = &event.involved_object;
        let value = match self {
            Field::MetadataName => &event.metadata.name,
            Field::MetadataNamespace => &event.metadata.namespace,
            Field::ObjectKind => &o.kind,
            Field::ObjectNamespace => &o.namespace,
            Field::ObjectName => &o.name,
            Field::ObjectUid => &o.uid,
            Field::ObjectApiVersion => &o.api_version,
            Field::ObjectResourceVersion => &o.resource_version,
            Field::ObjectFieldPath => &o.field_path,
            Field::Reason => &event.reason,
            Field::ReportingComponent => &event.reporting_component,
            Field::Source => {
                return event
                    .source
                    .as_ref()
                    .and_then(|s| s.component.as_deref())
                    .unwrap_or_default()
            }
            Field::Type => &event.type_,
        };
        value.as_deref().unwrap_or_default()
    }
}

/// A `fieldSelector` that cannot be used. The caller's input is wrong: do not retry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    #[error(
        "invalid field selector requirement {requirement:?}: expected field=value or field!=value"
    )]
    Malformed { requirement: String },
    #[error("field label not supported: {field}")]
    UnsupportedField { field: String },
}

impl FieldSelector {
    /// Parses a selector; the empty string selects everything.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for requirement in selector.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (label, value, equal) = if let Some((l, v)) = requirement.split_once("!=") {
                (l, v, false)
            } else if let Some((l, v)) = requirement.split_once("==") {
                (l, v, true)
            } else if let Some((l, v)) = requirement.split_once('=') {
                (l, v, true)
            } else {
                return Err(SelectorError::Malformed {
                    requirement: requirement.to_owned(),
                });
            };
            let label = label.trim();
            let field = Field::parse(label).ok_or_else(|| SelectorError::UnsupportedField {
                field: label.to_owned(),
            })?;
            requirements.push(Requirement {
                field,
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(FieldSelector { requirements })
    }

    pub fn matches(&self, event: &Event) -> bool {
        self.requirements
            .iter()
            .all(|r| (r.field.value(event) == r.value) == r.equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).expect("a valid time")
    }

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {
                "initContainers": [{"name": "setup"}],
                "containers": [{"name": "app"}],
            },
        }))
        .expect("a valid pod")
    }

    fn record(log: &mut EventLog, object: &str, reason: &str, message: &str, second: i64) -> i32 {
        log.record(
            "node-1",
            pod_reference(&pod(object)),
            EventType::Normal,
            reason,
            message,
            at(second),
        )
        .count
        .unwrap_or_default()
    }

    fn summary(log: &EventLog) -> Vec<(String, String, i32)> {
        log.events()
            .map(|e| {
                (
                    e.involved_object.name.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.count.unwrap_or_default(),
                )
            })
            .collect()
    }

    #[test]
    fn identical_events_are_counted_once() {
        let mut log = EventLog::new(10);
        assert_eq!(record(&mut log, "web", "Pulling", "Pulling image", 0), 1);
        assert_eq!(record(&mut log, "web", "Pulling", "Pulling image", 5), 2);
        assert_eq!(record(&mut log, "web", "Pulling", "Pulling image", 9), 3);
        let events: Vec<&Event> = log.events().collect();
        assert_eq!(events.len(), 1);
        let event = events[0];
        assert_eq!(event.count, Some(3));
        assert_eq!(event.first_timestamp, Some(Time(at(0))));
        assert_eq!(event.last_timestamp, Some(Time(at(9))));
        // The name is that of the first occurrence, as kubelet keeps it.
        let first_nanos = at(0).as_nanosecond();
        assert_eq!(
            event.metadata.name.as_deref(),
            Some(format!("web.{first_nanos:x}").as_str())
        );
    }

    #[test]
    fn events_differing_in_anything_that_matters_are_kept_apart() {
        let mut log = EventLog::new(10);
        record(&mut log, "web", "Pulling", "Pulling image a", 0);
        record(&mut log, "web", "Pulling", "Pulling image b", 0);
        record(&mut log, "web", "Pulled", "Pulling image a", 0);
        record(&mut log, "db", "Pulling", "Pulling image a", 0);
        log.record(
            "node-1",
            pod_reference(&pod("web")),
            EventType::Warning,
            "Pulling",
            "Pulling image a",
            at(0),
        );
        log.record(
            "node-1",
            container_reference(&pod("web"), "app"),
            EventType::Normal,
            "Pulling",
            "Pulling image a",
            at(0),
        );
        assert_eq!(log.events().count(), 6);
        assert!(log.events().all(|e| e.count == Some(1)));
        // Names are unique even though the clock stood still.
        let mut names: Vec<_> = log.events().map(|e| e.metadata.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 6);
    }

    #[test]
    fn a_repeat_moves_the_event_to_the_end() {
        let mut log = EventLog::new(10);
        record(&mut log, "a", "Started", "m", 0);
        record(&mut log, "b", "Started", "m", 1);
        record(&mut log, "a", "Started", "m", 2);
        assert_eq!(
            summary(&log),
            [
                ("b".into(), "Started".into(), 1),
                ("a".into(), "Started".into(), 2)
            ]
        );
    }

    #[test]
    fn the_least_recently_seen_events_are_dropped_beyond_capacity() {
        let mut log = EventLog::new(3);
        record(&mut log, "a", "Started", "m", 0);
        record(&mut log, "b", "Started", "m", 1);
        record(&mut log, "c", "Started", "m", 2);
        record(&mut log, "a", "Started", "m", 3); // a is now the newest
        record(&mut log, "d", "Started", "m", 4); // b goes
        assert_eq!(
            summary(&log),
            [
                ("c".into(), "Started".into(), 1),
                ("a".into(), "Started".into(), 2),
                ("d".into(), "Started".into(), 1)
            ]
        );
        // A dropped event comes back as a new one, counted from 1.
        assert_eq!(record(&mut log, "b", "Started", "m", 5), 1);
        assert_eq!(log.index.len(), 3);
        assert_eq!(log.by_last_seen.len(), 3);
    }

    #[test]
    fn an_event_has_the_shape_kubelet_gives_it() {
        let mut log = EventLog::new(10);
        log.record(
            "node-1",
            container_reference(&pod("web"), "setup"),
            EventType::Warning,
            reason::BACK_OFF_START_CONTAINER,
            "Back-off restarting failed container",
            at(0),
        );
        let event = log.events().next().expect("one event");
        let json = serde_json::to_value(event).expect("serializable");
        let nanos = at(0).as_nanosecond();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {
                    "name": format!("web.{nanos:x}"),
                    "namespace": "default",
                    "creationTimestamp": "2023-11-14T22:13:20Z",
                },
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": "web",
                    "namespace": "default",
                    "uid": "uid-web",
                    "fieldPath": "spec.initContainers{setup}",
                },
                "type": "Warning",
                "reason": "BackOff",
                "message": "Back-off restarting failed container",
                "count": 1,
                "firstTimestamp": "2023-11-14T22:13:20Z",
                "lastTimestamp": "2023-11-14T22:13:20Z",
                "source": {"component": "bosun", "host": "node-1"},
                "reportingComponent": "bosun",
                "reportingInstance": "node-1",
            })
        );
    }

    #[test]
    fn node_events_go_to_the_default_namespace() {
        let recorder = Recorder::new("node-1");
        recorder.record(
            recorder.node_reference(),
            EventType::Warning,
            reason::FAILED_VALIDATION,
            "bad.yaml: spec.containers[0].image: required",
        );
        let events = recorder.events();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(event.involved_object.kind.as_deref(), Some("Node"));
        assert_eq!(event.involved_object.name.as_deref(), Some("node-1"));
        assert_eq!(event.involved_object.namespace, None);
        assert!(event
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("node-1.")));
        assert_eq!(short_object(&event.involved_object), "node/node-1");
    }

    #[test]
    fn clones_share_one_log() {
        let recorder = Recorder::with_capacity("node-1", 2);
        let clone = recorder.clone();
        let web = pod("web");
        recorder.normal(&web, reason::PULLING_IMAGE, "Pulling image");
        clone.normal(&web, reason::PULLING_IMAGE, "Pulling image");
        clone.warning(&web, reason::FAILED_TO_PULL_IMAGE, "no such image");
        let events = recorder.events();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].count, Some(2));
        assert_eq!(events[1].type_.as_deref(), Some("Warning"));
    }

    #[test]
    fn container_references_name_the_list_the_container_is_in() {
        let web = pod("web");
        let path = |c| container_reference(&web, c).field_path;
        assert_eq!(path("app").as_deref(), Some("spec.containers{app}"));
        assert_eq!(path("setup").as_deref(), Some("spec.initContainers{setup}"));
    }

    #[test]
    fn field_selectors_select_as_the_api_server_does() {
        let mut log = EventLog::new(10);
        record(&mut log, "web", "Pulling", "m", 0);
        record(&mut log, "db", "Started", "m", 0);
        let select = |s: &str| -> Vec<String> {
            let selector = FieldSelector::parse(s).expect("a valid selector");
            log.events()
                .filter(|e| selector.matches(e))
                .filter_map(|e| e.involved_object.name.clone())
                .collect()
        };
        assert_eq!(select(""), ["web", "db"]);
        assert_eq!(select("involvedObject.name=web"), ["web"]);
        assert_eq!(select("involvedObject.kind==Pod,reason=Started"), ["db"]);
        assert_eq!(select("involvedObject.name!=web"), ["db"]);
        assert_eq!(select("source=bosun, type=Normal"), ["web", "db"]);
        assert!(select("involvedObject.kind=Node").is_empty());

        assert_eq!(
            FieldSelector::parse("spec.nodeName=x"),
            Err(SelectorError::UnsupportedField {
                field: "spec.nodeName".into()
            })
        );
        assert!(matches!(
            FieldSelector::parse("involvedObject.name"),
            Err(SelectorError::Malformed { .. })
        ));
    }
    #[test]
    fn a_subscriber_receives_every_occurrence_folded() {
        let recorder = Recorder::new("node-1");
        let mut sink = recorder.subscribe();
        let web = pod("web");
        for _ in 0..3 {
            recorder.warning(&web, reason::BACK_OFF_PULL_IMAGE, "Back-off pulling image");
        }
        recorder.record(
            recorder.node_reference(),
            EventType::Normal,
            reason::STARTING,
            "Starting bosun.",
        );
        let received: Vec<Event> = std::iter::from_fn(|| sink.try_recv().ok()).collect();
        let counts: Vec<_> = received.iter().map(|e| e.count).collect();
        assert_eq!(counts, [Some(1), Some(2), Some(3), Some(1)]);
        // The repeats carry the first occurrence's name and firstTimestamp, so a sink can
        // patch what it created.
        let (first, third) = (&received[0], &received[2]);
        assert_eq!(first.metadata.name, third.metadata.name);
        assert_eq!(first.first_timestamp, third.first_timestamp);
        assert!(third.last_timestamp >= first.last_timestamp);
        // Each is what the recorder holds at that moment.
        assert_eq!(recorder.events()[0], *third);
        assert_eq!(received[3].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(recorder.dropped(), 0);
    }

    #[test]
    fn a_full_sink_drops_and_counts_without_blocking_the_recorder() {
        let recorder = Recorder::new("node-1");
        let mut slow = recorder.subscribe_with_queue(2);
        let mut fast = recorder.subscribe();
        let web = pod("web");
        for i in 0..5 {
            recorder.normal(&web, reason::PULLING_IMAGE, format!("Pulling image {i}"));
        }
        assert_eq!(recorder.dropped(), 3);
        let messages = |sink: &mut mpsc::Receiver<Event>| -> Vec<String> {
            std::iter::from_fn(|| sink.try_recv().ok())
                .filter_map(|e| e.message)
                .collect()
        };
        assert_eq!(messages(&mut slow), ["Pulling image 0", "Pulling image 1"]);
        // Another sink is not held back by the slow one.
        assert_eq!(messages(&mut fast).len(), 5);
        // Once it has caught up, the slow sink receives again.
        recorder.normal(&web, reason::PULLED_IMAGE, "Pulled");
        assert_eq!(messages(&mut slow), ["Pulled"]);
        assert_eq!(recorder.events().len(), 6);
    }

    #[test]
    fn a_dropped_receiver_unsubscribes() {
        let recorder = Recorder::new("node-1");
        drop(recorder.subscribe());
        let kept = recorder.subscribe();
        recorder.normal(&pod("web"), reason::PULLING_IMAGE, "Pulling image");
        assert_eq!(recorder.lock().sinks.len(), 1);
        assert_eq!(kept.len(), 1);
        assert_eq!(recorder.dropped(), 0);
    }
}
