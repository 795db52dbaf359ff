//! Compiles `cri/v1/api.proto` with protox (pure Rust, no `protoc`), writes the encoded
//! descriptor set next to the generated code, and generates prost messages plus tonic clients
//! and servers from that same descriptor set, so the two can never disagree. The gRPC health
//! protocol (`grpc/health/v1/health.proto`) gets messages, client and server too, but from a
//! compilation of its own, so the CRI descriptor set (and the golden listing pinned to it) holds
//! `runtime.v1` alone.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;
use protox::prost::Message as _;

const PROTO: &str = "cri/v1/api.proto";
const HEALTH_PROTO: &str = "grpc/health/v1/health.proto";
const INCLUDE: &str = ".";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={HEALTH_PROTO}");

    let out_dir = PathBuf::from(env::var("OUT_DIR").context("reading OUT_DIR")?);
    let fds = protox::compile([PROTO], [INCLUDE]).with_context(|| format!("compiling {PROTO}"))?;

    let descriptor_path = out_dir.join("cri_descriptor.bin");
    fs::write(&descriptor_path, fds.encode_to_vec())
        .with_context(|| format!("writing {}", descriptor_path.display()))?;

    let mut config = tonic_prost_build::Config::new();
    // Every message then implements `prost::Name` and knows its full name
    // (`runtime.v1.PodSandbox`), which is how `to_json` finds its descriptor.
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Server traits get default methods answering Unimplemented, as a runtime that predates
        // an RPC does, so an in-memory fake implements only the calls a test exercises.
        .generate_default_stubs(true)
        // Its Debug is written by hand in lib.rs so that registry secrets never reach a log.
        .skip_debug([".runtime.v1.AuthConfig"])
        .compile_fds_with_config(fds, config)
        .context("generating Rust code for runtime.v1")?;

    let health = protox::compile([HEALTH_PROTO], [INCLUDE])
        .with_context(|| format!("compiling {HEALTH_PROTO}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // A test's health server then implements `Check` only; `Watch` answers Unimplemented.
        .generate_default_stubs(true)
        .compile_fds(health)
        .context("generating Rust code for grpc.health.v1")?;
    Ok(())
}
