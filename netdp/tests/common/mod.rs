//! What netdp's real-kernel tests share: running `ip` and entering a network namespace.

use std::{fs::File, process::Command, thread};

use nix::sched::{setns, CloneFlags};

/// Runs `ip ARGS`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Runs `f` on a thread that has entered network namespace `ns`. Sockets and attachments made
/// there stay in `ns` after the thread ends. A thread of its own, rather than `ip netns exec`,
/// because the latter remounts /sys, and because the test's own thread must stay in the host's
/// namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = File::open(format!("/run/netns/{ns}"))
                    .unwrap_or_else(|e| panic!("open network namespace {ns}: {e}"));
                setns(netns, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("enter network namespace {ns}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
