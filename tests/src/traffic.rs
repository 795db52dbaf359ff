//! Traffic for the datapath tests: a web pod answering with its name, HTTP GETs of it, and a
//! client that keeps connecting while a test kills and restarts what it is testing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::images::BUSYBOX_IMAGE;
use crate::netns::NetnsPod;

/// How long one connection may take.
pub const CONNECT: Duration = Duration::from_secs(2);

/// A pod `name` labelled `app: web` whose busybox `httpd` answers on its named port `http`
/// (8080) with its name, Ready while `/tmp/ready` exists (checked every second, one failure
/// takes it out). `spec` is added to the pod's spec as it is (indented by two spaces), such
/// as a `nodeName`.
pub fn web_pod(name: &str, spec: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{app: web}}
spec:
{spec}  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www && echo {name} > /www/index.html && touch /tmp/ready && exec httpd -f -p 8080 -h /www"]
    ports:
    - {{name: http, containerPort: 8080}}
    readinessProbe:
      exec: {{command: [test, -f, /tmp/ready]}}
      periodSeconds: 1
      timeoutSeconds: 5
      failureThreshold: 1
"#
    )
}

/// GET /index.html over HTTP/1.0: the body, trimmed (a web pod's name).
pub fn http_get(to: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&to, CONNECT)?;
    stream.set_read_timeout(Some(CONNECT))?;
    stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .with_context(|| format!("no body in {response:?}"))?;
    Ok(body.trim().to_owned())
}

/// The names `n` GETs of `to` were answered with (on a blocking thread).
pub async fn http_names(to: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
    names(to, n, http_get).await
}

/// The names `n` requests `ask` made of `to` were answered with (on a blocking thread).
pub async fn names(
    to: SocketAddr,
    n: usize,
    ask: fn(SocketAddr) -> Result<String>,
) -> Result<BTreeSet<String>> {
    tokio::task::spawn_blocking(move || (0..n).map(|_| ask(to)).collect()).await?
}

/// Waits, up to `within`, until 20 requests `ask` makes of `to` in a row are answered by
/// exactly `wanted`.
pub async fn until_answered_by(
    to: SocketAddr,
    wanted: &[&str],
    ask: fn(SocketAddr) -> Result<String>,
    within: Duration,
) -> Result<()> {
    let wanted: BTreeSet<String> = wanted.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + within;
    let mut last = Err(anyhow::anyhow!("not asked yet"));
    while Instant::now() < deadline {
        last = names(to, 20, ask).await;
        if last.as_ref().is_ok_and(|got| *got == wanted) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{to} never answered by exactly {wanted:?}; last: {last:?}")
}

/// Waits, up to `within`, until `reached` (run in `from`'s network namespace) says `want`
/// of `to`: a policy letting `from` in, or keeping it out. Needs a multi-threaded runtime.
pub async fn until_reached(
    from: &NetnsPod,
    to: SocketAddr,
    reached: fn(SocketAddr) -> bool,
    want: bool,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let answered = tokio::task::block_in_place(|| from.enter(move || Ok(reached(to))))?;
        if answered == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "{} → {to}: never {}",
        from.name(),
        if want { "allowed" } else { "denied" }
    )
}

/// A client that repeats one request every 5 ms on a thread until stopped, counting
/// successes and keeping the errors.
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    thread: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl ClientLoop {
    pub fn start(request: impl Fn() -> Result<()> + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = tokio::task::spawn_blocking(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match request() {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(format!("{e:#}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        });
        ClientLoop { stop, thread }
    }

    /// Successes and failures so far.
    pub async fn stop(self) -> Result<(usize, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.thread.await?)
    }
}
