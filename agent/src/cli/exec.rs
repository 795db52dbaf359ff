//! `exec`: runs a command in a container, streamed through the runtime's streaming server
//! (or with `--sync` through ExecSync), and exits with the command's exit code.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{Context, Result};
use bosun_cri::api;
use bosun_cri::streaming::{self, TerminalSize};
use bosun_cri::CriClient;
use clap::Args;
use nix::sys::termios;
use tokio::sync::mpsc;

use super::resolve;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a terminal for the command.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Run the command with ExecSync and print its output when it ends.
    #[arg(short = 's', long)]
    pub sync: bool,
    /// With --sync: seconds the command may run (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// Container ID (or unique prefix).
    pub container: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

pub async fn exec(client: &CriClient, args: ExecArgs) -> Result<i32> {
    let id = resolve::container(client, &args.container).await?;
    if args.sync {
        let response = client
            .exec_sync(&id, args.command, Duration::from_secs(args.timeout))
            .await?;
        use std::io::Write;
        std::io::stdout()
            .write_all(&response.stdout)
            .context("writing stdout")?;
        std::io::stderr()
            .write_all(&response.stderr)
            .context("writing stderr")?;
        return Ok(response.exit_code);
    }

    let url = client
        .exec(api::ExecRequest {
            container_id: id,
            cmd: args.command,
            tty: args.tty,
            stdin: args.interactive,
            stdout: true,
            // With a terminal, stderr arrives merged into stdout.
            stderr: !args.tty,
            ..Default::default()
        })
        .await?;

    let stdin_is_tty = std::io::stdin().is_terminal();
    let _raw = (args.tty && args.interactive && stdin_is_tty)
        .then(RawMode::enable)
        .transpose()?;
    let resize = (args.tty && stdin_is_tty).then(watch_terminal_size);
    let stdin = args.interactive.then(tokio::io::stdin);
    let code = streaming::stream(
        &url,
        stdin,
        tokio::io::stdout(),
        tokio::io::stderr(),
        resize,
    )
    .await?;
    Ok(code.0)
}

/// Puts the terminal in raw mode and restores it when dropped.
struct RawMode {
    saved: termios::Termios,
}

impl RawMode {
    fn enable() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).context("reading terminal settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw)
            .context("setting the terminal to raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let stdin = std::io::stdin();
        // Best effort: if the terminal is gone there is nothing to restore.
        let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &self.saved);
    }
}

/// Sends the terminal's size now and again on every SIGWINCH.
fn watch_terminal_size() -> mpsc::Receiver<TerminalSize> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut winch =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok();
        loop {
            if let Some(size) = terminal_size() {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
            match winch.as_mut() {
                Some(w) => {
                    if w.recv().await.is_none() {
                        return;
                    }
                }
                None => return,
            }
        }
    });
    rx
}

fn terminal_size() -> Option<TerminalSize> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the pointer we pass, which points at a
    // live, properly aligned local; fd 0 is only read.
    let rc = unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some(TerminalSize {
        width: ws.ws_col,
        height: ws.ws_row,
    })
}
