//! `logs`: reads the container's CRI log file directly, as crictl and kubelet do.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use bosun_cri::api;
use bosun_cri::logs::{parse_line, parse_rfc3339, LogStream};
use bosun_cri::CriClient;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{parse_duration, resolve};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Container ID (or unique prefix).
    pub container: String,
    /// Keep printing new output until the container stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print only the last N lines (all when negative).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Only lines newer than an RFC 3339 time or a relative duration (e.g. 42s, 5m, 1h).
    #[arg(long)]
    pub since: Option<String>,
    /// Prefix each line with its timestamp.
    #[arg(short = 't', long)]
    pub timestamps: bool,
}

/// How often `-f` looks for new output, and how often it checks the container still runs.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
const FOLLOW_STATUS_EVERY: Duration = Duration::from_secs(1);

pub async fn logs(client: &CriClient, args: &LogsArgs) -> Result<()> {
    let since = args
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let id = resolve::container(client, &args.container).await?;
    let status = client
        .container_status(&id, false)
        .await?
        .status
        .context("the runtime returned no status")?;
    if status.log_path.is_empty() {
        bail!("container {id} has no log file (its pod sandbox sets no log directory)");
    }
    let path = std::path::PathBuf::from(&status.log_path);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("container {id}: log file {} does not exist", path.display())
        }
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };

    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    // Only complete lines are printed; a trailing fragment waits for its newline.
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut printer = Printer::new(args.timestamps, since);
    let lines: Vec<&[u8]> = data[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let start = tail_start(&lines, args.tail);
    for line in &lines[start..] {
        printer.line(line)?;
    }
    if !args.follow {
        return Ok(());
    }

    let mut offset = complete as u64;
    let mut pending: Vec<u8> = data[complete..].to_vec();
    let mut last_status = Instant::now();
    loop {
        file.seek(std::io::SeekFrom::Start(offset + pending.len() as u64))
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if fresh.is_empty() {
            if last_status.elapsed() >= FOLLOW_STATUS_EVERY {
                last_status = Instant::now();
                if !is_running(client, &id).await? {
                    return Ok(());
                }
            }
            tokio::time::sleep(FOLLOW_POLL).await;
            continue;
        }
        pending.extend_from_slice(&fresh);
        if let Some(end) = pending.iter().rposition(|b| *b == b'\n') {
            for line in pending[..end]
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                printer.line(line)?;
            }
            offset += end as u64 + 1;
            pending.drain(..=end);
        }
    }
}

async fn is_running(client: &CriClient, id: &str) -> Result<bool> {
    match client.container_status(id, false).await {
        Ok(r) => Ok(r
            .status
            .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32)),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Where the last `tail` whole lines start: partial entries (`P`) belong to the line their
/// final `F` entry ends.
fn tail_start(lines: &[&[u8]], tail: i64) -> usize {
    let Ok(mut wanted) = usize::try_from(tail) else {
        return 0;
    };
    if wanted == 0 {
        return lines.len();
    }
    for (i, line) in lines.iter().enumerate().rev() {
        let ends_a_line = parse_line(line).map_or(true, |e| !e.partial);
        if ends_a_line {
            if wanted == 0 {
                return i + 1;
            }
            wanted -= 1;
        }
    }
    0
}

/// `--since`: an RFC 3339 time, or a duration before now.
fn parse_since(s: &str, now: SystemTime) -> Result<SystemTime> {
    if let Some(t) = parse_rfc3339(s) {
        return Ok(t);
    }
    let d = parse_duration(s).map_err(|_| {
        anyhow::anyhow!(
            "invalid --since {s:?}: expected an RFC 3339 time or a duration such as 10s, 5m, 1h"
        )
    })?;
    Ok(now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// Prints entries to stdout or stderr by their stream, joining partial entries.
struct Printer {
    timestamps: bool,
    since: Option<SystemTime>,
    at_line_start: bool,
    warned: bool,
}

impl Printer {
    fn new(timestamps: bool, since: Option<SystemTime>) -> Self {
        Printer {
            timestamps,
            since,
            at_line_start: true,
            warned: false,
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<()> {
        let entry = match parse_line(line) {
            Ok(entry) => entry,
            Err(e) => {
                if !self.warned {
                    eprintln!("bosun: warning: skipping malformed log line: {e}");
                    self.warned = true;
                }
                return Ok(());
            }
        };
        if self.since.is_some_and(|since| entry.time < since) {
            return Ok(());
        }
        let mut out: Box<dyn Write> = match entry.stream {
            LogStream::Stdout => Box::new(std::io::stdout().lock()),
            LogStream::Stderr => Box::new(std::io::stderr().lock()),
        };
        let mut buf = Vec::with_capacity(entry.content.len() + 40);
        if self.timestamps && self.at_line_start {
            buf.extend_from_slice(entry.timestamp.as_bytes());
            buf.push(b' ');
        }
        buf.extend_from_slice(entry.content);
        if !entry.partial {
            buf.push(b'\n');
        }
        self.at_line_start = !entry.partial;
        match out.write_all(&buf).and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("writing logs"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_whole_lines() {
        let lines: Vec<&[u8]> = vec![
            b"2026-11-22T09:00:00Z stdout F one",
            b"2026-11-22T09:00:01Z stdout P tw",
            b"2026-11-22T09:00:01Z stdout F o",
            b"2026-11-22T09:00:02Z stderr F three",
        ];
        assert_eq!(tail_start(&lines, -1), 0);
        assert_eq!(tail_start(&lines, 0), 4);
        assert_eq!(tail_start(&lines, 1), 3);
        assert_eq!(tail_start(&lines, 2), 1);
        assert_eq!(tail_start(&lines, 3), 0);
        assert_eq!(tail_start(&lines, 10), 0);
    }

    #[test]
    fn since_takes_times_and_durations() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            parse_since("10s", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(990)
        );
        assert_eq!(
            parse_since("1970-01-01T00:00:05Z", now).unwrap(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(5)
        );
        let err = parse_since("yesterday", now).unwrap_err().to_string();
        assert!(
            err.contains("--since") && err.contains("yesterday"),
            "{err}"
        );
    }
}
