//! How the CLI prints: aligned tables, protobuf JSON/YAML, and the human forms of times,
//! sizes and IDs that crictl users know.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use clap::ValueEnum;

/// `-o/--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// The output flags every listing shares.
#[derive(Debug, clap::Args)]
pub struct ListOutput {
    /// Print only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show full IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

/// A table printed with columns aligned on the widest cell, three spaces apart.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                line.push_str(cell);
                if i + 1 < columns {
                    let pad = widths[i] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    pub fn print(&self) -> Result<()> {
        print_stdout(&self.render())
    }
}

/// Writes to stdout, treating a closed pipe (`bosun ps | head`) as success.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

/// A protobuf message in the protobuf JSON mapping, as crictl prints it.
pub fn proto_json<M: prost::Message + prost::Name>(message: &M) -> Result<serde_json::Value> {
    bosun_proto::to_json(message).with_context(|| format!("rendering {} as JSON", M::full_name()))
}

/// Prints a JSON value as indented JSON or as YAML.
pub fn print_value(value: &serde_json::Value, format: Format) -> Result<()> {
    let text = match format {
        Format::Yaml => serde_yaml::to_string(value).context("rendering YAML")?,
        Format::Json | Format::Table => {
            let mut s = serde_json::to_string_pretty(value).context("rendering JSON")?;
            s.push('\n');
            s
        }
    };
    print_stdout(&text)
}

/// Prints what `inspect`, `inspectp` and `inspecti` show: the object's status and the
/// runtime's verbose info.
pub fn print_inspected<M: prost::Message + prost::Name>(
    status: Option<&M>,
    info: &HashMap<String, String>,
    format: Format,
) -> Result<()> {
    let mut value = serde_json::Map::new();
    if let Some(status) = status {
        value.insert("status".to_owned(), proto_json(status)?);
    }
    value.insert("info".to_owned(), info_map(info));
    print_value(&serde_json::Value::Object(value), format)
}

/// The runtime's verbose info: a map whose values are JSON documents in strings.
pub fn info_map(info: &HashMap<String, String>) -> serde_json::Value {
    let mut keys: Vec<&String> = info.keys().collect();
    keys.sort();
    let map = keys
        .into_iter()
        .map(|k| {
            let raw = &info[k];
            let value = serde_json::from_str(raw)
                .unwrap_or_else(|_| serde_json::Value::String(raw.clone()));
            (k.clone(), value)
        })
        .collect();
    serde_json::Value::Object(map)
}

/// IDs are shown as their first 13 characters unless `--no-trunc`, as crictl does.
pub const TRUNCATED_ID_LEN: usize = 13;

pub fn short_id(id: &str, no_trunc: bool) -> String {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    if no_trunc {
        id.to_owned()
    } else {
        id.chars().take(TRUNCATED_ID_LEN).collect()
    }
}

/// A CRI timestamp (nanoseconds since the epoch) as a point in time.
pub fn from_unix_nanos(nanos: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0))
}

/// "About a minute ago", "3 hours ago": how long ago `nanos` was, in words.
pub fn ago(nanos: i64, now: SystemTime) -> String {
    let elapsed = now
        .duration_since(from_unix_nanos(nanos))
        .unwrap_or_default();
    format!("{} ago", human_duration(elapsed))
}

/// A duration in words, rounded as people round it (the wording of Docker's CLI).
pub fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    match () {
        _ if seconds < 1 => "Less than a second".to_owned(),
        _ if seconds == 1 => "1 second".to_owned(),
        _ if seconds < 60 => plural(seconds, "second"),
        _ if minutes == 1 => "About a minute".to_owned(),
        _ if minutes < 60 => plural(minutes, "minute"),
        _ if hours == 1 => "About an hour".to_owned(),
        _ if hours < 48 => plural(hours, "hour"),
        _ if hours < 24 * 7 * 2 => plural(hours / 24, "day"),
        _ if hours < 24 * 30 * 2 => plural(hours / 24 / 7, "week"),
        _ if hours < 24 * 365 * 2 => plural(hours / 24 / 30, "month"),
        _ => plural(hours / 24 / 365, "year"),
    }
}

/// A byte count in decimal units with four significant digits: `1.516MB`, `4.096kB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let text = format!("{value:.4}");
    let digits_before_point = text.find('.').unwrap_or(text.len());
    let keep = 4usize.saturating_sub(digits_before_point);
    let mut text = format!("{value:.keep$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let mut t = Table::new(&["ID", "NAME", "STATE"]);
        t.row(vec!["abc".into(), "a-long-name".into(), "Running".into()]);
        t.row(vec!["abcdef".into(), "x".into(), "Exited".into()]);
        assert_eq!(
            t.render(),
            "ID       NAME          STATE\n\
             abc      a-long-name   Running\n\
             abcdef   x             Exited\n"
        );
    }

    #[test]
    fn durations_read_like_docker() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(42)), "42 seconds");
        assert_eq!(human_duration(s(90)), "About a minute");
        assert_eq!(human_duration(s(600)), "10 minutes");
        assert_eq!(human_duration(s(3700)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(3 * 86400)), "3 days");
        assert_eq!(human_duration(s(20 * 86400)), "2 weeks");
        assert_eq!(human_duration(s(90 * 86400)), "3 months");
        assert_eq!(human_duration(s(800 * 86400)), "2 years");
    }

    #[test]
    fn sizes_use_decimal_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1_516_000), "1.516MB");
        assert_eq!(human_size(4096), "4.096kB");
        assert_eq!(human_size(123_456_789), "123.5MB");
    }

    #[test]
    fn ids_and_states() {
        assert_eq!(short_id("sha256:0123456789abcdef", false), "0123456789abc");
        assert_eq!(short_id("0123456789abcdef", true), "0123456789abcdef");
    }
}
