//! containerd's native API, for the two things CRI lacks: the event stream (a container's
//! death seen the moment its task is gone) and importing an OCI image archive when no
//! registry is reachable.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::{
    content_client::ContentClient, events_client::EventsClient, images_client::ImagesClient,
    leases_client::LeasesClient, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, Image, InfoRequest, PublishRequest, SubscribeRequest,
    UpdateImageRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor as ContainerdDescriptor;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;
use tonic::Code;

use crate::endpoint::connect_unix;
use crate::error::CriError;
use crate::oci::{Descriptor, Layout, LayoutError};

/// The containerd namespace the CRI plugin keeps its images and containers in.
pub const CRI_NAMESPACE: &str = "k8s.io";

// The lifecycle topics bosun follows. A task's exit is followed by `/tasks/delete` once the
// runtime has reaped it; unlike `/tasks/exit`, that topic carries only containers' and
// sandboxes' own processes, never an exec'd one (a probe's every exec would wake a
// `/tasks/exit` subscriber for nothing).
const TOPIC_TASK_START: &str = "/tasks/start";
const TOPIC_TASK_DELETE: &str = "/tasks/delete";
const TOPIC_CONTAINER_DELETE: &str = "/containers/delete";
/// Topic prefix of the marker events bosun publishes to confirm a subscription.
const TOPIC_SUBSCRIBED: &str = "/bosun/subscribed";
const MARKER_TYPE: &str = "bosun.v1.SubscriptionMarker";
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
const TASK_START_TYPE: &str = "containerd.events.TaskStart";
const TASK_DELETE_TYPE: &str = "containerd.events.TaskDelete";
const CONTAINER_DELETE_TYPE: &str = "containerd.events.ContainerDelete";
const WRITE_CHUNK: usize = 1 << 20;

/// An error from containerd's native API.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// Reaching the socket failed. Retryable.
    #[error(transparent)]
    Connect(#[from] CriError),

    /// containerd refused or failed a call; retryable when `code` is Unavailable.
    #[error("containerd {call}: {message} ({code:?})")]
    Call {
        call: &'static str,
        code: Code,
        message: String,
    },

    /// The archive could not be read. Not retryable.
    #[error("image archive {path}: {source}")]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The archive's OCI layout is wrong (bad JSON, digest mismatch, unnamed image). Not
    /// retryable.
    #[error("image archive {path}: {source}")]
    Layout {
        path: PathBuf,
        #[source]
        source: LayoutError,
    },

    /// An event could not be decoded. Not retryable for that event.
    #[error("event on {topic}: cannot decode {type_url}: {source}")]
    Decode {
        topic: String,
        type_url: String,
        #[source]
        source: prost::DecodeError,
    },
}

impl ContainerdError {
    fn call(call: &'static str, status: tonic::Status) -> Self {
        ContainerdError::Call {
            call,
            code: status.code(),
            message: status.message().to_owned(),
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ContainerdError::Connect(e) => e.is_retryable(),
            ContainerdError::Call { code, .. } => {
                matches!(
                    code,
                    Code::Unavailable | Code::Aborted | Code::ResourceExhausted
                )
            }
            _ => false,
        }
    }
}

/// A change in the life of a container or pod sandbox (CRI keeps a sandbox as a containerd
/// container too, so the same events name both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifecycleEvent {
    /// The main process of `container_id` started.
    Started {
        namespace: String,
        container_id: String,
    },
    /// The main process of `container_id` exited and the runtime has reaped it.
    Exited {
        namespace: String,
        container_id: String,
        exit_status: u32,
        exited_at: Option<SystemTime>,
    },
    /// The container `container_id` was removed.
    Removed {
        namespace: String,
        container_id: String,
    },
}

/// An image written into containerd by [`ContainerdClient::import_oci_archive`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedImage {
    pub name: String,
    pub digest: String,
}

/// A client for containerd's own gRPC API on its socket.
#[derive(Clone)]
pub struct ContainerdClient {
    channel: Channel,
    socket: PathBuf,
}

impl ContainerdClient {
    /// Connects to containerd's socket (the same socket that serves CRI).
    pub async fn connect(socket: &Path) -> Result<Self, ContainerdError> {
        let channel = connect_unix(socket, Duration::from_secs(10)).await?;
        Ok(ContainerdClient {
            channel,
            socket: socket.to_path_buf(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Containers' and sandboxes' starts, exits and removals as they happen, in `namespace`
    /// (all namespaces when `None`). Exec'd processes are not reported. The stream ends when
    /// containerd goes away; the caller resubscribes and relists.
    ///
    /// When this returns, containerd has registered the subscription: no event after that
    /// moment is missed. (containerd sends a stream's headers only with its first event, so
    /// bosun publishes a marker event of its own and waits for it to come back.)
    pub async fn lifecycle_events(
        &self,
        namespace: Option<&str>,
    ) -> Result<impl Stream<Item = Result<LifecycleEvent, ContainerdError>> + use<>, ContainerdError>
    {
        let marker = format!("{TOPIC_SUBSCRIBED}/{}", unique_suffix());
        let mut filters: Vec<String> =
            [TOPIC_TASK_START, TOPIC_TASK_DELETE, TOPIC_CONTAINER_DELETE]
                .iter()
                .map(|topic| match namespace {
                    Some(ns) => format!("topic==\"{topic}\",namespace==\"{ns}\""),
                    None => format!("topic==\"{topic}\""),
                })
                .collect();
        filters.push(format!("topic==\"{marker}\""));

        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut events = EventsClient::new(self.channel.clone());
        tokio::spawn(async move {
            let mut stream = match events.subscribe(SubscribeRequest { filters }).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            loop {
                let item = match stream.message().await {
                    Ok(Some(envelope)) => Ok(envelope),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        let mut rx = tokio_stream::wrappers::ReceiverStream::new(rx);

        // Publish the marker until it comes back through our own subscription.
        let publish_ns = namespace.unwrap_or(CRI_NAMESPACE).to_owned();
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
        loop {
            self.publish_marker(&publish_ns, &marker).await?;
            match tokio::time::timeout(Duration::from_millis(50), rx.next()).await {
                Ok(Some(Ok(envelope))) if envelope.topic == marker => break,
                Ok(Some(Ok(_))) | Err(_) => {}
                Ok(Some(Err(status))) => {
                    return Err(ContainerdError::call("Events.Subscribe", status))
                }
                Ok(None) => {
                    return Err(ContainerdError::Call {
                        call: "Events.Subscribe",
                        code: Code::Unavailable,
                        message: "the event stream closed".to_owned(),
                    })
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ContainerdError::Call {
                    call: "Events.Subscribe",
                    code: Code::DeadlineExceeded,
                    message: format!("subscription not confirmed within {SUBSCRIBE_TIMEOUT:?}"),
                });
            }
        }

        Ok(rx.filter_map(|item| async move {
            let envelope = match item {
                Ok(envelope) => envelope,
                Err(status) => return Some(Err(ContainerdError::call("Events.Subscribe", status))),
            };
            lifecycle_event(envelope).transpose()
        }))
    }

    async fn publish_marker(&self, namespace: &str, topic: &str) -> Result<(), ContainerdError> {
        let request = PublishRequest {
            topic: topic.to_owned(),
            event: Some(prost_types::Any {
                type_url: MARKER_TYPE.to_owned(),
                value: Vec::new(),
            }),
        };
        EventsClient::new(self.channel.clone())
            .publish(with_namespace(request, namespace, None))
            .await
            .map(drop)
            .map_err(|s| ContainerdError::call("Events.Publish", s))
    }

    /// Imports an OCI image layout archive (a tar, optionally gzip-compressed) into
    /// `namespace`: every blob is checked against its digest, written to the content store
    /// with the garbage-collection labels containerd expects, and each image the index names
    /// is created (or updated) under its name. The CRI plugin sees the images at once; it
    /// unpacks layers when a container first uses them.
    pub async fn import_oci_archive(
        &self,
        namespace: &str,
        archive: &Path,
    ) -> Result<Vec<ImportedImage>, ContainerdError> {
        let archive_err = |source| ContainerdError::Archive {
            path: archive.to_path_buf(),
            source,
        };
        let layout_err = |source| ContainerdError::Layout {
            path: archive.to_path_buf(),
            source,
        };
        let dir = tempfile::tempdir().map_err(archive_err)?;
        unpack_archive(archive, dir.path()).map_err(archive_err)?;
        let layout = Layout::new(dir.path());
        let images = layout.images().map_err(layout_err)?;

        // A lease keeps the blobs from being collected before an image refers to them.
        let lease = self.create_lease(namespace).await?;
        let result = async {
            let mut imported = Vec::new();
            for image in &images {
                for desc in layout.closure(&image.target).map_err(layout_err)? {
                    let path = layout.verify(&desc).map_err(layout_err)?;
                    let labels = layout.gc_labels(&desc).map_err(layout_err)?;
                    self.write_blob(namespace, &lease, &desc, &path, labels)
                        .await?;
                }
                self.put_image(namespace, &lease, &image.name, &image.target)
                    .await?;
                imported.push(ImportedImage {
                    name: image.name.clone(),
                    digest: image.target.digest.clone(),
                });
            }
            Ok(imported)
        }
        .await;
        self.delete_lease(namespace, &lease).await;
        result
    }

    async fn create_lease(&self, namespace: &str) -> Result<String, ContainerdError> {
        let id = format!("bosun-import-{}", unique_suffix());
        let expire = humantime_rfc3339(SystemTime::now() + Duration::from_secs(3600));
        let request = CreateLeaseRequest {
            id: id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".to_owned(), expire)]),
        };
        LeasesClient::new(self.channel.clone())
            .create(with_namespace(request, namespace, None))
            .await
            .map_err(|s| ContainerdError::call("Leases.Create", s))?;
        Ok(id)
    }

    async fn delete_lease(&self, namespace: &str, lease: &str) {
        let request = DeleteLeaseRequest {
            id: lease.to_owned(),
            sync: false,
        };
        // The lease expires on its own within the hour; failing to delete it is harmless.
        if let Err(status) = LeasesClient::new(self.channel.clone())
            .delete(with_namespace(request, namespace, None))
            .await
        {
            tracing::debug!(lease, %status, "could not delete import lease");
        }
    }

    async fn write_blob(
        &self,
        namespace: &str,
        lease: &str,
        desc: &Descriptor,
        path: &Path,
        labels: BTreeMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let mut content = ContentClient::new(self.channel.clone());
        let present = content
            .info(with_namespace(
                InfoRequest {
                    digest: desc.digest.clone(),
                },
                namespace,
                Some(lease),
            ))
            .await;
        match present {
            Ok(_) => return Ok(()),
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(ContainerdError::call("Content.Info", status)),
        }

        let file =
            tokio::fs::File::open(path)
                .await
                .map_err(|source| ContainerdError::Archive {
                    path: path.to_path_buf(),
                    source,
                })?;
        let reference = format!("bosun-import-{}", desc.digest);
        let total = desc.size;
        let expected = desc.digest.clone();
        let labels: HashMap<String, String> = labels.into_iter().collect();
        // WRITE requests carry the bytes in order; the last request commits with the labels.
        let requests = futures::stream::unfold(
            (Some(file), 0i64, false),
            move |(file, offset, committed)| {
                let reference = reference.clone();
                let expected = expected.clone();
                let labels = labels.clone();
                async move {
                    if committed {
                        return None;
                    }
                    let mut file = file?;
                    let mut data = vec![0u8; WRITE_CHUNK];
                    let n = match file.read(&mut data).await {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::warn!(error = %e, "reading blob for import");
                            0
                        }
                    };
                    data.truncate(n);
                    let at = offset;
                    let next = offset + n as i64;
                    let last = n == 0 || next >= total;
                    let request = WriteContentRequest {
                        action: if last {
                            WriteAction::Commit
                        } else {
                            WriteAction::Write
                        } as i32,
                        r#ref: reference,
                        total,
                        expected,
                        offset: at,
                        data,
                        labels: if last { labels } else { HashMap::new() },
                    };
                    Some((request, (Some(file), next, last)))
                }
            },
        );
        let mut request = tonic::Request::new(requests);
        set_metadata(request.metadata_mut(), namespace, Some(lease));
        let responses = content.write(request).await;
        let mut responses = match responses {
            Ok(r) => r.into_inner(),
            Err(status) if status.code() == Code::AlreadyExists => return Ok(()),
            Err(status) => return Err(ContainerdError::call("Content.Write", status)),
        };
        loop {
            match responses.message().await {
                Ok(Some(response)) if response.action == WriteAction::Commit as i32 => {
                    return Ok(())
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(status) if status.code() == Code::AlreadyExists => return Ok(()),
                Err(status) => return Err(ContainerdError::call("Content.Write", status)),
            }
        }
    }

    async fn put_image(
        &self,
        namespace: &str,
        lease: &str,
        name: &str,
        target: &Descriptor,
    ) -> Result<(), ContainerdError> {
        let image = Image {
            name: name.to_owned(),
            labels: HashMap::new(),
            target: Some(ContainerdDescriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                annotations: HashMap::new(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut images = ImagesClient::new(self.channel.clone());
        let created = images
            .create(with_namespace(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                namespace,
                Some(lease),
            ))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => images
                .update(with_namespace(
                    UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    },
                    namespace,
                    Some(lease),
                ))
                .await
                .map(drop)
                .map_err(|s| ContainerdError::call("Images.Update", s)),
            Err(status) => Err(ContainerdError::call("Images.Create", status)),
        }
    }
}

/// The lifecycle event in `envelope`; `Ok(None)` for other events (such as markers).
fn lifecycle_event(
    envelope: containerd_client::types::Envelope,
) -> Result<Option<LifecycleEvent>, ContainerdError> {
    use containerd_client::events::{ContainerDelete, TaskDelete, TaskStart};
    let Some(event) = envelope.event else {
        return Ok(None);
    };
    let decode_err = |source| ContainerdError::Decode {
        topic: envelope.topic.clone(),
        type_url: event.type_url.clone(),
        source,
    };
    let namespace = envelope.namespace.clone();
    let value = event.value.as_slice();
    let decoded = match event.type_url.trim_start_matches("type.googleapis.com/") {
        TASK_START_TYPE => {
            let start = TaskStart::decode(value).map_err(decode_err)?;
            LifecycleEvent::Started {
                namespace,
                container_id: start.container_id,
            }
        }
        TASK_DELETE_TYPE => {
            let delete = TaskDelete::decode(value).map_err(decode_err)?;
            LifecycleEvent::Exited {
                namespace,
                container_id: delete.container_id,
                exit_status: delete.exit_status,
                exited_at: delete.exited_at.and_then(|t| SystemTime::try_from(t).ok()),
            }
        }
        CONTAINER_DELETE_TYPE => {
            let delete = ContainerDelete::decode(value).map_err(decode_err)?;
            LifecycleEvent::Removed {
                namespace,
                container_id: delete.id,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(decoded))
}

/// A suffix unique to this process and moment, for lease IDs and marker topics.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn with_namespace<M>(message: M, namespace: &str, lease: Option<&str>) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    set_metadata(request.metadata_mut(), namespace, lease);
    request
}

fn set_metadata(md: &mut tonic::metadata::MetadataMap, namespace: &str, lease: Option<&str>) {
    // Namespaces and lease IDs are ASCII by containerd's own rules; a value that is not is
    // left out and containerd answers with a clear error about the missing namespace.
    if let Ok(ns) = namespace.parse() {
        md.insert("containerd-namespace", ns);
    }
    if let Some(Ok(lease)) = lease.map(str::parse) {
        md.insert("containerd-lease", lease);
    }
}

/// Unpacks a tar or tar.gz into `dir`, refusing entries that would land outside it.
fn unpack_archive(archive: &Path, dir: &Path) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(std::fs::File::open(archive)?);
    let gzipped = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let input: Box<dyn std::io::Read> = if gzipped {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut tar = tar::Archive::new(input);
    for entry in tar.entries()? {
        let mut entry = entry?;
        // unpack_in refuses paths with `..` or absolute paths.
        entry.unpack_in(dir)?;
    }
    if !dir.join("index.json").exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not an OCI image layout archive (no index.json)",
        ));
    }
    Ok(())
}

/// RFC 3339 in UTC, for containerd's `gc.expire` label.
fn humantime_rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(
            humantime_rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(humantime_rfc3339(t), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn archives_without_an_index_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("x.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello", &b"hi"[..])
            .unwrap();
        builder.finish().unwrap();
        drop(builder);
        let out = tempfile::tempdir().unwrap();
        let err = unpack_archive(&tar_path, out.path()).unwrap_err();
        assert!(err.to_string().contains("no index.json"), "{err}");
    }
}
