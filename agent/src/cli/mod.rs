//! The crictl-style debug commands: they talk to the CRI endpoint directly, so they work
//! whether or not the bosun daemon is running.

mod containers;
mod dp;
mod exec;
mod get;
mod images;
mod info;
mod logs;
mod man;
mod monitor;
pub mod output;
mod pods;
mod preflight;
mod remove;
mod resolve;
pub mod run;
mod stats;

use std::time::Duration;

use anyhow::{Context as _, Result};
use bosun_cri::CriClient;
use clap::{Args, Parser, Subcommand};

use output::Format;

/// bosun: one daemon per Kubernetes node in place of kubelet and kube-proxy.
///
/// The commands below talk to the container runtime over CRI, as crictl does.
#[derive(Debug, Parser)]
#[command(name = "bosun", version = bosun::VERSION, about, long_about = None)]
pub struct Cli {
    /// The container runtime's CRI endpoint.
    #[arg(
        short = 'r',
        long = "runtime-endpoint",
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = bosun_cri::DEFAULT_RUNTIME_ENDPOINT,
        global = false
    )]
    pub runtime_endpoint: String,

    /// Timeout of each call to the runtime (e.g. 2s, 500ms, 1m).
    #[arg(short = 't', long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Log debug output to stderr (as `--v=4`).
    #[arg(short = 'D', long, global = true)]
    pub debug: bool,

    /// Log verbosity, as kubelet's `-v`: 0–2 info (events and pod lifecycle), 3–4 debug,
    /// 5 and more trace. `RUST_LOG` overrides it.
    #[arg(short = 'v', long = "v", default_value_t = 0, global = true)]
    pub verbosity: u8,

    /// Log format, as kubelet's `--logging-format`: `text` (no colour unless stderr is a
    /// terminal) or `json` (one object per line).
    #[arg(long = "logging-format", default_value = "text", global = true)]
    pub logging_format: LoggingFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoggingFormat {
    Text,
    Json,
}

impl Cli {
    /// The log filter the flags ask for: kubelet's verbosity mapped to levels.
    pub fn log_filter(&self) -> &'static str {
        match (self.debug, self.verbosity) {
            (_, 5..) => "trace",
            (true, _) | (_, 3..=4) => "debug",
            _ => "info",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show bosun's version and git revision, then the runtime's name and versions.
    Version,
    /// Show the runtime's status and configuration.
    Info(InfoArgs),
    /// List pod sandboxes.
    Pods(pods::PodsArgs),
    /// List containers.
    Ps(containers::PsArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Show the status of one or more containers.
    Inspect(InspectArgs),
    /// Show the status of one or more pod sandboxes.
    Inspectp(InspectArgs),
    /// Show the status of one or more images.
    Inspecti(InspectArgs),
    /// Print a container's logs.
    Logs(logs::LogsArgs),
    /// Run a command in a running container.
    Exec(exec::ExecArgs),
    /// Show containers' resource usage.
    Stats(stats::StatsArgs),
    /// Stop one or more running containers.
    Stop(containers::StopArgs),
    /// Stop one or more pod sandboxes.
    Stopp(pods::IdsArgs),
    /// Remove one or more containers.
    Rm(containers::RmArgs),
    /// Remove one or more pod sandboxes.
    Rmp(pods::RmpArgs),
    /// Remove one or more images.
    Rmi(images::RmiArgs),
    /// Pull an image from a registry.
    Pull(images::PullArgs),
    /// Manage images through containerd's own API.
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Run the node daemon: pods from a manifest directory, over CRI.
    Run(Box<run::RunArgs>),
    /// Run only the Service datapath, from the API server: kube-proxy's job, with its flags.
    Proxy(Box<bosun::proxy::config::ProxyArgs>),
    /// Show what the running daemon manages.
    Get(get::GetArgs),
    /// Show what the service datapath's maps hold (works while the daemon is down).
    Dp(dp::DpArgs),
    Monitor(monitor::MonitorArgs),
    /// Check that this host can run bosun: the kernel's version and a cgroup2 mount.
    Preflight,
    /// Write the manual pages (troff, section 8) into a directory.
    Man(man::ManArgs),
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "json")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// IDs (or unique ID prefixes); image references for inspecti.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "json")]
    pub output: Format,
}

/// Runs one CLI command and returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    // `image import` speaks containerd's API, not CRI; everything else needs a CRI client.
    match &cli.command {
        Command::Image(command) => {
            return images::image_command(&cli.runtime_endpoint, command)
                .await
                .map(|()| 0)
        }
        Command::Run(args) => return run::run(args).await,
        Command::Proxy(args) => return proxy(args).await,
        Command::Get(args) => return get::get(args).await.map(|()| 0),
        Command::Dp(args) => return dp::dp(args).map(|()| 0),
        Command::Monitor(args) => return monitor::monitor(args).await.map(|()| 0),
        Command::Preflight => return preflight::preflight().map(|()| 0),
        Command::Man(args) => return man::man(args).map(|()| 0),
        _ => {}
    }
    let client = CriClient::connect(&cli.runtime_endpoint, cli.timeout).await?;
    match cli.command {
        Command::Version => info::version(&client).await?,
        Command::Info(args) => info::info(&client, &args).await?,
        Command::Pods(args) => pods::list(&client, &args).await?,
        Command::Ps(args) => containers::list(&client, &args).await?,
        Command::Images(args) => images::list(&client, &args).await?,
        Command::Inspect(args) => containers::inspect(&client, &args).await?,
        Command::Inspectp(args) => pods::inspect(&client, &args).await?,
        Command::Inspecti(args) => images::inspect(&client, &args).await?,
        Command::Logs(args) => logs::logs(&client, &args).await?,
        Command::Exec(args) => return exec::exec(&client, args).await,
        Command::Stats(args) => stats::stats(&client, &args).await?,
        Command::Stop(args) => containers::stop(&client, &args).await?,
        Command::Stopp(args) => pods::stop(&client, &args).await?,
        Command::Rm(args) => containers::remove(&client, &args).await?,
        Command::Rmp(args) => pods::remove(&client, &args).await?,
        Command::Rmi(args) => images::remove(&client, &args).await?,
        Command::Pull(args) => images::pull(&client, &args).await?,
        Command::Image(_)
        | Command::Run(_)
        | Command::Proxy(_)
        | Command::Get(_)
        | Command::Dp(_)
        | Command::Monitor(_)
        | Command::Preflight
        | Command::Man(_) => {
            unreachable!("handled above")
        }
    }
    Ok(0)
}

/// `bosun proxy`: a configuration error exits with the daemon's bad-config code.
async fn proxy(args: &bosun::proxy::config::ProxyArgs) -> Result<i32> {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("bosun: error: {e}");
            return Ok(run::EXIT_BAD_CONFIG);
        }
    };
    bosun::proxy::run::run(config, run::terminated())
        .await
        .context("running the proxy")?;
    Ok(0)
}

/// Parses `2s`, `500ms`, `1m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 2s, 500ms, 1m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `key=value` label filters.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("invalid label {s:?}: expected key=value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert!(parse_label("ab").is_err());
        assert!(parse_label("=b").is_err());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
