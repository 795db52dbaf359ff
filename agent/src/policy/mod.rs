//! NetworkPolicy enforcement for the pods of this node: which pods are endpoints (a sandbox
//! with an interface here), what policies and namespaces the manifests hold, and the one
//! writer that turns them into the datapath's maps through netdp's compiler and reconciler.
//!
//! A pod's policy is in place before its first container starts: the pod worker calls
//! [`PolicyEnforcer::admit`] after the sandbox exists and before any container is created,
//! and starts nothing until it succeeds.

mod enforcer;

pub use enforcer::{PolicyEnforcer, PolicyView, FAILED_NETWORK_POLICY, INVALID_NETWORK_POLICY};
