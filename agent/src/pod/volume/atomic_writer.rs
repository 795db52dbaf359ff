//! kubelet's atomic writer (`pkg/volume/util/atomic_writer.go`): how configMap, secret,
//! downwardAPI and projected volumes are written so that a container never sees a mix of old
//! and new files.
//!
//! ```text
//! <dir>/..2026_05_19_10_11_12.3141592653/   the files, in a directory named by the time
//! <dir>/..data -> ..2026_05_19_10_11_12.3141592653
//! <dir>/KEY -> ..data/KEY                    one link per top-level name
//! ```
//!
//! An update writes a new timestamped directory, points a `..data_tmp` link at it and
//! renames that over `..data` (`rename(2)` is atomic), then adds and removes top-level links
//! and deletes the old directory. Nothing is written when the files already hold the payload.
//!
//! Unlike kubelet, a change of mode alone also counts as a change, and leftovers of an
//! interrupted update (a `..data_tmp` link, timestamped directories `..data` does not point
//! to) are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::jiff::Timestamp;

use super::layout::{at, create_dirs, random_u32, IoFailure};

/// The link to the current timestamped directory.
pub(crate) const DATA_DIR: &str = "..data";
/// The link that is renamed over [`DATA_DIR`].
const DATA_DIR_TMP: &str = "..data_tmp";
/// Timestamped directories are readable by every user the container may run as.
const TS_DIR_MODE: u32 = 0o755;
/// How many names to try for a new timestamped directory.
const MAX_NAME_ATTEMPTS: usize = 16;

/// One file of a volume: its content and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileProjection {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A volume's files by clean relative path (`a/b`, checked by
/// [`super::layout::check_item_path`]).
pub(crate) type Payload = BTreeMap<String, FileProjection>;

/// Makes `dir` (which must exist) hold exactly `payload`. Returns whether anything was
/// written.
pub(crate) fn write(dir: &Path, payload: &Payload) -> Result<bool, IoFailure> {
    let current = current_ts_dir(dir)?;
    let old = match &current {
        Some(name) => Some(Listing::of(&dir.join(name))?),
        None => None,
    };
    let up_to_date = match (&current, &old) {
        (Some(name), Some(listing)) => listing.holds(&dir.join(name), payload)?,
        _ => false,
    };
    let mut keep = current;
    if !up_to_date {
        let name = new_ts_dir(dir)?;
        let ts_dir = dir.join(&name);
        if let Err(failure) = write_files(&ts_dir, payload).and_then(|()| publish(dir, &name)) {
            // Best effort: the directory is removed as a stray by the next write anyway.
            let _ = fs::remove_dir_all(&ts_dir);
            return Err(failure);
        }
        keep = Some(name);
    }
    let tops = top_level_names(payload.keys());
    create_visible_links(dir, &tops)?;
    if let Some(old) = &old {
        remove_visible_links(dir, old.tops.difference(&tops))?;
    }
    remove_strays(dir, keep.as_deref())?;
    Ok(!up_to_date)
}

/// The name `..data` points to, if it is one of ours.
fn current_ts_dir(dir: &Path) -> Result<Option<String>, IoFailure> {
    let link = dir.join(DATA_DIR);
    match fs::read_link(&link) {
        Ok(target) => Ok(target
            .to_str()
            .filter(|name| is_ts_dir_name(name))
            .map(str::to_owned)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(at("reading the link", &link)(error)),
    }
}

/// `..2026_...`: a single component in `dir` that is none of the writer's links.
fn is_ts_dir_name(name: &str) -> bool {
    name.starts_with("..")
        && name != DATA_DIR
        && name != DATA_DIR_TMP
        && name != ".."
        && !name.contains('/')
}

/// The files of a timestamped directory, read without following links.
struct Listing {
    /// Relative path → permission bits; `None` for anything that is not a regular file.
    files: BTreeMap<String, Option<u32>>,
    /// The first component of every entry.
    tops: BTreeSet<String>,
}

impl Listing {
    fn of(root: &Path) -> Result<Self, IoFailure> {
        let mut listing = Listing {
            files: BTreeMap::new(),
            tops: BTreeSet::new(),
        };
        match fs::symlink_metadata(root) {
            Ok(metadata) if metadata.is_dir() => listing.walk(root, "")?,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(at("reading", root)(error)),
        }
        Ok(listing)
    }

    fn walk(&mut self, dir: &Path, prefix: &str) -> Result<(), IoFailure> {
        for entry in fs::read_dir(dir).map_err(at("listing", dir))? {
            let entry = entry.map_err(at("listing", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                self.tops.insert(name.clone());
                name
            } else {
                format!("{prefix}/{name}")
            };
            let path = entry.path();
            let metadata = fs::symlink_metadata(&path).map_err(at("reading", &path))?;
            if metadata.is_dir() {
                self.walk(&path, &relative)?;
            } else {
                let mode = metadata
                    .is_file()
                    .then(|| metadata.permissions().mode() & 0o7777);
                self.files.insert(relative, mode);
            }
        }
        Ok(())
    }

    /// Whether the directory at `root` holds exactly `payload`: the same files, contents and
    /// modes.
    fn holds(&self, root: &Path, payload: &Payload) -> Result<bool, IoFailure> {
        if !self.files.keys().eq(payload.keys()) {
            return Ok(false);
        }
        for (relative, file) in payload {
            if self.files.get(relative) != Some(&Some(file.mode)) {
                return Ok(false);
            }
            let path = root.join(relative);
            if fs::read(&path).map_err(at("reading", &path))? != file.data {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Creates `..<UTC time>.<random>` in `dir` with mode 0755 and returns its name.
fn new_ts_dir(dir: &Path) -> Result<String, IoFailure> {
    let stamp = utc_stamp();
    let mut last_error = None;
    for _ in 0..MAX_NAME_ATTEMPTS {
        let name = format!("..{stamp}.{}", random_u32());
        let path = dir.join(&name);
        match fs::create_dir(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(TS_DIR_MODE))
                    .map_err(at("setting the mode of", &path))?;
                return Ok(name);
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => return Err(at("creating", &path)(error)),
        }
    }
    let error = last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(at("creating a timestamped directory in", dir)(error))
}

/// Now as `2026_05_19_10_11_12`, kubelet's layout.
fn utc_stamp() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut stamp = String::new();
    let formatted = Timestamp::from_second(seconds)
        .map_err(|_| std::fmt::Error)
        .and_then(|ts| write!(stamp, "{}", ts.strftime("%Y_%m_%d_%H_%M_%S")));
    if formatted.is_err() {
        // Only for clocks past the year 9999: any unique name does.
        stamp = seconds.to_string();
    }
    stamp
}

/// Writes every file of `payload` under `root`, creating directories as needed, each file
/// with exactly its mode whatever the umask.
fn write_files(root: &Path, payload: &Payload) -> Result<(), IoFailure> {
    for (relative, file) in payload {
        let path = root.join(relative);
        if let Some(parent) = path.parent() {
            create_dirs(parent, TS_DIR_MODE)?;
        }
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file.mode)
            .open(&path)
            .map_err(at("creating", &path))?;
        out.write_all(&file.data).map_err(at("writing", &path))?;
        out.set_permissions(fs::Permissions::from_mode(file.mode))
            .map_err(at("setting the mode of", &path))?;
    }
    Ok(())
}

/// Points `..data` at the timestamped directory `name`, atomically.
fn publish(dir: &Path, name: &str) -> Result<(), IoFailure> {
    let tmp = dir.join(DATA_DIR_TMP);
    remove_if_present(&tmp)?;
    symlink(name, &tmp).map_err(at("creating the link", &tmp))?;
    let data = dir.join(DATA_DIR);
    fs::rename(&tmp, &data).map_err(at("renaming the link into place", &data))
}

/// The first component of each path.
fn top_level_names<'a>(paths: impl Iterator<Item = &'a String>) -> BTreeSet<String> {
    paths
        .map(|path| path.split('/').next().unwrap_or(path).to_owned())
        .collect()
}

/// `<dir>/NAME -> ..data/NAME` for each name that has no entry yet.
fn create_visible_links(dir: &Path, tops: &BTreeSet<String>) -> Result<(), IoFailure> {
    for name in tops {
        let link = dir.join(name);
        match fs::symlink_metadata(&link) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                symlink(Path::new(DATA_DIR).join(name), &link)
                    .map_err(at("creating the link", &link))?;
            }
            Err(error) => return Err(at("reading", &link)(error)),
        }
    }
    Ok(())
}

/// Removes the top-level links of names the payload no longer has. Only links are removed:
/// the writer never created anything else there.
fn remove_visible_links<'a>(
    dir: &Path,
    names: impl Iterator<Item = &'a String>,
) -> Result<(), IoFailure> {
    for name in names {
        let link = dir.join(name);
        match fs::symlink_metadata(&link) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                fs::remove_file(&link).map_err(at("removing the link", &link))?;
            }
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(at("reading", &link)(error)),
        }
    }
    Ok(())
}

/// Removes every `..*` entry but `..data` and the timestamped directory `keep`: the previous
/// version, and what an interrupted write left.
fn remove_strays(dir: &Path, keep: Option<&str>) -> Result<(), IoFailure> {
    for entry in fs::read_dir(dir).map_err(at("listing", dir))? {
        let entry = entry.map_err(at("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if !name.starts_with("..") || name == DATA_DIR || Some(name) == keep {
            continue;
        }
        remove_if_present(&entry.path())?;
    }
    Ok(())
}

/// Removes a file, link or directory tree (links are removed, never followed).
fn remove_if_present(path: &Path) -> Result<(), IoFailure> {
    let result = match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) => Err(error),
    };
    match result {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(at("removing", path)(error)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(files: &[(&str, &str, u32)]) -> Payload {
        files
            .iter()
            .map(|(path, data, mode)| {
                let file = FileProjection {
                    data: data.as_bytes().to_vec(),
                    mode: *mode,
                };
                ((*path).to_owned(), file)
            })
            .collect()
    }

    fn data_target(dir: &Path) -> String {
        let target = fs::read_link(dir.join(DATA_DIR)).expect("..data is a link");
        target.to_string_lossy().into_owned()
    }

    fn entries(dir: &Path) -> BTreeSet<String> {
        fs::read_dir(dir)
            .expect("lists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o7777
    }

    #[test]
    fn lays_out_files_as_kubelet_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = payload(&[
            ("game.properties", "lives=3\n", 0o644),
            ("ui/colour", "blue", 0o400),
        ]);
        assert!(write(dir.path(), &files).expect("writes"));

        let ts = data_target(dir.path());
        assert!(ts.starts_with("..20"), "{ts}");
        let (stamp, random) = ts[2..].split_once('.').expect("..STAMP.RANDOM");
        assert_eq!(stamp.len(), "2026_05_19_10_11_12".len(), "{ts}");
        assert!(random.bytes().all(|b| b.is_ascii_digit()), "{ts}");
        assert_eq!(mode(&dir.path().join(&ts)), 0o755);
        assert_eq!(
            entries(dir.path()),
            BTreeSet::from([
                DATA_DIR.to_owned(),
                ts.clone(),
                "game.properties".to_owned(),
                "ui".to_owned(),
            ])
        );
        let link = fs::read_link(dir.path().join("game.properties")).expect("a link");
        assert_eq!(link, Path::new("..data/game.properties"));
        assert_eq!(
            fs::read_link(dir.path().join("ui")).expect("a link"),
            Path::new("..data/ui")
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("ui/colour")).expect("reads through the links"),
            "blue"
        );
        assert_eq!(mode(&dir.path().join(&ts).join("game.properties")), 0o644);
        assert_eq!(mode(&dir.path().join(&ts).join("ui/colour")), 0o400);
    }

    #[test]
    fn an_unchanged_payload_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = payload(&[("a", "1", 0o644)]);
        assert!(write(dir.path(), &files).expect("writes"));
        let ts = data_target(dir.path());
        assert!(!write(dir.path(), &files).expect("checks"));
        assert_eq!(data_target(dir.path()), ts);
    }

    #[test]
    fn a_changed_payload_swaps_data_and_removes_the_old_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = payload(&[
            ("a", "1", 0o644),
            ("gone", "x", 0o644),
            ("d/kept", "k", 0o644),
        ]);
        assert!(write(dir.path(), &before).expect("writes"));
        let old_ts = data_target(dir.path());
        // A reader holding the old file keeps reading the old content.
        let mut held = fs::File::open(dir.path().join("a")).expect("opens");

        let after = payload(&[
            ("a", "2", 0o644),
            ("d/kept", "k", 0o644),
            ("new", "n", 0o600),
        ]);
        assert!(write(dir.path(), &after).expect("writes"));
        let new_ts = data_target(dir.path());
        assert_ne!(new_ts, old_ts);
        assert!(
            !dir.path().join(&old_ts).exists(),
            "the old version is removed"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("a")).expect("reads"),
            "2"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("new")).expect("reads"),
            "n"
        );
        assert!(
            fs::symlink_metadata(dir.path().join("gone")).is_err(),
            "stale link removed"
        );
        assert_eq!(
            entries(dir.path()),
            BTreeSet::from([
                DATA_DIR.to_owned(),
                new_ts,
                "a".to_owned(),
                "d".to_owned(),
                "new".to_owned(),
            ])
        );
        let mut old_content = String::new();
        io::Read::read_to_string(&mut held, &mut old_content).expect("reads");
        assert_eq!(old_content, "1");
    }

    #[test]
    fn a_mode_change_is_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(write(dir.path(), &payload(&[("a", "1", 0o644)])).expect("writes"));
        assert!(write(dir.path(), &payload(&[("a", "1", 0o600)])).expect("writes"));
        assert_eq!(mode(&dir.path().join("..data/a")), 0o600);
    }

    #[test]
    fn an_empty_payload_still_publishes_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(write(dir.path(), &Payload::new()).expect("writes"));
        assert!(dir.path().join(DATA_DIR).is_dir());
        assert!(!write(dir.path(), &Payload::new()).expect("checks"));
        assert!(write(dir.path(), &payload(&[("a", "1", 0o644)])).expect("writes"));
        assert!(write(dir.path(), &Payload::new()).expect("writes"));
        assert!(fs::symlink_metadata(dir.path().join("a")).is_err());
    }

    #[test]
    fn leftovers_of_an_interrupted_write_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = payload(&[("a", "1", 0o644)]);
        write(dir.path(), &files).expect("writes");
        let ts = data_target(dir.path());
        fs::create_dir(dir.path().join("..2020_01_01_00_00_00.1")).expect("creates");
        symlink("..2020_01_01_00_00_00.1", dir.path().join(DATA_DIR_TMP)).expect("links");
        // A user-visible link deleted by hand comes back too.
        fs::remove_file(dir.path().join("a")).expect("removes");

        assert!(
            !write(dir.path(), &files).expect("checks"),
            "content unchanged"
        );
        assert_eq!(
            entries(dir.path()),
            BTreeSet::from([DATA_DIR.to_owned(), ts, "a".to_owned()])
        );
    }

    #[test]
    fn a_data_link_pointing_elsewhere_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        fs::write(outside.path().join("a"), "1").expect("writes");
        symlink(outside.path(), dir.path().join(DATA_DIR)).expect("links");
        assert!(write(dir.path(), &payload(&[("a", "1", 0o644)])).expect("writes"));
        assert!(data_target(dir.path()).starts_with(".."));
        assert!(
            outside.path().join("a").exists(),
            "nothing outside is touched"
        );
    }
}
