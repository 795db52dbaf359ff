//! STUB, to be replaced: Services and EndpointSlices in, desired services out.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::DesiredService;

/// What [`compile`] made of its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Sorted by frontend.
    pub services: Vec<DesiredService>,
    /// What could not be used, each naming the object, the field and the value.
    pub problems: Vec<Problem>,
}

/// One thing in the input the datapath cannot serve (an SCTP port, a port that names nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The field's path, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub value: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{}: {}: {:?}: {}",
            self.kind, self.namespace, self.name, self.field, self.value, self.message
        )
    }
}

/// Turns Services and the EndpointSlices that belong to them into what the maps should hold,
/// for a node named `node` (which matters for `internalTrafficPolicy: Local`).
pub fn compile(services: &[Service], slices: &[EndpointSlice], node: &str) -> Compiled {
    let _ = (services, slices, node);
    unimplemented!("compile")
}
