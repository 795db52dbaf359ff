//! `/containerLogs/{namespace}/{pod}/{container}` (kubelet's `getContainerLogs` and
//! `kuberuntime/logs.ReadLogs`): the request's `PodLogOptions`, and the reading of the
//! container's CRI log file into one response body, both streams merged in file order.
//!
//! It knows the log file's path and nothing of pods: which container, and which instance of it
//! (`previous`), is the caller's choice, as is how to tell whether the container still runs.

use std::borrow::Cow;
use std::fs::Metadata;
use std::io::{self, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bosun_cri::logs::{parse_line, parse_rfc3339};
use hyper::StatusCode;
use tokio::fs::File;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;

use super::query::Query;

/// How much of the log file is read at a time, forwards to stream it and backwards to find
/// where its last lines start.
const BLOCK_SIZE: usize = 64 * 1024;

/// How often a followed log is looked at for new output and for rotation.
const FOLLOW_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How often a follower with nothing new to read asks whether the container still runs. Each
/// ask is a call to the runtime; kubelet asks about once a second.
const RUNNING_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How much of an entry's start the backwards scan looks at and keeps across blocks: enough
/// for its timestamp, stream and tag, which are all it needs to know.
const ENTRY_HEAD: usize = 128;

/// The `PodLogOptions` of a `/containerLogs` request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `follow`: keep writing new output until the container stops.
    pub follow: bool,
    /// `previous`: the container's previous instance. Only parsed: the caller picks the file.
    pub previous: bool,
    /// `timestamps`: start each line with its timestamp.
    pub timestamps: bool,
    /// `tailLines` (or the older `tail`): only the last this many lines; `None`: all.
    pub tail_lines: Option<u64>,
    /// `sinceSeconds` or `sinceTime` as a point in time: older entries are left out.
    pub since: Option<SystemTime>,
    /// `limitBytes`: stop after writing this many bytes; `None`: no limit.
    pub limit_bytes: Option<u64>,
}

/// What is wrong with the query of a `/containerLogs` request. The same query always fails
/// the same way, so there is nothing to retry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogOptionsError {
    /// A value that does not read as its parameter's type.
    #[error("{field}: invalid value {value:?}: {reason}")]
    Decode {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A value of the right type but out of range.
    #[error("{field}: invalid value {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: i64,
        reason: &'static str,
    },
    #[error(
        "sinceSeconds {since_seconds} and sinceTime {since_time:?}: at most one of `sinceTime` \
         or `sinceSeconds` may be specified"
    )]
    SinceConflict {
        since_seconds: i64,
        since_time: String,
    },
}

impl LogOptionsError {
    /// The status kubelet answers with: 400 for a query it cannot decode, 422 for options
    /// that fail validation.
    pub fn status(&self) -> StatusCode {
        match self {
            LogOptionsError::Decode { .. } => StatusCode::BAD_REQUEST,
            LogOptionsError::Invalid { .. } | LogOptionsError::SinceConflict { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
        }
    }
}

impl LogOptions {
    /// Reads the options from a request's query string, as kubelet decodes and validates
    /// `PodLogOptions`: the first value of a repeated parameter counts, unknown parameters are
    /// ignored, and `sinceSeconds` counts back from `now`.
    pub fn from_query(query: Option<&str>, now: SystemTime) -> Result<Self, LogOptionsError> {
        let query = Query::parse(query.unwrap_or_default());
        let tail_lines = match query.first("tail") {
            // kubelet still takes the older `tail`, where `all` means every line.
            Some("all") => None,
            Some(tail) if !tail.is_empty() => Some(tail),
            _ => query.first("tailLines"),
        };
        let since_seconds = query
            .first("sinceSeconds")
            .map(|v| int("sinceSeconds", v))
            .transpose()?;
        let since_time = query
            .first("sinceTime")
            .map(|v| parse_since_time(v).map(|time| (v, time)))
            .transpose()?;
        let tail_lines = tail_lines.map(|v| int("tailLines", v)).transpose()?;
        let limit_bytes = query
            .first("limitBytes")
            .map(|v| int("limitBytes", v))
            .transpose()?;

        let tail_lines = tail_lines
            .map(|n| at_least("tailLines", n, 0, "must be greater than or equal to 0"))
            .transpose()?;
        let limit_bytes = limit_bytes
            .map(|n| at_least("limitBytes", n, 1, "must be greater than 0"))
            .transpose()?;
        let since = match (since_seconds, since_time) {
            (Some(since_seconds), Some((since_time, _))) => {
                return Err(LogOptionsError::SinceConflict {
                    since_seconds,
                    since_time: since_time.to_owned(),
                })
            }
            (Some(seconds), None) => {
                let seconds = at_least("sinceSeconds", seconds, 1, "must be greater than 0")?;
                // No log entry is older than 1970, the earliest time a log line can hold.
                let since = now.checked_sub(Duration::from_secs(seconds));
                Some(since.map_or(SystemTime::UNIX_EPOCH, |t| t.max(SystemTime::UNIX_EPOCH)))
            }
            (None, since_time) => since_time.map(|(_, time)| time),
        };
        Ok(LogOptions {
            follow: flag(query.first("follow")),
            previous: flag(query.first("previous")),
            timestamps: flag(query.first("timestamps")),
            tail_lines,
            since,
            limit_bytes,
        })
    }
}

/// A boolean parameter as Kubernetes decodes query parameters: absent, `0` and any casing of
/// `false` are false; anything else, an empty value included, is true. (Stricter parsing would
/// turn away requests kubelet serves.)
fn flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| v != "0" && !v.eq_ignore_ascii_case("false"))
}

fn int(field: &'static str, value: &str) -> Result<i64, LogOptionsError> {
    value.parse().map_err(|_| LogOptionsError::Decode {
        field,
        value: value.to_owned(),
        reason: "not a 64-bit integer",
    })
}

fn at_least(
    field: &'static str,
    value: i64,
    min: i64,
    reason: &'static str,
) -> Result<u64, LogOptionsError> {
    u64::try_from(value)
        .ok()
        .filter(|_| value >= min)
        .ok_or(LogOptionsError::Invalid {
            field,
            value,
            reason,
        })
}

/// `sinceTime`; an empty value decodes, as in Kubernetes, to a time before every entry.
fn parse_since_time(value: &str) -> Result<SystemTime, LogOptionsError> {
    if value.is_empty() {
        return Ok(SystemTime::UNIX_EPOCH);
    }
    parse_rfc3339(value).ok_or_else(|| LogOptionsError::Decode {
        field: "sinceTime",
        value: value.to_owned(),
        reason: "not an RFC 3339 time",
    })
}

/// Why reading a container's log stopped before its end. Nothing here is worth retrying
/// within the request: `Open` and `Read` are the node's file system failing, and `Write`
/// means the client went away, which the caller can ignore.
#[derive(Debug, thiserror::Error)]
pub enum ReadLogsError {
    #[error("opening container log {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading container log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing container log to the client: {0}")]
    Write(#[source] io::Error),
}

/// Reads the CRI log file at `path` into `out` as `options` ask; malformed lines are
/// skipped. When following, `running` is asked whether the container still runs while the
/// file has nothing new; the read ends once it says no and what is left has been written.
///
/// A client that goes away is noticed only at the next write, which a quiet container may
/// never bring: drop the future when the connection closes.
pub async fn read_logs<W: AsyncWrite + Unpin>(
    path: &Path,
    options: &LogOptions,
    out: &mut W,
    running: impl AsyncFnMut() -> bool,
) -> Result<(), ReadLogsError> {
    ContainerLog::open(path, options)
        .await?
        .copy_to(out, running)
        .await
}

/// A container's log file opened for one request and positioned where its output starts.
/// Opening is apart from copying so that a caller can answer an error status while it has
/// not yet committed to a response body.
pub struct ContainerLog {
    path: PathBuf,
    file: File,
    identity: FileIdentity,
    options: LogOptions,
}

impl ContainerLog {
    /// Opens the log at `path` and, for `tailLines`, finds where its last lines start by
    /// reading backwards from the end, a block at a time.
    pub async fn open(path: &Path, options: &LogOptions) -> Result<Self, ReadLogsError> {
        let open_error = |source| ReadLogsError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).await.map_err(open_error)?;
        let metadata = file.metadata().await.map_err(open_error)?;
        let read_error = |source| ReadLogsError::Read {
            path: path.to_owned(),
            source,
        };
        if let Some(lines) = options.tail_lines {
            let start = tail_start(&mut file, metadata.len(), lines, BLOCK_SIZE)
                .await
                .map_err(read_error)?;
            file.seek(SeekFrom::Start(start))
                .await
                .map_err(read_error)?;
        }
        Ok(ContainerLog {
            path: path.to_owned(),
            file,
            identity: FileIdentity::of(&metadata),
            options: options.clone(),
        })
    }

    /// Writes the log's content into `out`; see [`read_logs`].
    pub async fn copy_to<W: AsyncWrite + Unpin>(
        self,
        out: &mut W,
        mut running: impl AsyncFnMut() -> bool,
    ) -> Result<(), ReadLogsError> {
        let follow = self.options.follow;
        let mut copy = LogCopy {
            printer: Printer::new(&self.options),
            log: self,
            out,
            pending: Vec::new(),
            output: Vec::new(),
        };
        let mut last_asked: Option<Instant> = None;
        loop {
            if copy.drain().await? == Flow::Done || !follow {
                return Ok(());
            }
            if let Some((file, identity)) = copy.log.replacement().await? {
                // Lines may have reached the old file after the read above and before the
                // runtime reopened its log at the path.
                if copy.drain().await? == Flow::Done {
                    return Ok(());
                }
                // A line the old file left incomplete is never completed.
                copy.pending.clear();
                copy.log.file = file;
                copy.log.identity = identity;
                continue;
            }
            if last_asked.is_none_or(|at| at.elapsed() >= RUNNING_CHECK_INTERVAL) {
                last_asked = Some(Instant::now());
                if !running().await {
                    // What the container wrote between the last read and its end.
                    copy.drain().await?;
                    return Ok(());
                }
            }
            tokio::time::sleep(FOLLOW_POLL_INTERVAL).await;
        }
    }

    /// The file now at the path if it is no longer the one being read: the log was rotated
    /// (renamed away, and the runtime created a new one). `None` also while nothing is at the
    /// path yet.
    async fn replacement(&self) -> Result<Option<(File, FileIdentity)>, ReadLogsError> {
        let read_error = |source| ReadLogsError::Read {
            path: self.path.clone(),
            source,
        };
        match tokio::fs::metadata(&self.path).await {
            Ok(metadata) if FileIdentity::of(&metadata) == self.identity => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        }
        let file = match File::open(&self.path).await {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_error(e)),
        };
        // The identity of what was opened, in case the log was rotated once more meanwhile.
        let metadata = file.metadata().await.map_err(read_error)?;
        Ok(Some((file, FileIdentity::of(&metadata))))
    }
}

/// Which file a path names: its device and inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileIdentity {
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    fn of(metadata: &Metadata) -> Self {
        FileIdentity {
            dev: metadata.dev(),
            ino: metadata.ino(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// `limitBytes` is used up.
    Done,
}

/// The state of one copy from the log file to the client.
struct LogCopy<'w, W> {
    log: ContainerLog,
    out: &'w mut W,
    printer: Printer,
    /// Read from the file and not yet printed: the start of a line whose newline is still
    /// to come.
    pending: Vec<u8>,
    /// What the lines of one block print, written to the client at once.
    output: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> LogCopy<'_, W> {
    /// Reads the file up to its current end and writes what its complete lines print.
    async fn drain(&mut self) -> Result<Flow, ReadLogsError> {
        loop {
            let filled = self.pending.len();
            self.pending.resize(filled + BLOCK_SIZE, 0);
            let read = match self.log.file.read(&mut self.pending[filled..]).await {
                Ok(read) => read,
                Err(source) => {
                    self.pending.truncate(filled);
                    return Err(ReadLogsError::Read {
                        path: self.log.path.clone(),
                        source,
                    });
                }
            };
            self.pending.truncate(filled + read);
            if read == 0 {
                return Ok(Flow::Continue);
            }
            let flow = self.print_lines();
            if !self.output.is_empty() {
                self.out
                    .write_all(&self.output)
                    .await
                    .map_err(ReadLogsError::Write)?;
                self.out.flush().await.map_err(ReadLogsError::Write)?;
                self.output.clear();
            }
            if flow == Flow::Done {
                return Ok(Flow::Done);
            }
        }
    }

    /// Prints each complete line of `pending` into `output`, keeping the incomplete rest.
    fn print_lines(&mut self) -> Flow {
        let mut start = 0;
        let mut flow = Flow::Continue;
        while let Some(len) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[start..start + len];
            flow = self.printer.entry(line, &self.log.path, &mut self.output);
            start += len + 1;
            if flow == Flow::Done {
                break;
            }
        }
        self.pending.drain(..start);
        flow
    }
}

/// Turns log entries into what the client sees.
struct Printer {
    timestamps: bool,
    since: Option<SystemTime>,
    /// What `limitBytes` leaves to write.
    remaining: Option<u64>,
    /// Whether the last entry printed ended its line: a timestamp goes only at a line's start.
    at_line_start: bool,
    /// Whether a malformed entry has been reported; one report per request is enough.
    warned: bool,
}

impl Printer {
    fn new(options: &LogOptions) -> Self {
        Printer {
            timestamps: options.timestamps,
            since: options.since,
            remaining: options.limit_bytes,
            at_line_start: true,
            warned: false,
        }
    }

    /// Appends to `output` what one entry (a line of the file, without its newline) prints.
    fn entry(&mut self, line: &[u8], path: &Path, output: &mut Vec<u8>) -> Flow {
        let entry = match parse_line(line) {
            Ok(entry) => entry,
            Err(error) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        path = %path.display(),
                        %error,
                        "skipping malformed lines of a container log"
                    );
                }
                return Flow::Continue;
            }
        };
        if self.since.is_some_and(|since| entry.time < since) {
            return Flow::Continue;
        }
        let stamped = self.timestamps && self.at_line_start;
        self.at_line_start = !entry.partial;
        let parts: [&[u8]; 4] = [
            if stamped {
                entry.timestamp.as_bytes()
            } else {
                b""
            },
            if stamped { b" " } else { b"" },
            entry.content,
            if entry.partial { b"" } else { b"\n" },
        ];
        for part in parts {
            if self.push(part, output) == Flow::Done {
                return Flow::Done;
            }
        }
        Flow::Continue
    }

    /// Appends as much of `bytes` as `limitBytes` leaves room for.
    fn push(&mut self, bytes: &[u8], output: &mut Vec<u8>) -> Flow {
        let Some(remaining) = self.remaining.as_mut() else {
            output.extend_from_slice(bytes);
            return Flow::Continue;
        };
        let take = bytes
            .len()
            .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
        output.extend_from_slice(&bytes[..take]);
        *remaining -= take as u64;
        if *remaining == 0 {
            Flow::Done
        } else {
            Flow::Continue
        }
    }
}

/// Where the last `lines` lines of the log start, reading backwards from `size` in blocks of
/// `block_size`. A line is a run of partial (`P`) entries and the full (`F`) entry that ends
/// it; entries after the last full one are a line still being written and count as one. An
/// incomplete entry at the very end (no newline yet) is no line: it is printed once complete.
async fn tail_start(file: &mut File, size: u64, lines: u64, block_size: usize) -> io::Result<u64> {
    let mut block = vec![0; block_size];
    let mut scan = TailScan {
        lines,
        found: 0,
        end: None,
    };
    // The entry being put together: the offset past its newline, and the first bytes of it
    // read so far.
    let mut entry_end = size;
    let mut head: Vec<u8> = Vec::new();
    let mut pos = size;
    while pos > 0 {
        let start = pos.saturating_sub(block_size as u64);
        // At most `block_size`, so it fits.
        let len = (pos - start) as usize;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut block[..len]).await?;
        let mut seg_end = len;
        while let Some(i) = block[..seg_end].iter().rposition(|b| *b == b'\n') {
            let after_newline = start + i as u64 + 1;
            let entry = joined(&block[i + 1..seg_end], &head);
            if let Some(found) = scan.entry(&entry, entry_end, after_newline) {
                return Ok(found);
            }
            entry_end = after_newline;
            head.clear();
            seg_end = i;
        }
        head = joined(&block[..seg_end], &head).into_owned();
        pos = start;
    }
    Ok(scan.entry(&head, entry_end, 0).unwrap_or(0))
}

/// Counting lines from the end of the log, one entry at a time.
struct TailScan {
    lines: u64,
    found: u64,
    /// Past the newline of the last complete entry.
    end: Option<u64>,
}

impl TailScan {
    /// Takes the entry that ends at `entry_end` and starts at `entry_start`; returns where the
    /// tail starts once that is known. The first call, for what follows the file's last
    /// newline, only learns where the complete entries end.
    fn entry(&mut self, entry: &[u8], entry_end: u64, entry_start: u64) -> Option<u64> {
        let Some(end) = self.end else {
            self.end = Some(entry_start);
            return (self.lines == 0).then_some(entry_start);
        };
        // A full entry ends a line; the line after it starts the tail once enough lines
        // follow. The last entry ends no line before the end.
        let ends_a_line = parse_line(entry).is_ok_and(|e| !e.partial);
        if ends_a_line && entry_end < end {
            self.found += 1;
            if self.found == self.lines {
                return Some(entry_end);
            }
        }
        None
    }
}

/// The first `ENTRY_HEAD` bytes of `front` followed by `back`.
fn joined<'a>(front: &'a [u8], back: &[u8]) -> Cow<'a, [u8]> {
    if front.len() >= ENTRY_HEAD || back.is_empty() {
        return Cow::Borrowed(&front[..front.len().min(ENTRY_HEAD)]);
    }
    let room = ENTRY_HEAD - front.len();
    Cow::Owned([front, &back[..back.len().min(room)]].concat())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    use super::*;

    /// 2026-11-22T09:00:00Z, the first entry's time in these tests.
    const T0: u64 = 1_795_338_000;

    /// One entry of a CRI log, at `T0 + secs`.
    fn entry(secs: u64, stream: &str, tag: &str, content: &str) -> String {
        format!(
            "2026-11-22T09:{:02}:{:02}.5Z {stream} {tag} {content}\n",
            secs / 60,
            secs % 60
        )
    }

    fn write_log(path: &Path, content: &str) {
        std::fs::write(path, content).expect("writing the test log");
    }

    fn append(path: &Path, content: &str) {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .expect("opening the test log");
        file.write_all(content.as_bytes())
            .expect("appending to the test log");
    }

    fn options(query: &str) -> LogOptions {
        LogOptions::from_query(
            Some(query),
            SystemTime::UNIX_EPOCH + Duration::from_secs(T0),
        )
        .expect("valid test query")
    }

    /// What reading the log prints, for a container that no longer runs.
    async fn read(path: &Path, query: &str) -> String {
        read_with(path, &options(query)).await
    }

    async fn read_with(path: &Path, options: &LogOptions) -> String {
        let mut out = Vec::new();
        read_logs(path, options, &mut out, async || false)
            .await
            .expect("reading the test log");
        String::from_utf8(out).expect("UTF-8 output")
    }

    /// A log of five lines; the third is split over three entries, the fourth on stderr.
    fn five_lines() -> String {
        [
            entry(0, "stdout", "F", "one"),
            entry(1, "stdout", "F", "two"),
            entry(2, "stdout", "P", "th"),
            entry(3, "stdout", "P", "re"),
            entry(4, "stdout", "F", "e"),
            entry(5, "stderr", "F", "four"),
            entry(6, "stdout", "F", "five"),
        ]
        .concat()
    }

    #[test]
    fn query_defaults_and_good_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
        assert_eq!(LogOptions::from_query(None, now), Ok(LogOptions::default()));
        assert_eq!(
            LogOptions::from_query(Some(""), now),
            Ok(LogOptions::default())
        );
        let all = LogOptions::from_query(
            Some("follow=true&previous=1&timestamps=True&tailLines=10&limitBytes=500&sinceSeconds=60&other=x"),
            now,
        );
        assert_eq!(
            all,
            Ok(LogOptions {
                follow: true,
                previous: true,
                timestamps: true,
                tail_lines: Some(10),
                since: Some(now - Duration::from_secs(60)),
                limit_bytes: Some(500),
            })
        );
        // Escaped as clients send it: `:` and the `+` of an offset.
        let since_time =
            LogOptions::from_query(Some("sinceTime=2026-11-22T10%3A00%3A00%2B01%3A00"), now);
        assert_eq!(
            since_time.map(|o| o.since),
            Ok(Some(SystemTime::UNIX_EPOCH + Duration::from_secs(T0)))
        );
        // A sinceSeconds reaching before 1970 keeps everything.
        let long_ago = LogOptions::from_query(Some("sinceSeconds=9223372036854775807"), now);
        assert_eq!(long_ago.map(|o| o.since), Ok(Some(SystemTime::UNIX_EPOCH)));
    }

    #[test]
    fn query_flags_read_as_kubernetes_reads_them() {
        for yes in ["true", "True", "TRUE", "1", "t", ""] {
            assert!(options(&format!("follow={yes}")).follow, "{yes:?}");
        }
        assert!(options("follow").follow);
        for no in ["false", "False", "FALSE", "0"] {
            assert!(!options(&format!("follow={no}")).follow, "{no:?}");
        }
        // The first of repeated values counts.
        assert!(!options("follow=false&follow=true").follow);
    }

    #[test]
    fn query_takes_the_older_tail_parameter() {
        assert_eq!(options("tail=5").tail_lines, Some(5));
        assert_eq!(options("tailLines=3&tail=5").tail_lines, Some(5));
        assert_eq!(options("tailLines=3&tail=all").tail_lines, None);
        assert_eq!(options("tailLines=3&tail=").tail_lines, Some(3));
        assert_eq!(options("tailLines=0").tail_lines, Some(0));
    }

    #[test]
    fn bad_queries_name_the_parameter_and_the_value() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
        let error = |query: &str| {
            LogOptions::from_query(Some(query), now).expect_err("the query is invalid")
        };
        let cases = [
            (
                "tailLines=-1",
                "tailLines",
                "-1",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ("tailLines=ten", "tailLines", "ten", StatusCode::BAD_REQUEST),
            ("tail=x", "tailLines", "x", StatusCode::BAD_REQUEST),
            (
                "limitBytes=0",
                "limitBytes",
                "0",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            ("limitBytes=", "limitBytes", "\"\"", StatusCode::BAD_REQUEST),
            (
                "sinceSeconds=0",
                "sinceSeconds",
                "0",
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                "sinceSeconds=1.5",
                "sinceSeconds",
                "1.5",
                StatusCode::BAD_REQUEST,
            ),
            (
                "sinceTime=yesterday",
                "sinceTime",
                "yesterday",
                StatusCode::BAD_REQUEST,
            ),
            (
                "sinceTime=2026-11-22T09:00:00",
                "sinceTime",
                "2026-11-22T09:00:00",
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (query, field, value, status) in cases {
            let e = error(query);
            let message = e.to_string();
            assert!(
                message.starts_with(field) && message.contains(value),
                "{query}: {message}"
            );
            assert_eq!(e.status(), status, "{query}");
        }
    }

    #[test]
    fn since_seconds_and_since_time_exclude_each_other() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T0);
        let e = LogOptions::from_query(Some("sinceSeconds=10&sinceTime=2026-11-22T09:00:00Z"), now)
            .expect_err("both since options");
        assert_eq!(
            e,
            LogOptionsError::SinceConflict {
                since_seconds: 10,
                since_time: "2026-11-22T09:00:00Z".to_owned(),
            }
        );
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let message = e.to_string();
        assert!(
            message.contains("sinceSeconds 10") && message.contains("sinceTime"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn reads_both_streams_in_file_order_joining_partials() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        assert_eq!(read(&path, "").await, "one\ntwo\nthree\nfour\nfive\n");
    }

    #[tokio::test]
    async fn tail_counts_whole_lines() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        assert_eq!(read(&path, "tailLines=0").await, "");
        assert_eq!(read(&path, "tailLines=1").await, "five\n");
        assert_eq!(read(&path, "tailLines=3").await, "three\nfour\nfive\n");
        assert_eq!(read(&path, "tailLines=4").await, "two\nthree\nfour\nfive\n");
        assert_eq!(
            read(&path, "tailLines=100").await,
            "one\ntwo\nthree\nfour\nfive\n"
        );

        // Partial entries after the last full one are a line being written, and count.
        append(&path, &entry(7, "stdout", "P", "six-"));
        assert_eq!(read(&path, "tailLines=1").await, "six-");
        assert_eq!(read(&path, "tailLines=2").await, "five\nsix-");
        // An entry without its newline yet is not printed.
        append(&path, "2026-11-22T09:00:08.5Z stdout F par");
        assert_eq!(read(&path, "tailLines=2").await, "five\nsix-");
        assert_eq!(read(&path, "tailLines=0").await, "");
    }

    #[tokio::test]
    async fn tail_start_does_not_depend_on_the_block_size() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        let mut content = five_lines();
        content.push_str("malformed\n");
        content.push_str(&entry(9, "stderr", "P", &"long ".repeat(40)));
        content.push_str("2026-11-22T09:00:10Z stdout F incompl");
        write_log(&path, &content);
        let at = |text: &str| content.find(text).expect("the text is in the log") as u64;
        // Where the last 0, 1, 2, ... lines start: the malformed entry goes with the line
        // after it, and the partial entries of a line with their full one.
        let starts = [
            at("2026-11-22T09:00:10Z"),
            at("malformed"),
            at(&entry(6, "stdout", "F", "five")),
            at(&entry(5, "stderr", "F", "four")),
            at(&entry(2, "stdout", "P", "th")),
            at(&entry(1, "stdout", "F", "two")),
            0,
            0,
        ];
        let size = content.len() as u64;
        let mut file = File::open(&path).await.expect("opening the test log");
        for (lines, expected) in (0..).zip(starts) {
            for block_size in [1, 3, 16, 64, 200, BLOCK_SIZE] {
                let start = tail_start(&mut file, size, lines, block_size)
                    .await
                    .expect("tail of the test log");
                assert_eq!(start, expected, "{lines} lines in blocks of {block_size}");
            }
        }
    }

    #[tokio::test]
    async fn tail_of_a_file_larger_than_a_block() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        let count = 3 * BLOCK_SIZE / 40;
        let content: String = (0..count)
            .map(|i| entry(0, "stdout", "F", &format!("line {i}")))
            .collect();
        assert!(content.len() > 2 * BLOCK_SIZE);
        write_log(&path, &content);
        let expected: String = (count - 5..count).map(|i| format!("line {i}\n")).collect();
        assert_eq!(read(&path, "tailLines=5").await, expected);
        let near_the_start = count - 20;
        let printed = read(&path, &format!("tailLines={near_the_start}")).await;
        assert_eq!(printed.lines().count(), near_the_start);
        assert!(printed.starts_with("line 20\n"), "{}", &printed[..20]);
    }

    #[tokio::test]
    async fn since_leaves_out_older_entries() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        // Entries are at T0 + n + 0.5 s.
        assert_eq!(
            read(&path, "sinceTime=2026-11-22T09:00:05Z").await,
            "four\nfive\n"
        );
        assert_eq!(
            read(&path, "sinceTime=2026-11-22T09:00:04.5Z").await,
            "e\nfour\nfive\n"
        );
        assert_eq!(read(&path, "sinceTime=2026-11-22T09:01:00Z").await, "");
        // sinceSeconds counts back from now.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 6);
        let since_seconds =
            LogOptions::from_query(Some("sinceSeconds=1"), now).expect("valid test query");
        assert_eq!(read_with(&path, &since_seconds).await, "four\nfive\n");
    }

    #[tokio::test]
    async fn timestamps_start_lines_only() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        assert_eq!(
            read(&path, "timestamps=true&tailLines=3").await,
            "2026-11-22T09:00:02.5Z three\n\
             2026-11-22T09:00:05.5Z four\n\
             2026-11-22T09:00:06.5Z five\n"
        );
    }

    #[tokio::test]
    async fn limit_bytes_cuts_the_output() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        assert_eq!(read(&path, "limitBytes=6").await, "one\ntw");
        assert_eq!(read(&path, "limitBytes=8").await, "one\ntwo\n");
        assert_eq!(read(&path, "limitBytes=10").await, "one\ntwo\nth");
        assert_eq!(
            read(&path, "limitBytes=25&timestamps=1").await,
            "2026-11-22T09:00:00.5Z on"
        );
        assert_eq!(
            read(&path, "limitBytes=1000").await,
            "one\ntwo\nthree\nfour\nfive\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limit_bytes_ends_a_follow() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        let mut out = Vec::new();
        let options = options("follow=1&limitBytes=12");
        let read = read_logs(&path, &options, &mut out, async || true);
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the read ends at the limit")
            .expect("reading the test log");
        assert_eq!(out, b"one\ntwo\nthre");
    }

    #[tokio::test]
    async fn malformed_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        let content = [
            entry(0, "stdout", "F", "one"),
            "garbage\n".to_owned(),
            "2026-11-22T09:00:01Z stdin F no\n".to_owned(),
            "\n".to_owned(),
            entry(2, "stderr", "F", "two"),
        ]
        .concat();
        write_log(&path, &content);
        assert_eq!(read(&path, "").await, "one\ntwo\n");
        assert_eq!(read(&path, "tailLines=1").await, "two\n");
    }

    #[tokio::test(start_paused = true)]
    async fn follow_prints_new_lines_until_the_container_stops() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        let running = AtomicBool::new(true);
        let asked = AtomicBool::new(false);
        let mut out = Vec::new();
        let options = options("follow=true&tailLines=1");
        let reader = read_logs(&path, &options, &mut out, async || {
            asked.store(true, Ordering::SeqCst);
            running.load(Ordering::SeqCst)
        });
        let writer = async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            append(&path, &entry(7, "stdout", "F", "six"));
            tokio::time::sleep(Duration::from_millis(250)).await;
            // A line arriving in two writes is printed once complete.
            append(&path, "2026-11-22T09:00:08.5Z stderr F sev");
            tokio::time::sleep(Duration::from_millis(250)).await;
            append(&path, "en\n");
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(asked.load(Ordering::SeqCst), "running was not asked");
            // The last line and the container's end come together.
            append(&path, &entry(9, "stdout", "F", "eight"));
            running.store(false, Ordering::SeqCst);
        };
        let (read, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(reader, writer)
        })
        .await
        .expect("the follow ends when the container stops");
        read.expect("following the test log");
        assert_eq!(String::from_utf8_lossy(&out), "five\nsix\nseven\neight\n");
    }

    #[tokio::test(start_paused = true)]
    async fn follow_with_no_tail_lines_prints_only_new_lines() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        let running = AtomicBool::new(true);
        let mut out = Vec::new();
        let options = options("follow=true&tailLines=0");
        let reader = read_logs(&path, &options, &mut out, async || {
            running.load(Ordering::SeqCst)
        });
        let writer = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            append(&path, &entry(7, "stdout", "F", "six"));
            tokio::time::sleep(Duration::from_secs(2)).await;
            running.store(false, Ordering::SeqCst);
        };
        let (read, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(reader, writer)
        })
        .await
        .expect("the follow ends when the container stops");
        read.expect("following the test log");
        assert_eq!(String::from_utf8_lossy(&out), "six\n");
    }

    #[tokio::test(start_paused = true)]
    async fn follow_continues_into_the_rotated_log() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20261122-090000");
        write_log(&path, &entry(0, "stdout", "F", "one"));
        let running = AtomicBool::new(true);
        let mut out = Vec::new();
        let options = options("follow=true");
        let reader = read_logs(&path, &options, &mut out, async || {
            running.load(Ordering::SeqCst)
        });
        let writer = async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            append(&path, &entry(1, "stdout", "F", "two"));
            tokio::time::sleep(Duration::from_millis(250)).await;
            std::fs::rename(&path, &rotated).expect("rotating the test log");
            // The runtime writes to the renamed file until it reopens its log.
            append(&rotated, &entry(2, "stdout", "F", "three"));
            tokio::time::sleep(Duration::from_millis(250)).await;
            append(&rotated, &entry(3, "stderr", "F", "four"));
            write_log(&path, &entry(4, "stdout", "F", "five"));
            tokio::time::sleep(Duration::from_millis(250)).await;
            append(&path, &entry(5, "stdout", "F", "six"));
            tokio::time::sleep(Duration::from_secs(2)).await;
            running.store(false, Ordering::SeqCst);
        };
        let (read, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(reader, writer)
        })
        .await
        .expect("the follow ends when the container stops");
        read.expect("following the test log");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "one\ntwo\nthree\nfour\nfive\nsix\n"
        );
    }

    /// A client that has gone away.
    struct Gone;

    impl AsyncWrite for Gone {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gone_ends_the_read() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        write_log(&path, &five_lines());
        let options = options("follow=true");
        let mut gone = Gone;
        let read = read_logs(&path, &options, &mut gone, async || true);
        let result = tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the read ends");
        assert!(matches!(result, Err(ReadLogsError::Write(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_missing_log_fails_to_open() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("0.log");
        let result = ContainerLog::open(&path, &LogOptions::default()).await;
        assert!(
            matches!(&result, Err(ReadLogsError::Open { source, .. }) if source.kind() == io::ErrorKind::NotFound),
            "{:?}",
            result.err()
        );
    }
}
