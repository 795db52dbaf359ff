//! bosun as its node's kubelet in a real cluster: kube-apiserver, etcd and
//! kube-controller-manager 1.20.2 started by `scripts/control-plane.sh`, a real containerd
//! node, and bosun joined with the node identity `system:node:node1`. Each test has its own
//! control plane (directory and ports) and node (directory, containerd, CNI subnet), so they
//! may run in parallel.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bosun_tests::cluster::{self, condition, get_json, in_a_cluster, wait_for};
use bosun_tests::control_plane::ControlPlane;
use bosun_tests::daemon::{Daemon, NODE_NAME, SLEEP_FOREVER};
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");

async fn join(plane: &ControlPlane, node: &TestNode) -> Result<Daemon> {
    cluster::join(BOSUN.as_ref(), plane, node, &[]).await
}

#[tokio::test]
async fn a_node_registers_runs_a_bound_pod_reports_it_and_deletes_it_gracefully() -> Result<()> {
    in_a_cluster("join", |plane, node| async move {
        let daemon = match join(&plane, &node).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            // The Node, Ready, with kubelet's labels, and its Lease.
            let node_object = wait_for(&plane, &["node", NODE_NAME], Duration::from_secs(30), |n| {
                condition(n, "Ready") == "True"
            })
            .await?;
            ensure!(node_object["metadata"]["labels"]["kubernetes.io/hostname"] == NODE_NAME);
            ensure!(node_object["status"]["nodeInfo"]["containerRuntimeVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("containerd://")));
            // The images the runtime holds are in the node status.
            wait_for(&plane, &["node", NODE_NAME], Duration::from_secs(30), |n| {
                n["status"]["images"].as_array().is_some_and(|images| {
                    images.iter().any(|i| {
                        i["names"]
                            .as_array()
                            .is_some_and(|names| names.iter().any(|n| n == BUSYBOX_IMAGE))
                    })
                })
            })
            .await?;
            let lease = wait_for(
                &plane,
                &["lease", "-n", "kube-node-lease", NODE_NAME],
                Duration::from_secs(20),
                |l| l["spec"]["renewTime"].is_string(),
            )
            .await?;
            ensure!(lease["metadata"]["ownerReferences"][0]["kind"] == "Node");

            // A pod bound to the node runs, and its status reaches the API server. Its
            // ServiceAccount token (a Secret volume in 1.20) comes from the API server.
            let manifest = node.dir().join("web.yaml");
            std::fs::write(
                &manifest,
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\nspec:\n  nodeName: {NODE_NAME}\n  terminationGracePeriodSeconds: 30\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n    readinessProbe:\n      exec: {{command: [\"true\"]}}\n      periodSeconds: 1\n"
                ),
            )?;
            plane
                .kubectl(["apply", "-f", manifest.to_str().unwrap_or_default()])
                .await?;
            let pod = wait_for(&plane, &["pod", "web"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running" && condition(p, "Ready") == "True"
            })
            .await?;
            ensure!(node.subnet_contains(pod["status"]["podIP"].as_str().unwrap_or_default()));
            ensure!(condition(&pod, "PodScheduled") == "True", "PodScheduled kept: {pod:#}");
            ensure!(pod["status"]["containerStatuses"][0]["ready"] == true);
            ensure!(pod["status"]["hostIP"].is_string());
            // The pod's events reach the API server, as `kubectl get events` shows them.
            let events = wait_for(&plane, &["events"], Duration::from_secs(20), |list| {
                list["items"].as_array().is_some_and(|items| {
                    items.iter().any(|e| {
                        e["involvedObject"]["name"] == "web"
                            && e["reason"] == "Started"
                            && e["source"]["component"] == "bosun"
                    })
                })
            })
            .await;
            ensure!(events.is_ok(), "no Started event: {events:?}");

            // A pod that does not fit is rejected with kubelet's reason, in the API.
            let hog = node.dir().join("hog.yaml");
            std::fs::write(
                &hog,
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog, namespace: default}}\nspec:\n  nodeName: {NODE_NAME}\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    resources: {{requests: {{cpu: '1000'}}}}\n"
                ),
            )?;
            plane
                .kubectl(["apply", "-f", hog.to_str().unwrap_or_default()])
                .await?;
            let hog = wait_for(&plane, &["pod", "hog"], Duration::from_secs(20), |p| {
                p["status"]["phase"] == "Failed"
            })
            .await?;
            ensure!(hog["status"]["reason"] == "OutOfcpu", "{hog:#}");
            ensure!(hog["status"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Pod was rejected: Node didn't have enough resource: cpu, requested: 1000000")));
            // Deleted, a rejected pod's object goes at once: nothing of it ever ran.
            plane
                .kubectl(["delete", "pod", "hog", "--timeout=15s"])
                .await?;

            // Graceful deletion: the container exits at once on SIGTERM, bosun then deletes
            // the object with grace 0, long before the 30 s grace period ends.
            let started = Instant::now();
            plane.kubectl(["delete", "pod", "web", "--wait=false"]).await?;
            let deadline = started + Duration::from_secs(25);
            loop {
                let out = plane
                    .kubectl(["get", "pod", "web", "--ignore-not-found", "-o", "name"])
                    .await?;
                if out.trim().is_empty() {
                    break;
                }
                ensure!(Instant::now() < deadline, "pod still there: {out}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let gone_after = started.elapsed();
            eprintln!("pod deleted in the API → object gone in {gone_after:?}");
            ensure!(gone_after < Duration::from_secs(20), "took {gone_after:?}");

            // Forced out of the API (no grace): the container is killed at once, though it
            // ignores SIGTERM and its grace period is 30 s.
            apply(
                &plane,
                &node,
                "stubborn",
                &probed_pod("stubborn")
                    .replace("terminationGracePeriodSeconds: 1", "terminationGracePeriodSeconds: 30")
                    .replace("trap 'exit 0' TERM", "trap '' TERM"),
            )
            .await?;
            let stubborn = wait_for(&plane, &["pod", "stubborn"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running"
            })
            .await?;
            let id = bosun_tests::daemon::container_id(&stubborn, "app");
            let cri = node.cri().await?;
            let forced = Instant::now();
            plane
                .kubectl(["delete", "pod", "stubborn", "--grace-period=0", "--force"])
                .await?;
            loop {
                let state = cri.container_status(&id, false).await.ok().and_then(|r| r.status).map(|s| s.state);
                if state != Some(bosun_cri::api::ContainerState::ContainerRunning as i32) {
                    break;
                }
                ensure!(forced.elapsed() < Duration::from_secs(10), "still running after a forced deletion");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!("forced deletion → container stopped in {:?}", forced.elapsed());
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

#[tokio::test]
async fn configmaps_and_secrets_come_from_the_api_server_and_edits_reach_the_container(
) -> Result<()> {
    in_a_cluster("objects", |plane, node| async move {
        let daemon = match join(&plane, &node).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            let manifest = node.dir().join("objects.yaml");
            std::fs::write(
                &manifest,
                format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web-conf, namespace: default}}\ndata: {{greeting: hello}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: web-secret, namespace: default}}\nstringData: {{token: s3cret}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: reader, namespace: default}}\nspec:\n  nodeName: {NODE_NAME}\n  terminationGracePeriodSeconds: 1\n  volumes: [{{name: conf, configMap: {{name: web-conf}}}}]\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n    env: [{{name: TOKEN, valueFrom: {{secretKeyRef: {{name: web-secret, key: token}}}}}}]\n    volumeMounts: [{{name: conf, mountPath: /conf}}]\n"
                ),
            )?;
            plane
                .kubectl(["apply", "-f", manifest.to_str().unwrap_or_default()])
                .await?;
            let pod = wait_for(&plane, &["pod", "reader"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running"
            })
            .await?;
            let id = bosun_tests::daemon::container_id(&pod, "app");
            let cri = node.cri().await?;
            let seen = bosun_tests::daemon::sh(&cri, &id, "cat /conf/greeting; echo; echo $TOKEN").await?;
            ensure!(seen == "hello\ns3cret\n", "the container saw {seen:?}");

            // An edit of the ConfigMap reaches the running container's volume.
            plane
                .kubectl(["patch", "configmap", "web-conf", "-p", r#"{"data":{"greeting":"bye"}}"#])
                .await?;
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let now = bosun_tests::daemon::sh(&cri, &id, "cat /conf/greeting").await?;
                if now == "bye" {
                    break;
                }
                ensure!(Instant::now() < deadline, "still {now:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

#[tokio::test]
async fn a_static_pod_has_a_mirror_pod_that_comes_back_and_goes_with_it() -> Result<()> {
    in_a_cluster("mirror", |plane, node| async move {
        let daemon = match join(&plane, &node).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            daemon.write_manifest(
                "static.yaml",
                &bosun_tests::daemon::busybox_pod("static", "", "", SLEEP_FOREVER),
            )?;
            let name = format!("static-{NODE_NAME}");
            let mirror = wait_for(&plane, &["pod", &name], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running"
            })
            .await?;
            let annotations = &mirror["metadata"]["annotations"];
            ensure!(
                annotations["kubernetes.io/config.mirror"].is_string(),
                "{mirror:#}"
            );
            ensure!(annotations["kubernetes.io/config.source"] == "file");
            ensure!(mirror["metadata"]["ownerReferences"][0]["kind"] == "Node");
            let first_uid = mirror["metadata"]["uid"].clone();

            // Deleted, it is made again (a new object); the static pod never stopped.
            plane
                .kubectl(["delete", "pod", &name, "--wait=false"])
                .await?;
            wait_for(&plane, &["pod", &name], Duration::from_secs(30), |p| {
                p["metadata"]["uid"] != first_uid && p["status"]["phase"] == "Running"
            })
            .await?;

            // The manifest removed, the mirror goes too.
            daemon.remove_manifest("static.yaml")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let out = plane
                    .kubectl(["get", "pod", &name, "--ignore-not-found", "-o", "name"])
                    .await?;
                if out.trim().is_empty() {
                    break;
                }
                ensure!(Instant::now() < deadline, "mirror pod still there");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

/// A pod bound to the node: one busybox container with an exec readiness probe every second.
fn probed_pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE_NAME}\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n    readinessProbe:\n      exec: {{command: [\"true\"]}}\n      periodSeconds: 1\n"
    )
}

async fn apply(plane: &ControlPlane, node: &TestNode, name: &str, manifest: &str) -> Result<()> {
    let file = node.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, manifest)?;
    plane
        .kubectl(["apply", "-f", file.to_str().unwrap_or_default()])
        .await
        .map(drop)
}

#[tokio::test]
async fn bosun_killed_and_restarted_adopts_its_pods_and_never_flaps_ready() -> Result<()> {
    in_a_cluster("restart", |plane, node| async move {
        let daemon = match join(&plane, &node).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let mut daemon = Some(daemon);
        let result = async {
            apply(&plane, &node, "steady", &probed_pod("steady")).await?;
            let before = wait_for(&plane, &["pod", "steady"], Duration::from_secs(60), |p| {
                condition(p, "Ready") == "True"
            })
            .await?;
            let id = before["status"]["containerStatuses"][0]["containerID"].clone();

            // Watch the pod's Ready condition in the API server while bosun dies and comes
            // back.
            let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
            let watcher = {
                let admin = plane.admin_kubeconfig().to_owned();
                let plane_kubectl = plane.kubectl_path().to_owned();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    loop {
                        let out = tokio::process::Command::new(&plane_kubectl)
                            .arg("--kubeconfig")
                            .arg(&admin)
                            .args(["get", "pod", "steady", "-o", "json"])
                            .output()
                            .await;
                        if let Ok(out) = out {
                            if let Ok(pod) = serde_json::from_slice::<Value>(&out.stdout) {
                                samples.push(condition(&pod, "Ready").to_owned());
                            }
                        }
                        if stop_rx.try_recv().is_ok() {
                            return samples;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            };
            if let Some(old) = daemon.take() {
                old.kill().await?;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            daemon = Some(join(&plane, &node).await?);
            // Long enough for the new bosun to sync the pod, probe it and write its status.
            tokio::time::sleep(Duration::from_secs(12)).await;
            let _ = stop_tx.send(());
            let samples = watcher.await?;
            ensure!(samples.len() > 20, "too few samples: {}", samples.len());
            ensure!(
                samples.iter().all(|s| s == "True"),
                "Ready went away during the restart: {samples:?}"
            );
            let after = get_json(&plane, &["pod", "steady"]).await?;
            ensure!(
                after["status"]["containerStatuses"][0]["containerID"] == id,
                "the container was replaced"
            );
            ensure!(after["status"]["containerStatuses"][0]["restartCount"] == 0);
            Ok(())
        }
        .await;
        let daemon = match daemon {
            Some(daemon) => daemon,
            None => join(&plane, &node).await.expect("a daemon to return"),
        };
        (plane, node, daemon, result)
    })
    .await
}

#[tokio::test]
async fn the_api_server_away_for_a_while_loses_nothing() -> Result<()> {
    in_a_cluster("apidown", |plane, node| async move {
        let daemon = match join(&plane, &node).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            apply(&plane, &node, "survivor", &probed_pod("survivor")).await?;
            let pod = wait_for(&plane, &["pod", "survivor"], Duration::from_secs(60), |p| {
                condition(p, "Ready") == "True"
            })
            .await?;
            let id = bosun_tests::daemon::container_id(&pod, "app");
            let lease = get_json(&plane, &["lease", "-n", "kube-node-lease", NODE_NAME]).await?;

            plane.stop().await?;
            // While the API server is away the container exits; bosun restarts it.
            let cri = node.cri().await?;
            let _ = bosun_tests::daemon::sh(&cri, &id, "kill 1").await;
            tokio::time::sleep(Duration::from_secs(8)).await;
            plane.start_again().await?;

            // The status written when the API server came back has the restart.
            wait_for(&plane, &["pod", "survivor"], Duration::from_secs(60), |p| {
                p["status"]["containerStatuses"][0]["restartCount"] == 1
                    && condition(p, "Ready") == "True"
            })
            .await?;
            wait_for(
                &plane,
                &["lease", "-n", "kube-node-lease", NODE_NAME],
                Duration::from_secs(30),
                |l| l["spec"]["renewTime"] != lease["spec"]["renewTime"],
            )
            .await?;
            wait_for(&plane, &["node", NODE_NAME], Duration::from_secs(30), |n| {
                condition(n, "Ready") == "True"
            })
            .await?;
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

#[tokio::test]
async fn a_node_joins_by_tls_bootstrapping() -> Result<()> {
    in_a_cluster("tlsboot", |plane, node| async move {
        let bootstrap = match plane.bootstrap_kubeconfig().await {
            Ok(path) => path,
            Err(e) => panic!("a bootstrap kubeconfig: {e:#}"),
        };
        let kubeconfig = node.dir().join("bosun-kubeconfig");
        let cert_dir = node.dir().join("pki");
        let daemon = match Daemon::start_with_args(
            BOSUN.as_ref(),
            &node,
            node.dir(),
            "",
            &[
                "--kubeconfig".as_ref(),
                kubeconfig.as_os_str(),
                "--bootstrap-kubeconfig".as_ref(),
                bootstrap.as_os_str(),
                "--cert-dir".as_ref(),
                cert_dir.as_os_str(),
            ],
        )
        .await
        {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            // The CSR was approved and issued; bosun joined with the node identity.
            wait_for(&plane, &["node", NODE_NAME], Duration::from_secs(60), |n| {
                condition(n, "Ready") == "True"
            })
            .await?;
            ensure!(kubeconfig.exists(), "no kubeconfig written");
            ensure!(cert_dir.join("kubelet-client-current.pem").exists());
            let csrs = get_json(&plane, &["csr"]).await?;
            let issued = csrs["items"].as_array().is_some_and(|items| {
                items.iter().any(|csr| {
                    csr["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
                        && csr["status"]["certificate"].is_string()
                })
            });
            ensure!(issued, "no issued node client CSR: {csrs:#}");
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}

#[tokio::test]
async fn containers_have_the_service_environment_variables_of_the_api_servers_services(
) -> Result<()> {
    in_a_cluster("service-env", |plane, node| async move {
        let daemon = match join(&plane, &node).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: 8080}]\n";
            apply(&plane, &node, "web-service", service).await?;
            let pod = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: env, namespace: default}}\nspec:\n  nodeName: {NODE_NAME}\n  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n    env: [{{name: WEB_URL, value: 'http://$(WEB_SERVICE_HOST):$(WEB_SERVICE_PORT_HTTP)'}}]\n"
            );
            apply(&plane, &node, "env-pod", &pod).await?;
            let pod = wait_for(&plane, &["pod", "env"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running"
            })
            .await?;
            let cluster_ip = |service: Value| service["spec"]["clusterIP"].as_str().map(str::to_owned);
            let web = cluster_ip(get_json(&plane, &["service", "web"]).await?);
            let kubernetes = cluster_ip(get_json(&plane, &["service", "kubernetes"]).await?);
            let (Some(web), Some(kubernetes)) = (web, kubernetes) else {
                anyhow::bail!("a Service without a cluster IP");
            };
            let id = bosun_tests::daemon::container_id(&pod, "app");
            let cri = node.cri().await?;
            let seen = bosun_tests::daemon::sh(
                &cri,
                &id,
                "echo $WEB_SERVICE_HOST $WEB_SERVICE_PORT $WEB_PORT_80_TCP $WEB_URL; echo $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT",
            )
            .await?;
            let expected = format!(
                "{web} 80 tcp://{web}:80 http://{web}:80\n{kubernetes} 443\n"
            );
            ensure!(seen == expected, "the container saw {seen:?}, not {expected:?}");
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}
