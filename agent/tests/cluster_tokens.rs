//! Service account tokens and pull secrets with bosun as its node's kubelet in a real
//! cluster (kube-apiserver, etcd and kube-controller-manager 1.20.2 from
//! `scripts/control-plane.sh`, a real containerd node): a projected volume of the shape
//! newer clusters give every pod ("kube-api-access": a TokenRequest token bound to the pod,
//! the `kube-root-ca.crt` ConfigMap, the namespace), and `imagePullSecrets` that exist or
//! not. No registry is reachable here, so the image is one the node has.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bosun_tests::cluster::{self, in_a_cluster, wait_for};
use bosun_tests::daemon::{NODE_NAME, SLEEP_FOREVER};
use bosun_tests::images::BUSYBOX_IMAGE;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");

/// The claims of a JWT: its middle part, base64url without padding.
fn jwt_claims(token: &str) -> Result<Value> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    ensure!(parts.len() == 3, "not a JWT: {token:?}");
    // Standard base64 with its padding, which `ByteString` reads.
    let mut payload: String = parts[1]
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !payload.len().is_multiple_of(4) {
        payload.push('=');
    }
    let bytes: k8s_openapi::ByteString =
        serde_json::from_value(Value::String(payload)).context("the JWT's payload")?;
    serde_json::from_slice(&bytes.0).context("the JWT's claims")
}

#[tokio::test]
async fn a_projected_token_bound_to_the_pod_and_the_root_ca_reach_the_container() -> Result<()> {
    in_a_cluster("tokens", |plane, node| async move {
        let daemon = match cluster::join(BOSUN.as_ref(), &plane, &node, &[]).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            let manifest = node.dir().join("tokens.yaml");
            // `registry` holds credentials for a registry this pod does not pull from;
            // `absent` does not exist, which warns and blocks nothing.
            std::fs::write(
                &manifest,
                format!(
                    r#"apiVersion: v1
kind: Secret
metadata: {{name: registry, namespace: default}}
type: kubernetes.io/dockerconfigjson
stringData: {{.dockerconfigjson: '{{"auths": {{"registry.example.com": {{"auth": "dXNlcjpwdw=="}}}}}}'}}
---
apiVersion: v1
kind: Pod
metadata: {{name: tokens, namespace: default}}
spec:
  nodeName: {NODE_NAME}
  terminationGracePeriodSeconds: 1
  imagePullSecrets: [{{name: registry}}, {{name: absent}}]
  volumes:
  - name: kube-api-access
    projected:
      sources:
      - serviceAccountToken: {{audience: api, expirationSeconds: 600, path: token}}
      - configMap: {{name: kube-root-ca.crt, items: [{{key: ca.crt, path: ca.crt}}]}}
      - downwardAPI: {{items: [{{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}]}}
  containers:
  - name: app
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, {SLEEP_FOREVER:?}]
    volumeMounts: [{{name: kube-api-access, mountPath: /var/run/secrets/tokens, readOnly: true}}]
"#
                ),
            )?;
            plane
                .kubectl(["apply", "-f", manifest.to_str().unwrap_or_default()])
                .await?;
            let pod = wait_for(&plane, &["pod", "tokens"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Running"
            })
            .await?;
            let id = bosun_tests::daemon::container_id(&pod, "app");
            let cri = node.cri().await?;
            let sh = |script: &'static str| bosun_tests::daemon::sh(&cri, &id, script);

            let token = sh("cat /var/run/secrets/tokens/token").await?;
            let claims = jwt_claims(&token)?;
            ensure!(claims["aud"] == serde_json::json!(["api"]), "{claims:#}");
            let bound = &claims["kubernetes.io"];
            ensure!(bound["pod"]["name"] == "tokens", "{claims:#}");
            ensure!(bound["pod"]["uid"] == pod["metadata"]["uid"], "{claims:#}");
            ensure!(bound["serviceaccount"]["name"] == "default", "{claims:#}");
            let lifetime = claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0);
            ensure!(lifetime == 600, "the token lives {lifetime} s: {claims:#}");

            let ca = sh("cat /var/run/secrets/tokens/ca.crt").await?;
            ensure!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "ca.crt: {ca:?}");
            let ours = std::fs::read_to_string(plane.dir().join("pki/ca.crt"))?;
            ensure!(ca.trim() == ours.trim(), "ca.crt is not the cluster's CA");
            ensure!(sh("cat /var/run/secrets/tokens/namespace").await? == "default");
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}
