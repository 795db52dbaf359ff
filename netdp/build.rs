//! Builds the kernel programs in `ebpf/programs` for the bpf target and leaves the object in
//! `OUT_DIR`, where `src/object.rs` embeds it, so the loader never reads an object path at run
//! time.
//!
//! Needs, besides the stable toolchain: `rustup toolchain install nightly`,
//! `rustup component add rust-src --toolchain nightly` (for `-Z build-std=core`) and
//! `cargo install bpf-linker@0.10.4 --locked --root .tools` from the workspace root
//! (`.cargo/config.toml` points the bpf target's linker there). Cargo runs this script for
//! `check` and `clippy` too, so those need the same.

use std::{env, path::PathBuf};

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?;
    let programs = PathBuf::from(manifest_dir).join("../ebpf/programs");
    let root_dir = programs
        .to_str()
        .with_context(|| format!("path {} is not UTF-8", programs.display()))?;
    // aya-build turns every line the inner cargo prints into a cargo warning, and cargo
    // replays those on every later build. Quiet keeps only what matters: errors and the
    // compiler's own diagnostics, which arrive by another path.
    env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [Package {
            name: "bosun-ebpf",
            root_dir,
            ..Package::default()
        }],
        Toolchain::Nightly,
    )
    .context(
        "building the kernel programs in ebpf/programs (needs nightly with rust-src and \
         .tools/bin/bpf-linker; see the top of netdp/build.rs)",
    )
}
