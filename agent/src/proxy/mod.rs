//! `bosun proxy`: kube-proxy's job alone, from the API server, with kube-proxy's flags, config
//! file and health server.

pub mod config;
pub mod endpoints;
pub mod healthz;
pub mod run;
pub mod service_health;
