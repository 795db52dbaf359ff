//! The node's events to the API server: what kubelet's event broadcaster does with its sink
//! (client-go `tools/record`: `recordToSink`, `recordEvent` and `EventSinkImpl`). The
//! [`Recorder`](crate::events::Recorder) has already folded repeats, so each occurrence
//! arrives with its event's current `count` and the name of its first occurrence:
//!
//! - an event not yet created from here is created in its own namespace (that of its involved
//!   object; `default` for the Node's, as kubelet's are);
//! - a repeat of one created from here is patched: `count`, `lastTimestamp` and `message`,
//!   the strategic merge patch kubelet's correlator makes. If the patch answers 404 (events
//!   expire after an hour) it is created again; if a create answers 409 (an earlier try whose
//!   answer was lost) it is patched.
//!
//! Requests are rate-limited as kubelet's event client is: a token bucket of `eventBurst`
//! (10) refilled at `eventRecordQPS` (5 a second). Occurrences beyond the rate wait in the
//! recorder's bounded queue, which drops rather than block a pod worker; occurrences of one
//! event waiting together are written once, with the latest count.
//!
//! A write that fails for a reason that may pass (5xx, 429, no connection) is tried again after
//! 1, 2, 4, 8 and 10 s, [`MAX_TRIES`] times in all (about 25 s, long enough to ride out an API
//! server restart; client-go tries 12 times 10 s apart, holding every later event for two
//! minutes), then dropped with a log line. One the API server refused (403, 422) is dropped
//! at once: asking again gets the same answer. Events are best effort, as in kubelet: a pod
//! never waits for one.
//!
//! The node identity may do all this: the Node authorizer lets `system:node:NAME` create,
//! patch and update events in any namespace (`NodeRules` in the RBAC bootstrap policy).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::util::error_chain;

/// kubelet's `eventRecordQPS`: requests a second once the burst is spent.
pub const EVENT_RECORD_QPS: f64 = 5.0;
/// kubelet's `eventBurst`: requests sent at once after a quiet spell.
pub const EVENT_BURST: u32 = 10;
/// How many times one occurrence is tried before it is dropped.
pub const MAX_TRIES: u32 = 6;
/// The wait before the second try; each later one doubles, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
/// client-go's wait between two tries of an event.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);
/// How many events created from here are remembered, to patch rather than create their
/// repeats (client-go's correlator keeps as many). One forgotten costs a 409 and a patch.
const CREATED_CAPACITY: usize = 4096;
/// How many occurrences are taken from the recorder's queue to fold before writing: as many
/// again as it holds.
const PENDING_CAPACITY: usize = crate::events::SINK_QUEUE;

/// Writes the occurrences of `events` (from [`crate::events::Recorder::subscribe`]) to the
/// API server until the recorder is gone.
pub async fn run(client: kube::Client, events: mpsc::Receiver<Event>) {
    Sink::new(ApiWriter { client }, Instant::now())
        .run(events)
        .await;
}

/// The two calls the sink makes: the API server, or a fake in the tests.
trait Writer {
    /// Creates `event` in its namespace.
    async fn create(&mut self, event: &Event) -> Result<(), kube::Error>;
    /// Patches the `count`, `lastTimestamp` and `message` of `event`.
    async fn patch(&mut self, event: &Event) -> Result<(), kube::Error>;
}

struct ApiWriter {
    client: kube::Client,
}

impl ApiWriter {
    fn api(&self, event: &Event) -> Api<Event> {
        Api::namespaced(self.client.clone(), &EventName::of(event).namespace)
    }
}

impl Writer for ApiWriter {
    async fn create(&mut self, event: &Event) -> Result<(), kube::Error> {
        let mut event = event.clone();
        event.metadata.resource_version = None;
        self.api(&event)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }

    async fn patch(&mut self, event: &Event) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "count": event.count,
            "lastTimestamp": event.last_timestamp,
            "message": event.message,
        });
        self.api(event)
            .patch(
                &EventName::of(event).name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map(drop)
    }
}

/// An event's namespace and name, which the recorder keeps for all its occurrences.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EventName {
    namespace: String,
    name: String,
}

impl EventName {
    fn of(event: &Event) -> EventName {
        EventName {
            namespace: event
                .metadata
                .namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into()),
            name: event.metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// Whether asking again may get another answer.
fn retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        // The request itself cannot be made.
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) | kube::Error::HttpError(_) => {
            false
        }
        // No connection, a timeout, TLS: the API server may be back soon.
        _ => true,
    }
}

fn is_api(error: &kube::Error, what: fn(&kube::core::Status) -> bool) -> bool {
    matches!(error, kube::Error::Api(status) if what(status))
}

/// A token bucket (client-go's `flowcontrol.NewTokenBucketRateLimiter`, which kubelet's event
/// client gets): `burst` tokens at first, refilled at `qps` a second up to `burst`.
#[derive(Debug)]
struct TokenBucket {
    qps: f64,
    burst: f64,
    /// Below zero when tokens were taken ahead: the waiters' debt.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. `qps` must be positive.
    fn new(qps: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            qps,
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            updated: now,
        }
    }

    /// Takes a token at `now`, and says how long its taker must wait before using it.
    fn take(&mut self, now: Instant) -> Duration {
        let now = now.max(self.updated);
        let refilled = now.duration_since(self.updated).as_secs_f64() * self.qps;
        self.tokens = (self.tokens + refilled).min(self.burst) - 1.0;
        self.updated = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }

    /// Waits for a token.
    async fn acquire(&mut self) {
        let wait = self.take(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Occurrences taken from the queue and not yet written, oldest first; a newer occurrence of
/// an event waiting replaces it where it stands.
#[derive(Debug, Default)]
struct Pending {
    by_arrival: BTreeMap<u64, Event>,
    index: HashMap<EventName, u64>,
    next: u64,
}

impl Pending {
    fn push(&mut self, event: Event) {
        let name = EventName::of(&event);
        match self.index.get(&name) {
            Some(seq) => {
                self.by_arrival.insert(*seq, event);
            }
            None => {
                self.index.insert(name, self.next);
                self.by_arrival.insert(self.next, event);
                self.next += 1;
            }
        }
    }

    /// Takes what is waiting in `queue` without waiting, up to [`PENDING_CAPACITY`].
    fn fill_from(&mut self, queue: &mut mpsc::Receiver<Event>) {
        while self.by_arrival.len() < PENDING_CAPACITY {
            match queue.try_recv() {
                Ok(event) => self.push(event),
                Err(_) => break,
            }
        }
    }

    fn pop(&mut self) -> Option<Event> {
        let (_, event) = self.by_arrival.pop_first()?;
        self.index.remove(&EventName::of(&event));
        Some(event)
    }

    /// Takes a waiting occurrence of the event `name`.
    fn take(&mut self, name: &EventName) -> Option<Event> {
        let seq = self.index.remove(name)?;
        self.by_arrival.remove(&seq)
    }

    fn is_empty(&self) -> bool {
        self.by_arrival.is_empty()
    }
}

/// The events created from here, the oldest forgotten first beyond [`CREATED_CAPACITY`].
#[derive(Debug, Default)]
struct Created {
    names: HashSet<EventName>,
    order: VecDeque<EventName>,
}

impl Created {
    fn contains(&self, name: &EventName) -> bool {
        self.names.contains(name)
    }

    fn insert(&mut self, name: EventName) {
        if self.names.insert(name.clone()) {
            self.order.push_back(name);
        }
        while self.order.len() > CREATED_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.names.remove(&old);
            }
        }
    }
}

struct Sink<W> {
    writer: W,
    limiter: TokenBucket,
    created: Created,
    pending: Pending,
}

impl<W: Writer> Sink<W> {
    fn new(writer: W, now: Instant) -> Self {
        Sink {
            writer,
            limiter: TokenBucket::new(EVENT_RECORD_QPS, EVENT_BURST, now),
            created: Created::default(),
            pending: Pending::default(),
        }
    }

    /// Writes what arrives until the queue is closed and drained.
    async fn run(mut self, mut queue: mpsc::Receiver<Event>) {
        loop {
            if self.pending.is_empty() {
                match queue.recv().await {
                    Some(event) => self.pending.push(event),
                    None => return,
                }
            }
            self.pending.fill_from(&mut queue);
            if let Some(event) = self.pending.pop() {
                self.write(event, &mut queue).await;
            }
        }
    }

    /// Writes one occurrence, trying again while that may help.
    async fn write(&mut self, mut event: Event, queue: &mut mpsc::Receiver<Event>) {
        let name = EventName::of(&event);
        let mut delay = FIRST_RETRY_DELAY;
        for tries in 1..=MAX_TRIES {
            let error = match self.write_once(&event, &name).await {
                Ok(()) => return,
                Err(error) => error,
            };
            let log = |outcome: &str| {
                tracing::warn!(
                    namespace = %name.namespace,
                    event = %name.name,
                    reason = event.reason.as_deref().unwrap_or_default(),
                    count = event.count.unwrap_or(1),
                    tries,
                    error = %error_chain(&error),
                    "writing an event to the API server: {outcome}"
                );
            };
            if !retryable(&error) {
                return log("refused; dropped");
            }
            if tries == MAX_TRIES {
                return log("failed too often; dropped");
            }
            log("failed; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            // A newer occurrence that arrived meanwhile is written in its place.
            self.pending.fill_from(queue);
            if let Some(newer) = self.pending.take(&name) {
                event = newer;
            }
        }
    }

    /// One try: create, or patch what was created from here.
    async fn write_once(&mut self, event: &Event, name: &EventName) -> Result<(), kube::Error> {
        if self.created.contains(name) {
            self.limiter.acquire().await;
            match self.writer.patch(event).await {
                Err(e) if is_api(&e, kube::core::Status::is_not_found) => {
                    tracing::debug!(event = %name.name, "event gone from the API server; creating it again");
                }
                done => return done,
            }
        }
        self.limiter.acquire().await;
        match self.writer.create(event).await {
            Err(e) if is_api(&e, kube::core::Status::is_already_exists) => {
                self.limiter.acquire().await;
                self.writer.patch(event).await?;
            }
            done => done?,
        }
        self.created.insert(name.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::{Arc, Mutex};

    use crate::events::{reason, EventType, Recorder};

    #[test]
    fn the_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(5.0, 10, start);
        for _ in 0..10 {
            assert_eq!(bucket.take(start), Duration::ZERO);
        }
        // Taken ahead: the n-th beyond the burst waits n fifths of a second.
        let waits: Vec<_> = (0..3).map(|_| bucket.take(start).as_millis()).collect();
        assert_eq!(waits, [200, 400, 600]);
        // Once the debt is paid and a second more has passed, five are free again, no more.
        let later = start + Duration::from_millis(1600);
        for _ in 0..5 {
            assert_eq!(bucket.take(later), Duration::ZERO);
        }
        assert_eq!(bucket.take(later).as_millis(), 200);
        // A long quiet spell refills to the burst only.
        let much_later = later + Duration::from_secs(3600);
        for _ in 0..10 {
            assert_eq!(bucket.take(much_later), Duration::ZERO);
        }
        assert!(bucket.take(much_later) > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn acquiring_waits_at_the_rate_in_paused_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(EVENT_RECORD_QPS, EVENT_BURST, start);
        let mut at = Vec::new();
        for _ in 0..20 {
            bucket.acquire().await;
            at.push((Instant::now() - start).as_millis());
        }
        assert_eq!(at[..10], [0; 10]);
        assert_eq!(
            at[10..],
            [200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000]
        );
    }

    /// One call the fake saw: `create` or `patch`, the event's name and count, and when.
    #[derive(Clone, Debug, PartialEq)]
    struct Call {
        op: &'static str,
        name: String,
        count: i32,
        at_ms: u128,
    }

    /// Records calls and answers from a script (then `Ok`).
    #[derive(Clone)]
    struct FakeWriter {
        start: Instant,
        calls: Arc<Mutex<Vec<Call>>>,
        answers: Arc<Mutex<VecDeque<Result<(), kube::Error>>>>,
    }

    impl FakeWriter {
        fn new(answers: Vec<Result<(), kube::Error>>) -> Self {
            FakeWriter {
                start: Instant::now(),
                calls: Arc::default(),
                answers: Arc::new(Mutex::new(answers.into())),
            }
        }

        fn call(&self, op: &'static str, event: &Event) -> Result<(), kube::Error> {
            self.calls.lock().unwrap().push(Call {
                op,
                name: event.metadata.name.clone().unwrap_or_default(),
                count: event.count.unwrap_or_default(),
                at_ms: (Instant::now() - self.start).as_millis(),
            });
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }

        fn calls(&self) -> Vec<(&'static str, i32)> {
            let calls = self.calls.lock().unwrap();
            calls.iter().map(|c| (c.op, c.count)).collect()
        }
    }

    impl Writer for FakeWriter {
        async fn create(&mut self, event: &Event) -> Result<(), kube::Error> {
            self.call("create", event)
        }

        async fn patch(&mut self, event: &Event) -> Result<(), kube::Error> {
            self.call("patch", event)
        }
    }

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("from the fake", reason)
                .with_code(code)
                .boxed(),
        )
    }

    fn warn(recorder: &Recorder, name: &str) {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
        }))
        .unwrap();
        recorder.warning(&pod, reason::BACK_OFF_PULL_IMAGE, "Back-off pulling image");
    }

    /// Runs a sink over what `record` records, to the end.
    async fn sink(writer: &FakeWriter, record: impl FnOnce(&Recorder)) {
        let recorder = Recorder::new("node-1");
        let queue = recorder.subscribe();
        record(&recorder);
        drop(recorder);
        Sink::new(writer.clone(), Instant::now()).run(queue).await;
    }

    /// Runs a sink while `record` records, waiting out writes between occurrences.
    async fn sink_while(writer: &FakeWriter, record: impl AsyncFnOnce(&Recorder)) {
        let recorder = Recorder::new("node-1");
        let task =
            tokio::spawn(Sink::new(writer.clone(), Instant::now()).run(recorder.subscribe()));
        record(&recorder).await;
        drop(recorder);
        task.await.unwrap();
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeat_is_patched_and_recreated_if_gone() {
        let writer = FakeWriter::new(vec![Ok(()), Ok(()), Err(api_error(404, "NotFound"))]);
        sink_while(&writer, async |recorder| {
            for _ in 0..3 {
                warn(recorder, "web");
                settle().await;
            }
        })
        .await;
        assert_eq!(
            writer.calls(),
            [("create", 1), ("patch", 2), ("patch", 3), ("create", 3)]
        );
        let calls = writer.calls.lock().unwrap();
        assert!(calls.iter().all(|c| c.name == calls[0].name));
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_that_exists_already_is_patched() {
        let writer = FakeWriter::new(vec![Err(api_error(409, "AlreadyExists"))]);
        sink(&writer, |recorder| warn(recorder, "web")).await;
        assert_eq!(writer.calls(), [("create", 1), ("patch", 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn occurrences_waiting_together_are_written_once() {
        let writer = FakeWriter::new(vec![]);
        sink(&writer, |recorder| {
            for name in ["a", "b", "a", "a"] {
                warn(recorder, name);
            }
        })
        .await;
        assert_eq!(writer.calls(), [("create", 3), ("create", 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_backoff_then_dropped() {
        let unavailable = || Err(api_error(503, "ServiceUnavailable"));
        let mut answers = vec![unavailable(), unavailable(), Ok(())];
        answers.extend((0..MAX_TRIES).map(|_| unavailable()));
        let writer = FakeWriter::new(answers);
        sink(&writer, |recorder| {
            warn(recorder, "web");
            warn(recorder, "db");
        })
        .await;
        let calls = writer.calls.lock().unwrap();
        let at: Vec<_> = calls
            .iter()
            .map(|c| (c.name.starts_with("db."), c.at_ms))
            .collect();
        // "web" succeeds at the third try, after 1 s and 2 s; "db" is tried MAX_TRIES times
        // (1, 2, 4, 8 and 10 s apart), then dropped.
        assert_eq!(
            at,
            [
                (false, 0),
                (false, 1000),
                (false, 3000),
                (true, 3000),
                (true, 4000),
                (true, 6000),
                (true, 10000),
                (true, 18000),
                (true, 28000),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_event_is_dropped_at_once() {
        let writer = FakeWriter::new(vec![Err(api_error(403, "Forbidden"))]);
        sink(&writer, |recorder| {
            warn(recorder, "web");
            warn(recorder, "db");
        })
        .await;
        assert_eq!(writer.calls(), [("create", 1), ("create", 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_beyond_the_burst_wait_at_the_rate() {
        let writer = FakeWriter::new(vec![]);
        sink(&writer, |recorder| {
            for i in 0..20 {
                recorder.record(
                    recorder.node_reference(),
                    EventType::Normal,
                    reason::STARTING,
                    format!("start {i}"),
                );
            }
        })
        .await;
        let calls = writer.calls.lock().unwrap();
        let at: Vec<_> = calls.iter().map(|c| c.at_ms).collect();
        assert_eq!(at[..10], [0; 10]);
        assert_eq!(at[19], 2000);
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod events_tests;
