//! The two images a test node needs, built on this machine because there is no registry: a
//! pause image for pod sandboxes and a busybox image for test containers; and bosun's own
//! release image (`bosun proxy` for a DaemonSet), written by the same code from a release
//! binary. Each is written as an OCI image layout archive that containerd imports as is
//! (`ctr images import`, or bosun's own import) and registry tools push, with the same bytes
//! on every build from the same inputs.

mod oci;

use std::path::{Path, PathBuf};
use std::process::Command;

use oci::{Entry, ImageSpec};

/// The sandbox (pause) image every test node imports and names as its `sandbox_image`.
pub const PAUSE_IMAGE: &str = "localhost/bosun/pause:1";
/// A busybox image with `sh`, `sleep`, `httpd`, `nc`, `wget`, `cat`, `echo` and the rest of
/// busybox's applets on PATH. Its default command is `sh`.
pub const BUSYBOX_IMAGE: &str = "localhost/bosun/busybox:1";

/// The pause program's source; compiled into the pause image when it is built.
const PAUSE_SOURCE: &str = include_str!("../images/pause.c");
/// Debian's busybox-static, which this image copies.
const HOST_BUSYBOX: &str = "/bin/busybox";
/// Part of every cache key: bump it when a change here alters the archives' bytes.
const FORMAT_VERSION: &str = "bosun-test-images/1";

/// Why an image could not be built or read. None of these is worth retrying: they mean a
/// missing tool (gcc, busybox-static), an unwritable directory or a corrupt archive.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("could not run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not encode an image archive")]
    Encode(#[source] std::io::Error),
    #[error("could not serialize an image document")]
    Json(#[source] serde_json::Error),
    #[error("{path} is not a valid image layout archive: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// An OCI image layout archive on disk, ready for import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArchive {
    pub path: PathBuf,
    /// The full image reference the archive names itself with, e.g. [`PAUSE_IMAGE`].
    pub reference: String,
    /// Further references to the same image (bosun's: the tag with the git revision).
    pub aliases: Vec<String>,
    /// `sha256:…` of the image manifest.
    pub manifest_digest: String,
    /// `sha256:…` of the image config: the image ID that CRI's ListImages reports.
    pub config_digest: String,
}

impl ImageArchive {
    /// Reads an archive written by this module and checks that its index, manifest, config
    /// and layer agree with each other.
    pub fn open(path: &Path) -> Result<ImageArchive, ImageError> {
        oci::read_layout_archive(path, oci::Check::Everything)
    }
}

/// Both test images.
#[derive(Debug, Clone)]
pub struct TestImages {
    pub pause: ImageArchive,
    pub busybox: ImageArchive,
}

impl TestImages {
    pub fn all(&self) -> [&ImageArchive; 2] {
        [&self.pause, &self.busybox]
    }
}

/// Compiles the pause program and writes the pause image to `out`.
pub fn build_pause(out: &Path) -> Result<ImageArchive, ImageError> {
    write_archive(pause_spec()?, out)
}

/// Writes the busybox image, made from the host's busybox-static, to `out`.
pub fn build_busybox(out: &Path) -> Result<ImageArchive, ImageError> {
    write_archive(busybox_spec()?, out)
}

/// Builds both images into `cache_dir`, or reuses archives built earlier from the same inputs
/// (the pause source, the compiler and C library, the busybox binary, this module's format).
/// Safe to call from several processes at once: each archive is written under a temporary
/// name and renamed into place, and the same inputs give the same bytes.
pub fn build_all(cache_dir: &Path) -> Result<TestImages, ImageError> {
    std::fs::create_dir_all(cache_dir).map_err(|source| ImageError::Write {
        path: cache_dir.to_owned(),
        source,
    })?;
    let pause = cached(cache_dir, "pause", &pause_inputs()?, build_pause)?;
    let busybox = cached(cache_dir, "busybox", &busybox_inputs()?, build_busybox)?;
    Ok(TestImages { pause, busybox })
}

fn cached(
    cache_dir: &Path,
    name: &str,
    inputs: &[u8],
    build: fn(&Path) -> Result<ImageArchive, ImageError>,
) -> Result<ImageArchive, ImageError> {
    let key = oci::sha256_hex(inputs);
    let path = cache_dir.join(format!("{name}-{}.tar", &key[..16]));
    if path.exists() {
        // Archives are renamed into place whole, so the documents suffice to trust one.
        match oci::read_layout_archive(&path, oci::Check::Documents) {
            Ok(archive) => return Ok(archive),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "rebuilding a bad cached image")
            }
        }
    }
    let archive = build(&path)?;
    // Archives built from earlier inputs are of no further use.
    let prefix = format!("{name}-");
    if let Ok(entries) = std::fs::read_dir(cache_dir) {
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with(&prefix) && file_name.ends_with(".tar") && entry.path() != path
            {
                // Best effort: a leftover file costs only disk space.
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(archive)
}

/// Writes bosun's image, named `reference`, to `out`: the binary at `/usr/bin/bosun` (its
/// entrypoint) and the shared libraries it loads at run time, as `ldd` finds them on this
/// host, at the paths the binary asks for; `/etc/passwd` and `/etc/group` for root, and
/// `/tmp`. Nothing else: no shell, no package manager.
pub fn build_bosun_image(
    binary: &Path,
    reference: &str,
    aliases: &[String],
    out: &Path,
) -> Result<ImageArchive, ImageError> {
    write_archive(bosun_spec(binary, reference, aliases)?, out)
}

fn bosun_spec(binary: &Path, reference: &str, aliases: &[String]) -> Result<ImageSpec, ImageError> {
    let mut layer = vec![
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/sbin/nologin\n".to_vec(),
        ),
        Entry::file("etc/group", 0o644, b"root:x:0:\n".to_vec()),
        Entry::dir("tmp", 0o1777),
        Entry::dir("usr", 0o755),
        Entry::dir("usr/bin", 0o755),
        Entry::file("usr/bin/bosun", 0o755, read(binary)?),
    ];
    let mut dirs: std::collections::BTreeSet<String> =
        ["etc", "tmp", "usr", "usr/bin"].map(str::to_owned).into();
    for library in shared_libraries(binary)? {
        let relative = library
            .strip_prefix("/")
            .unwrap_or(library.as_path())
            .to_string_lossy()
            .into_owned();
        let ancestors: Vec<String> = Path::new(&relative)
            .ancestors()
            .skip(1)
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(|dir| dir.to_string_lossy().into_owned())
            .collect();
        for dir in ancestors.into_iter().rev() {
            if dirs.insert(dir.clone()) {
                layer.push(Entry::dir(&dir, 0o755));
            }
        }
        // The file's bytes, whatever symlinks lead to it on this host.
        layer.push(Entry::file(&relative, 0o755, read(&library)?));
    }
    Ok(ImageSpec {
        aliases: aliases.to_vec(),
        reference: reference.to_owned(),
        layer,
        entrypoint: Some(vec!["/usr/bin/bosun".to_owned()]),
        cmd: None,
    })
}

/// The absolute paths `ldd` prints for `binary`'s libraries and its program interpreter;
/// none for a static binary.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let binary_text = binary.to_string_lossy().into_owned();
    let output = Command::new("ldd")
        .arg(&binary_text)
        .output()
        .map_err(|source| ImageError::Spawn {
            program: "ldd".to_owned(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(ImageError::Command {
            program: format!("ldd {binary_text}"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(path) if path.starts_with('/') => libraries.push(PathBuf::from(path)),
            Some("not") => {
                return Err(ImageError::Invalid {
                    path: binary.to_owned(),
                    reason: format!(
                        "a library it needs is missing on this host: {}",
                        line.trim()
                    ),
                })
            }
            _ => {}
        }
    }
    libraries.sort();
    libraries.dedup();
    Ok(libraries)
}

fn pause_inputs() -> Result<Vec<u8>, ImageError> {
    let mut inputs = Vec::new();
    inputs.extend_from_slice(FORMAT_VERSION.as_bytes());
    inputs.extend_from_slice(PAUSE_SOURCE.as_bytes());
    inputs.extend_from_slice(&run("gcc", &["--version"], None)?);
    // The static C library is linked in: a libc6-dev upgrade changes the binary.
    let libc = run("gcc", &["-print-file-name=libc.a"], None)?;
    let libc = PathBuf::from(String::from_utf8_lossy(&libc).trim());
    inputs.extend_from_slice(file_identity(&libc)?.as_bytes());
    Ok(inputs)
}

fn busybox_inputs() -> Result<Vec<u8>, ImageError> {
    let mut inputs = FORMAT_VERSION.as_bytes().to_vec();
    // The binary's identity rather than its bytes: hashing 2 MiB on every node start costs
    // more than building the archive from a cache miss saves.
    inputs.extend_from_slice(file_identity(Path::new(HOST_BUSYBOX))?.as_bytes());
    Ok(inputs)
}

/// Path, device, inode, size and modification time: what changes when a package replaces a
/// file.
fn file_identity(path: &Path) -> Result<String, ImageError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| ImageError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(format!(
        "{} {}:{} {} {}.{}",
        path.display(),
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

fn pause_spec() -> Result<ImageSpec, ImageError> {
    let workdir = tempfile::tempdir().map_err(|source| ImageError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let source = workdir.path().join("pause.c");
    std::fs::write(&source, PAUSE_SOURCE).map_err(|source_err| ImageError::Write {
        path: source.clone(),
        source: source_err,
    })?;
    // Relative paths and a stripped binary keep the temporary directory's name out of it.
    run(
        "gcc",
        &[
            "-Os", "-static", "-s", "-Wall", "-Wextra", "-Werror", "-o", "pause", "pause.c",
        ],
        Some(workdir.path()),
    )?;
    let binary = read(&workdir.path().join("pause"))?;
    Ok(ImageSpec {
        aliases: Vec::new(),
        reference: PAUSE_IMAGE.to_owned(),
        layer: vec![Entry::file("pause", 0o755, binary)],
        entrypoint: Some(vec!["/pause".to_owned()]),
        cmd: None,
    })
}

fn busybox_spec() -> Result<ImageSpec, ImageError> {
    let binary = read(Path::new(HOST_BUSYBOX))?;
    let list = run(HOST_BUSYBOX, &["--list"], None)?;
    let mut layer = vec![
        Entry::dir("bin", 0o755),
        Entry::file("bin/busybox", 0o755, binary),
        Entry::dir("etc", 0o755),
        Entry::file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
        ),
        Entry::file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n".to_vec()),
        Entry::dir("root", 0o700),
        Entry::dir("tmp", 0o1777),
        Entry::symlink("sbin", "bin"),
        Entry::dir("usr", 0o755),
        Entry::symlink("usr/bin", "../bin"),
        Entry::symlink("usr/sbin", "../bin"),
        Entry::dir("var", 0o755),
    ];
    let mut applets: Vec<&str> = std::str::from_utf8(&list)
        .map_err(|e| ImageError::Invalid {
            path: PathBuf::from(HOST_BUSYBOX),
            reason: format!("`--list` printed non-UTF-8: {e}"),
        })?
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "busybox" && !name.contains('/'))
        .collect();
    applets.sort_unstable();
    applets.dedup();
    for applet in applets {
        layer.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    Ok(ImageSpec {
        aliases: Vec::new(),
        reference: BUSYBOX_IMAGE.to_owned(),
        layer,
        entrypoint: None,
        cmd: Some(vec!["sh".to_owned()]),
    })
}

fn write_archive(spec: ImageSpec, out: &Path) -> Result<ImageArchive, ImageError> {
    let reference = spec.reference.clone();
    let aliases = spec.aliases.clone();
    let (bytes, manifest_digest, config_digest) = oci::layout_archive(spec)?;
    // Written beside its final name and renamed, so a reader never sees half an archive.
    let dir = out.parent().unwrap_or(Path::new("."));
    let write_err = |source| ImageError::Write {
        path: out.to_owned(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
    std::io::Write::write_all(&mut tmp, &bytes).map_err(write_err)?;
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(write_err)?;
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(out).map_err(|e| write_err(e.error))?;
    Ok(ImageArchive {
        path: out.to_owned(),
        reference,
        aliases,
        manifest_digest,
        config_digest,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Runs a program to completion and returns its stdout.
fn run(program: &str, args: &[&str], cwd: Option<&Path>) -> Result<Vec<u8>, ImageError> {
    let mut command = Command::new(program);
    command.args(args);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let output = command.output().map_err(|source| ImageError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    if !output.status.success() {
        return Err(ImageError::Command {
            program: program.to_owned(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Build = fn(&Path) -> Result<ImageArchive, ImageError>;

    fn build_twice(build: Build) -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = build(&dir.path().join("first.tar"))?;
        let second = build(&dir.path().join("second.tar"))?;
        assert_eq!(first.manifest_digest, second.manifest_digest);
        assert!(
            std::fs::read(&first.path)? == std::fs::read(&second.path)?,
            "two builds of {} differ",
            first.reference
        );
        Ok(())
    }

    #[test]
    fn pause_builds_are_byte_identical() -> anyhow::Result<()> {
        build_twice(build_pause)
    }

    #[test]
    fn busybox_builds_are_byte_identical() -> anyhow::Result<()> {
        build_twice(build_busybox)
    }

    #[test]
    fn archives_are_internally_consistent() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let builds: [(Build, &str); 2] =
            [(build_pause, PAUSE_IMAGE), (build_busybox, BUSYBOX_IMAGE)];
        for (build, reference) in builds {
            let built = build(&dir.path().join("image.tar"))?;
            assert_eq!(built.reference, reference);
            // open() re-derives every digest from the bytes and checks each descriptor.
            let opened = ImageArchive::open(&built.path)?;
            assert_eq!(opened, built);
        }
        Ok(())
    }

    #[test]
    fn a_corrupted_archive_is_rejected() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let built = build_pause(&dir.path().join("pause.tar"))?;
        let mut bytes = std::fs::read(&built.path)?;
        // Flip one byte inside the largest blob, the layer.
        let mut largest = (0, 0);
        for entry in tar::Archive::new(bytes.as_slice()).entries()? {
            let entry = entry?;
            let size = entry.header().size()?;
            if size > largest.0 {
                largest = (size, entry.raw_file_position());
            }
        }
        let at = usize::try_from(largest.1 + largest.0 / 2)?;
        bytes[at] ^= 0xff;
        std::fs::write(&built.path, bytes)?;
        assert!(matches!(
            ImageArchive::open(&built.path),
            Err(ImageError::Invalid { .. })
        ));
        Ok(())
    }

    #[test]
    fn busybox_has_the_applets_tests_use() -> anyhow::Result<()> {
        let spec = busybox_spec()?;
        for applet in [
            "sh", "sleep", "httpd", "nc", "wget", "cat", "echo", "timeout",
        ] {
            let path = format!("bin/{applet}");
            assert!(spec.layer.iter().any(|e| e.path == path), "{path} missing");
        }
        Ok(())
    }

    #[test]
    fn bosun_image_holds_the_binary_and_the_libraries_it_loads() -> anyhow::Result<()> {
        // Any dynamically linked program stands in for bosun's binary.
        let binary = Path::new("/bin/ls");
        let spec = bosun_spec(binary, "localhost/bosun/bosun:test", &[])?;
        assert_eq!(spec.entrypoint, Some(vec!["/usr/bin/bosun".to_owned()]));
        let paths: Vec<&str> = spec.layer.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"usr/bin/bosun"), "{paths:?}");
        for library in shared_libraries(binary)? {
            let relative = library.to_string_lossy().trim_start_matches('/').to_owned();
            assert!(
                paths.contains(&relative.as_str()),
                "{relative} missing: {paths:?}"
            );
            // Every parent directory is in the layer too.
            for parent in Path::new(&relative).ancestors().skip(1) {
                let parent = parent.to_string_lossy();
                assert!(
                    parent.is_empty() || paths.contains(&parent.as_ref()),
                    "{parent} missing"
                );
            }
        }
        assert!(
            paths.iter().any(|p| p.ends_with("libc.so.6")),
            "no libc: {paths:?}"
        );
        let dir = tempfile::tempdir()?;
        let built = build_bosun_image(
            binary,
            "localhost/bosun/bosun:test",
            &["localhost/bosun/bosun:test-git1.g0123456789ab".to_owned()],
            &dir.path().join("b.tar"),
        )?;
        // Both names read back, of the one manifest.
        let opened = ImageArchive::open(&built.path)?;
        assert_eq!(opened, built);
        assert_eq!(
            opened.aliases,
            ["localhost/bosun/bosun:test-git1.g0123456789ab"]
        );
        Ok(())
    }

    #[test]
    fn build_all_reuses_archives_whose_inputs_are_unchanged() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let first = build_all(dir.path())?;
        let modified = std::fs::metadata(&first.busybox.path)?.modified()?;
        let second = build_all(dir.path())?;
        assert_eq!(first.pause, second.pause);
        assert_eq!(first.busybox, second.busybox);
        assert_eq!(
            std::fs::metadata(&second.busybox.path)?.modified()?,
            modified
        );
        Ok(())
    }
}
