//! STUB: the reconciler.

/// What one [`Reconciler::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
}

pub struct Reconciler<M> {
    maps: M,
}
