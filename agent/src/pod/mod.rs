//! One pod's life on this node: its CRI configuration, its lifecycle, its status.

pub mod observed;
pub mod plan;
pub mod spec;
pub mod status;
pub mod worker;
