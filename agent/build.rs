//! Embeds the git revision the binary is built from, so `bosun version` and the packages name
//! the exact source: `BOSUN_GIT_REVISION` when set (a build from a source archive, or the
//! packaging script), else `git rev-parse` of the checkout, else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Cargo reruns a build script whose watched file is missing on every build: watch only
/// files that exist (a branch's ref may live in packed-refs alone).
fn watch(file: Option<String>) {
    if let Some(file) = file.filter(|file| std::path::Path::new(file).exists()) {
        println!("cargo:rerun-if-changed={file}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=BOSUN_GIT_REVISION");
    let revision = match std::env::var("BOSUN_GIT_REVISION") {
        Ok(revision) if !revision.is_empty() => revision,
        _ => {
            // Rebuild when HEAD moves: the HEAD file, the branch it points at, and packed refs.
            for path in ["HEAD", "packed-refs"] {
                watch(git(&["rev-parse", "--git-path", path]));
            }
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(git(&["rev-parse", "--git-path", &branch]));
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=BOSUN_GIT_REVISION={revision}");
}
