//! Probes and lifecycle hooks end to end, against a real containerd: readiness flips the
//! Ready condition both ways, a failed liveness probe restarts the container, the startup
//! probe gates the others, httpGet and tcpSocket probes reach a real server in the pod,
//! a failed postStart hook kills the container, and preStop runs inside the grace period
//! with SIGKILL at its end.
//!
//! Each test starts its own node and its own bosun (see `bosun_tests::daemon`), so they run
//! in parallel within the `containerd` test group.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bosun_cri::{api, CriClient};
use bosun_tests::daemon::{
    self, busybox_pod, condition, container, container_id, ready, sh, Daemon, SLEEP_FOREVER,
};
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(30);

async fn on_a_node<F, Fut>(name: &str, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(TestNode, Daemon) -> Fut,
    Fut: std::future::Future<Output = (TestNode, anyhow::Result<()>)>,
{
    daemon::on_a_node(Path::new(BOSUN), name, "", scenario).await
}

async fn wait_for_event(daemon: &Daemon, reason: &str, text: &str) -> anyhow::Result<Value> {
    daemon.wait_for_event(reason, text, WITHIN).await
}

/// An exec probe on a 1 s period that fails at the first failure; its timeout is generous
/// because an exec through the runtime can take over a second on a loaded test machine,
/// and a timeout is a failure.
fn exec_probe(kind: &str, script: &str, extra: &str) -> String {
    format!(
        "    {kind}:\n      exec: {{command: [sh, -c, {script:?}]}}\n      periodSeconds: 1\n      timeoutSeconds: 5\n      failureThreshold: 1\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_flips_and_liveness_restarts() -> anyhow::Result<()> {
    on_a_node("probe-exec", |node, daemon| async move {
        let result = async {
            let probes = exec_probe("readinessProbe", "test -f /tmp/ready", "")
                + &exec_probe("livenessProbe", "test ! -f /tmp/sick", "");
            daemon.write_manifest("app.yaml", &busybox_pod("app", "", &probes, SLEEP_FOREVER))?;
            let pod = daemon
                .wait_for("app", "a running, unready container", WITHIN, |p| {
                    container(p, "app")["state"]["running"].is_object()
                })
                .await?;
            assert!(
                !ready(&pod),
                "ready before any readiness probe succeeded: {pod:#}"
            );
            assert_eq!(condition(&pod, "ContainersReady"), "False");
            let client = node.cri().await?;
            let id = container_id(&pod, "app");

            sh(&client, &id, "touch /tmp/ready").await?;
            daemon.wait_for("app", "Ready", WITHIN, ready).await?;
            sh(&client, &id, "rm /tmp/ready").await?;
            let unready = daemon
                .wait_for("app", "not Ready", WITHIN, |p| !ready(p))
                .await?;
            assert_eq!(container(&unready, "app")["restartCount"], 0);
            assert_eq!(container(&unready, "app")["ready"], false);
            wait_for_event(&daemon, "Unhealthy", "Readiness probe failed").await?;

            // A failed liveness probe restarts the container.
            sh(&client, &id, "touch /tmp/sick").await?;
            let restarted = daemon
                .wait_for("app", "a restart", WITHIN, |p| {
                    container(p, "app")["restartCount"] == 1
                        && container(p, "app")["state"]["running"].is_object()
                })
                .await?;
            assert_ne!(container_id(&restarted, "app"), id);
            assert!(
                container(&restarted, "app")["lastState"]["terminated"].is_object(),
                "{restarted:#}"
            );
            wait_for_event(&daemon, "Unhealthy", "Liveness probe failed").await?;
            wait_for_event(
                &daemon,
                "Killing",
                "failed liveness probe, will be restarted",
            )
            .await?;
            // The new instance starts unready, with a fresh /tmp.
            let pod = daemon.pod("app").await.unwrap_or_default();
            assert_eq!(container(&pod, "app")["ready"], false, "{pod:#}");
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_probe_gates_the_others_and_its_failure_restarts() -> anyhow::Result<()> {
    on_a_node("probe-startup", |node, daemon| async move {
        let result = async {
            let probes = exec_probe("startupProbe", "test -f /tmp/started", "")
                .replace("failureThreshold: 1", "failureThreshold: 60")
                + &exec_probe("readinessProbe", "true", "")
                + &exec_probe("livenessProbe", "false", "");
            daemon.write_manifest(
                "slow.yaml",
                &busybox_pod("slow", "", &probes, SLEEP_FOREVER),
            )?;
            let pod = daemon
                .wait_for("slow", "running", WITHIN, |p| {
                    container(p, "app")["state"]["running"].is_object()
                })
                .await?;
            // Neither liveness (which would fail) nor readiness (which would pass) runs
            // before the startup probe succeeds.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let pod_now = daemon.pod("slow").await.unwrap_or_default();
            assert_eq!(container(&pod_now, "app")["started"], false, "{pod_now:#}");
            assert_eq!(container(&pod_now, "app")["ready"], false, "{pod_now:#}");
            assert_eq!(container(&pod_now, "app")["restartCount"], 0, "{pod_now:#}");

            let client = node.cri().await?;
            sh(&client, &container_id(&pod, "app"), "touch /tmp/started").await?;
            // Now liveness runs, fails, and the container is restarted.
            daemon
                .wait_for("slow", "a liveness restart", WITHIN, |p| {
                    container(p, "app")["restartCount"].as_i64() >= Some(1)
                })
                .await?;

            // A startup probe that never succeeds kills the container too.
            let failing = exec_probe("startupProbe", "false", "")
                .replace("failureThreshold: 1", "failureThreshold: 2");
            daemon.write_manifest(
                "never.yaml",
                &busybox_pod("never", "", &failing, SLEEP_FOREVER),
            )?;
            daemon
                .wait_for("never", "a startup restart", WITHIN, |p| {
                    container(p, "app")["restartCount"].as_i64() >= Some(1)
                })
                .await?;
            wait_for_event(&daemon, "Killing", "failed startup probe").await?;
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_probes_reach_the_pod() -> anyhow::Result<()> {
    on_a_node("probe-http", |node, daemon| async move {
        let result = async {
            let extra = "    ports: [{name: http, containerPort: 8080}]\n    readinessProbe:\n      httpGet: {path: /index.html, port: http, httpHeaders: [{name: X-Probe, value: bosun}]}\n      periodSeconds: 1\n    livenessProbe:\n      tcpSocket: {port: 8080}\n      periodSeconds: 1\n      failureThreshold: 1\n";
            let script = "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www";
            daemon.write_manifest("web.yaml", &busybox_pod("web", "", extra, script))?;
            let pod = daemon.wait_for("web", "Ready", WITHIN, ready).await?;
            // Removing the page makes the probe fail with the status code.
            let client = node.cri().await?;
            sh(&client, &container_id(&pod, "app"), "rm /www/index.html").await?;
            let unready = daemon
                .wait_for("web", "not Ready", WITHIN, |p| !ready(p))
                .await?;
            wait_for_event(&daemon, "Unhealthy", "statuscode: 404").await?;
            // The tcpSocket liveness probe kept passing: no restart.
            assert_eq!(container(&unready, "app")["restartCount"], 0);
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

/// Polls the container until the runtime reports it exited, and returns when it finished.
async fn finished_at(client: &CriClient, id: &str) -> anyhow::Result<(SystemTime, i32)> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let status = client.container_status(id, false).await?.status;
        if let Some(s) = status {
            if s.state == api::ContainerState::ContainerExited as i32 {
                let at = SystemTime::UNIX_EPOCH
                    + Duration::from_nanos(u64::try_from(s.finished_at).unwrap_or(0));
                return Ok((at, s.exit_code));
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "container {id} never exited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_runs_inside_the_grace_period_and_sigkill_ends_it() -> anyhow::Result<()> {
    on_a_node("hook-prestop", |node, daemon| async move {
        let result = async {
            let spec = "  terminationGracePeriodSeconds: 4\n";
            let hook = "    lifecycle:\n      preStop:\n        sleep: {seconds: 2}\n";
            // PID 1 without a TERM handler ignores SIGTERM: only SIGKILL ends it.
            daemon.write_manifest(
                "stubborn.yaml",
                &busybox_pod("stubborn", spec, hook, "while true; do sleep 1; done"),
            )?;
            // This one leaves at once on SIGTERM, which comes after the hook.
            daemon.write_manifest(
                "polite.yaml",
                &busybox_pod(
                    "polite",
                    spec,
                    hook,
                    "trap 'exit 0' TERM; while true; do sleep 0.1; done",
                ),
            )?;
            let stubborn = daemon.wait_for("stubborn", "Ready", WITHIN, ready).await?;
            let polite = daemon.wait_for("polite", "Ready", WITHIN, ready).await?;
            let client = node.cri().await?;

            let (stubborn_id, polite_id) =
                (container_id(&stubborn, "app"), container_id(&polite, "app"));
            let began = SystemTime::now();
            daemon.remove_manifest("stubborn.yaml")?;
            daemon.remove_manifest("polite.yaml")?;
            let (stubborn, polite) = tokio::join!(
                finished_at(&client, &stubborn_id),
                finished_at(&client, &polite_id),
            );
            let ((stubborn_end, stubborn_code), (polite_end, polite_code)) = (stubborn?, polite?);
            let stubborn_took = stubborn_end.duration_since(began)?;
            let polite_took = polite_end.duration_since(began)?;
            println!("SIGKILL after {stubborn_took:?}; SIGTERM handled after {polite_took:?}");
            assert_eq!(stubborn_code, 137, "killed by SIGKILL");
            assert!(
                stubborn_took >= Duration::from_millis(3800)
                    && stubborn_took < Duration::from_secs(6),
                "SIGKILL at the 4 s deadline, not after {stubborn_took:?}"
            );
            assert_eq!(polite_code, 0);
            assert!(
                polite_took >= Duration::from_millis(1900)
                    && polite_took < Duration::from_millis(3500),
                "SIGTERM only after the 2 s preStop hook, not after {polite_took:?}"
            );
            daemon.wait_gone("stubborn", WITHIN).await?;
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_runs_before_the_next_step_and_its_failure_kills() -> anyhow::Result<()> {
    on_a_node("hook-poststart", |node, daemon| async move {
        let result = async {
            let ok = "    lifecycle:\n      postStart:\n        exec: {command: [sh, -c, 'echo hooked > /tmp/hook']}\n";
            daemon.write_manifest("hooked.yaml", &busybox_pod("hooked", "", ok, SLEEP_FOREVER))?;
            let pod = daemon.wait_for("hooked", "Ready", WITHIN, ready).await?;
            let client = node.cri().await?;
            sh(&client, &container_id(&pod, "app"), "grep -q hooked /tmp/hook").await?;

            let failing = "    lifecycle:\n      postStart:\n        exec: {command: [sh, -c, 'exit 3']}\n";
            daemon.write_manifest(
                "broken.yaml",
                &busybox_pod("broken", "  terminationGracePeriodSeconds: 2\n", failing, SLEEP_FOREVER),
            )?;
            daemon
                .wait_for("broken", "a restart after the failed hook", WITHIN, |p| {
                    container(p, "app")["restartCount"].as_i64() >= Some(1)
                })
                .await?;
            let event = wait_for_event(&daemon, "FailedPostStartHook", "exited with 3").await?;
            assert_eq!(event["type"], "Warning");
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}
