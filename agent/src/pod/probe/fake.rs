//! An in-memory [`Runtime`] for probe tests: exec commands answer from a script, keyed by the
//! command's first word, and every call's time is recorded. Every other CRI call is
//! unimplemented.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bosun_cri::{api, CriError};
use tokio::time::Instant;

use crate::runtime::Runtime;

/// How one ExecSync answers.
#[derive(Debug, Clone)]
pub(super) enum Reply {
    Exit(i32, &'static str),
    /// Never answers.
    Hang,
    /// The runtime answers this status instead of an exit code.
    Status(tonic::Code),
}

#[derive(Debug, Default)]
struct Script {
    replies: VecDeque<Reply>,
    then: Option<Reply>,
    calls: Vec<Instant>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct FakeRuntime {
    scripts: Arc<Mutex<HashMap<String, Script>>>,
}

impl FakeRuntime {
    /// `command` answers `replies` in turn, then `then` for ever.
    pub(super) fn script(
        &self,
        command: &str,
        replies: impl IntoIterator<Item = Reply>,
        then: Reply,
    ) -> &Self {
        self.scripts.lock().expect("fake runtime lock").insert(
            command.to_owned(),
            Script {
                replies: replies.into_iter().collect(),
                then: Some(then),
                calls: Vec::new(),
            },
        );
        self
    }

    /// When `command` was run, as offsets from `origin`.
    pub(super) fn calls(&self, command: &str, origin: Instant) -> Vec<Duration> {
        self.scripts
            .lock()
            .expect("fake runtime lock")
            .get(command)
            .map(|s| s.calls.iter().map(|t| *t - origin).collect())
            .unwrap_or_default()
    }
}

fn unimplemented<T>(call: &'static str) -> Result<T, CriError> {
    Err(CriError::Unimplemented { call })
}

impl Runtime for FakeRuntime {
    async fn run_pod_sandbox(&self, _: api::PodSandboxConfig) -> Result<String, CriError> {
        unimplemented("RunPodSandbox")
    }
    async fn stop_pod_sandbox(&self, _: &str) -> Result<(), CriError> {
        unimplemented("StopPodSandbox")
    }
    async fn remove_pod_sandbox(&self, _: &str) -> Result<(), CriError> {
        unimplemented("RemovePodSandbox")
    }
    async fn pod_sandbox_status(&self, _: &str) -> Result<Option<api::PodSandboxStatus>, CriError> {
        unimplemented("PodSandboxStatus")
    }
    async fn pod_sandbox_netns(&self, _: &str) -> Result<Option<std::path::PathBuf>, CriError> {
        unimplemented("PodSandboxStatus")
    }
    async fn list_pod_sandbox(
        &self,
        _: HashMap<String, String>,
    ) -> Result<Vec<api::PodSandbox>, CriError> {
        unimplemented("ListPodSandbox")
    }
    async fn create_container(
        &self,
        _: &str,
        _: api::ContainerConfig,
        _: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        unimplemented("CreateContainer")
    }
    async fn start_container(&self, _: &str) -> Result<(), CriError> {
        unimplemented("StartContainer")
    }
    async fn stop_container(&self, _: &str, _: Duration) -> Result<(), CriError> {
        unimplemented("StopContainer")
    }
    async fn remove_container(&self, _: &str) -> Result<(), CriError> {
        unimplemented("RemoveContainer")
    }
    async fn list_containers(
        &self,
        _: HashMap<String, String>,
    ) -> Result<Vec<api::Container>, CriError> {
        unimplemented("ListContainers")
    }
    async fn container_status(&self, _: &str) -> Result<Option<api::ContainerStatus>, CriError> {
        unimplemented("ContainerStatus")
    }
    async fn image_status(&self, _: &str) -> Result<Option<api::Image>, CriError> {
        unimplemented("ImageStatus")
    }
    async fn pull_image(&self, _: &str, _: Option<api::AuthConfig>) -> Result<String, CriError> {
        unimplemented("PullImage")
    }

    async fn exec_sync(
        &self,
        _container_id: &str,
        cmd: Vec<String>,
        _timeout: Duration,
    ) -> Result<api::ExecSyncResponse, CriError> {
        let reply = {
            let mut scripts = self.scripts.lock().expect("fake runtime lock");
            let name = cmd.first().cloned().unwrap_or_default();
            let script = scripts.entry(name).or_default();
            script.calls.push(Instant::now());
            script.replies.pop_front().or_else(|| script.then.clone())
        };
        match reply {
            Some(Reply::Exit(exit_code, output)) => Ok(api::ExecSyncResponse {
                stdout: output.as_bytes().to_vec(),
                stderr: Vec::new(),
                exit_code,
            }),
            Some(Reply::Hang) => std::future::pending().await,
            Some(Reply::Status(code)) => Err(CriError::Status {
                call: "ExecSync",
                code,
                message: format!("fake runtime answers {code:?}"),
            }),
            None => Err(CriError::NotFound {
                call: "ExecSync",
                message: "no such command in the fake runtime".to_owned(),
            }),
        }
    }
}
