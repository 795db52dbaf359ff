//! NetworkPolicy enforcement for the pods of this node: which pods are endpoints (a sandbox
//! with an interface here), the policies and namespaces of the object store, and the one
//! writer that turns them into the datapath's maps through netdp's compiler and reconciler.
//!
//! A pod's policy is in place before its first container starts: the pod worker calls
//! [`PolicyEnforcer::admit`] after the sandbox exists and before any container is created,
//! and starts nothing until it succeeds.

mod enforcer;

pub use enforcer::{endpoint, peer, PolicyEnforcer, FAILED_NETWORK_POLICY, INVALID_NETWORK_POLICY};
