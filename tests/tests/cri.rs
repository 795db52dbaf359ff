//! bosun's CRI and containerd clients against a real containerd: a sandbox with CNI
//! networking, a container started, exec'd into (sync and streaming), its log read, its
//! death seen on the event stream, then everything stopped and removed; and image import.
//!
//! Each test starts its own node (own containerd, socket, CNI bridge and subnet), so these
//! tests can run in parallel with each other and with other suites.

use std::time::Duration;

use bosun_cri::api;
use bosun_cri::streaming;
use bosun_cri::{
    ContainerdClient, ContainerdError, CriClient, CriError, LifecycleEvent, CRI_NAMESPACE,
};
use bosun_tests::fixtures::{busybox_container, log_directory, sandbox_config, SERVE_FOREVER};
use bosun_tests::images::{BUSYBOX_IMAGE, PAUSE_IMAGE};
use bosun_tests::node::TestNode;
use futures::StreamExt;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_container_exec_logs_events_and_teardown() -> anyhow::Result<()> {
    let node = TestNode::start("cri-lifecycle").await?;
    let client = CriClient::connect(&node.cri_endpoint(), CALL_TIMEOUT).await?;
    assert_eq!(client.version().runtime_name, "containerd");
    assert_eq!(client.version().runtime_api_version, "v1");

    // Sandbox with CNI networking: it gets an address in the node's subnet.
    let sandbox_config = sandbox_config(&node, "lifecycle");
    std::fs::create_dir_all(log_directory(&node, "lifecycle"))?;
    let pod = client.run_pod_sandbox(sandbox_config.clone(), "").await?;
    let status = client.pod_sandbox_status(&pod, true).await?;
    let sandbox = status.status.expect("sandbox status");
    assert_eq!(sandbox.state, api::PodSandboxState::SandboxReady as i32);
    let ip = sandbox.network.expect("sandbox network").ip;
    assert!(
        node.subnet_contains(&ip),
        "sandbox IP {ip} is outside the node's subnet {}",
        node.subnet()
    );
    assert!(
        !status.info.is_empty(),
        "verbose status carries the runtime's info"
    );

    // Container: created, started, running.
    let container = client
        .create_container(
            &pod,
            busybox_container("app", SERVE_FOREVER),
            sandbox_config.clone(),
        )
        .await?;
    client.start_container(&container).await?;
    let state = client
        .container_status(&container, false)
        .await?
        .status
        .expect("container status");
    assert_eq!(state.state, api::ContainerState::ContainerRunning as i32);
    let listed = client.list_containers(None).await?;
    assert!(listed
        .iter()
        .any(|c| c.id == container && c.pod_sandbox_id == pod));
    // The relist's narrow reading of the same lists: IDs, states, times and labels.
    let (sandboxes, containers) = client.relist().await?;
    let full = listed
        .iter()
        .find(|c| c.id == container)
        .expect("listed above");
    let brief = containers
        .iter()
        .find(|c| c.id == container)
        .expect("the relist lists the container");
    assert_eq!(
        (
            &brief.pod_sandbox_id,
            brief.state,
            brief.created_at,
            &brief.labels
        ),
        (
            &full.pod_sandbox_id,
            full.state,
            full.created_at,
            &full.labels
        )
    );
    assert!(brief.annotations.is_empty() && brief.metadata.is_none());
    let sandbox = sandboxes
        .iter()
        .find(|s| s.id == pod)
        .expect("the relist lists the sandbox");
    assert_eq!(sandbox.state, api::PodSandboxState::SandboxReady as i32);
    assert!(!sandbox.labels.is_empty() && sandbox.created_at > 0);

    // The lifecycle event stream is open before anything dies.
    let containerd = ContainerdClient::connect(node.containerd_socket()).await?;
    let mut lifecycle = Box::pin(containerd.lifecycle_events(Some(CRI_NAMESPACE)).await?);

    // ExecSync: output and exit codes come back; a command outliving its timeout is a timeout.
    let hostname = client
        .exec_sync(
            &container,
            vec!["cat".into(), "/etc/hostname".into()],
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(hostname.exit_code, 0);
    assert_eq!(
        String::from_utf8_lossy(&hostname.stdout).trim(),
        "lifecycle"
    );
    let failed = client
        .exec_sync(
            &container,
            vec!["sh".into(), "-c".into(), "echo oops >&2; exit 3".into()],
            Duration::from_secs(10),
        )
        .await?;
    assert_eq!(failed.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&failed.stderr).trim(), "oops");
    let slow = client
        .exec_sync(
            &container,
            vec!["sleep".into(), "30".into()],
            Duration::from_secs(1),
        )
        .await;
    assert!(matches!(slow, Err(CriError::Timeout { .. })), "{slow:?}");

    // Streaming exec: stdout, stderr and the exit code through the streaming server.
    let url = client
        .exec(api::ExecRequest {
            container_id: container.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo streamed; echo to-err >&2; exit 7".into(),
            ],
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = streaming::stream(&url, None::<tokio::io::Empty>, &mut out, &mut err, None).await?;
    assert_eq!(code, streaming::ExitCode(7));
    assert_eq!(String::from_utf8_lossy(&out), "streamed\n");
    assert_eq!(String::from_utf8_lossy(&err), "to-err\n");

    // The container's log, in the CRI format, holds both streams.
    let log = std::fs::read_to_string(log_directory(&node, "lifecycle").join("app/0.log"))?;
    let entries: Vec<_> = log
        .lines()
        .map(|l| bosun_cri::logs::parse_line(l.as_bytes()).map(|e| (e.stream, e.content.to_vec())))
        .collect::<Result<_, _>>()?;
    assert!(
        entries.contains(&(bosun_cri::logs::LogStream::Stdout, b"hello-stdout".to_vec())),
        "{log}"
    );
    assert!(
        entries.contains(&(bosun_cri::logs::LogStream::Stderr, b"hello-stderr".to_vec())),
        "{log}"
    );

    // ReopenContainerLog: after the log is moved away (as rotation does), the runtime
    // writes to a fresh file at the same path.
    let log_path = log_directory(&node, "lifecycle").join("app/0.log");
    std::fs::rename(&log_path, log_path.with_extension("log.1"))?;
    client.reopen_container_log(&container).await?;
    client
        .exec_sync(
            &container,
            vec![
                "sh".into(),
                "-c".into(),
                "echo after-reopen > /proc/1/fd/1".into(),
            ],
            Duration::from_secs(10),
        )
        .await?;
    let reopened = std::fs::read_to_string(&log_path)?;
    assert!(reopened.contains("stdout F after-reopen"), "{reopened:?}");

    // Stats answer for a running container.
    let stats = client.container_stats(&container).await?;
    assert_eq!(stats.attributes.expect("attributes").id, container);

    // Stop: the trap makes it exit 0, and the exit is the stream's next event: the execs
    // above, each an exited process of the container's, put nothing on it.
    client
        .stop_container(&container, Duration::from_secs(10))
        .await?;
    let exit = next_event(&mut lifecycle).await?;
    assert!(
        matches!(
            &exit,
            LifecycleEvent::Exited { container_id, exit_status: 0, .. } if *container_id == container
        ),
        "{exit:?}"
    );
    let stopped = client
        .container_status(&container, false)
        .await?
        .status
        .expect("status");
    assert_eq!(stopped.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(stopped.exit_code, 0);

    // Teardown through CRI leaves nothing behind, and each step is on the stream: the
    // container removed, the sandbox's own process exited, the sandbox removed.
    client.remove_container(&container).await?;
    let missing = client.container_status(&container, false).await;
    assert!(
        matches!(&missing, Err(e) if e.is_not_found()),
        "{missing:?}"
    );
    let removed = next_event(&mut lifecycle).await?;
    assert_eq!(
        removed,
        LifecycleEvent::Removed {
            namespace: CRI_NAMESPACE.to_owned(),
            container_id: container.clone()
        }
    );
    client.stop_pod_sandbox(&pod).await?;
    let sandbox_exit = next_event(&mut lifecycle).await?;
    assert!(
        matches!(&sandbox_exit, LifecycleEvent::Exited { container_id, .. } if *container_id == pod),
        "{sandbox_exit:?}"
    );
    client.remove_pod_sandbox(&pod).await?;
    let sandbox_removed = next_event(&mut lifecycle).await?;
    assert!(
        matches!(&sandbox_removed, LifecycleEvent::Removed { container_id, .. } if *container_id == pod),
        "{sandbox_removed:?}"
    );
    assert!(client.list_pod_sandbox(None).await?.is_empty());
    assert!(client.list_containers(None).await?.is_empty());

    node.shutdown().await?;
    Ok(())
}

/// The stream's next event, within 10 s.
async fn next_event(
    stream: &mut (impl futures::Stream<Item = Result<LifecycleEvent, ContainerdError>> + Unpin),
) -> anyhow::Result<LifecycleEvent> {
    match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        Ok(Some(event)) => Ok(event?),
        Ok(None) => anyhow::bail!("the event stream ended"),
        Err(_) => anyhow::bail!("no lifecycle event within 10 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_import_is_idempotent_and_rejects_bad_archives() -> anyhow::Result<()> {
    let node = TestNode::start("cri-import").await?;
    let client = CriClient::connect(&node.cri_endpoint(), CALL_TIMEOUT).await?;

    // The node imported both images through bosun's import; CRI sees them.
    for image in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
        let status = client.image_status(image, false).await?;
        let status = status.unwrap_or_else(|| panic!("{image} is not in the runtime"));
        assert!(status
            .image
            .expect("image")
            .repo_tags
            .contains(&image.to_owned()));
    }

    // Importing again changes nothing and succeeds.
    let containerd = ContainerdClient::connect(node.containerd_socket()).await?;
    let archive = &node.images().busybox;
    let imported = containerd
        .import_oci_archive(CRI_NAMESPACE, &archive.path)
        .await?;
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, BUSYBOX_IMAGE);
    assert_eq!(imported[0].digest, archive.manifest_digest);

    // A removed image comes back with an import.
    // CRI's image cache follows containerd's events, and the second import's event may be
    // handled after the removal and list the image again: remove until it stays removed
    // (RemoveImage of an absent image succeeds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        client.remove_image(BUSYBOX_IMAGE).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if client.image_status(BUSYBOX_IMAGE, false).await?.is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{BUSYBOX_IMAGE} is still listed 10s after its removal"
        );
    }
    containerd
        .import_oci_archive(CRI_NAMESPACE, &archive.path)
        .await?;
    assert!(
        client
            .wait_for_image(BUSYBOX_IMAGE, Duration::from_secs(5))
            .await?
    );

    // A missing file and a file that is not an OCI layout give clear errors.
    let missing = containerd
        .import_oci_archive(
            CRI_NAMESPACE,
            std::path::Path::new("/nonexistent/image.tar"),
        )
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/image.tar"),
        "{missing}"
    );
    let not_oci = node.dir().join("not-oci.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&not_oci)?);
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, "hello.txt", &b"hello"[..])?;
        builder.finish()?;
    }
    let err = containerd
        .import_oci_archive(CRI_NAMESPACE, &not_oci)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no index.json"), "{err}");

    // A tampered blob is refused before anything is written.
    let tampered = node.dir().join("tampered");
    std::fs::create_dir_all(&tampered)?;
    tar::Archive::new(std::fs::File::open(&archive.path)?).unpack(&tampered)?;
    let blobs = tampered.join("blobs/sha256");
    let layer = std::fs::read_dir(&blobs)?
        .filter_map(Result::ok)
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .expect("a blob");
    let mut bytes = std::fs::read(layer.path())?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(layer.path(), bytes)?;
    let tampered_tar = node.dir().join("tampered.tar");
    {
        let mut builder = tar::Builder::new(std::fs::File::create(&tampered_tar)?);
        builder.append_dir_all(".", &tampered)?;
        builder.finish()?;
    }
    let err = containerd
        .import_oci_archive(CRI_NAMESPACE, &tampered_tar)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("hashes to"), "{err}");

    node.shutdown().await?;
    Ok(())
}
