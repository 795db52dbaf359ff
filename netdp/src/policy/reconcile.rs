//! Compares what [`super::compile`] wants with what the maps hold and writes the difference.
//! (Stub: being written.)

use std::net::Ipv4Addr;

use super::{Compiled, PolicyMaps};
use crate::Error;

/// What one [`PolicyReconciler::apply`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyApplied {
    pub writes: usize,
    pub deletes: usize,
}

/// Owns the policy maps' contents: ids for policies and port classes, and the entries.
pub struct PolicyReconciler<M: PolicyMaps> {
    maps: M,
}

impl<M: PolicyMaps> PolicyReconciler<M> {
    /// Reads back what the maps hold (a restart adopts it).
    pub fn new(maps: M) -> Result<Self, Error> {
        Ok(Self { maps })
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Makes the maps hold `desired` and the node's addresses `node`.
    pub fn apply(
        &mut self,
        _desired: &Compiled,
        _node: &[Ipv4Addr],
    ) -> Result<PolicyApplied, Error> {
        todo!("being written")
    }
}
