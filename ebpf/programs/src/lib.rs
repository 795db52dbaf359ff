//! Empty on purpose: netdp's build script depends on this package so that cargo reruns it when
//! the programs or the ABI change, and cargo only accepts a dependency that has a library target.
//! The programs themselves are the binary target, `src/main.rs`.
#![no_std]
