//! Running a piece of work inside a network namespace, for the benchmarks that set up or send
//! traffic between namespaces. A module of its own beside `common`, included only by the
//! benchmarks that use it.

use anyhow::Result;

use crate::lab::{enter_netns, pin};

/// Runs `f` on a thread that has entered network namespace `netns` (and, if given, is pinned
/// to `cpu`), and waits for it. Sockets and attachments made there stay in `netns`. A thread
/// of its own, so that the calling thread stays in the host's namespace; rather than
/// `ip netns exec`, which would also remount /sys. A panic in `f` goes on in the caller.
pub fn in_netns<T: Send>(
    netns: &str,
    cpu: Option<usize>,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(netns)?;
                if let Some(cpu) = cpu {
                    pin(cpu)?;
                }
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
