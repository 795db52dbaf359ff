//! Keeping a [`Snapshot`] of a manifest directory current: inotify for promptness, a
//! periodic rescan (kubelet's `fileCheckFrequency`, 20 s by default) for whatever inotify
//! misses — a directory created or replaced later, an overflowed event queue, a file
//! system that does not deliver events.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch as channel};
use tokio::task::JoinHandle;
use tokio::time::{self, Instant, MissedTickBehavior};

use super::manifest::{ManifestSource, Snapshot};
use crate::store::Objects;

/// How long to wait after a file is created or written for the rest of the write: the
/// directory is read as soon as a file is complete (closed after writing, or renamed into
/// place as editors and `kubectl`-style writers do), at the latest this long after a write
/// that no close follows. A file caught half written keeps its last good content and is
/// read again on its next event.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// Watches `dir` (which may not exist yet) and publishes the manifests of node `node_name`:
/// its pods on the returned channel, its other objects into `objects` (always before the
/// pods that may refer to them).
///
/// The directory is read before this returns, so the receiver starts with a real snapshot,
/// marked unseen: `changed()` resolves at once for it. It is read again after any change in
/// it (debounced by 5 ms) and every `rescan_every` (at least 1 ms), and a new snapshot is
/// published only when it asks for something different ([`Snapshot::same_desired_state`]).
/// A file that reads with errors keeps its last good content (see [`ManifestSource`]).
/// The task ends when every receiver is dropped.
///
/// Must be called within a Tokio runtime.
pub fn watch(
    dir: PathBuf,
    node_name: String,
    rescan_every: Duration,
    objects: Objects,
) -> (channel::Receiver<Arc<Snapshot>>, JoinHandle<()>) {
    spawn(
        ManifestSource::new(dir, node_name),
        rescan_every,
        true,
        objects,
    )
}

fn spawn(
    mut source: ManifestSource,
    rescan_every: Duration,
    use_inotify: bool,
    objects: Objects,
) -> (channel::Receiver<Arc<Snapshot>>, JoinHandle<()>) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut inotify = if use_inotify {
        DirWatch::new(source.dir(), events_tx)
    } else {
        DirWatch::disabled(source.dir())
    };
    // Watch before the first read, so nothing written in between goes unnoticed.
    inotify.refresh();
    let (first, first_objects) = source.rescan();
    first_objects.store(&objects);
    let (tx, mut rx) = channel::channel(Arc::new(first));
    // A consumer looping on `changed()` handles the first snapshot like any other.
    rx.mark_changed();

    let task = tokio::spawn(async move {
        // `interval` refuses a zero period.
        let rescan_every = rescan_every.max(Duration::from_millis(1));
        let mut ticker = time::interval_at(Instant::now() + rescan_every, rescan_every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = ticker.tick() => {}
                Some(complete) = events.recv() => {
                    if !complete {
                        until_complete(&mut events).await;
                    }
                    while events.try_recv().is_ok() {}
                }
            }
            inotify.refresh();
            let objects = objects.clone();
            let rescanned = tokio::task::spawn_blocking(move || {
                let (snapshot, read) = source.rescan();
                read.store(&objects);
                (source, snapshot)
            })
            .await;
            let snapshot = match rescanned {
                Ok((returned, snapshot)) => {
                    source = returned;
                    snapshot
                }
                Err(err) => {
                    tracing::error!(
                        error = %err,
                        "reading the static pod manifests failed; no longer watching them"
                    );
                    return;
                }
            };
            if !snapshot.same_desired_state(&tx.borrow()) {
                tx.send_replace(Arc::new(snapshot));
            }
        }
    });
    (rx, task)
}

/// Waits for a change that leaves a file complete, or [`DEBOUNCE`] at the longest.
async fn until_complete(events: &mut mpsc::UnboundedReceiver<bool>) {
    let deadline = time::sleep(DEBOUNCE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return,
            event = events.recv() => if event != Some(false) {
                return;
            },
        }
    }
}

/// inotify watches on the manifest directory and on its parent (which sees the directory
/// appear, vanish or be replaced). A watch belongs to an inode, so each is re-established
/// when the path comes to name a different one.
struct DirWatch {
    dir: PathBuf,
    parent: Option<PathBuf>,
    watcher: Option<RecommendedWatcher>,
    /// `(device, inode)` currently watched at `dir` and at `parent`.
    dir_watched: Option<(u64, u64)>,
    parent_watched: Option<(u64, u64)>,
}

/// An access that changes nothing: an open, a read, a close without writing.
fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access)
        if !matches!(access, AccessKind::Close(AccessMode::Write)))
}

/// A file created or written to, and not yet closed: more of the write may follow.
fn is_being_written(kind: &notify::EventKind) -> bool {
    use notify::event::ModifyKind;
    matches!(
        kind,
        notify::EventKind::Create(_) | notify::EventKind::Modify(ModifyKind::Data(_))
    )
}

/// Whether a change at `path` can change what `dir` asks for: the directory (or file) itself,
/// or a file in it that the reader takes (not an editor's hidden temporary).
fn may_matter(dir: &Path, path: &Path) -> bool {
    match path.strip_prefix(dir) {
        Ok(rest) if rest.as_os_str().is_empty() => true,
        Ok(rest) => rest
            .to_str()
            .is_none_or(|name| name.contains('/') || super::manifest::is_manifest_name(name)),
        Err(_) => false,
    }
}

impl DirWatch {
    fn new(dir: &Path, events: mpsc::UnboundedSender<bool>) -> Self {
        let mut this = Self::disabled(dir);
        // Events name paths under the watched path as given, so compare absolute paths.
        let relevant = this.dir.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let wanted = match &event {
                // Reading a file is no change: without this, each rescan's own opens
                // would trigger the next rescan. A close after writing is a change.
                Ok(event) if is_read(&event.kind) => None,
                Ok(event) if event.need_rescan() => Some(true),
                Ok(event) if event.paths.iter().any(|p| may_matter(&relevant, p)) => {
                    Some(!is_being_written(&event.kind))
                }
                Ok(_) => None,
                Err(err) => {
                    tracing::warn!(
                        error = %err,
                        "inotify error; rescanning the static pod manifests"
                    );
                    Some(true)
                }
            };
            if let Some(complete) = wanted {
                // The receiver is gone only when the watch task has ended.
                let _ = events.send(complete);
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => this.watcher = Some(watcher),
            Err(err) => tracing::warn!(
                error = %err,
                "cannot use inotify; static pod manifests are read only periodically"
            ),
        }
        this
    }

    fn disabled(dir: &Path) -> Self {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let parent = dir.parent().map(Path::to_path_buf);
        DirWatch {
            dir,
            parent,
            watcher: None,
            dir_watched: None,
            parent_watched: None,
        }
    }

    fn refresh(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        if let Some(parent) = &self.parent {
            ensure_watched(watcher, parent, &mut self.parent_watched);
        }
        ensure_watched(watcher, &self.dir, &mut self.dir_watched);
    }
}

fn ensure_watched(watcher: &mut RecommendedWatcher, path: &Path, watched: &mut Option<(u64, u64)>) {
    let now = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    if now == *watched {
        return;
    }
    if watched.take().is_some() {
        // The old inode may be gone, and its watch with it.
        let _ = watcher.unwatch(path);
    }
    if now.is_some() {
        match watcher.watch(path, RecursiveMode::NonRecursive) {
            Ok(()) => *watched = now,
            Err(err) => tracing::warn!(
                path = %path.display(),
                error = %err,
                "cannot watch; relying on the periodic rescan"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const POD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers: [{name: app, image: nginx:1}]
";

    /// Waits, at most `limit`, for a published snapshot that satisfies `ready`.
    async fn wait_for(
        rx: &mut channel::Receiver<Arc<Snapshot>>,
        limit: Duration,
        ready: impl Fn(&Snapshot) -> bool,
    ) -> Arc<Snapshot> {
        let waited = time::timeout(limit, async {
            loop {
                let current = rx.borrow_and_update().clone();
                if ready(&current) {
                    return current;
                }
                if rx.changed().await.is_err() {
                    panic!("the watcher ended");
                }
            }
        })
        .await;
        match waited {
            Ok(snapshot) => snapshot,
            Err(_) => panic!(
                "no matching snapshot within {limit:?}; last: {:#?}",
                rx.borrow()
            ),
        }
    }

    #[test]
    fn reads_are_not_changes_but_a_close_after_writing_is() {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind};
        assert!(is_read(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_read(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_read(&EventKind::Access(AccessKind::Read)));
        assert!(!is_read(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn a_file_renamed_or_closed_is_complete_one_being_written_is_not() {
        use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind};
        use notify::event::{ModifyKind, RenameMode};
        assert!(is_being_written(&EventKind::Create(CreateKind::File)));
        assert!(is_being_written(&EventKind::Modify(ModifyKind::Data(
            DataChange::Any
        ))));
        assert!(!is_being_written(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(!is_being_written(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_being_written(&EventKind::Remove(
            notify::event::RemoveKind::File
        )));
    }

    #[test]
    fn only_files_the_reader_takes_matter() {
        let dir = Path::new("/etc/kubernetes/manifests");
        assert!(may_matter(dir, dir), "the directory itself");
        assert!(may_matter(dir, &dir.join("web.yaml")));
        assert!(may_matter(dir, &dir.join("web.json")));
        assert!(!may_matter(dir, &dir.join(".web.yaml.swp")), "hidden");
        assert!(!may_matter(dir, &dir.join(".web.yaml.tmp")), "hidden");
        assert!(!may_matter(dir, &dir.join("README")), "not a manifest");
        assert!(
            !may_matter(dir, Path::new("/etc/kubernetes/admin.conf")),
            "a sibling, seen through the parent's watch"
        );
    }

    fn pod_uid(snapshot: &Snapshot) -> Option<String> {
        snapshot
            .pods
            .get("default/web-node1")
            .map(|pod| pod.uid().to_string())
    }

    const LIMIT: Duration = Duration::from_secs(10);
    /// Long enough that only inotify can explain an update within [`LIMIT`].
    const NEVER: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn inotify_picks_up_add_change_and_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut rx, task) = watch(
            dir.path().to_path_buf(),
            "node1".into(),
            NEVER,
            Objects::default(),
        );
        assert!(
            rx.has_changed().expect("watching"),
            "the first snapshot is news"
        );
        let first = rx.borrow_and_update().clone();
        assert!(first.scanned() && first.pods.is_empty() && first.errors.is_empty());

        fs::write(dir.path().join("web.yaml"), POD).expect("write");
        let added = wait_for(&mut rx, LIMIT, |s| pod_uid(s).is_some()).await;
        let first_uid = pod_uid(&added);

        fs::write(
            dir.path().join("web.yaml"),
            POD.replace("nginx:1", "nginx:2"),
        )
        .expect("write");
        let changed = wait_for(&mut rx, LIMIT, |s| {
            pod_uid(s).is_some() && pod_uid(s) != first_uid
        })
        .await;
        let image = changed.pods["default/web-node1"]
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].image.clone());
        assert_eq!(image.as_deref(), Some("nginx:2"));

        fs::remove_file(dir.path().join("web.yaml")).expect("remove");
        wait_for(&mut rx, LIMIT, |s| s.pods.is_empty()).await;

        drop(rx);
        time::timeout(LIMIT, task)
            .await
            .expect("task ends")
            .expect("no panic");
    }

    #[tokio::test]
    async fn editor_style_write_and_rename_is_one_update() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("web.yaml"), POD).expect("write");
        let (mut rx, _task) = watch(
            dir.path().to_path_buf(),
            "node1".into(),
            NEVER,
            Objects::default(),
        );
        let first_uid = pod_uid(&rx.borrow_and_update()).expect("pod read at once");

        let temporary = dir.path().join(".web.yaml.swp");
        fs::write(&temporary, POD.replace("nginx:1", "nginx:2")).expect("write");
        fs::rename(&temporary, dir.path().join("web.yaml")).expect("rename");
        let changed = wait_for(&mut rx, LIMIT, |s| pod_uid(s) != Some(first_uid.clone())).await;
        assert!(changed.errors.is_empty(), "{:?}", changed.errors);
        assert!(pod_uid(&changed).is_some());
    }

    #[tokio::test]
    async fn directory_created_later_is_picked_up() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("manifests");
        let (mut rx, _task) = watch(dir.clone(), "node1".into(), NEVER, Objects::default());
        assert_eq!(rx.borrow().errors.len(), 1, "missing directory is reported");

        fs::create_dir(&dir).expect("mkdir");
        wait_for(&mut rx, LIMIT, |s| s.errors.is_empty()).await;
        fs::write(dir.join("web.yaml"), POD).expect("write");
        wait_for(&mut rx, LIMIT, |s| pod_uid(s).is_some()).await;
    }

    #[tokio::test]
    async fn replaced_directory_is_watched_again() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("manifests");
        fs::create_dir(&dir).expect("mkdir");
        let (mut rx, _task) = watch(dir.clone(), "node1".into(), NEVER, Objects::default());

        fs::remove_dir(&dir).expect("rmdir");
        wait_for(&mut rx, LIMIT, |s| !s.errors.is_empty()).await;
        fs::create_dir(&dir).expect("mkdir");
        wait_for(&mut rx, LIMIT, |s| s.errors.is_empty()).await;
        fs::write(dir.join("web.yaml"), POD).expect("write");
        wait_for(&mut rx, LIMIT, |s| pod_uid(s).is_some()).await;
    }

    #[tokio::test]
    async fn periodic_rescan_works_without_inotify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = ManifestSource::new(dir.path(), "node1");
        let (mut rx, _task) = spawn(source, Duration::from_millis(20), false, Objects::default());
        assert!(rx.borrow().pods.is_empty());

        fs::write(dir.path().join("web.yaml"), POD).expect("write");
        wait_for(&mut rx, LIMIT, |s| pod_uid(s).is_some()).await;
        fs::remove_file(dir.path().join("web.yaml")).expect("remove");
        wait_for(&mut rx, LIMIT, |s| s.pods.is_empty()).await;
    }
}
