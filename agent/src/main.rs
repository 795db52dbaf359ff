//! The `bosun` binary. For now it is the crictl-style CLI over CRI; the node daemon
//! (`bosun run`) builds on the same crates. `main` stays thin: parse, run, map errors to a
//! one-line message and an exit code.

mod cli;

use clap::Parser;

/// Exit code for an error bosun reports itself (clap uses 2 for malformed flags).
const EXIT_ERROR: i32 = 1;

fn main() {
    bosun::util::one_malloc_arena();
    let cli = cli::Cli::parse();
    init_logging(&cli);
    // Blocking threads (file reads, datapath writes) wait a minute for more work before they
    // end: the daemon's periodic jobs (log rotation and eviction every 10 s, the manifest
    // rescan every 20 s) would otherwise start a thread each time, tokio's default being 10 s.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(60))
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bosun: error: starting the async runtime: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    let code = match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bosun: error: {}", render_error(&e));
            EXIT_ERROR
        }
    };
    // Leave without waiting for stdin readers (exec -i) still blocked in the runtime.
    std::process::exit(code);
}

/// Logs to stderr at the verbosity and in the format the flags ask for. `RUST_LOG`, when
/// set, wins over `-v`.
fn init_logging(cli: &cli::Cli) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.log_filter()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.logging_format {
        cli::LoggingFormat::Json => builder.json().flatten_event(true).init(),
        // No colour codes in files and journals.
        cli::LoggingFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// An error and its causes on one line, leaving out causes whose text the line already
/// holds (transport errors repeat their io error at several levels).
fn render_error(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn repeated_causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Outer(io)).context("connecting");
        assert_eq!(render_error(&e), "connecting: outer: no such file");
    }
}
