//! Small helpers shared by the daemon's parts, which know nothing of each other.

use std::time::Duration;

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sleeps for `duration`, or for ever when there is none (a `select!` branch that never
/// fires).
pub async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Has glibc keep one heap for all threads (`M_ARENA_MAX` 1), as `MALLOC_ARENA_MAX=1` would.
/// By default each thread that allocates gets an arena of its own and keeps what it freed:
/// the blocking threads that compile the datapaths and read manifests left some 19 MiB that
/// way (45.5 → 26.1 MiB RSS, a node in a cluster with 10 probed pods). The daemon's work is
/// on one thread, so one heap costs it no contention that matters. Call it first in `main`,
/// before any other thread exists; an environment's `MALLOC_ARENA_MAX` still wins.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of glibc's allocator; with no other thread
        // running yet, nothing allocates concurrently. A refusal (0) leaves the default.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        }
    }
}

/// Hands memory freed since to the kernel. Reading a large manifest directory allocates
/// hundreds of megabytes for a moment (the YAML, its documents, their decoded copies); glibc
/// keeps what was freed in its arenas, so without this the daemon's RSS would stay at that
/// peak. Called after rare, large events only: it walks every arena.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives whole free pages of glibc's heaps back to the kernel; it
    // touches no memory in use and is thread-safe (it takes each arena's lock in turn).
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
