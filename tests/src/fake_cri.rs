//! In-memory CRI runtimes on a unix socket, for what a test needs of a runtime that is not
//! containerd: one that answers `Version` only, one that serves nothing of runtime.v1.

use std::path::Path;

use bosun_proto::cri;
use bosun_proto::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

/// Answers `Version`; every other call is UNIMPLEMENTED (the generated defaults).
pub struct VersionOnly;

#[tonic::async_trait]
impl RuntimeService for VersionOnly {
    async fn version(
        &self,
        _request: tonic::Request<cri::VersionRequest>,
    ) -> Result<tonic::Response<cri::VersionResponse>, tonic::Status> {
        Ok(tonic::Response::new(cri::VersionResponse {
            version: "0.1.0".to_owned(),
            runtime_name: "fake".to_owned(),
            runtime_version: "0.0.1".to_owned(),
            runtime_api_version: "v1".to_owned(),
        }))
    }
}

/// Implements nothing, like a runtime that speaks only an older CRI version.
pub struct Nothing;

#[tonic::async_trait]
impl RuntimeService for Nothing {}

/// Serves `service` on a new socket at `socket` until the test's runtime ends. Must be called
/// within a Tokio runtime.
pub fn serve<S: RuntimeService>(service: S, socket: &Path) {
    let listener = UnixListener::bind(socket).expect("bind the fake runtime's socket");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(service))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
}
