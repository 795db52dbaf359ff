//! `bosun-testnode`: runs a test node in the foreground, for demos and for trying bosun by
//! hand against a real runtime. The first line on stdout is the node's CRI endpoint.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bosun_tests::fixtures::{busybox_container, sandbox_config};
use bosun_tests::{reap_stale_nodes, NodeOptions, TestNode, BASE_DIR};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(about = "Runs a bosun test node: a private containerd with CRI, CNI and the test images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts a node and keeps it until SIGINT or SIGTERM, then removes everything it made.
    Up {
        /// The node's directory (absent or empty; removed when the node stops).
        #[arg(long)]
        dir: PathBuf,
        /// Names the node's cgroup parent.
        #[arg(long, default_value = "testnode")]
        name: String,
        /// Also runs a demo pod: busybox httpd on port 8080.
        #[arg(long)]
        demo: bool,
    },
    /// Removes what test nodes whose process died left behind.
    Reap,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Up { dir, name, demo } => up(dir, &name, demo).await,
        Command::Reap => reap_stale_nodes(&PathBuf::from(BASE_DIR).join("slots"))
            .map(|slots| eprintln!("cleaned up slots {slots:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bosun-testnode: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(dir: PathBuf, name: &str, demo: bool) -> Result<()> {
    // Installed first, so that a signal during start-up is seen once the node is up.
    let mut terminate = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("handling SIGINT")?;

    let node = TestNode::start_with(NodeOptions {
        dir: Some(dir),
        ..NodeOptions::new(name)
    })
    .await?;
    println!("{}", node.cri_endpoint());
    let timings = node.timings();
    eprintln!(
        "node {} up in {}: images {:?}, containerd {:?}, import {:?}; subnet {}, bridge {}",
        node.name(),
        node.dir().display(),
        timings.images,
        timings.containerd,
        timings.import,
        node.subnet(),
        node.bridge()
    );
    if demo {
        if let Err(err) = run_demo(&node).await {
            node.shutdown().await?;
            return Err(err);
        }
    }

    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    eprintln!("stopping: removing pods, containerd and the node's files");
    node.shutdown().await
}

/// One pod: a sandbox and a busybox httpd serving a greeting on port 8080.
async fn run_demo(node: &TestNode) -> Result<()> {
    let cri = node.cri().await?;
    let sandbox_config = sandbox_config(node, "demo");
    let sandbox = cri.run_pod_sandbox(sandbox_config.clone(), "").await?;
    let script = "mkdir -p /tmp/www && echo 'hello from a bosun test pod' > /tmp/www/index.html \
                  && exec httpd -f -v -p 8080 -h /tmp/www";
    let container = cri
        .create_container(&sandbox, busybox_container("httpd", script), sandbox_config)
        .await?;
    cri.start_container(&container).await?;
    let ip = cri
        .pod_sandbox_status(&sandbox, false)
        .await?
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .filter(|ip| !ip.is_empty())
        .context("the demo sandbox has no IP")?;
    let reply = http_get(&format!("{ip}:8080")).await?;
    println!(
        "demo pod {sandbox} serves http://{ip}:8080/ : {}",
        reply.trim()
    );
    Ok(())
}

/// A plain HTTP GET of `/`, retried until the server listens (at most 5 s); returns the body.
async fn http_get(address: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(address).await {
            Ok(mut stream) => {
                stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
                let mut response = String::new();
                stream.read_to_string(&mut response).await?;
                let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
                return Ok(body.to_owned());
            }
            Err(err) if Instant::now() >= deadline => bail!("connecting to {address}: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
