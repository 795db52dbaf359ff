//! The CLI against runtimes that lack what it asks for: an in-memory CRI server on a unix
//! socket that answers `Version` and nothing else, and one that does not serve runtime.v1
//! at all. Each test uses its own socket in its own temporary directory.

use std::path::Path;

use bosun_tests::fake_cri::{serve, Nothing, VersionOnly};

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");

async fn bosun(socket: &Path, args: &[&str]) -> (Option<i32>, String) {
    let endpoint = format!("unix://{}", socket.display());
    let output = tokio::process::Command::new(BOSUN)
        .args(["-r", &endpoint])
        .args(args)
        .output()
        .await
        .expect("bosun runs");
    assert!(output.stdout.is_empty(), "{output:?}");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_rpc_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("fake.sock");
    serve(VersionOnly, &socket);

    let (code, err) = bosun(&socket, &["ps"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "bosun: error: ListPodSandbox: not implemented by the runtime\n"
    );
    let (code, err) = bosun(&socket, &["stats"]).await;
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not implemented by the runtime") && err.lines().count() == 1,
        "{err}"
    );
    // The image service is not registered at all: the same one line.
    let (code, err) = bosun(&socket, &["images"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        "bosun: error: ListImages: not implemented by the runtime\n"
    );
}

#[tokio::test]
async fn a_runtime_without_cri_v1_is_refused_at_connect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("old.sock");
    serve(Nothing, &socket);

    let (code, err) = bosun(&socket, &["version"]).await;
    assert_eq!(code, Some(1));
    assert!(err.contains("does not serve CRI runtime.v1"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
