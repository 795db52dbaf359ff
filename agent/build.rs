//! Embeds the git revision the binary is built from, so `bosun version` and the packages name
//! the exact source: `BOSUN_GIT_REVISION` when set (a build from a source archive, or the
//! packaging script), else `git rev-parse` of the checkout, else "unknown".
//!
//! Also has the linker place the steady state's functions together
//! (`steady-state-functions.txt`), on Linux.

use std::path::Path;
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
    order_steady_state_functions();
}

/// The code a running daemon keeps executing is a couple of megabytes of functions spread over
/// the whole binary, and the kernel maps 64 KiB of the file around each page touched: laid out
/// as the compiler emits them, they keep most of the binary's code resident. Listed in
/// `steady-state-functions.txt` (glob patterns of symbol names, hashes left out), they are
/// placed together before the rest of the code by a linker script that adds one output
/// section to the default layout (`INSERT`, which LLVM's linker and GNU ld both take).
/// `BOSUN_ORDER_FUNCTIONS=0` leaves the layout to the linker.
fn order_steady_state_functions() {
    println!("cargo:rerun-if-env-changed=BOSUN_ORDER_FUNCTIONS");
    println!("cargo:rerun-if-changed=steady-state-functions.txt");
    let wanted = std::env::var("BOSUN_ORDER_FUNCTIONS").as_deref() != Ok("0");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    let (Ok(dir), Ok(out)) = (
        std::env::var("CARGO_MANIFEST_DIR"),
        std::env::var("OUT_DIR"),
    ) else {
        return;
    };
    if !wanted || !linux {
        return;
    }
    let Ok(list) = std::fs::read_to_string(Path::new(&dir).join("steady-state-functions.txt"))
    else {
        return;
    };
    let script = Path::new(&out).join("steady-state.ld");
    if std::fs::write(&script, linker_script(&list)).is_ok() {
        println!("cargo:rustc-link-arg-bin=bosun=-Wl,-T,{}", script.display());
    }
}

/// One output section, `.text.steady`, before `.text`, holding the functions whose names match
/// the list's patterns, in the list's order (a section name is `.text.` and the symbol's name,
/// or `.text.unlikely.` and it for a function the compiler deems cold).
fn linker_script(list: &str) -> String {
    let mut script = String::from("SECTIONS\n{\n  .text.steady :\n  {\n");
    for pattern in list
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        script.push_str(&format!(
            "    *(.text.{pattern} .text.unlikely.{pattern})\n"
        ));
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    script
}
