//! The seam between the pod lifecycle and the container runtime: every CRI call the
//! lifecycle makes goes through [`Runtime`], implemented by [`CriClient`] for real and by
//! in-memory fakes in unit tests.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use bosun_cri::{api, CriClient, CriError};

/// The CRI calls the pod lifecycle needs.
pub trait Runtime: Clone + Send + Sync + 'static {
    fn run_pod_sandbox(
        &self,
        config: api::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    fn stop_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    fn remove_pod_sandbox(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<api::PodSandboxStatus>, CriError>> + Send;
    /// The network namespace of a sandbox, as a path another process can open; `None` if the
    /// runtime does not say.
    fn pod_sandbox_netns(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<PathBuf>, CriError>> + Send;
    fn list_pod_sandbox(
        &self,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<Vec<api::PodSandbox>, CriError>> + Send;
    fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), CriError>> + Send;
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
    fn list_containers(
        &self,
        labels: HashMap<String, String>,
    ) -> impl Future<Output = Result<Vec<api::Container>, CriError>> + Send;
    fn container_status(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<api::ContainerStatus>, CriError>> + Send;
    /// The image, if present: its ID and the user it runs as.
    fn image_status(
        &self,
        image: &str,
    ) -> impl Future<Output = Result<Option<api::Image>, CriError>> + Send;
    /// Pulls `image`, with the registry credentials `auth` if given.
    fn pull_image(
        &self,
        image: &str,
        auth: Option<api::AuthConfig>,
    ) -> impl Future<Output = Result<String, CriError>> + Send;
    /// Runs `cmd` in the container and waits for it. The runtime kills the command after
    /// `timeout` (whole seconds; zero means none) and then answers `DeadlineExceeded` rather
    /// than an exit code.
    fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> impl Future<Output = Result<api::ExecSyncResponse, CriError>> + Send;
}

impl Runtime for CriClient {
    async fn run_pod_sandbox(&self, config: api::PodSandboxConfig) -> Result<String, CriError> {
        CriClient::run_pod_sandbox(self, config, "").await
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        CriClient::stop_pod_sandbox(self, id).await
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        CriClient::remove_pod_sandbox(self, id).await
    }

    async fn pod_sandbox_status(
        &self,
        id: &str,
    ) -> Result<Option<api::PodSandboxStatus>, CriError> {
        absent_as_none(
            CriClient::pod_sandbox_status(self, id, false)
                .await
                .map(|r| r.status),
        )
    }

    async fn pod_sandbox_netns(&self, id: &str) -> Result<Option<PathBuf>, CriError> {
        let response = match CriClient::pod_sandbox_status(self, id, true).await {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        Ok(response
            .info
            .get("info")
            .and_then(|info| netns_of_verbose_info(info)))
    }

    async fn list_pod_sandbox(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::PodSandbox>, CriError> {
        let filter = api::PodSandboxFilter {
            label_selector: labels,
            ..Default::default()
        };
        CriClient::list_pod_sandbox(self, Some(filter)).await
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox_config: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        CriClient::create_container(self, sandbox_id, config, sandbox_config).await
    }

    async fn start_container(&self, id: &str) -> Result<(), CriError> {
        CriClient::start_container(self, id).await
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), CriError> {
        CriClient::stop_container(self, id, grace).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        CriClient::remove_container(self, id).await
    }

    async fn list_containers(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<api::Container>, CriError> {
        let filter = api::ContainerFilter {
            label_selector: labels,
            ..Default::default()
        };
        CriClient::list_containers(self, Some(filter)).await
    }

    async fn container_status(&self, id: &str) -> Result<Option<api::ContainerStatus>, CriError> {
        absent_as_none(
            CriClient::container_status(self, id, false)
                .await
                .map(|r| r.status),
        )
    }

    async fn image_status(&self, image: &str) -> Result<Option<api::Image>, CriError> {
        Ok(CriClient::image_status(self, image, false)
            .await?
            .and_then(|s| s.image))
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<api::AuthConfig>,
    ) -> Result<String, CriError> {
        CriClient::pull_image(self, image, auth, None).await
    }

    async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<api::ExecSyncResponse, CriError> {
        CriClient::exec_sync(self, container_id, cmd, timeout).await
    }
}

/// The network namespace in containerd's verbose sandbox info: the path in the runtime spec
/// (`/var/run/netns/cni-…`), or else the sandbox process's own.
fn netns_of_verbose_info(info: &str) -> Option<PathBuf> {
    let info: serde_json::Value = serde_json::from_str(info).ok()?;
    let from_spec = info
        .pointer("/runtimeSpec/linux/namespaces")
        .and_then(|n| n.as_array())
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
        })
        .and_then(|n| n.get("path")?.as_str())
        .filter(|path| !path.is_empty())
        .map(PathBuf::from);
    from_spec.or_else(|| {
        let pid = info.get("pid")?.as_u64().filter(|pid| *pid > 0)?;
        Some(PathBuf::from(format!("/proc/{pid}/ns/net")))
    })
}

/// A status call for an object that no longer exists answers `None`, not an error: the
/// object went away between listing and asking, which the caller treats as gone.
fn absent_as_none<T>(result: Result<Option<T>, CriError>) -> Result<Option<T>, CriError> {
    match result {
        Err(e) if e.is_not_found() => Ok(None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_namespace_comes_from_the_runtime_spec_or_the_sandbox_pid() {
        let spec = r#"{"pid": 42, "runtimeSpec": {"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}}}"#;
        assert_eq!(
            netns_of_verbose_info(spec),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        let pid_only =
            r#"{"pid": 42, "runtimeSpec": {"linux": {"namespaces": [{"type": "network"}]}}}"#;
        assert_eq!(
            netns_of_verbose_info(pid_only),
            Some(PathBuf::from("/proc/42/ns/net"))
        );
        assert_eq!(netns_of_verbose_info(r#"{"pid": 0}"#), None);
        assert_eq!(netns_of_verbose_info("not json"), None);
    }
}
