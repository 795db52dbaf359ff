//! Termination messages (kubelet's `kuberuntime_container.go` `makeMounts` and
//! `getTerminationMessage`, `readLastStringFromContainerLogs`): an empty file per container
//! instance, mounted at `terminationMessagePath`, read when the container has exited.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bosun_cri::api;

use super::layout::{at, container_dir, create_dirs, random_u32, IoFailure, POD_DIR_MODE};

/// `terminationMessagePath` when the pod does not set it.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// The policy that falls back to the log's tail when the file is empty and the container
/// failed.
pub const FALLBACK_TO_LOGS_ON_ERROR: &str = "FallbackToLogsOnError";
/// At most this much of the file is the message: its last 4096 bytes.
pub const MAX_TERMINATION_MESSAGE_BYTES: u64 = 4096;
/// At most this many lines of the log are the fallback message...
pub const MAX_LOG_TAIL_LINES: usize = 80;
/// ...and at most their last 2048 bytes.
pub const MAX_LOG_TAIL_BYTES: usize = 2048;

/// The file is writable by whatever user the container runs as.
const FILE_MODE: u32 = 0o666;
/// How much of the end of a log file is read for its last lines. A CRI log line holds at
/// most 16 KiB of output, so this covers 80 of them with room to spare.
const MAX_LOG_READ_BYTES: u64 = 2 << 20;
const MAX_NAME_ATTEMPTS: usize = 16;

/// Creates `<pod_dir>/containers/<name>/<random id>`, empty and mode 0666, for a new
/// instance of the container.
pub(crate) fn create_file(pod_dir: &Path, container: &str) -> Result<PathBuf, IoFailure> {
    let dir = container_dir(pod_dir, container);
    create_dirs(&dir, POD_DIR_MODE)?;
    let mut last_error = None;
    for _ in 0..MAX_NAME_ATTEMPTS {
        let path = dir.join(format!("{:08x}", random_u32()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
                    .map_err(at("setting the mode of", &path))?;
                return Ok(path);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => return Err(at("creating", &path)(error)),
        }
    }
    let error = last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(at("creating a termination-log file in", &dir)(error))
}

/// The host file behind a container's termination-log mount, from the mounts the runtime
/// reports for it (`ContainerStatus.mounts`) or the ones it was created with:
/// the one mounted at `termination_message_path`. This is how kubelet finds it, and works
/// after a restart of bosun.
pub fn termination_message_file(
    mounts: &[api::Mount],
    termination_message_path: &str,
) -> Option<PathBuf> {
    if termination_message_path.is_empty() {
        return None;
    }
    // Mounts are made at the absolute form of the path.
    let container_path = match termination_message_path.strip_prefix('/') {
        Some(_) => termination_message_path.to_owned(),
        None => format!("/{termination_message_path}"),
    };
    mounts
        .iter()
        .find(|m| m.container_path == container_path)
        .map(|m| PathBuf::from(&m.host_path))
}

/// The message of an exited container, as kubelet puts it in
/// `state.terminated.message`.
///
/// - `message_file`: the host file behind `terminationMessagePath`
///   ([`termination_message_file`]); `None` if there is none.
/// - `policy`: `terminationMessagePolicy` (`File`, the default, or `FallbackToLogsOnError`).
/// - `exit_code`: the container's exit code.
/// - `log_path`: the container's CRI log file, for the fallback; pass `None` for a container
///   that never ran (kubelet's `ContainerCannotRun`): it has no logs.
///
/// The message is the last 4096 bytes of the file. With `FallbackToLogsOnError`, a non-zero
/// exit code and an empty or missing file, it is the output of the log's last 80 lines, at
/// most their last 2048 bytes. Read errors become the message, as in kubelet.
///
/// ```
/// use bosun::pod::volume::{termination_message, FALLBACK_TO_LOGS_ON_ERROR};
/// # let dir = tempfile::tempdir().unwrap();
/// # let file = dir.path().join("msg");
/// # let log = dir.path().join("0.log");
/// std::fs::write(&file, "").unwrap();
/// std::fs::write(&log, "2026-05-19T10:11:12.000000000Z stderr F panic: boom\n").unwrap();
/// let message = termination_message(Some(&file), Some(FALLBACK_TO_LOGS_ON_ERROR), 2, Some(&log));
/// assert_eq!(message, "panic: boom\n");
/// ```
pub fn termination_message(
    message_file: Option<&Path>,
    policy: Option<&str>,
    exit_code: i32,
    log_path: Option<&Path>,
) -> String {
    let fallback = policy == Some(FALLBACK_TO_LOGS_ON_ERROR) && exit_code != 0;
    let (message, check_logs) = match message_file {
        None => (String::new(), fallback),
        Some(path) => match read_tail(path, MAX_TERMINATION_MESSAGE_BYTES) {
            Ok(data) => {
                let empty = data.is_empty();
                (
                    String::from_utf8_lossy(&data).into_owned(),
                    fallback && empty,
                )
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => (String::new(), fallback),
            Err(error) => (
                format!(
                    "Error on reading termination log {}: {error}",
                    path.display()
                ),
                false,
            ),
        },
    };
    match log_path {
        Some(log) if check_logs => match read_log_tail(log) {
            Ok(tail) => tail,
            Err(error) => format!("Error on reading termination message from logs: {error}"),
        },
        _ => message,
    }
}

/// The output of the last 80 lines of a CRI log file (`<time> <stream> <P|F> <output>`),
/// both streams, at most the last 2048 bytes; a full line (`F`) ends with a newline, a
/// partial one (`P`) does not. Lines that are not in the CRI format are skipped.
pub fn read_log_tail(log_path: &Path) -> io::Result<String> {
    let mut file = fs::File::open(log_path)?;
    let size = file.metadata()?.len();
    let start = size.saturating_sub(MAX_LOG_READ_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(MAX_LOG_READ_BYTES).read_to_end(&mut bytes)?;
    let mut text: &[u8] = &bytes;
    if start > 0 {
        // The first line is cut; drop it.
        let first_newline = text
            .iter()
            .position(|&b| b == b'\n')
            .map_or(text.len(), |i| i + 1);
        text = &text[first_newline..];
    }
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    let lines: Vec<&[u8]> = if text.is_empty() {
        Vec::new()
    } else {
        text.split(|&b| b == b'\n').collect()
    };
    let tail = &lines[lines.len().saturating_sub(MAX_LOG_TAIL_LINES)..];
    let mut out = Vec::new();
    for line in tail {
        if let Some((full, output)) = parse_cri_line(line) {
            out.extend_from_slice(output);
            if full {
                out.push(b'\n');
            }
        }
    }
    let keep = &out[out.len().saturating_sub(MAX_LOG_TAIL_BYTES)..];
    Ok(String::from_utf8_lossy(keep).into_owned())
}

/// `<time> <stream> <tags> <output>` → (whether the line is full, output).
fn parse_cri_line(line: &[u8]) -> Option<(bool, &[u8])> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let _time = fields.next().filter(|t| !t.is_empty())?;
    let stream = fields.next()?;
    if stream != b"stdout" && stream != b"stderr" {
        return None;
    }
    let tags = fields.next()?;
    let output = fields.next().unwrap_or_default();
    let full = tags.split(|&b| b == b':').next() != Some(b"P");
    Some((full, output))
}

/// The last `max` bytes of a file (kubelet's `tail.ReadAtMost`).
fn read_tail(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    let size = file.metadata()?.len();
    file.seek(SeekFrom::Start(size.saturating_sub(max)))?;
    let mut data = Vec::new();
    file.take(max).read_to_end(&mut data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_line(stream: &str, tag: &str, output: &str) -> String {
        format!("2026-05-19T10:11:12.123456789Z {stream} {tag} {output}\n")
    }

    #[test]
    fn creates_a_fresh_empty_0666_file_per_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = create_file(dir.path(), "app").expect("creates");
        let second = create_file(dir.path(), "app").expect("creates");
        assert_ne!(first, second);
        assert_eq!(
            first.parent(),
            Some(dir.path().join("containers/app").as_path())
        );
        let name = first.file_name().and_then(|n| n.to_str()).expect("a name");
        assert_eq!(name.len(), 8);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
        let metadata = fs::metadata(&first).expect("exists");
        assert_eq!(metadata.len(), 0);
        assert_eq!(metadata.permissions().mode() & 0o7777, 0o666);
    }

    #[test]
    fn the_message_is_the_files_last_4096_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("msg");
        fs::write(&file, "all done").expect("writes");
        assert_eq!(termination_message(Some(&file), None, 0, None), "all done");

        let long = format!("{}{}", "a".repeat(100), "b".repeat(4096));
        fs::write(&file, &long).expect("writes");
        assert_eq!(
            termination_message(Some(&file), Some("File"), 1, None),
            "b".repeat(4096)
        );
    }

    #[test]
    fn falls_back_to_the_log_only_on_error_with_an_empty_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("msg");
        let log = dir.path().join("0.log");
        fs::write(&file, "").expect("writes");
        let lines = [
            log_line("stdout", "F", "starting"),
            log_line("stderr", "P", "pa"),
            log_line("stderr", "F", "nic"),
            "garbage\n".to_owned(),
        ];
        fs::write(&log, lines.concat()).expect("writes");
        let policy = Some(FALLBACK_TO_LOGS_ON_ERROR);

        assert_eq!(
            termination_message(Some(&file), policy, 1, Some(&log)),
            "starting\npanic\n"
        );
        assert_eq!(
            termination_message(None, policy, 1, Some(&log)),
            "starting\npanic\n"
        );
        let missing = dir.path().join("missing");
        assert_eq!(
            termination_message(Some(&missing), policy, 1, Some(&log)),
            "starting\npanic\n"
        );
        assert_eq!(
            termination_message(Some(&file), policy, 0, Some(&log)),
            "",
            "exit 0"
        );
        assert_eq!(
            termination_message(Some(&file), Some("File"), 1, Some(&log)),
            ""
        );
        assert_eq!(
            termination_message(Some(&file), policy, 1, None),
            "",
            "never ran"
        );
        fs::write(&file, "my message").expect("writes");
        assert_eq!(
            termination_message(Some(&file), policy, 1, Some(&log)),
            "my message"
        );
    }

    #[test]
    fn the_log_tail_is_80_lines_and_2048_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        let lines: String = (0..100)
            .map(|i| log_line("stdout", "F", &format!("line {i}")))
            .collect();
        fs::write(&log, lines).expect("writes");
        let tail = read_log_tail(&log).expect("reads");
        assert!(tail.starts_with("line 20\n"), "{tail}");
        assert!(tail.ends_with("line 99\n"), "{tail}");

        let long: String = (0..10)
            .map(|i| log_line("stdout", "F", &format!("{i}{}", "x".repeat(499))))
            .collect();
        fs::write(&log, long).expect("writes");
        let tail = read_log_tail(&log).expect("reads");
        assert_eq!(tail.len(), MAX_LOG_TAIL_BYTES);
        assert!(tail.ends_with(&format!("9{}\n", "x".repeat(499))));

        let error = termination_message(
            None,
            Some(FALLBACK_TO_LOGS_ON_ERROR),
            1,
            Some(&dir.path().join("nope.log")),
        );
        assert!(
            error.starts_with("Error on reading termination message from logs: "),
            "{error}"
        );
    }

    #[test]
    fn finds_the_file_behind_the_mount() {
        let mounts = vec![
            api::Mount {
                container_path: "/data".into(),
                host_path: "/pods/u/volumes/kubernetes.io~empty-dir/data".into(),
                ..Default::default()
            },
            api::Mount {
                container_path: "/dev/termination-log".into(),
                host_path: "/pods/u/containers/app/0badcafe".into(),
                ..Default::default()
            },
        ];
        assert_eq!(
            termination_message_file(&mounts, DEFAULT_TERMINATION_MESSAGE_PATH),
            Some(PathBuf::from("/pods/u/containers/app/0badcafe"))
        );
        assert_eq!(termination_message_file(&mounts, "/tmp/msg"), None);
        assert_eq!(termination_message_file(&mounts, ""), None);
    }
}
