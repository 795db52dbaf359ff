//! The crictl-style CLI against a real containerd: every subcommand is run as a process and
//! checked on what it prints (tables and JSON), and bad input on its one-line error.
//!
//! Each test starts its own node (own containerd, socket, CNI bridge and subnet), so they
//! can run in parallel with each other and with other suites.

use std::process::Output;
use std::time::Duration;

use bosun_cri::{api, CriClient};
use bosun_tests::fixtures::{busybox_container, log_directory, sandbox_config, SERVE_FOREVER};
use bosun_tests::images::{BUSYBOX_IMAGE, PAUSE_IMAGE};
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");

/// Runs `bosun -r ENDPOINT ARGS…` and returns its output.
async fn bosun(endpoint: &str, args: &[&str]) -> Output {
    let mut all = vec!["-r", endpoint, "--timeout", "20s"];
    all.extend_from_slice(args);
    bosun_raw(&all).await
}

async fn bosun_raw(args: &[&str]) -> Output {
    let output = tokio::process::Command::new(BOSUN)
        .args(args)
        .env_remove("CONTAINER_RUNTIME_ENDPOINT")
        .output()
        .await
        .expect("bosun runs");
    println!(
        "$ bosun {}\n[exit {:?}]\n{}{}",
        args.join(" "),
        output.status.code(),
        head(&output.stdout),
        head(&output.stderr)
    );
    output
}

/// The first lines of a command's output, for the test's log: long outputs (`info`,
/// `inspect`) would otherwise bury the failure message in a shortened log.
fn head(output: &[u8]) -> String {
    const LINES: usize = 12;
    let text = String::from_utf8_lossy(output);
    let total = text.lines().count();
    let mut shown: String = text.lines().take(LINES).map(|l| format!("{l}\n")).collect();
    if total > LINES {
        shown.push_str(&format!("[… {} more lines]\n", total - LINES));
    }
    shown
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "bosun failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_str(&stdout(output)).expect("valid JSON")
}

/// The table's rows (header first), each split on runs of 2+ spaces.
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// A node with one ready pod "web" whose container "app" runs, and one container "done"
/// that exited with code 3.
struct Fixture {
    node: TestNode,
    client: CriClient,
    pod: String,
    app: String,
    done: String,
}

async fn fixture(name: &str) -> anyhow::Result<Fixture> {
    let node = TestNode::start(name).await?;
    let client = CriClient::connect(&node.cri_endpoint(), Duration::from_secs(30)).await?;
    let config = sandbox_config(&node, "web");
    std::fs::create_dir_all(log_directory(&node, "web"))?;
    let pod = client.run_pod_sandbox(config.clone(), "").await?;
    let app = client
        .create_container(
            &pod,
            busybox_container("app", SERVE_FOREVER),
            config.clone(),
        )
        .await?;
    client.start_container(&app).await?;
    let done = client
        .create_container(&pod, busybox_container("done", "echo bye; exit 3"), config)
        .await?;
    client.start_container(&done).await?;
    // Wait (bounded) for "done" to exit and "app" to have written its first lines.
    for _ in 0..100 {
        let exited = client
            .container_status(&done, false)
            .await?
            .status
            .is_some_and(|s| s.state == api::ContainerState::ContainerExited as i32);
        let logged = std::fs::read_to_string(log_directory(&node, "web").join("app/0.log"))
            .is_ok_and(|l| l.contains("hello-stderr"));
        if exited && logged {
            return Ok(Fixture {
                node,
                client,
                pod,
                app,
                done,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("fixture containers did not settle")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_commands_show_what_the_runtime_holds() -> anyhow::Result<()> {
    let f = fixture("cli-read").await?;
    let ep = f.node.cri_endpoint();
    let ep = ep.as_str();

    let version = stdout(&bosun(ep, &["version"]).await);
    // bosun's own version and git revision first, then the runtime's.
    let first = version.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!("bosun {} (git ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(version.contains("RuntimeName:  containerd"), "{version}");
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");

    let info = json(&bosun(ep, &["info"]).await);
    let conditions = info["status"]["conditions"].as_array().expect("conditions");
    assert!(conditions
        .iter()
        .any(|c| c["type"] == "RuntimeReady" && c["status"] == true));
    let info_yaml = stdout(&bosun(ep, &["info", "-o", "yaml"]).await);
    assert!(info_yaml.contains("RuntimeReady"), "{info_yaml}");

    // pods: table, quiet, filters, JSON.
    let pods = table(&stdout(&bosun(ep, &["pods"]).await));
    assert_eq!(
        pods[0],
        [
            "POD ID",
            "CREATED",
            "STATE",
            "NAME",
            "NAMESPACE",
            "ATTEMPT",
            "RUNTIME"
        ]
    );
    assert_eq!(pods.len(), 2);
    assert_eq!(pods[1][0], &f.pod[..13]);
    assert_eq!(pods[1][2..], ["Ready", "web", "default", "0", "(default)"]);
    assert_eq!(
        stdout(&bosun(ep, &["pods", "-q"]).await),
        format!("{}\n", f.pod)
    );
    assert_eq!(
        stdout(&bosun(ep, &["pods", "-q", "--name", "nomatch"]).await),
        ""
    );
    assert_eq!(
        stdout(&bosun(ep, &["pods", "-q", "--state", "notready"]).await),
        ""
    );
    assert_eq!(
        stdout(&bosun(ep, &["pods", "-q", "--label", "app=web"]).await),
        format!("{}\n", f.pod)
    );
    let no_trunc = table(&stdout(&bosun(ep, &["pods", "--no-trunc"]).await));
    assert_eq!(no_trunc[1][0], f.pod);
    let pods_json = json(&bosun(ep, &["pods", "-o", "json"]).await);
    assert_eq!(pods_json["items"][0]["id"], f.pod.as_str());
    assert_eq!(pods_json["items"][0]["state"], "SANDBOX_READY");
    assert_eq!(pods_json["items"][0]["metadata"]["name"], "web");

    // ps: running by default, -a for all, filters, JSON.
    let ps = table(&stdout(&bosun(ep, &["ps"]).await));
    assert_eq!(
        ps[0],
        [
            "CONTAINER",
            "IMAGE",
            "CREATED",
            "STATE",
            "NAME",
            "ATTEMPT",
            "POD ID",
            "POD"
        ]
    );
    assert_eq!(ps.len(), 2, "only the running container");
    assert_eq!(ps[1][0], &f.app[..13]);
    assert_eq!(ps[1][1], BUSYBOX_IMAGE);
    assert_eq!(ps[1][3..], ["Running", "app", "0", &f.pod[..13], "web"]);
    let all = stdout(&bosun(ep, &["ps", "-a", "-q"]).await);
    let mut ids: Vec<&str> = all.lines().collect();
    ids.sort();
    let mut want = vec![f.app.as_str(), f.done.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        stdout(&bosun(ep, &["ps", "-q", "--state", "exited"]).await),
        format!("{}\n", f.done)
    );
    assert_eq!(
        stdout(&bosun(ep, &["ps", "-a", "-q", "--name", "don"]).await),
        format!("{}\n", f.done)
    );
    assert_eq!(
        stdout(&bosun(ep, &["ps", "-q", "--pod", &f.pod[..6]]).await),
        format!("{}\n", f.app)
    );
    let ps_json = json(&bosun(ep, &["ps", "-a", "-o", "json"]).await);
    let containers = ps_json["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 2);
    let done = containers
        .iter()
        .find(|c| c["id"] == f.done.as_str())
        .expect("done in JSON");
    assert_eq!(done["state"], "CONTAINER_EXITED");
    assert_eq!(done["podSandboxId"], f.pod.as_str());

    // images.
    let images = table(&stdout(&bosun(ep, &["images"]).await));
    assert_eq!(images[0], ["IMAGE", "TAG", "IMAGE ID", "SIZE"]);
    let names: Vec<(&str, &str)> = images[1..]
        .iter()
        .map(|r| (r[0].as_str(), r[1].as_str()))
        .collect();
    assert!(
        names.contains(&("localhost/bosun/busybox", "1")),
        "{names:?}"
    );
    assert!(names.contains(&("localhost/bosun/pause", "1")), "{names:?}");
    let images_json = json(&bosun(ep, &["images", "-o", "json"]).await);
    let tags: Vec<&str> = images_json["images"]
        .as_array()
        .expect("images")
        .iter()
        .flat_map(|i| i["repoTags"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tags.contains(&BUSYBOX_IMAGE) && tags.contains(&PAUSE_IMAGE),
        "{tags:?}"
    );
    assert_eq!(
        stdout(&bosun(ep, &["images", "-q"]).await).lines().count(),
        2
    );

    // inspect, inspectp, inspecti: by ID prefix, JSON and YAML.
    let inspect = json(&bosun(ep, &["inspect", &f.done[..8]]).await);
    assert_eq!(inspect["status"]["id"], f.done.as_str());
    assert_eq!(inspect["status"]["exitCode"], 3);
    assert_eq!(inspect["status"]["state"], "CONTAINER_EXITED");
    assert!(inspect["info"].is_object());
    let inspect_yaml = stdout(&bosun(ep, &["inspect", "-o", "yaml", &f.app]).await);
    assert!(inspect_yaml.contains("CONTAINER_RUNNING"), "{inspect_yaml}");
    let inspectp = json(&bosun(ep, &["inspectp", &f.pod[..5]]).await);
    assert_eq!(inspectp["status"]["metadata"]["name"], "web");
    assert!(f.node.subnet_contains(
        inspectp["status"]["network"]["ip"]
            .as_str()
            .expect("pod ip")
    ));
    let inspecti = json(&bosun(ep, &["inspecti", BUSYBOX_IMAGE]).await);
    assert!(inspecti["status"]["repoTags"]
        .to_string()
        .contains(BUSYBOX_IMAGE));

    // logs: streams kept apart, --tail, --timestamps, --since.
    let logs = bosun(ep, &["logs", &f.app]).await;
    assert_eq!(stdout(&logs), "hello-stdout\n");
    assert_eq!(String::from_utf8_lossy(&logs.stderr), "hello-stderr\n");
    let tail = bosun(ep, &["logs", "--tail", "1", &f.app]).await;
    // The two streams reach the log through separate pipes: the file says which came last.
    let log = std::fs::read_to_string(log_directory(&f.node, "web").join("app/0.log"))?;
    let last = log.lines().last().expect("a log line");
    let (on_stdout, on_stderr) = (
        stdout(&tail),
        String::from_utf8_lossy(&tail.stderr).into_owned(),
    );
    if last.contains(" stdout ") {
        assert_eq!(
            (on_stdout.as_str(), on_stderr.as_str()),
            ("hello-stdout\n", "")
        );
    } else {
        assert_eq!(
            (on_stdout.as_str(), on_stderr.as_str()),
            ("", "hello-stderr\n")
        );
    }
    let stamped = stdout(&bosun(ep, &["logs", "-t", &f.done]).await);
    let (stamp, text) = stamped
        .trim_end()
        .split_once(' ')
        .expect("timestamp and text");
    assert!(bosun_cri::logs::parse_rfc3339(stamp).is_some(), "{stamped}");
    assert_eq!(text, "bye");
    assert_eq!(
        stdout(&bosun(ep, &["logs", "--since", "2000-01-01T00:00:00Z", &f.done]).await),
        "bye\n"
    );
    assert_eq!(
        stdout(&bosun(ep, &["logs", "--since", "2999-01-01T00:00:00Z", &f.done]).await),
        ""
    );
    // -f on an exited container prints what there is and returns.
    assert_eq!(stdout(&bosun(ep, &["logs", "-f", &f.done]).await), "bye\n");

    // exec: streaming and --sync, exit codes passed through.
    let exec = bosun(
        ep,
        &["exec", &f.app, "sh", "-c", "echo in-container; exit 4"],
    )
    .await;
    assert_eq!(exec.status.code(), Some(4));
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "in-container\n");
    let exec_ok = stdout(&bosun(ep, &["exec", &f.app[..10], "cat", "/etc/hostname"]).await);
    assert_eq!(exec_ok, "web\n");
    let sync = bosun(
        ep,
        &[
            "exec",
            "-s",
            &f.app,
            "sh",
            "-c",
            "echo sync-out; echo sync-err >&2; exit 2",
        ],
    )
    .await;
    assert_eq!(sync.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&sync.stdout), "sync-out\n");
    assert_eq!(String::from_utf8_lossy(&sync.stderr), "sync-err\n");
    let piped = {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(BOSUN)
            .args([
                "-r",
                ep,
                "exec",
                "-i",
                &f.app,
                "sh",
                "-c",
                "read line; echo got:$line",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"ping\n").await?;
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await??;
        drop(stdin);
        out
    };
    assert_eq!(String::from_utf8_lossy(&piped.stdout), "got:ping\n");

    // exec -it: the command gets a terminal (script(1) gives bosun one), and its exit code.
    // script's stdin is a pipe held open until the command ends: at the end of its input
    // script writes an end-of-file character into the terminal, and if that lands before
    // bosun has put the terminal in raw mode, the terminal echoes it into the output.
    let it = {
        let mut child = tokio::process::Command::new("script")
            .args(["-q", "-e", "-c"])
            .arg(format!(
                "{BOSUN} -r {ep} exec -it {} sh -c 'tty; exit 5'",
                f.app
            ))
            .arg("/dev/null")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin");
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await??;
        drop(stdin);
        out
    };
    let it_out = String::from_utf8_lossy(&it.stdout);
    assert!(it_out.starts_with("/dev/pts/"), "{it_out:?}");
    assert_eq!(it.status.code(), Some(5), "{it_out:?}");

    // logs -f follows a running container and returns when it stops.
    let mut follow = tokio::process::Command::new(BOSUN)
        .args(["-r", ep, "logs", "-f", &f.app])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut followed = tokio::io::BufReader::new(follow.stdout.take().expect("stdout"));
    let mut line = String::new();
    use tokio::io::AsyncBufReadExt;
    followed.read_line(&mut line).await?;
    assert_eq!(line, "hello-stdout\n");
    // Written to PID 1's stdout, so it lands in the container's log.
    let late = "echo late-line > /proc/1/fd/1";
    stdout(&bosun(ep, &["exec", "-s", &f.app, "sh", "-c", late]).await);
    line.clear();
    tokio::time::timeout(Duration::from_secs(10), followed.read_line(&mut line)).await??;
    assert_eq!(line, "late-line\n");

    // stats: the running container, table and JSON.
    let stats = table(&stdout(&bosun(ep, &["stats"]).await));
    assert_eq!(
        stats[0],
        ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]
    );
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[1][0], &f.app[..13]);
    assert_eq!(stats[1][1], "app");
    assert!(stats[1][2].parse::<f64>().is_ok(), "{:?}", stats[1]);
    assert!(stats[1][3].ends_with('B'), "{:?}", stats[1]);
    let stats_json = json(&bosun(ep, &["stats", "-o", "json", &f.app]).await);
    assert_eq!(stats_json["stats"][0]["attributes"]["id"], f.app.as_str());

    f.client
        .stop_container(&f.app, Duration::from_secs(10))
        .await?;
    let ended = tokio::time::timeout(Duration::from_secs(10), follow.wait()).await??;
    assert!(ended.success(), "logs -f ends when the container stops");

    teardown(f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_commands_change_the_runtime() -> anyhow::Result<()> {
    let f = fixture("cli-write").await?;
    let ep = f.node.cri_endpoint();
    let ep = ep.as_str();

    // rm refuses a running container without -f, and says why.
    let refused = bosun(ep, &["rm", &f.app]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is running"));
    // stop, then rm.
    assert_eq!(
        stdout(&bosun(ep, &["stop", "-t", "5", &f.app[..9]]).await),
        format!("{}\n", f.app)
    );
    let state = f
        .client
        .container_status(&f.app, false)
        .await?
        .status
        .expect("status");
    assert_eq!(state.state, api::ContainerState::ContainerExited as i32);
    assert_eq!(
        stdout(&bosun(ep, &["rm", &f.app, &f.done]).await)
            .lines()
            .count(),
        2
    );
    assert!(f.client.list_containers(None).await?.is_empty());

    // stopp, then rmp; a ready pod needs -f.
    let config = sandbox_config(&f.node, "second");
    let second = f.client.run_pod_sandbox(config, "").await?;
    assert!(stdout(&bosun(ep, &["stopp", &f.pod]).await).contains(&f.pod));
    let pods_json = json(&bosun(ep, &["pods", "-o", "json", "--id", &f.pod]).await);
    assert_eq!(pods_json["items"][0]["state"], "SANDBOX_NOTREADY");
    assert!(stdout(&bosun(ep, &["rmp", &f.pod]).await).contains(&f.pod));
    let refused = bosun(ep, &["rmp", &second]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));
    assert!(stdout(&bosun(ep, &["rmp", "-f", &second]).await).contains(&second));
    assert!(f.client.list_pod_sandbox(None).await?.is_empty());

    // rmi, then image import brings it back.
    assert!(stdout(&bosun(ep, &["rmi", BUSYBOX_IMAGE]).await).starts_with("Deleted: sha256:"));
    assert!(f.client.image_status(BUSYBOX_IMAGE, false).await?.is_none());
    let archive = f.node.images().busybox.path.display().to_string();
    let imported = stdout(&bosun(ep, &["image", "import", &archive]).await);
    assert!(
        imported.starts_with(&format!("Imported {BUSYBOX_IMAGE} (sha256:")),
        "{imported}"
    );
    assert!(f.client.image_status(BUSYBOX_IMAGE, false).await?.is_some());

    // pull: no registry is reachable from tests; the failure is one clear line.
    let pull = bosun(ep, &["pull", "localhost:1/none/such:1"]).await;
    assert_eq!(pull.status.code(), Some(1));
    let err = String::from_utf8_lossy(&pull.stderr);
    assert!(
        err.starts_with("bosun: error: pulling image \"localhost:1/none/such:1\""),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    teardown(f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_clear_line() -> anyhow::Result<()> {
    let node = TestNode::start("cli-bad").await?;
    let ep = node.cri_endpoint();
    let ep = ep.as_str();

    let expect_error = |output: &Output, code: i32, needle: &str| {
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(code), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(output.stdout.is_empty());
        err
    };

    // Unknown IDs.
    for args in [
        vec!["inspect", "deadbeef"],
        vec!["inspectp", "deadbeef"],
        vec!["logs", "deadbeef"],
        vec!["exec", "deadbeef", "true"],
        vec!["stop", "deadbeef"],
        vec!["rm", "deadbeef"],
        vec!["rmp", "deadbeef"],
        vec!["stopp", "deadbeef"],
    ] {
        let err = expect_error(&bosun(ep, &args).await, 1, "\"deadbeef\" not found");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    expect_error(
        &bosun(ep, &["inspecti", "localhost/none:1"]).await,
        1,
        "not found",
    );
    expect_error(
        &bosun(ep, &["image", "import", "/nonexistent.tar"]).await,
        1,
        "/nonexistent.tar",
    );

    // A dead socket and a wrong scheme.
    let dead = node.dir().join("dead.sock");
    let dead_ep = format!("unix://{}", dead.display());
    let err = expect_error(
        &bosun_raw(&["-r", &dead_ep, "ps"]).await,
        1,
        "cannot connect to the runtime",
    );
    assert!(
        err.contains(&dead.display().to_string()) && err.lines().count() == 1,
        "{err}"
    );
    let err = expect_error(
        &bosun_raw(&["-r", &dead_ep, "image", "import", "/etc/hostname"]).await,
        1,
        "cannot connect",
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    expect_error(
        &bosun_raw(&["-r", "tcp://127.0.0.1:1", "ps"]).await,
        1,
        "only unix:// endpoints",
    );
    // The endpoint also comes from the environment, as with crictl.
    let from_env = tokio::process::Command::new(BOSUN)
        .arg("version")
        .env("CONTAINER_RUNTIME_ENDPOINT", &dead_ep)
        .output()
        .await?;
    expect_error(&from_env, 1, &dead.display().to_string());

    // Malformed flags: clap's usage error and exit code 2.
    expect_error(&bosun_raw(&["ps", "--bogus"]).await, 2, "--bogus");
    expect_error(
        &bosun_raw(&["-r", ep, "ps", "--state", "sleeping"]).await,
        2,
        "sleeping",
    );
    expect_error(&bosun_raw(&["-r", ep, "pods", "-o", "xml"]).await, 2, "xml");
    expect_error(&bosun_raw(&["--timeout", "soon", "ps"]).await, 2, "soon");
    expect_error(
        &bosun_raw(&["-r", ep, "logs", "--since", "yesterday", "x"]).await,
        1,
        "--since",
    );
    expect_error(
        &bosun_raw(&["-r", ep, "pods", "--label", "novalue"]).await,
        2,
        "key=value",
    );
    expect_error(&bosun_raw(&["inspect"]).await, 2, "required");

    node.shutdown().await?;
    Ok(())
}

/// `bosun get` needs the daemon, not the runtime: with no daemon, both of its lists say so
/// in one line, and a malformed `--for` is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_without_a_daemon_says_so() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let root_dir = root.path().to_str().expect("a UTF-8 temp dir");
    for what in [
        vec!["pods"],
        vec!["events"],
        vec!["events", "--for", "pod/web", "-o", "wide"],
    ] {
        let mut args = vec!["get"];
        args.extend(&what);
        args.extend(["--root-dir", root_dir]);
        let output = bosun_raw(&args).await;
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{err}");
        assert!(err.contains("is `bosun run` running?"), "{err}");
        assert!(err.contains(root_dir), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(output.stdout.is_empty());
    }
    let output = bosun_raw(&[
        "get",
        "events",
        "--for",
        "deployment/web",
        "--root-dir",
        root_dir,
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown kind \"deployment\""));
    Ok(())
}

async fn teardown(f: Fixture) -> anyhow::Result<()> {
    for pod in f.client.list_pod_sandbox(None).await? {
        f.client.stop_pod_sandbox(&pod.id).await?;
        f.client.remove_pod_sandbox(&pod.id).await?;
    }
    f.node.shutdown().await
}
