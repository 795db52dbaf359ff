//! The kubelet API bosun serves, used as operators use it: kubectl 1.20 (SPDY streaming)
//! through a real kube-apiserver 1.20.2 to `logs`, `exec`, `port-forward` and `cp` on a pod
//! bosun runs, and requests made straight to the node's port with and without credentials.
//! Each test has its own control plane, node and ports, so they may run in parallel.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bosun_tests::cluster::{self, condition, get_json, in_a_cluster, wait_for};
use bosun_tests::control_plane::ControlPlane;
use bosun_tests::daemon::NODE_NAME;
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");

/// A pod that logs a few lines and serves its name over HTTP on 8080.
async fn start_web(plane: &ControlPlane, node: &TestNode) -> Result<Value> {
    let manifest = node.dir().join("web.yaml");
    std::fs::write(&manifest, web_manifest())?;
    plane
        .kubectl(["apply", "-f", &manifest.to_string_lossy()])
        .await?;
    wait_for(plane, &["pod", "web"], Duration::from_secs(60), |p| {
        p["status"]["phase"] == "Running" && condition(p, "Ready") == "True"
    })
    .await
}

/// A pod that logs three lines on stdout and one on stderr, then serves its name over HTTP
/// on 8080.
fn web_manifest() -> String {
    let command = "for i in 1 2 3; do echo line-$i; done; echo to-stderr >&2; \
                   mkdir -p /www && echo web > /www/index.html && exec httpd -f -p 8080 -h /www";
    pod_manifest("web", command)
}

/// A pod whose container prints a line that is its own and fails a second later, forever.
fn crash_manifest() -> String {
    pod_manifest(
        "crash",
        "echo instance-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 1",
    )
}

fn pod_manifest(name: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  \
         nodeName: {NODE_NAME}\n  terminationGracePeriodSeconds: 1\n  containers:\n  \
         - {{name: app, image: {BUSYBOX_IMAGE}, imagePullPolicy: IfNotPresent, \
         command: [sh, -c, {command:?}]}}\n"
    )
}

/// The node's kubelet API as its Node object announces it: `https://IP:PORT`.
async fn kubelet_url(plane: &ControlPlane) -> Result<String> {
    let node = get_json(plane, &["node", NODE_NAME]).await?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .context("no kubelet port in the Node")?;
    let ip = node["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .context("no InternalIP in the Node")?;
    Ok(format!("https://{ip}:{port}"))
}

/// `GET /` of the web pod's port 8080 through `kubectl port-forward` (the given kubectl):
/// the first answer that is a 200, or the last one after 10 s of trying.
async fn get_through_port_forward(
    plane: &ControlPlane,
    kubectl: &std::path::Path,
) -> Result<(u16, String)> {
    let local_port = cluster::free_port()?;
    let mut forward = tokio::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig())
        .args(["port-forward", "pod/web", &format!("{local_port}:8080")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut answer = (0, String::new());
    for _ in 0..100 {
        answer = curl(&format!("http://127.0.0.1:{local_port}/"), &[]).await?;
        if answer.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    forward.kill().await.ok();
    Ok(answer)
}

/// `curl` of `url` with `args`, not checking the server's certificate: the HTTP status and
/// the body, or 0 and what curl said.
async fn curl(url: &str, args: &[&str]) -> Result<(u16, String)> {
    let mut all = vec!["-k"];
    all.extend(args);
    curl_checked(url, &all).await
}

/// As [`curl`], checking the server's certificate as `args` say (`--cacert`).
async fn curl_checked(url: &str, args: &[&str]) -> Result<(u16, String)> {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .await
        .context("running curl")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or(0);
    if code == 0 {
        // No answer: what curl says instead.
        return Ok((0, String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok((code, body.to_owned()))
}

#[tokio::test]
async fn kubectl_exec_port_forward_and_cp_reach_a_pod_bosun_runs() -> Result<()> {
    in_a_cluster("kapi-kubectl", |plane, node| async move {
        let daemon = match cluster::join(BOSUN.as_ref(), &plane, &node, &[]).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            start_web(&plane, &node).await?;

            // logs: both streams, --tail, --timestamps, -f.
            let logs = plane.kubectl(["logs", "web"]).await?;
            let mut lines: Vec<&str> = logs.lines().collect();
            lines.sort_unstable();
            ensure!(
                lines == ["line-1", "line-2", "line-3", "to-stderr"],
                "{logs:?}"
            );
            let tail = plane.kubectl(["logs", "web", "--tail=2"]).await?;
            ensure!(tail.lines().count() == 2, "{tail:?}");
            let stamped = plane
                .kubectl(["logs", "web", "--timestamps", "--tail=1"])
                .await?;
            ensure!(
                stamped.len() > 30 && stamped.as_bytes()[4] == b'-' && stamped.contains('T'),
                "{stamped:?}"
            );
            let mut follow = tokio::process::Command::new(plane.kubectl_path())
                .arg("--kubeconfig")
                .arg(plane.admin_kubeconfig())
                .args(["logs", "-f", "web"])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut followed = tokio::io::BufReader::new(follow.stdout.take().context("stdout")?);
            plane
                .kubectl([
                    "exec",
                    "web",
                    "--",
                    "sh",
                    "-c",
                    "echo late-line > /proc/1/fd/1",
                ])
                .await?;
            let mut seen = String::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while !seen.contains("late-line\n") {
                use tokio::io::AsyncBufReadExt;
                let mut line = String::new();
                let read = tokio::time::timeout_at(deadline, followed.read_line(&mut line)).await;
                ensure!(
                    matches!(read, Ok(Ok(n)) if n > 0),
                    "logs -f stopped: {seen:?}"
                );
                seen.push_str(&line);
            }
            follow.kill().await.ok();

            // exec, through the API server, with the exit code passed back.
            let out = plane
                .kubectl([
                    "exec",
                    "web",
                    "--",
                    "sh",
                    "-c",
                    "echo from-exec; cat /www/index.html",
                ])
                .await?;
            ensure!(out == "from-exec\nweb\n", "{out:?}");
            let failed = plane
                .kubectl(["exec", "web", "--", "sh", "-c", "exit 7"])
                .await
                .err()
                .context("exit 7 is a failure")?;
            ensure!(format!("{failed:#}").contains("exit code 7"), "{failed:#}");
            // stdin goes in.
            let piped = tokio::process::Command::new(plane.kubectl_path())
                .arg("--kubeconfig")
                .arg(plane.admin_kubeconfig())
                .args(["exec", "-i", "web", "--", "sh", "-c", "read l; echo got:$l"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let piped = {
                use tokio::io::AsyncWriteExt;
                let mut piped = piped;
                let mut stdin = piped.stdin.take().context("stdin")?;
                stdin.write_all(b"ping\n").await?;
                drop(stdin);
                tokio::time::timeout(Duration::from_secs(30), piped.wait_with_output()).await??
            };
            ensure!(
                String::from_utf8_lossy(&piped.stdout) == "got:ping\n",
                "{piped:?}"
            );

            // exec -it: the command gets a terminal, and its exit code comes back. kubectl
            // needs a terminal of its own: script(1) gives it one, its stdin held open (at
            // the end of its input script would type an end-of-file into the terminal).
            let it = {
                let mut child = tokio::process::Command::new("script")
                    .args(["-q", "-e", "-c"])
                    .arg(format!(
                        "{} --kubeconfig {} exec -it web -- sh -c 'tty; exit 3'",
                        plane.kubectl_path().display(),
                        plane.admin_kubeconfig().display()
                    ))
                    .arg("/dev/null")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()?;
                let stdin = child.stdin.take().context("stdin")?;
                let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
                    .await??;
                drop(stdin);
                out
            };
            let it_out = String::from_utf8_lossy(&it.stdout);
            ensure!(it_out.starts_with("/dev/pts/"), "{it_out:?}");
            ensure!(it.status.code() == Some(3), "{:?} {it_out:?}", it.status);

            // attach: stdin reaches the container's process, its output comes back.
            let echo = node.dir().join("echo.yaml");
            std::fs::write(
                &echo,
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: echo, namespace: default}}\n\
                     spec:\n  nodeName: {NODE_NAME}\n  terminationGracePeriodSeconds: 1\n  \
                     containers:\n  - {{name: app, image: {BUSYBOX_IMAGE}, \
                     imagePullPolicy: IfNotPresent, stdin: true, command: [cat]}}\n"
                ),
            )?;
            plane
                .kubectl(["apply", "-f", &echo.to_string_lossy()])
                .await?;
            wait_for(&plane, &["pod", "echo"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running"
            })
            .await?;
            let mut attach = tokio::process::Command::new(plane.kubectl_path())
                .arg("--kubeconfig")
                .arg(plane.admin_kubeconfig())
                .args(["attach", "-i", "echo"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            let mut attached = tokio::io::BufReader::new(attach.stdout.take().context("stdout")?);
            let mut to_container = attach.stdin.take().context("stdin")?;
            let mut line = String::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while line != "attached\n" {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                // Lines sent before the stream is up are not seen by anyone: send until one
                // comes back.
                to_container.write_all(b"attached\n").await?;
                line.clear();
                let read =
                    tokio::time::timeout(Duration::from_millis(500), attached.read_line(&mut line))
                        .await;
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "attach: nothing came back"
                );
                if let Ok(Err(e)) = read {
                    return Err(e.into());
                }
            }
            attach.kill().await.ok();

            // cp both ways (exec of tar).
            let local = node.dir().join("to-pod.txt");
            std::fs::write(&local, "copied in\n")?;
            plane
                .kubectl(["cp", &local.to_string_lossy(), "default/web:/tmp/in.txt"])
                .await?;
            let inside = plane
                .kubectl(["exec", "web", "--", "cat", "/tmp/in.txt"])
                .await?;
            ensure!(inside == "copied in\n", "{inside:?}");
            let back = node.dir().join("from-pod.html");
            plane
                .kubectl(["cp", "default/web:/www/index.html", &back.to_string_lossy()])
                .await?;
            ensure!(std::fs::read_to_string(&back)? == "web\n");

            // port-forward, with a real TCP client through it.
            let answer = get_through_port_forward(&plane, plane.kubectl_path()).await?;
            ensure!(answer == (200, "web\n".to_owned()), "{answer:?}");

            // --previous: the last instance of a restarted container.
            let no_previous = plane.kubectl(["logs", "web", "--previous"]).await.err();
            ensure!(
                no_previous
                    .as_ref()
                    .is_some_and(|e| format!("{e:#}").contains("previous terminated container")),
                "{no_previous:?}"
            );
            let crash = node.dir().join("crash.yaml");
            std::fs::write(&crash, crash_manifest())?;
            plane
                .kubectl(["apply", "-f", &crash.to_string_lossy()])
                .await?;
            let crashed = wait_for(&plane, &["pod", "crash"], Duration::from_secs(60), |p| {
                p["status"]["containerStatuses"][0]["restartCount"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
            })
            .await?;
            ensure!(
                crashed["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"]
                    == 1
            );
            let previous = plane.kubectl(["logs", "crash", "--previous"]).await?;
            ensure!(
                previous.starts_with("instance-") && previous.lines().count() == 1,
                "{previous:?}"
            );

            // The node's own endpoints through the API server's proxy.
            let healthz = plane
                .kubectl([
                    "get",
                    "--raw",
                    &format!("/api/v1/nodes/{NODE_NAME}/proxy/healthz"),
                ])
                .await?;
            ensure!(healthz == "ok", "{healthz:?}");
            let pods: Value = serde_json::from_str(
                &plane
                    .kubectl([
                        "get",
                        "--raw",
                        &format!("/api/v1/nodes/{NODE_NAME}/proxy/pods"),
                    ])
                    .await?,
            )?;
            ensure!(
                pods["items"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|p| p["metadata"]["name"] == "web")),
                "{pods:#}"
            );
            // What metrics-server reads: the summary and the resource metrics, with the pod.
            let summary: Value = serde_json::from_str(
                &plane
                    .kubectl([
                        "get",
                        "--raw",
                        &format!("/api/v1/nodes/{NODE_NAME}/proxy/stats/summary"),
                    ])
                    .await?,
            )?;
            ensure!(summary["node"]["nodeName"] == NODE_NAME, "{summary:#}");
            ensure!(
                summary["node"]["memory"]["workingSetBytes"]
                    .as_u64()
                    .is_some_and(|b| b > 0),
                "{summary:#}"
            );
            let web = summary["pods"]
                .as_array()
                .and_then(|pods| pods.iter().find(|p| p["podRef"]["name"] == "web"))
                .with_context(|| format!("no web in the summary: {summary:#}"))?;
            ensure!(web["containers"][0]["name"] == "app", "{web:#}");
            ensure!(
                web["memory"]["workingSetBytes"]
                    .as_u64()
                    .is_some_and(|b| b > 0),
                "{web:#}"
            );
            let metrics = plane
                .kubectl([
                    "get",
                    "--raw",
                    &format!("/api/v1/nodes/{NODE_NAME}/proxy/metrics/resource"),
                ])
                .await?;
            ensure!(
    metrics.contains(
        r#"container_cpu_usage_seconds_total{container="app",namespace="default",pod="web"}"#
    ),
    "{metrics}"
);
            ensure!(metrics.contains("resource_scrape_error 0"), "{metrics}");
            // What Prometheus scrapes: kubelet's metrics, with the pods the PLEG counts, and
            // the probes' page.
            let metrics = plane
                .kubectl([
                    "get",
                    "--raw",
                    &format!("/api/v1/nodes/{NODE_NAME}/proxy/metrics"),
                ])
                .await?;
            let node_name = format!(r#"kubelet_node_name{{node="{NODE_NAME}"}} 1"#);
            ensure!(metrics.lines().any(|l| l == node_name), "{metrics}");
            let running_pods = metrics
                .lines()
                .find_map(|l| l.strip_prefix("kubelet_running_pods "))
                .and_then(|v| v.parse::<f64>().ok());
            ensure!(running_pods >= Some(1.0), "{metrics}");
            let probes = plane
                .kubectl([
                    "get",
                    "--raw",
                    &format!("/api/v1/nodes/{NODE_NAME}/proxy/metrics/probes"),
                ])
                .await?;
            // The pods here have no probes, and a family without series is left out, as
            // kubelet leaves it out: the page answers, empty.
            ensure!(probes.trim().is_empty(), "{probes}");
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

/// A key and a certificate for `subject` signed by a CA of its own, made with openssl.
fn foreign_certificate(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()?;
        ensure!(status.success(), "openssl {args:?}");
        Ok(())
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other-ca.key",
        "-out",
        "other-ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=other-ca",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "other.key",
        "-out",
        "other.csr",
        "-subj",
        "/O=system:masters/CN=intruder",
    ])?;
    // A v3 certificate, as CAs issue them (a v1 one is refused by the TLS handshake itself).
    std::fs::write(
        dir.join("other.ext"),
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    )?;
    run(&[
        "x509",
        "-extfile",
        "other.ext",
        "-req",
        "-in",
        "other.csr",
        "-CA",
        "other-ca.crt",
        "-CAkey",
        "other-ca.key",
        "-CAcreateserial",
        "-out",
        "other.crt",
        "-days",
        "1",
    ])
}

#[tokio::test]
async fn the_kubelet_port_serves_only_whom_the_cluster_allows() -> Result<()> {
    in_a_cluster("kapi-auth", |plane, node| async move {
        let daemon = match cluster::join(BOSUN.as_ref(), &plane, &node, &[]).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            start_web(&plane, &node).await?;
            let url = kubelet_url(&plane).await?;
            let pki = plane.dir().join("pki");
            let admin_cert = pki.join("admin.crt").to_string_lossy().into_owned();
            let admin_key = pki.join("admin.key").to_string_lossy().into_owned();
            let admin = vec!["--cert", admin_cert.as_str(), "--key", admin_key.as_str()];

            // A client certificate of the cluster's CA: allowed (the SubjectAccessReview says
            // yes to system:masters).
            let (code, body) = curl(&format!("{url}/pods"), &admin).await?;
            ensure!(code == 200, "{code} {body}");
            ensure!(body.contains("\"web\""), "{body}");
            let (code, body) = curl(&format!("{url}/healthz"), &admin).await?;
            ensure!((code, body.as_str()) == (200, "ok"), "{code} {body}");
            let (code, _) = curl(&format!("{url}/no/such/path"), &admin).await?;
            ensure!(code == 404);

            // No credentials, or a certificate of another CA: 401, kubelet's body.
            let (code, body) = curl(&format!("{url}/pods"), &[]).await?;
            ensure!(
                (code, body.as_str()) == (401, "Unauthorized"),
                "{code} {body}"
            );
            foreign_certificate(node.dir())?;
            let other = node.dir();
            let (code, body) = curl(
                &format!("{url}/pods"),
                &[
                    "--cert",
                    &other.join("other.crt").to_string_lossy(),
                    "--key",
                    &other.join("other.key").to_string_lossy(),
                ],
            )
            .await?;
            ensure!(
                (code, body.as_str()) == (401, "Unauthorized"),
                "{code} {body}"
            );

            // A ServiceAccount's token: the API server vouches for it (TokenReview), but RBAC
            // gives it nothing on nodes/proxy: 403, and the command never runs.
            plane
                .kubectl(["create", "serviceaccount", "nobody"])
                .await?;
            let secret = wait_for(
                &plane,
                &["serviceaccount", "nobody"],
                Duration::from_secs(30),
                |sa| sa["secrets"][0]["name"].is_string(),
            )
            .await?;
            let secret_name = secret["secrets"][0]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let token_b64 = plane
                .kubectl([
                    "get",
                    "secret",
                    &secret_name,
                    "-o",
                    "jsonpath={.data.token}",
                ])
                .await?;
            let token = {
                use base64::Engine as _;
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD.decode(token_b64.trim())?,
                )?
            };
            let bearer = format!("Authorization: Bearer {token}");
            let (code, body) = curl(
                &format!("{url}/run/default/web/app?cmd=touch%20/tmp/ran"),
                &["-X", "POST", "-H", &bearer],
            )
            .await?;
            ensure!(code == 403, "{code} {body}");
            ensure!(
                body == "Forbidden (user=system:serviceaccount:default:nobody, verb=create, \
                     resource=nodes, subresource=proxy)",
                "{body}"
            );
            let ran = plane.kubectl(["exec", "web", "--", "ls", "/tmp"]).await?;
            ensure!(!ran.contains("ran"), "the refused command ran: {ran:?}");
            // The same request with the cluster's certificate runs.
            let mut run_args = admin.clone();
            run_args.extend(["-X", "POST"]);
            let run_url = format!("{url}/run/default/web/app?cmd=touch%20/tmp/ran");
            let (code, _) = curl(&run_url, &run_args).await?;
            ensure!(code == 200);
            let ran = plane.kubectl(["exec", "web", "--", "ls", "/tmp"]).await?;
            ensure!(ran.lines().any(|f| f == "ran"), "{ran:?}");
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

#[tokio::test]
async fn with_server_tls_bootstrap_the_port_serves_a_certificate_the_cluster_signed() -> Result<()>
{
    in_a_cluster("kapi-serving", |plane, node| async move {
        let daemon = match cluster::join_with_config(
            BOSUN.as_ref(),
            &plane,
            &node,
            &[],
            "serverTLSBootstrap: true\n",
        )
        .await
        {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            let signer = "kubernetes.io/kubelet-serving";
            let requests = wait_for(&plane, &["csr"], Duration::from_secs(30), |list| {
                list["items"].as_array().is_some_and(|items| {
                    items.iter().any(|csr| csr["spec"]["signerName"] == signer)
                })
            })
            .await?;
            let csr = requests["items"]
                .as_array()
                .and_then(|items| items.iter().find(|csr| csr["spec"]["signerName"] == signer))
                .context("the serving request")?;
            ensure!(
                csr["spec"]["username"] == format!("system:node:{NODE_NAME}"),
                "{csr:#}"
            );
            let name = csr["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let url = kubelet_url(&plane).await?;
            let pki = plane.dir().join("pki");
            let ca = pki.join("ca.crt").to_string_lossy().into_owned();
            let cert = pki.join("admin.crt").to_string_lossy().into_owned();
            let key = pki.join("admin.key").to_string_lossy().into_owned();
            let args = [
                "--cacert",
                ca.as_str(),
                "--cert",
                cert.as_str(),
                "--key",
                key.as_str(),
            ];
            // Not approved yet: no certificate, no handshake.
            let (code, said) = curl_checked(&format!("{url}/healthz"), &args).await?;
            ensure!(code == 0, "served before approval: {code} {said}");

            plane.kubectl(["certificate", "approve", &name]).await?;
            let mut answer = (0, String::new());
            for _ in 0..100 {
                answer = curl_checked(&format!("{url}/healthz"), &args).await?;
                if answer.0 == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // The cluster's CA vouches for the node's address: curl checked it.
            ensure!(answer == (200, "ok".to_owned()), "{answer:?}");
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

/// A pod that writes `lines` numbered lines to stdout after two seconds, half of them, then
/// the rest five seconds later (a log rotation falls between: the first half is far over the
/// size limit), then sleeps; and serves `/www/big`, 100 MiB of random bytes, with its digest
/// in `/www/big.sha256`.
fn stress_manifest(lines: u32) -> String {
    let half = lines / 2;
    pod_manifest(
        "stress",
        &format!(
            "mkdir -p /www && dd if=/dev/urandom of=/www/big bs=1M count=100 2>/dev/null && \
             sha256sum /www/big | cut -d' ' -f1 > /www/big.sha256 && \
             (httpd -f -p 8080 -h /www &) && sleep 2 && \
             i=1; while [ $i -le {half} ]; do echo line-$i; i=$((i+1)); done; sleep 5; \
             while [ $i -le {lines} ]; do echo line-$i; i=$((i+1)); done; \
             exec sleep 3600"
        ),
    )
}

#[tokio::test]
async fn streams_under_load_lose_nothing() -> Result<()> {
    const LINES: u32 = 100_000;
    in_a_cluster("kapi-stress", |plane, node| async move {
        // Small logs, rotated often, so that following crosses rotations.
        let config = "containerLogMaxSize: 256Ki\ncontainerLogMaxFiles: 3\n\
                      containerLogMonitorInterval: 3s\n";
        let daemon =
            match cluster::join_with_config(BOSUN.as_ref(), &plane, &node, &[], config).await {
                Ok(daemon) => daemon,
                Err(e) => panic!("starting bosun: {e:#}"),
            };
        let result = async {
            let manifest = node.dir().join("stress.yaml");
            std::fs::write(&manifest, stress_manifest(LINES))?;
            plane
                .kubectl(["apply", "-f", &manifest.to_string_lossy()])
                .await?;
            wait_for(&plane, &["pod", "stress"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running"
            })
            .await?;

            // logs -f of a container writing fast, across rotations: every line, in order.
            let mut follow = tokio::process::Command::new(plane.kubectl_path())
                .arg("--kubeconfig")
                .arg(plane.admin_kubeconfig())
                .args(["logs", "-f", "stress"])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let mut followed = tokio::io::BufReader::new(follow.stdout.take().context("stdout")?);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut next = 1u32;
            while next <= LINES {
                use tokio::io::AsyncBufReadExt;
                let mut line = String::new();
                let read = tokio::time::timeout_at(deadline, followed.read_line(&mut line)).await;
                ensure!(
                    matches!(read, Ok(Ok(n)) if n > 0),
                    "logs -f ended or stalled after line {}",
                    next - 1
                );
                ensure!(
                    line == format!("line-{next}\n"),
                    "after line {}: {line:?}",
                    next - 1
                );
                next += 1;
            }
            follow.kill().await.ok();
            let rotated = std::fs::read_dir(node.dir().join("pod-logs"))?
                .flatten()
                .flat_map(|pod| {
                    std::fs::read_dir(pod.path().join("app"))
                        .into_iter()
                        .flatten()
                })
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().contains(".log."))
                .count();
            ensure!(rotated >= 1, "the log was never rotated while followed");

            // 100 MiB through port-forward, intact.
            let local_port = cluster::free_port()?;
            let mut forward = tokio::process::Command::new(plane.kubectl_path())
                .arg("--kubeconfig")
                .arg(plane.admin_kubeconfig())
                .args(["port-forward", "pod/stress", &format!("{local_port}:8080")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()?;
            let want = plane
                .kubectl(["exec", "stress", "--", "cat", "/www/big.sha256"])
                .await?;
            let mut got = String::new();
            for _ in 0..100 {
                let output = tokio::process::Command::new("bash")
                    .arg("-c")
                    .arg(format!(
                        "set -o pipefail; \
                         curl -sSf --max-time 120 http://127.0.0.1:{local_port}/big | sha256sum"
                    ))
                    .output()
                    .await?;
                got = String::from_utf8_lossy(&output.stdout).into_owned();
                if output.status.success() && got.len() > 64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            forward.kill().await.ok();
            ensure!(
                got.split_whitespace().next() == Some(want.trim()),
                "100 MiB through port-forward: {got:?} against {want:?}"
            );
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

/// `kubectl ARGS` with the current kubectl and the admin kubeconfig: stdout and stderr.
async fn modern_kubectl(plane: &ControlPlane, args: &[&str]) -> Result<(String, String)> {
    let output = tokio::process::Command::new(plane.modern_kubectl_path())
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig())
        .args(args)
        .output()
        .await
        .context("running the current kubectl")?;
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    );
    ensure!(output.status.success(), "kubectl {args:?}: {err}");
    Ok((out, err))
}

/// kubectl 1.37 asks for WebSocket (`v5.channel.k8s.io`) first; containerd 1.6's streaming
/// server refuses it (403), bosun passes the refusal back as it is, and kubectl falls back to
/// SPDY, as it does with any kubelet older than 1.30.
#[tokio::test]
async fn a_current_kubectl_execs_logs_and_forwards_too() -> Result<()> {
    in_a_cluster("kapi-modern", |plane, node| async move {
        let daemon = match cluster::join(BOSUN.as_ref(), &plane, &node, &[]).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            start_web(&plane, &node).await?;
            let (out, err) =
                modern_kubectl(&plane, &["exec", "web", "--", "cat", "/www/index.html"]).await?;
            ensure!(out == "web\n", "{out:?} {err:?}");
            eprintln!("kubectl 1.37 exec said on stderr: {err:?}");
            let (logs, _) = modern_kubectl(&plane, &["logs", "web", "--tail=1"]).await?;
            ensure!(logs.lines().count() == 1, "{logs:?}");
            let local = node.dir().join("modern.txt");
            std::fs::write(&local, "from a current kubectl\n")?;
            modern_kubectl(
                &plane,
                &[
                    "cp",
                    &local.to_string_lossy(),
                    "default/web:/tmp/modern.txt",
                ],
            )
            .await?;
            let inside = plane
                .kubectl(["exec", "web", "--", "cat", "/tmp/modern.txt"])
                .await?;
            ensure!(inside == "from a current kubectl\n", "{inside:?}");
            let answer = get_through_port_forward(&plane, &plane.modern_kubectl_path()).await?;
            ensure!(answer == (200, "web\n".to_owned()), "{answer:?}");
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}
