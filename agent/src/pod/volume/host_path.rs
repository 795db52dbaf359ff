//! hostPath volumes: the `type` check kubelet makes before a container mounts the path
//! (`pkg/volume/hostpath` `checkType`). The path itself is mounted by the runtime; bosun never
//! writes to it except to create it for the `...OrCreate` types.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::layout::{at, check_sub_path, IoFailure};
use super::VolumeError;

/// The types `hostPath.type` may name, `""` meaning no check.
pub(crate) const HOST_PATH_TYPES: &[&str] = &[
    "",
    "DirectoryOrCreate",
    "Directory",
    "FileOrCreate",
    "File",
    "Socket",
    "CharDevice",
    "BlockDevice",
];

/// The mode of a directory `DirectoryOrCreate` creates.
const CREATED_DIR_MODE: u32 = 0o755;
/// The mode of a file `FileOrCreate` creates.
const CREATED_FILE_MODE: u32 = 0o644;

/// Checks `path` against `type_` for the volume `volume` (its field path `field`), creating
/// it first for `DirectoryOrCreate` (with missing parents, mode 0755) and `FileOrCreate`
/// (mode 0644; the parent must exist, as in kubelet). Symbolic links are followed, as in
/// kubelet.
pub(crate) fn check(
    volume: &str,
    field: &str,
    path: &str,
    type_: Option<&str>,
) -> Result<(), VolumeError> {
    let invalid = |field: String, value: &str, reason: String| VolumeError::Invalid {
        volume: volume.to_owned(),
        field,
        value: value.to_owned(),
        reason,
    };
    // kubelet hands a relative path to the runtime, which fails obscurely; say it here.
    if !path.starts_with('/') {
        let reason = "must be an absolute path".to_owned();
        return Err(invalid(format!("{field}.path"), path, reason));
    }
    check_sub_path(path.trim_start_matches('/'))
        .map_err(|reason| invalid(format!("{field}.path"), path, reason.to_owned()))?;
    let type_ = type_.unwrap_or_default();
    let path = Path::new(path);
    let io_error = |failure: IoFailure| failure.into_error(format!("volume {volume:?}"));
    let expected = match type_ {
        "" => return Ok(()),
        "DirectoryOrCreate" => {
            if !exists(path) {
                return create_dir(path).map_err(io_error);
            }
            Expected::Directory
        }
        "Directory" => Expected::Directory,
        "FileOrCreate" => {
            if !exists(path) {
                return create_file(path).map_err(io_error);
            }
            Expected::File
        }
        "File" => Expected::File,
        "Socket" => Expected::Socket,
        "CharDevice" => Expected::CharDevice,
        "BlockDevice" => Expected::BlockDevice,
        other => {
            let supported: Vec<String> = HOST_PATH_TYPES.iter().map(|t| format!("{t:?}")).collect();
            let reason = format!("supported values: {}", supported.join(", "));
            return Err(invalid(format!("{field}.type"), other, reason));
        }
    };
    let matches = fs::metadata(path).is_ok_and(|metadata| {
        let file_type = metadata.file_type();
        match expected {
            Expected::Directory => file_type.is_dir(),
            Expected::File => file_type.is_file(),
            Expected::Socket => file_type.is_socket(),
            Expected::CharDevice => file_type.is_char_device(),
            Expected::BlockDevice => file_type.is_block_device(),
        }
    });
    if matches {
        return Ok(());
    }
    Err(VolumeError::HostPathType {
        volume: volume.to_owned(),
        path: path.to_path_buf(),
        expected: expected.description(),
    })
}

#[derive(Debug, Clone, Copy)]
enum Expected {
    Directory,
    File,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Expected {
    /// As kubelet words it: `hostPath type check failed: /x is not a directory`.
    fn description(self) -> &'static str {
        match self {
            Self::Directory => "a directory",
            Self::File => "a file",
            Self::Socket => "a socket file",
            Self::CharDevice => "a character device",
            Self::BlockDevice => "a block device",
        }
    }
}

/// Whether `path` exists, following links; an unreadable path counts as existing so that
/// the type check reports it rather than bosun trying to create it.
fn exists(path: &Path) -> bool {
    match fs::metadata(path) {
        Ok(_) => true,
        Err(error) => error.kind() != io::ErrorKind::NotFound,
    }
}

fn create_dir(path: &Path) -> Result<(), IoFailure> {
    fs::create_dir_all(path).map_err(at("creating the hostPath directory", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(CREATED_DIR_MODE))
        .map_err(at("setting the mode of", path))
}

fn create_file(path: &Path) -> Result<(), IoFailure> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(CREATED_FILE_MODE)
        .open(path)
        .map_err(at("creating the hostPath file", path))?;
    file.set_permissions(fs::Permissions::from_mode(CREATED_FILE_MODE))
        .map_err(at("setting the mode of", path))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    const FIELD: &str = "spec.volumes[0].hostPath";

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("exists").permissions().mode() & 0o7777
    }

    fn check_at(path: &Path, type_: &str) -> Result<(), VolumeError> {
        let path = path.to_str().expect("UTF-8 temp path");
        check("host", FIELD, path, Some(type_))
    }

    #[test]
    fn no_type_checks_nothing() {
        check("host", FIELD, "/does/not/exist", None).expect("no check");
        check("host", FIELD, "/does/not/exist", Some("")).expect("no check");
    }

    #[test]
    fn directory_or_create_creates_with_0755_and_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b");
        check_at(&path, "DirectoryOrCreate").expect("creates");
        assert!(path.is_dir());
        assert_eq!(mode(&path), 0o755);
        check_at(&path, "DirectoryOrCreate").expect("exists already");
        let file = dir.path().join("file");
        fs::write(&file, "").expect("writes");
        let error = check_at(&file, "DirectoryOrCreate").expect_err("a file");
        assert_eq!(
            error.to_string(),
            format!(
                "volume \"host\": hostPath type check failed: {} is not a directory",
                file.display()
            )
        );
    }

    #[test]
    fn file_or_create_creates_with_0644_but_not_parents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        check_at(&path, "FileOrCreate").expect("creates");
        assert!(path.is_file());
        assert_eq!(mode(&path), 0o644);
        fs::write(&path, "kept").expect("writes");
        check_at(&path, "FileOrCreate").expect("exists already");
        assert_eq!(fs::read_to_string(&path).expect("reads"), "kept");

        let orphan = dir.path().join("missing/f");
        let error = check_at(&orphan, "FileOrCreate").expect_err("no parent");
        assert!(matches!(error, VolumeError::Io { .. }), "{error}");
        assert!(!orphan.exists());
        let error = check_at(dir.path(), "FileOrCreate").expect_err("a directory");
        assert!(error.to_string().ends_with("is not a file"), "{error}");
    }

    #[test]
    fn each_type_accepts_its_kind_and_refuses_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        fs::write(&file, "").expect("writes");
        let socket = dir.path().join("sock");
        let _listener = UnixListener::bind(&socket).expect("binds");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).expect("links");

        check_at(dir.path(), "Directory").expect("a directory");
        check_at(&file, "File").expect("a file");
        check_at(&link, "File").expect("links are followed");
        check_at(&socket, "Socket").expect("a socket");
        check_at(Path::new("/dev/null"), "CharDevice").expect("a character device");

        let cases = [
            (&file, "Directory", "is not a directory"),
            (&dir.path().to_path_buf(), "File", "is not a file"),
            (&file, "Socket", "is not a socket file"),
            (&file, "CharDevice", "is not a character device"),
            (&file, "BlockDevice", "is not a block device"),
            (
                &dir.path().join("missing"),
                "Directory",
                "is not a directory",
            ),
        ];
        for (path, type_, message) in cases {
            let error = check_at(path, type_).expect_err(type_);
            assert!(
                matches!(&error, VolumeError::HostPathType { path: p, .. } if p == path),
                "{error}"
            );
            assert!(error.to_string().ends_with(message), "{type_}: {error}");
        }
    }

    #[test]
    fn bad_paths_and_types_name_the_field() {
        let error = check("host", FIELD, "/x", Some("Dir")).expect_err("unknown type");
        assert!(
            error.to_string().starts_with(
                "volume \"host\": spec.volumes[0].hostPath.type: invalid value \"Dir\""
            ),
            "{error}"
        );
        let error = check("host", FIELD, "var/log", None).expect_err("relative");
        assert!(
            error.to_string().contains("must be an absolute path"),
            "{error}"
        );
        let error = check("host", FIELD, "/var/../etc", None).expect_err("backsteps");
        assert!(
            error.to_string().contains("must not contain '..'"),
            "{error}"
        );
    }
}
