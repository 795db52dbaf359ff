//! Services on this node: EndpointSlices computed from static pods, and the service proxy that
//! programs the datapath.

pub mod endpoints;
pub mod proxy;
