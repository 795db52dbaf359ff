//! Container log rotation, as kubelet's container log manager does it
//! (`pkg/kubelet/logs/container_log_manager.go`): every `containerLogMonitorInterval`, each
//! running container's CRI log file (`ContainerStatus.log_path`) that has reached
//! `containerLogMaxSize` is renamed to `<log>.<timestamp>` and the runtime is asked to reopen
//! it (CRI `ReopenContainerLog`); a container keeps at most `containerLogMaxFiles` files, its
//! live log and the newest rotated ones.
//!
//! The filesystem work is plain functions over the log's directory and the two CRI calls go
//! through [`LogRuntime`], so all of it is tested without root or a runtime.
//!
//! Unlike kubelet, rotated files stay uncompressed: the agent links no gzip encoder. Files
//! kubelet compressed (`<log>.<timestamp>.gz`) are still counted, pruned and removed, and the
//! leftovers of its interrupted compressions are cleaned up, so a node taken over from kubelet
//! keeps its bound.

use std::ffi::OsString;
use std::fs;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bosun_cri::{api, CriClient, CriError};
use tokio::time::MissedTickBehavior;

/// What kubelet appends to a file it is compressing; such a file is a leftover once seen here.
const TMP_SUFFIX: &str = ".tmp";

/// What kubelet appends to a compressed rotated file.
const COMPRESS_SUFFIX: &str = ".gz";

/// kubelet's lower bound on `containerLogMonitorInterval`.
pub const MIN_INTERVAL: Duration = Duration::from_secs(3);

/// kubelet's lower bound on `containerLogMaxFiles`: the live log and the one just rotated.
pub const MIN_FILES: usize = 2;

/// The log rotation settings of kubelet's configuration; `Default` gives kubelet's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationConfig {
    /// `containerLogMaxSize` in bytes: a log this large or larger is rotated (kubelet skips
    /// only a log smaller than it). Default `10Mi`.
    pub max_size: u64,
    /// `containerLogMaxFiles`: the live log plus its rotated files, at most. Default 5; at
    /// least [`MIN_FILES`].
    pub max_files: usize,
    /// `containerLogMonitorInterval`: how often the logs are checked. Default 10 s; at least
    /// [`MIN_INTERVAL`].
    pub interval: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
            interval: Duration::from_secs(10),
        }
    }
}

impl RotationConfig {
    /// Checks the bounds kubelet enforces on these fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_files < MIN_FILES {
            return Err(ConfigError::TooFewFiles {
                max_files: self.max_files,
            });
        }
        if self.interval < MIN_INTERVAL {
            return Err(ConfigError::IntervalTooShort {
                interval: self.interval,
            });
        }
        Ok(())
    }
}

/// A log rotation setting out of kubelet's bounds. Not retryable: the configuration must
/// change.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("containerLogMaxFiles: {max_files} is less than {MIN_FILES}")]
    TooFewFiles { max_files: usize },
    #[error("containerLogMonitorInterval: {interval:?} is shorter than {MIN_INTERVAL:?}")]
    IntervalTooShort { interval: Duration },
}

/// Why one container's log was not rotated (or its rotated files not removed). [`run`] logs
/// it and tries again at the next interval, which is all a caller can do: the file system
/// or the runtime has to recover first.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// A file system call on one of the container's log files failed.
    #[error("{call} {path}: {source}")]
    Io {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The runtime did not reopen the log; a log already rotated was renamed back to `log`.
    #[error("container {container}: reopening {log}: {source}")]
    Reopen {
        container: String,
        log: PathBuf,
        #[source]
        source: CriError,
    },
    /// The runtime did not reopen the log (`reopen`), and the rotated file could not be
    /// renamed back: the runtime may still be writing to `rotated`, and `log` is missing
    /// until the next pass asks the runtime to reopen it.
    #[error("container {container}: reopening {log}: {reopen}; renaming {rotated} back: {source}")]
    RenameBack {
        container: String,
        log: PathBuf,
        rotated: PathBuf,
        reopen: Box<CriError>,
        #[source]
        source: io::Error,
    },
    /// A rotated file with this second's timestamp exists already (two rotations within one
    /// second); renaming over it would lose it.
    #[error("{path} exists already")]
    AlreadyRotated { path: PathBuf },
}

fn io_error<'a>(
    call: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> RotationError + 'a {
    move |source| RotationError::Io {
        call,
        path: path.to_path_buf(),
        source,
    }
}

/// The CRI calls log rotation needs.
pub trait LogRuntime: Send + Sync {
    /// The IDs of the containers in state `CONTAINER_RUNNING`: only they write to their logs.
    fn running_containers(&self) -> impl Future<Output = Result<Vec<String>, CriError>> + Send;
    /// The container's log file (`ContainerStatus.log_path`); `None` when it has none or no
    /// longer exists.
    fn container_log_path(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<PathBuf>, CriError>> + Send;
    /// CRI `ReopenContainerLog`: the runtime closes the container's log file and creates it
    /// anew at the same path.
    fn reopen_container_log(&self, id: &str) -> impl Future<Output = Result<(), CriError>> + Send;
}

impl LogRuntime for CriClient {
    async fn running_containers(&self) -> Result<Vec<String>, CriError> {
        let filter = api::ContainerFilter {
            state: Some(api::ContainerStateValue {
                state: api::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        };
        let containers = self.list_containers(Some(filter)).await?;
        Ok(containers.into_iter().map(|c| c.id).collect())
    }

    async fn container_log_path(&self, id: &str) -> Result<Option<PathBuf>, CriError> {
        let status = match self.container_status(id, false).await {
            Ok(response) => response.status,
            // Removed since it was listed: nothing left to rotate.
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        // containerd reports a log path only when it writes one, and then an absolute one; a
        // relative path would be resolved against bosun's working directory, not the pod's.
        Ok(status
            .map(|s| PathBuf::from(s.log_path))
            .filter(|path| path.is_absolute()))
    }

    async fn reopen_container_log(&self, id: &str) -> Result<(), CriError> {
        CriClient::reopen_container_log(self, id).await
    }
}

/// Rotates the running containers' logs every `config.interval` (the first pass at once);
/// never returns, abort the task to stop it. Errors are logged with the container and file
/// and retried at the next pass. An `interval` below [`MIN_INTERVAL`] (which
/// [`RotationConfig::validate`] rejects) is raised to it.
pub async fn run<R: LogRuntime>(runtime: R, config: RotationConfig) {
    run_with_clock(&runtime, &config, SystemTime::now).await
}

/// [`run`] with the wall clock that names rotated files injected, so that tests in paused
/// time get distinct names.
async fn run_with_clock<R: LogRuntime>(
    runtime: &R,
    config: &RotationConfig,
    now: impl Fn() -> SystemTime,
) {
    let mut passes = tokio::time::interval(config.interval.max(MIN_INTERVAL));
    // A slow pass delays the next one rather than causing a burst: kubelet waits a full
    // period after each pass.
    passes.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        passes.tick().await;
        rotate_running(runtime, config, now()).await;
    }
}

/// One pass: each running container's log, rotated if it needs it.
async fn rotate_running<R: LogRuntime>(runtime: &R, config: &RotationConfig, now: SystemTime) {
    let ids = match runtime.running_containers().await {
        Ok(ids) => ids,
        Err(error) => {
            tracing::warn!(%error, "log rotation: listing the running containers");
            return;
        }
    };
    for id in ids {
        let log = match runtime.container_log_path(&id).await {
            Ok(Some(log)) => log,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(container = %id, %error, "log rotation: reading the log path");
                continue;
            }
        };
        match rotate_if_needed(runtime, &id, &log, config, now).await {
            Ok(Some(rotated)) => tracing::debug!(
                container = %id,
                log = %log.display(),
                rotated = %rotated.display(),
                "rotated the container's log"
            ),
            Ok(None) => {}
            Err(error) => tracing::warn!(
                container = %id,
                log = %log.display(),
                %error,
                "log rotation: rotating the container's log"
            ),
        }
    }
}

/// Rotates container `id`'s `log` if it has reached `config.max_size`, as kubelet does:
/// removes the leftovers and the oldest rotated files so that `max_files - 2` remain, renames
/// `log` to `<log>.<timestamp of now>` and has the runtime reopen it, renaming it back if
/// the runtime fails. Returns the rotated file, or `None` when `log` was smaller.
///
/// A missing `log` is first reopened, as kubelet does: the runtime may have lost it.
///
/// The file system calls are blocking but only touch directory entries (no file contents),
/// so they run on the async task rather than on the blocking pool.
pub async fn rotate_if_needed<R: LogRuntime>(
    runtime: &R,
    id: &str,
    log: &Path,
    config: &RotationConfig,
    now: SystemTime,
) -> Result<Option<PathBuf>, RotationError> {
    let size = match fs::metadata(log) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            reopen(runtime, id, log).await?;
            fs::metadata(log).map_err(io_error("stat", log))?.len()
        }
        Err(e) => return Err(io_error("stat", log)(e)),
    };
    if size < config.max_size {
        return Ok(None);
    }
    let kept = prune_rotated(log, config.max_files)?;
    // Compressing a few MiB takes a while: off the executor's threads.
    let older = kept
        .split_last()
        .map(|(_, older)| older.to_vec())
        .unwrap_or_default();
    tokio::task::spawn_blocking(move || compress_all(&older))
        .await
        .unwrap_or_else(|e| Err(io_error("compress", log)(io::Error::other(e))))?;
    rotate_latest(runtime, id, log, now).await.map(Some)
}

/// Gzips each of `files` not compressed yet into `<file>.gz` (written as `<file>.gz.tmp`
/// first, renamed when complete), then removes `file`: kubelet compresses every rotated file
/// but the newest.
pub fn compress_all(files: &[PathBuf]) -> Result<(), RotationError> {
    for file in files {
        if file.extension().is_some_and(|e| e == "gz" || e == "tmp") {
            continue;
        }
        let mut gz = file.as_os_str().to_owned();
        gz.push(".gz");
        let gz = PathBuf::from(gz);
        let mut tmp = gz.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let compress = || -> io::Result<()> {
            let mut input = fs::File::open(file)?;
            let output = fs::File::create(&tmp)?;
            let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
            io::copy(&mut input, &mut encoder)?;
            encoder.finish()?.sync_all()?;
            fs::rename(&tmp, &gz)
        };
        compress().map_err(io_error("compress", file))?;
        remove_files(std::slice::from_ref(file))?;
    }
    Ok(())
}

async fn reopen<R: LogRuntime>(runtime: &R, id: &str, log: &Path) -> Result<(), RotationError> {
    runtime
        .reopen_container_log(id)
        .await
        .map_err(|source| RotationError::Reopen {
            container: id.to_owned(),
            log: log.to_path_buf(),
            source,
        })
}

/// Renames `log` to its rotated name for `now` and has the runtime reopen it; renames it back
/// if the runtime fails, so that the next pass tries again.
async fn rotate_latest<R: LogRuntime>(
    runtime: &R,
    id: &str,
    log: &Path,
    now: SystemTime,
) -> Result<PathBuf, RotationError> {
    let rotated = rotated_path(log, now);
    if fs::symlink_metadata(&rotated).is_ok() {
        return Err(RotationError::AlreadyRotated { path: rotated });
    }
    fs::rename(log, &rotated).map_err(io_error("rename", log))?;
    let Err(reopen) = runtime.reopen_container_log(id).await else {
        return Ok(rotated);
    };
    if let Err(source) = fs::rename(&rotated, log) {
        return Err(RotationError::RenameBack {
            container: id.to_owned(),
            log: log.to_path_buf(),
            rotated,
            reopen: Box::new(reopen),
            source,
        });
    }
    Err(RotationError::Reopen {
        container: id.to_owned(),
        log: log.to_path_buf(),
        source: reopen,
    })
}

/// `<log>.<timestamp>`, the timestamp in kubelet's format `20060102-150405` (Go's notation:
/// `YYYYMMDD-hhmmss`), in UTC, so that file names sort in time order.
pub fn rotated_path(log: &Path, now: SystemTime) -> PathBuf {
    let mut name = OsString::from(log.as_os_str());
    name.push(".");
    name.push(timestamp(now));
    PathBuf::from(name)
}

fn timestamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift the epoch to 0000-03-01, so that a leap day ends its 400-year era and its year.
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

/// The files kubelet's glob `<log>.*` matches: the log's rotated files, compressed or not,
/// and the leftovers of interrupted compressions; not the log itself, nor another
/// container's (`1.log` is no rotated file of `10.log`, nor the reverse). In name order,
/// which is time order. None when the directory is gone.
pub fn rotated_files(log: &Path) -> Result<Vec<PathBuf>, RotationError> {
    let Some(name) = log.file_name() else {
        return Ok(Vec::new());
    };
    let mut prefix = name.as_bytes().to_vec();
    prefix.push(b'.');
    let dir = match log.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list", dir)(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        if !entry.file_name().as_bytes().starts_with(&prefix) {
            continue;
        }
        let is_dir = entry
            .file_type()
            .map_err(io_error("stat", &entry.path()))?
            .is_dir();
        if !is_dir {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// What to do with a log's rotated files before rotating it once more.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prune {
    /// Leftovers first, then the oldest rotated files, in the order to remove them: oldest
    /// first, so that a reader following the rotated files is not cut off in the middle.
    pub remove: Vec<PathBuf>,
    /// The newest `max_files - 2` rotated files, oldest first.
    pub keep: Vec<PathBuf>,
}

/// Sorts `rotated` (as [`rotated_files`] lists them) as kubelet does before a rotation:
///
/// - leftovers of kubelet's compression are removed: a `.tmp` file, and a rotated file whose
///   `.gz` exists (the compression finished but the original was not removed yet);
/// - of the rest, the newest `max_files - 2` are kept and the older ones removed. The live
///   log and the file it is about to be rotated into are the other two, so after the
///   rotation there are at most `max_files - 1` rotated files and `max_files` files in all.
pub fn plan_prune(rotated: &[PathBuf], max_files: usize) -> Prune {
    let is_leftover = |path: &PathBuf| {
        let name = path.as_os_str().as_bytes();
        if name.ends_with(TMP_SUFFIX.as_bytes()) {
            return true;
        }
        let mut compressed = path.as_os_str().to_owned();
        compressed.push(COMPRESS_SUFFIX);
        !name.ends_with(COMPRESS_SUFFIX.as_bytes())
            && rotated.iter().any(|other| other.as_os_str() == compressed)
    };
    let (mut remove, mut keep): (Vec<PathBuf>, Vec<PathBuf>) =
        rotated.iter().cloned().partition(is_leftover);
    keep.sort();
    let excess = keep.len().saturating_sub(max_files.saturating_sub(2));
    remove.extend(keep.drain(..excess));
    Prune { remove, keep }
}

/// Removes what [`plan_prune`] says of `log`'s rotated files; returns the ones kept.
pub fn prune_rotated(log: &Path, max_files: usize) -> Result<Vec<PathBuf>, RotationError> {
    let prune = plan_prune(&rotated_files(log)?, max_files);
    remove_files(&prune.remove)?;
    Ok(prune.keep)
}

/// Removes the rotated files of a removed container's `log_path` (kubelet's `Clean` does it
/// when the container is removed), oldest first; not `log_path` itself. Files already gone
/// are no error.
pub fn remove_rotated(log_path: &Path) -> Result<(), RotationError> {
    remove_files(&rotated_files(log_path)?)
}

/// The UIDs of the pods that have a log directory (`<namespace>_<name>_<uid>`) in
/// `pod_logs_dir`.
pub fn pod_log_uids(pod_logs_dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(pod_logs_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.rsplit_once('_').map(|(_, uid)| uid.to_owned())
        })
        .filter(|uid| !uid.is_empty())
        .collect()
}

/// Removes the log directory of the pod `uid` (kubelet removes those of pods it no longer
/// has): its containers' logs, rotated or not. None is no error.
pub fn remove_pod_logs(pod_logs_dir: &Path, uid: &str) -> Result<(), RotationError> {
    let Ok(entries) = fs::read_dir(pod_logs_dir) else {
        return Ok(());
    };
    let suffix = format!("_{uid}");
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(&suffix) {
            let path = entry.path();
            match fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error("remove", &path)(e)),
            }
        }
    }
    Ok(())
}

fn remove_files(files: &[PathBuf]) -> Result<(), RotationError> {
    for file in files {
        match fs::remove_file(file) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", file)(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_rotated_files_are_gzipped_and_their_originals_removed() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("0.log.20261206-100000");
        let done = dir.path().join("0.log.20261206-090000.gz");
        fs::write(&old, "an old line\n".repeat(1000)).expect("a rotated log");
        fs::write(&done, "already compressed").expect("a compressed log");
        compress_all(&[done.clone(), old.clone()]).expect("compressed");
        assert!(!old.exists(), "the original is removed");
        assert_eq!(
            fs::read(&done).expect("untouched"),
            b"already compressed",
            "a .gz is left as it is"
        );
        let mut text = String::new();
        flate2::read::GzDecoder::new(
            fs::File::open(dir.path().join("0.log.20261206-100000.gz")).expect("the .gz"),
        )
        .read_to_string(&mut text)
        .expect("gzip");
        assert_eq!(text, "an old line\n".repeat(1000));
        assert!(!dir.path().join("0.log.20261206-100000.gz.tmp").exists());
    }

    #[test]
    fn a_gone_pods_log_directory_goes_and_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        for pod in [
            "default_web_uid-1",
            "default_web_uid-2",
            "kube-system_dns_uid-3",
        ] {
            fs::create_dir_all(dir.path().join(pod).join("app")).expect("a pod log directory");
            fs::write(dir.path().join(pod).join("app/0.log"), "x").expect("a log");
        }
        let mut uids = pod_log_uids(dir.path());
        uids.sort();
        assert_eq!(uids, ["uid-1", "uid-2", "uid-3"]);
        remove_pod_logs(dir.path(), "uid-2").expect("removed");
        remove_pod_logs(dir.path(), "uid-9").expect("nothing to remove is no error");
        let mut uids = pod_log_uids(dir.path());
        uids.sort();
        assert_eq!(uids, ["uid-1", "uid-3"]);
    }

    use std::collections::{BTreeMap, HashSet};
    use std::sync::{Arc, Mutex, PoisonError};

    use tonic::Code;

    /// 2023-11-14 22:13:20 UTC.
    const NOW: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn config(max_size: u64, max_files: usize) -> RotationConfig {
        RotationConfig {
            max_size,
            max_files,
            ..RotationConfig::default()
        }
    }

    fn write(path: &Path, len: usize) {
        fs::write(path, vec![b'x'; len]).expect("write the file");
    }

    /// The names of the files in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list the directory")
            .map(|e| {
                e.expect("read an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Containers and their logs in memory; `ReopenContainerLog` creates the log anew, as
    /// containerd does, or fails for the containers told to.
    #[derive(Clone, Default)]
    struct FakeRuntime {
        state: Arc<Mutex<FakeState>>,
    }

    #[derive(Default)]
    struct FakeState {
        logs: BTreeMap<String, PathBuf>,
        failing_reopen: HashSet<String>,
        reopened: Vec<String>,
    }

    impl FakeRuntime {
        fn with(logs: &[(&str, &Path)]) -> Self {
            let runtime = FakeRuntime::default();
            runtime.lock().logs = logs
                .iter()
                .map(|(id, log)| ((*id).to_owned(), log.to_path_buf()))
                .collect();
            runtime
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn fail_reopen(&self, id: &str) {
            self.lock().failing_reopen.insert(id.to_owned());
        }

        fn reopened(&self) -> Vec<String> {
            self.lock().reopened.clone()
        }
    }

    impl LogRuntime for FakeRuntime {
        async fn running_containers(&self) -> Result<Vec<String>, CriError> {
            Ok(self.lock().logs.keys().cloned().collect())
        }

        async fn container_log_path(&self, id: &str) -> Result<Option<PathBuf>, CriError> {
            Ok(self.lock().logs.get(id).cloned())
        }

        async fn reopen_container_log(&self, id: &str) -> Result<(), CriError> {
            let mut state = self.lock();
            state.reopened.push(id.to_owned());
            if state.failing_reopen.contains(id) {
                return Err(CriError::Status {
                    call: "ReopenContainerLog",
                    code: Code::Unavailable,
                    message: "injected".to_owned(),
                });
            }
            let log = state.logs.get(id).expect("a known container");
            fs::File::create(log).expect("create the new log");
            Ok(())
        }
    }

    #[test]
    fn defaults_are_kubelets_and_valid() {
        let config = RotationConfig::default();
        assert_eq!(config.max_size, 10 << 20);
        assert_eq!(config.max_files, 5);
        assert_eq!(config.interval, Duration::from_secs(10));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn validate_rejects_what_kubelet_rejects() {
        assert_eq!(
            config(1, 1).validate(),
            Err(ConfigError::TooFewFiles { max_files: 1 })
        );
        assert_eq!(config(1, 2).validate(), Ok(()));
        let interval = Duration::from_millis(2999);
        assert_eq!(
            RotationConfig {
                interval,
                ..RotationConfig::default()
            }
            .validate(),
            Err(ConfigError::IntervalTooShort { interval })
        );
    }

    #[test]
    fn rotated_names_carry_kubelets_utc_timestamp() {
        let log = Path::new("/logs/pod/c/0.log");
        assert_eq!(
            rotated_path(log, at(NOW)),
            Path::new("/logs/pod/c/0.log.20231114-221320")
        );
        assert_eq!(timestamp(UNIX_EPOCH), "19700101-000000");
        // The last second of a leap day, and of a century year that is not a leap year.
        assert_eq!(timestamp(at(951_868_799)), "20000229-235959");
        assert_eq!(timestamp(at(4_107_542_399)), "21000228-235959");
        assert_eq!(timestamp(at(4_107_542_400)), "21000301-000000");
    }

    #[test]
    fn plan_removes_leftovers_and_keeps_the_newest_max_files_minus_two() {
        let paths = |names: &[&str]| -> Vec<PathBuf> {
            names.iter().map(|n| Path::new("/l").join(n)).collect()
        };
        let rotated = paths(&[
            "0.log.20240101-000000.gz",
            "0.log.20240102-000000",
            "0.log.20240102-000000.gz",
            "0.log.20240103-000000.gz",
            "0.log.20240104-000000",
            "0.log.20240104-000000.gz.tmp",
            "0.log.20240105-000000",
        ]);
        assert_eq!(
            plan_prune(&rotated, 5),
            Prune {
                remove: paths(&[
                    // Leftovers: compressed but not removed; compression interrupted.
                    "0.log.20240102-000000",
                    "0.log.20240104-000000.gz.tmp",
                    // The oldest of the five rotated files in use; 5 - 2 remain.
                    "0.log.20240101-000000.gz",
                    "0.log.20240102-000000.gz",
                ]),
                keep: paths(&[
                    "0.log.20240103-000000.gz",
                    "0.log.20240104-000000",
                    "0.log.20240105-000000",
                ]),
            }
        );
        // containerLogMaxFiles 2: the live log and the one about to be rotated, nothing else.
        assert!(plan_prune(&rotated, 2).keep.is_empty());
        assert_eq!(plan_prune(&rotated, 100).keep.len(), 5);
    }

    #[tokio::test]
    async fn a_log_at_max_size_is_renamed_and_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        fs::write(&log, "0123456789").expect("write the log");
        let runtime = FakeRuntime::with(&[("c1", &log)]);

        let rotated = rotate_if_needed(&runtime, "c1", &log, &config(10, 5), at(NOW))
            .await
            .expect("rotate");

        let expected = dir.path().join("0.log.20231114-221320");
        assert_eq!(rotated, Some(expected.clone()));
        assert_eq!(runtime.reopened(), ["c1"]);
        assert_eq!(fs::read_to_string(&expected).expect("read"), "0123456789");
        assert_eq!(fs::metadata(&log).expect("the new log").len(), 0);
    }

    #[tokio::test]
    async fn a_log_under_max_size_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        write(&log, 9);
        // Rotated files are pruned only when a rotation is due.
        let old = [
            "0.log.20240101-000000",
            "0.log.20240102-000000",
            "0.log.20240103-000000",
        ];
        for name in old {
            write(&dir.path().join(name), 1);
        }
        let runtime = FakeRuntime::with(&[("c1", &log)]);

        let rotated = rotate_if_needed(&runtime, "c1", &log, &config(10, 2), at(NOW))
            .await
            .expect("check");

        assert_eq!(rotated, None);
        assert!(runtime.reopened().is_empty());
        assert_eq!(names(dir.path()), ["0.log", old[0], old[1], old[2]]);
        assert_eq!(fs::metadata(&log).expect("the log").len(), 9);
    }

    #[tokio::test]
    async fn rotated_files_never_exceed_max_files_minus_one() {
        for max_files in [2, 3, 5] {
            let dir = tempfile::tempdir().expect("tempdir");
            let log = dir.path().join("0.log");
            let runtime = FakeRuntime::with(&[("c1", &log)]);
            let mut rotations = Vec::new();
            for i in 0..8 {
                write(&log, 10);
                let rotated = rotate_if_needed(&runtime, "c1", &log, &config(10, max_files), {
                    at(NOW + 10 * i)
                })
                .await
                .expect("rotate")
                .expect("at max size");
                rotations.push(rotated);
                let files = rotated_files(&log).expect("list");
                assert!(files.len() < max_files, "{max_files}: {files:?}");
            }
            // The newest stay, and the live log makes max_files; all but the two newest
            // rotated files are compressed.
            let kept = &rotations[rotations.len() - (max_files - 1)..];
            let files = rotated_files(&log).expect("list");
            let uncompressed: Vec<PathBuf> = files
                .iter()
                .map(|f| PathBuf::from(f.to_string_lossy().trim_end_matches(".gz")))
                .collect();
            assert_eq!(uncompressed, kept, "{max_files}");
            let compressed = files
                .iter()
                .filter(|f| f.extension().is_some_and(|e| e == "gz"));
            assert_eq!(
                compressed.count(),
                files.len().saturating_sub(2),
                "{files:?}"
            );
            assert_eq!(names(dir.path()).len(), max_files);
        }
    }

    #[tokio::test]
    async fn files_compressed_by_kubelet_count_and_its_leftovers_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        write(&log, 10);
        for name in [
            "0.log.20240101-000000.gz",
            "0.log.20240102-000000.gz",
            "0.log.20240103-000000",
            "0.log.20240103-000000.gz",
            "0.log.20240104-000000.gz.tmp",
        ] {
            write(&dir.path().join(name), 1);
        }
        let runtime = FakeRuntime::with(&[("c1", &log)]);

        rotate_if_needed(&runtime, "c1", &log, &config(10, 3), at(NOW))
            .await
            .expect("rotate");

        assert_eq!(
            names(dir.path()),
            ["0.log", "0.log.20231114-221320", "0.log.20240103-000000.gz"]
        );
    }

    #[tokio::test]
    async fn a_failed_reopen_renames_the_log_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        fs::write(&log, "0123456789").expect("write the log");
        let runtime = FakeRuntime::with(&[("c1", &log)]);
        runtime.fail_reopen("c1");

        let error = rotate_if_needed(&runtime, "c1", &log, &config(10, 5), at(NOW))
            .await
            .expect_err("reopen fails");

        assert!(
            matches!(&error, RotationError::Reopen { container, .. } if container == "c1"),
            "{error:?}"
        );
        assert_eq!(runtime.reopened(), ["c1"]);
        assert_eq!(names(dir.path()), ["0.log"]);
        assert_eq!(fs::read_to_string(&log).expect("read"), "0123456789");
    }

    #[tokio::test]
    async fn a_second_rotation_in_the_same_second_keeps_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        fs::write(&log, "first.....").expect("write the log");
        let runtime = FakeRuntime::with(&[("c1", &log)]);
        let rotated = rotate_if_needed(&runtime, "c1", &log, &config(10, 5), at(NOW))
            .await
            .expect("rotate")
            .expect("at max size");
        fs::write(&log, "second....").expect("write the log");

        let error = rotate_if_needed(&runtime, "c1", &log, &config(10, 5), at(NOW))
            .await
            .expect_err("the name is taken");

        assert!(
            matches!(&error, RotationError::AlreadyRotated { path } if *path == rotated),
            "{error:?}"
        );
        assert_eq!(fs::read_to_string(&rotated).expect("read"), "first.....");
        assert_eq!(fs::read_to_string(&log).expect("read"), "second....");
        assert_eq!(runtime.reopened(), ["c1"]);
    }

    #[tokio::test]
    async fn a_missing_log_is_reopened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("0.log");
        let runtime = FakeRuntime::with(&[("c1", &log)]);

        let rotated = rotate_if_needed(&runtime, "c1", &log, &config(10, 5), at(NOW))
            .await
            .expect("reopen");

        assert_eq!(rotated, None);
        assert_eq!(runtime.reopened(), ["c1"]);
        assert!(log.exists());
    }

    #[test]
    fn remove_rotated_removes_only_that_containers_rotated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let all = [
            "0.log",
            "0.log.20240101-000000.gz",
            "0.log.20240102-000000",
            "0.log.20240103-000000.gz.tmp",
            "00.log.20240101-000000",
            "0.logx",
            "1.log",
            "1.log.20240101-000000",
            "10.log.20240101-000000",
        ];
        for name in all {
            write(&dir.path().join(name), 1);
        }
        fs::create_dir(dir.path().join("0.log.d")).expect("mkdir");

        remove_rotated(&dir.path().join("0.log")).expect("remove");

        assert_eq!(
            names(dir.path()),
            [
                "0.log",
                "0.log.d",
                "0.logx",
                "00.log.20240101-000000",
                "1.log",
                "1.log.20240101-000000",
                "10.log.20240101-000000",
            ]
        );
        // A pod log directory removed already is no error.
        remove_rotated(&dir.path().join("gone/0.log")).expect("nothing to remove");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_rotates_every_interval_and_outlives_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.log");
        let bad = dir.path().join("bad.log");
        write(&good, 10);
        write(&bad, 10);
        let runtime = FakeRuntime::with(&[("bad", &bad), ("good", &good)]);
        runtime.fail_reopen("bad");
        let config = config(10, 5);
        let start = tokio::time::Instant::now();
        let clock = move || at(NOW) + start.elapsed();
        let task = tokio::spawn({
            let runtime = runtime.clone();
            async move { run_with_clock(&runtime, &config, clock).await }
        });

        // The first pass runs at once; the failing container does not stop the other.
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(runtime.reopened(), ["bad", "good"]);
        assert_eq!(rotated_files(&good).expect("list").len(), 1);
        assert_eq!(
            names(dir.path()),
            ["bad.log", "good.log", "good.log.20231114-221320"]
        );

        write(&good, 10);
        tokio::time::sleep(config.interval - Duration::from_millis(2)).await;
        assert_eq!(runtime.reopened().len(), 2, "no pass before the interval");

        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(runtime.reopened(), ["bad", "good", "bad", "good"]);
        assert_eq!(
            names(dir.path()),
            [
                "bad.log",
                "good.log",
                "good.log.20231114-221320",
                "good.log.20231114-221330"
            ]
        );
        task.abort();
    }
}
