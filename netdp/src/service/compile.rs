//! Services and EndpointSlices in, desired services out, as one pure function over the
//! incremental [`ServiceTable`]: what the golden tests, the CLI and the benchmarks use to see
//! the whole of it at once.
//!
//! Where the API server would have defaulted or rejected a field (these objects may come from
//! a manifest, not only from an API server), the default is applied when the objects are read
//! ([`super::model`]) and what validation would reject is a [`Problem`].

use std::sync::Arc;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::model::{ServiceInfo, SliceInfo};
use super::table::ServiceTable;
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
/// for a node named `node` (which matters for `internalTrafficPolicy: Local`): the whole of
/// what a [`ServiceTable`] fed with them holds.
///
/// Deterministic: the same input in any order gives the same output. Problems are grouped by
/// object (kind, namespace, name), and within an object come in the order of its fields.
pub fn compile<'s, 'e>(
    services: impl IntoIterator<Item = &'s Service>,
    slices: impl IntoIterator<Item = &'e EndpointSlice>,
    node: &str,
) -> Compiled {
    compile_for(services, slices, node, &[])
}

/// [`compile`] for a node whose node ports are served on `node_addresses`.
pub fn compile_for<'s, 'e>(
    services: impl IntoIterator<Item = &'s Service>,
    slices: impl IntoIterator<Item = &'e EndpointSlice>,
    node: &str,
    node_addresses: &[std::net::Ipv4Addr],
) -> Compiled {
    let mut table = ServiceTable::new(node);
    table.set_node_addresses(node_addresses);
    for service in services {
        let info = ServiceInfo::from_service(service);
        let (namespace, name) = (info.namespace.clone(), info.name.clone());
        table.set_service(&namespace, &name, Some(Arc::new(info)));
    }
    for slice in slices {
        let info = SliceInfo::from_slice(slice);
        let (namespace, name) = (info.namespace.clone(), info.name.clone());
        table.set_slice(&namespace, &name, Some(Arc::new(info)));
    }
    table.update();
    Compiled {
        services: table.desired(),
        problems: table.problems(),
    }
}

/// Collects the problems of one object.
pub(crate) struct Reporter<'a> {
    pub(crate) kind: &'static str,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) problems: &'a mut Vec<Problem>,
}

impl Reporter<'_> {
    pub(crate) fn report(
        &mut self,
        field: impl Into<String>,
        value: impl Into<String>,
        message: &str,
    ) {
        self.problems.push(Problem {
            kind: self.kind,
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            field: field.into(),
            value: value.into(),
            message: message.to_owned(),
        });
    }
}
