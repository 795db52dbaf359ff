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
