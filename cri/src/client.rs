//! The CRI v1 client: RuntimeService and ImageService over one unix-socket channel.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bosun_proto::runtime::v1 as api;
use bosun_proto::runtime::v1::image_service_client::ImageServiceClient;
use bosun_proto::runtime::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;
use tonic::Code;

use crate::brief;
use crate::endpoint::{connect_unix, socket_path};
use crate::error::CriError;

/// The CRI API version bosun speaks, as sent in `VersionRequest.version`.
pub const CRI_API_VERSION: &str = "v1";

/// A connected CRI client. Cloning is cheap: clones share the channel.
///
/// Every call is bounded by the client's timeout (also sent to the runtime as the gRPC
/// deadline); calls that legitimately take longer (pulls, exec with its own timeout) say so.
#[derive(Clone, Debug)]
pub struct CriClient {
    endpoint: String,
    socket: PathBuf,
    timeout: Duration,
    runtime: RuntimeServiceClient<Channel>,
    image: ImageServiceClient<Channel>,
    /// The channel both clients use, for the calls that decode a narrower answer.
    channel: Channel,
    version: api::VersionResponse,
}

impl CriClient {
    /// Connects to `endpoint` and negotiates the API version: the runtime must answer
    /// `Version` on `runtime.v1` (as kubelet requires), else [`CriError::UnsupportedApi`].
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Self, CriError> {
        let socket = socket_path(endpoint)?;
        let channel = connect_unix(&socket, timeout).await?;
        let mut runtime = RuntimeServiceClient::new(channel.clone());
        let request = with_deadline(
            api::VersionRequest {
                version: CRI_API_VERSION.to_owned(),
            },
            timeout,
        );
        let version = match bounded("Version", timeout, runtime.version(request)).await {
            Ok(version) => version,
            Err(CriError::Unimplemented { .. }) => {
                return Err(CriError::UnsupportedApi {
                    endpoint: endpoint.to_owned(),
                    message: "Version is not implemented on runtime.v1".to_owned(),
                })
            }
            Err(other) => return Err(other),
        };
        Ok(CriClient {
            endpoint: endpoint.to_owned(),
            socket,
            timeout,
            runtime,
            image: ImageServiceClient::new(channel.clone()),
            channel,
            version,
        })
    }

    /// The endpoint this client was connected to, as given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The runtime's unix socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The deadline applied to each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What the runtime answered to `Version` when the client connected.
    pub fn version(&self) -> &api::VersionResponse {
        &self.version
    }

    /// Runs one unary call on the runtime service with this client's deadline.
    async fn runtime_call<M, T, F, Fut>(
        &self,
        call: &'static str,
        message: M,
        f: F,
    ) -> Result<T, CriError>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.runtime_call_within(call, self.timeout, message, f)
            .await
    }

    async fn runtime_call_within<M, T, F, Fut>(
        &self,
        call: &'static str,
        timeout: Duration,
        message: M,
        f: F,
    ) -> Result<T, CriError>
    where
        F: FnOnce(RuntimeServiceClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let request = with_deadline(message, timeout);
        bounded(call, timeout, f(self.runtime.clone(), request)).await
    }

    async fn image_call<M, T, F, Fut>(
        &self,
        call: &'static str,
        timeout: Duration,
        message: M,
        f: F,
    ) -> Result<T, CriError>
    where
        F: FnOnce(ImageServiceClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let request = with_deadline(message, timeout);
        bounded(call, timeout, f(self.image.clone(), request)).await
    }

    // ---- runtime: status -------------------------------------------------------------

    /// `Version` again (the answer cached at connect is in [`CriClient::version`]).
    pub async fn query_version(&self) -> Result<api::VersionResponse, CriError> {
        let message = api::VersionRequest {
            version: CRI_API_VERSION.to_owned(),
        };
        self.runtime_call(
            "Version",
            message,
            |mut c, r| async move { c.version(r).await },
        )
        .await
    }

    /// `Status`: the runtime's conditions; `verbose` adds the runtime's own info map.
    pub async fn status(&self, verbose: bool) -> Result<api::StatusResponse, CriError> {
        let message = api::StatusRequest { verbose };
        self.runtime_call(
            "Status",
            message,
            |mut c, r| async move { c.status(r).await },
        )
        .await
    }

    // ---- runtime: pod sandboxes -------------------------------------------------------

    /// `RunPodSandbox`: creates and starts a sandbox, returning its ID. Sandboxes set up
    /// networking and may take several seconds, so this call gets at least 4 minutes, as
    /// kubelet allows.
    pub async fn run_pod_sandbox(
        &self,
        config: api::PodSandboxConfig,
        runtime_handler: &str,
    ) -> Result<String, CriError> {
        let message = api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: runtime_handler.to_owned(),
        };
        let timeout = self.timeout.max(Duration::from_secs(240));
        self.runtime_call_within("RunPodSandbox", timeout, message, |mut c, r| async move {
            c.run_pod_sandbox(r).await
        })
        .await
        .map(|r| r.pod_sandbox_id)
    }

    /// `StopPodSandbox`: stops every container of the sandbox and tears down its network.
    pub async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let message = api::StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_owned(),
        };
        self.runtime_call("StopPodSandbox", message, |mut c, r| async move {
            c.stop_pod_sandbox(r).await
        })
        .await
        .map(drop)
    }

    /// `RemovePodSandbox`: removes a sandbox and its containers.
    pub async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let message = api::RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.to_owned(),
        };
        self.runtime_call("RemovePodSandbox", message, |mut c, r| async move {
            c.remove_pod_sandbox(r).await
        })
        .await
        .map(drop)
    }

    /// `PodSandboxStatus`; `verbose` adds the runtime's info map.
    pub async fn pod_sandbox_status(
        &self,
        pod_sandbox_id: &str,
        verbose: bool,
    ) -> Result<api::PodSandboxStatusResponse, CriError> {
        let message = api::PodSandboxStatusRequest {
            pod_sandbox_id: pod_sandbox_id.to_owned(),
            verbose,
        };
        self.runtime_call("PodSandboxStatus", message, |mut c, r| async move {
            c.pod_sandbox_status(r).await
        })
        .await
    }

    /// `ListPodSandbox` with an optional filter.
    pub async fn list_pod_sandbox(
        &self,
        filter: Option<api::PodSandboxFilter>,
    ) -> Result<Vec<api::PodSandbox>, CriError> {
        let message = api::ListPodSandboxRequest { filter };
        self.runtime_call("ListPodSandbox", message, |mut c, r| async move {
            c.list_pod_sandbox(r).await
        })
        .await
        .map(|r| r.items)
    }

    /// `ListPodSandbox` and `ListContainers` of everything, as a relist (kubelet's PLEG)
    /// reads them: each sandbox's ID, state, creation time and labels, and each container's
    /// ID, sandbox, state, creation time and labels. The rest of the answer (annotations,
    /// metadata, images) is skipped while decoding, not copied: a relist every second of
    /// every pod's sandbox and containers is the daemon's most frequent large answer.
    pub async fn relist(&self) -> Result<(Vec<api::PodSandbox>, Vec<api::Container>), CriError> {
        let sandboxes = self.brief_call::<_, brief::Sandboxes>(
            "ListPodSandbox",
            "/runtime.v1.RuntimeService/ListPodSandbox",
            api::ListPodSandboxRequest { filter: None },
        );
        let containers = self.brief_call::<_, brief::Containers>(
            "ListContainers",
            "/runtime.v1.RuntimeService/ListContainers",
            api::ListContainersRequest { filter: None },
        );
        let (sandboxes, containers) = tokio::try_join!(sandboxes, containers)?;
        Ok((
            sandboxes.items.into_iter().map(Into::into).collect(),
            containers.containers.into_iter().map(Into::into).collect(),
        ))
    }

    /// A unary runtime call whose answer is decoded as `T`, a message with a subset of the
    /// answer's fields (same numbers).
    async fn brief_call<M, T>(
        &self,
        call: &'static str,
        path: &'static str,
        message: M,
    ) -> Result<T, CriError>
    where
        M: prost::Message + Send + Sync + 'static,
        T: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let request = with_deadline(message, self.timeout);
        let answer = async move {
            grpc.ready().await.map_err(|e| {
                tonic::Status::unavailable(format!("the channel is not ready: {e}"))
            })?;
            let codec = tonic_prost::ProstCodec::<M, T>::default();
            grpc.unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(path),
                codec,
            )
            .await
        };
        bounded(call, self.timeout, answer).await
    }

    // ---- runtime: containers ----------------------------------------------------------

    /// `CreateContainer` in a sandbox, returning the container's ID.
    pub async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let message = api::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.to_owned(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        self.runtime_call("CreateContainer", message, |mut c, r| async move {
            c.create_container(r).await
        })
        .await
        .map(|r| r.container_id)
    }

    /// `StartContainer`.
    pub async fn start_container(&self, container_id: &str) -> Result<(), CriError> {
        let message = api::StartContainerRequest {
            container_id: container_id.to_owned(),
        };
        self.runtime_call("StartContainer", message, |mut c, r| async move {
            c.start_container(r).await
        })
        .await
        .map(drop)
    }

    /// `StopContainer`: SIGTERM (or the image's stop signal), SIGKILL after `grace`. The call
    /// itself may take `grace` plus the client's timeout.
    pub async fn stop_container(
        &self,
        container_id: &str,
        grace: Duration,
    ) -> Result<(), CriError> {
        let message = api::StopContainerRequest {
            container_id: container_id.to_owned(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        let timeout = self.timeout + grace;
        self.runtime_call_within("StopContainer", timeout, message, |mut c, r| async move {
            c.stop_container(r).await
        })
        .await
        .map(drop)
    }

    /// `RemoveContainer`.
    pub async fn remove_container(&self, container_id: &str) -> Result<(), CriError> {
        let message = api::RemoveContainerRequest {
            container_id: container_id.to_owned(),
        };
        self.runtime_call("RemoveContainer", message, |mut c, r| async move {
            c.remove_container(r).await
        })
        .await
        .map(drop)
    }

    /// `ListContainers` with an optional filter.
    pub async fn list_containers(
        &self,
        filter: Option<api::ContainerFilter>,
    ) -> Result<Vec<api::Container>, CriError> {
        let message = api::ListContainersRequest { filter };
        self.runtime_call("ListContainers", message, |mut c, r| async move {
            c.list_containers(r).await
        })
        .await
        .map(|r| r.containers)
    }

    /// `ContainerStatus`; `verbose` adds the runtime's info map.
    pub async fn container_status(
        &self,
        container_id: &str,
        verbose: bool,
    ) -> Result<api::ContainerStatusResponse, CriError> {
        let message = api::ContainerStatusRequest {
            container_id: container_id.to_owned(),
            verbose,
        };
        self.runtime_call("ContainerStatus", message, |mut c, r| async move {
            c.container_status(r).await
        })
        .await
    }

    /// `UpdateContainerResources` (Linux resources only).
    pub async fn update_container_resources(
        &self,
        container_id: &str,
        linux: api::LinuxContainerResources,
    ) -> Result<(), CriError> {
        let message = api::UpdateContainerResourcesRequest {
            container_id: container_id.to_owned(),
            linux: Some(linux),
            ..Default::default()
        };
        self.runtime_call("UpdateContainerResources", message, |mut c, r| async move {
            c.update_container_resources(r).await
        })
        .await
        .map(drop)
    }

    /// `ReopenContainerLog`: asks the runtime to reopen the container's log file, after the
    /// caller rotated it.
    pub async fn reopen_container_log(&self, container_id: &str) -> Result<(), CriError> {
        let message = api::ReopenContainerLogRequest {
            container_id: container_id.to_owned(),
        };
        self.runtime_call("ReopenContainerLog", message, |mut c, r| async move {
            c.reopen_container_log(r).await
        })
        .await
        .map(drop)
    }

    // ---- runtime: exec, attach, port-forward -------------------------------------------

    /// `ExecSync`: runs `cmd` in the container and waits for it, at most `timeout` (zero
    /// means no limit, as in CRI). A command that outlives its timeout comes back as
    /// [`CriError::Timeout`] (containerd answers DEADLINE_EXCEEDED, not an exit code).
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<api::ExecSyncResponse, CriError> {
        let message = api::ExecSyncRequest {
            container_id: container_id.to_owned(),
            cmd,
            timeout: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        };
        // The runtime enforces the command's timeout; our deadline leaves it room to say so.
        let deadline = if timeout.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            timeout + self.timeout
        };
        self.runtime_call_within("ExecSync", deadline, message, |mut c, r| async move {
            c.exec_sync(r).await
        })
        .await
    }

    /// `Exec`: prepares a streaming exec and returns the URL to connect to
    /// (see [`crate::streaming`]).
    pub async fn exec(&self, request: api::ExecRequest) -> Result<String, CriError> {
        self.runtime_call("Exec", request, |mut c, r| async move { c.exec(r).await })
            .await
            .map(|r| r.url)
    }

    /// `Attach`: prepares a streaming attach and returns its URL.
    pub async fn attach(&self, request: api::AttachRequest) -> Result<String, CriError> {
        self.runtime_call(
            "Attach",
            request,
            |mut c, r| async move { c.attach(r).await },
        )
        .await
        .map(|r| r.url)
    }

    /// `PortForward`: prepares a streaming port-forward and returns its URL.
    pub async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        ports: Vec<i32>,
    ) -> Result<String, CriError> {
        let message = api::PortForwardRequest {
            pod_sandbox_id: pod_sandbox_id.to_owned(),
            port: ports,
        };
        self.runtime_call("PortForward", message, |mut c, r| async move {
            c.port_forward(r).await
        })
        .await
        .map(|r| r.url)
    }

    // ---- runtime: stats ----------------------------------------------------------------

    /// `ContainerStats` of one container.
    pub async fn container_stats(
        &self,
        container_id: &str,
    ) -> Result<api::ContainerStats, CriError> {
        let message = api::ContainerStatsRequest {
            container_id: container_id.to_owned(),
        };
        self.runtime_call("ContainerStats", message, |mut c, r| async move {
            c.container_stats(r).await
        })
        .await
        .and_then(|r| {
            r.stats.ok_or(CriError::NotFound {
                call: "ContainerStats",
                message: format!("no stats for container {container_id}"),
            })
        })
    }

    /// `ListContainerStats` with an optional filter.
    pub async fn list_container_stats(
        &self,
        filter: Option<api::ContainerStatsFilter>,
    ) -> Result<Vec<api::ContainerStats>, CriError> {
        let message = api::ListContainerStatsRequest { filter };
        self.runtime_call("ListContainerStats", message, |mut c, r| async move {
            c.list_container_stats(r).await
        })
        .await
        .map(|r| r.stats)
    }

    /// `ListPodSandboxStats` with an optional filter.
    pub async fn list_pod_sandbox_stats(
        &self,
        filter: Option<api::PodSandboxStatsFilter>,
    ) -> Result<Vec<api::PodSandboxStats>, CriError> {
        let message = api::ListPodSandboxStatsRequest { filter };
        self.runtime_call("ListPodSandboxStats", message, |mut c, r| async move {
            c.list_pod_sandbox_stats(r).await
        })
        .await
        .map(|r| r.stats)
    }

    // ---- images ------------------------------------------------------------------------

    /// `ListImages` with an optional filter.
    pub async fn list_images(
        &self,
        filter: Option<api::ImageFilter>,
    ) -> Result<Vec<api::Image>, CriError> {
        let message = api::ListImagesRequest { filter };
        self.image_call("ListImages", self.timeout, message, |mut c, r| async move {
            c.list_images(r).await
        })
        .await
        .map(|r| r.images)
    }

    /// `ImageStatus`: `Ok(None)` when the image is not present (CRI answers an empty status
    /// rather than an error); `verbose` adds the runtime's info map.
    pub async fn image_status(
        &self,
        image: &str,
        verbose: bool,
    ) -> Result<Option<api::ImageStatusResponse>, CriError> {
        let message = api::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose,
        };
        self.image_call(
            "ImageStatus",
            self.timeout,
            message,
            |mut c, r| async move { c.image_status(r).await },
        )
        .await
        .map(|r| r.image.is_some().then_some(r))
    }

    /// Waits until `ImageStatus` finds `image`, polling every 20 ms for at most `within`;
    /// `Ok(false)` if it never did. After an import through containerd's own API, CRI's
    /// image cache catches up from containerd's events, a few milliseconds later.
    pub async fn wait_for_image(&self, image: &str, within: Duration) -> Result<bool, CriError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.image_status(image, false).await?.is_some() {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `PullImage`, returning the image reference the runtime stored. A pull may take
    /// minutes; it gets at least 10 minutes whatever the client's timeout.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<api::AuthConfig>,
        sandbox_config: Option<api::PodSandboxConfig>,
    ) -> Result<String, CriError> {
        let message = api::PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config,
        };
        let timeout = self.timeout.max(Duration::from_secs(600));
        self.image_call("PullImage", timeout, message, |mut c, r| async move {
            c.pull_image(r).await
        })
        .await
        .map(|r| r.image_ref)
    }

    /// `RemoveImage`. Removing an image that is not there succeeds, as in CRI.
    pub async fn remove_image(&self, image: &str) -> Result<(), CriError> {
        let message = api::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.image_call(
            "RemoveImage",
            self.timeout,
            message,
            |mut c, r| async move { c.remove_image(r).await },
        )
        .await
        .map(drop)
    }

    /// `ImageFsInfo`: usage of the filesystems that hold images and container layers.
    pub async fn image_fs_info(&self) -> Result<api::ImageFsInfoResponse, CriError> {
        self.image_call(
            "ImageFsInfo",
            self.timeout,
            api::ImageFsInfoRequest {},
            |mut c, r| async move { c.image_fs_info(r).await },
        )
        .await
    }
}

/// An `ImageSpec` naming an image by reference or ID.
pub fn image_spec(image: &str) -> api::ImageSpec {
    api::ImageSpec {
        image: image.to_owned(),
        annotations: HashMap::new(),
        ..Default::default()
    }
}

fn with_deadline<M>(message: M, timeout: Duration) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Awaits one call, bounded by `timeout`, and types its error.
async fn bounded<T>(
    call: &'static str,
    timeout: Duration,
    response: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriError> {
    match tokio::time::timeout(timeout, response).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if status.code() == Code::DeadlineExceeded => {
            Err(CriError::Timeout { call, timeout })
        }
        Ok(Err(status)) => Err(CriError::from_status(call, status)),
        Err(_) => Err(CriError::Timeout { call, timeout }),
    }
}
