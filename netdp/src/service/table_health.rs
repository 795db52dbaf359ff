//! What kube-proxy's service health server reads from its proxier
//! (`ServicePortMap.HealthCheckNodePorts`, `EndpointsMap.LocalReadyEndpoints`): each Service's
//! health check node port and how many of its endpoints on this node are ready, per Service
//! (not per Service port), counted by address.
//!
//! The caller learns which Services may have changed from [`ServiceTable::pending`] before an
//! update, so following changes costs what they touch, as the rest of the table does.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{is_local, Entry, ServiceRef, ServiceTable};

/// A Service's health check as this node serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Its ready endpoints on this node, each address once.
    pub local_endpoints: usize,
}

impl ServiceTable {
    /// The Services the next [`ServiceTable::update`] compiles again: every Service whose
    /// health check may have changed since the last one is among them.
    pub fn pending(&self) -> impl Iterator<Item = &ServiceRef> {
        self.dirty.iter()
    }

    /// The health check the Service `key` asks for, with its local endpoints now; `None` if it
    /// asks for none (or is gone).
    pub fn health_check(&self, key: &ServiceRef) -> Option<HealthCheck> {
        self.entries
            .get(key)
            .and_then(|entry| self.entry_health_check(entry))
    }

    /// Every Service asking for a health check, with its local endpoints now.
    pub fn health_checks(&self) -> Vec<(ServiceRef, HealthCheck)> {
        self.entries
            .iter()
            .filter_map(|(key, entry)| Some((key.clone(), self.entry_health_check(entry)?)))
            .collect()
    }

    fn entry_health_check(&self, entry: &Entry) -> Option<HealthCheck> {
        let service = entry.service.as_ref()?;
        if service.health_check_node_port == 0 {
            return None;
        }
        // kube-proxy counts the endpoints of its endpoints map, which holds only those listed
        // with a port; ready ones only (a node with nothing but terminating endpoints fails
        // the check), each address once however many ports it serves. A local pod failing
        // readiness here counts as not ready, as it has left the datapath already. (Of an
        // address two slices list, kube-proxy keeps one copy in map order; here it counts if
        // any local copy is ready.)
        let local: BTreeSet<Ipv4Addr> = entry
            .slices
            .iter()
            .filter(|slice| !slice.ports.is_empty())
            .flat_map(|slice| slice.endpoints.iter())
            .filter(|e| e.ready && is_local(e, &self.node))
            .filter(|e| !self.not_ready.contains(&e.address))
            .map(|e| e.address)
            .collect();
        Some(HealthCheck {
            port: service.health_check_node_port,
            local_endpoints: local.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::intern::intern;
    use crate::service::{ServiceInfo, SliceInfo};

    fn service(name: &str, spec: &str) -> Arc<ServiceInfo> {
        let service: Service = serde_yaml::from_str(&format!(
            "metadata: {{namespace: default, name: {name}}}\nspec:\n  clusterIP: 10.96.0.1\n  ports: [{{name: http, port: 80}}, {{name: https, port: 443}}]\n{spec}"
        ))
        .expect("a Service");
        Arc::new(ServiceInfo::from_service(&service))
    }

    const LOCAL_LB: &str =
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n";

    /// A slice of the Service `web` with one endpoint per (address, node, ready), on both
    /// ports.
    fn slice(name: &str, endpoints: &[(&str, &str, bool)]) -> Arc<SliceInfo> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .map(|(ip, node, ready)| {
                format!("{{addresses: [{ip}], nodeName: {node}, conditions: {{ready: {ready}}}}}")
            })
            .collect();
        let slice: EndpointSlice = serde_yaml::from_str(&format!(
            "metadata: {{namespace: default, name: {name}, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: https, port: 8443}}]\nendpoints: [{}]\n",
            endpoints.join(", ")
        ))
        .expect("an EndpointSlice");
        Arc::new(SliceInfo::from_slice(&slice))
    }

    fn web() -> ServiceRef {
        (intern("default"), intern("web"))
    }

    fn count(table: &ServiceTable) -> Option<usize> {
        table.health_check(&web()).map(|h| h.local_endpoints)
    }

    #[test]
    fn only_a_local_load_balancer_asks_for_a_health_check() {
        for (spec, port) in [
            (LOCAL_LB, 32100),
            // The API server allocates none for these, and kube-proxy serves none.
            (
                "  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n",
                0,
            ),
            (
                "  type: LoadBalancer\n  externalTrafficPolicy: Cluster\n  healthCheckNodePort: 32100\n",
                0,
            ),
        ] {
            assert_eq!(service("web", spec).health_check_node_port, port, "{spec}");
        }
        let missing = service(
            "web",
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n",
        );
        assert_eq!(missing.health_check_node_port, 0);
        assert_eq!(missing.problems[0].field, "spec.healthCheckNodePort");
    }

    #[test]
    fn local_ready_endpoints_are_counted_per_service_by_address() {
        let mut table = ServiceTable::new("node-a");
        table.set_slice(
            "default",
            "web-1",
            Some(slice(
                "web-1",
                &[
                    ("10.244.0.5", "node-a", true),
                    ("10.244.0.6", "node-a", false),
                    ("10.244.1.5", "node-b", true),
                ],
            )),
        );
        assert_eq!(count(&table), None, "no Service yet");
        table.set_service("default", "web", Some(service("web", LOCAL_LB)));
        assert_eq!(
            table.pending().cloned().collect::<Vec<_>>(),
            [web()],
            "the Service is to be compiled again"
        );
        table.update();
        assert!(table.pending().next().is_none());
        // Two ports, one address: one endpoint. Not ready and another node's: none.
        assert_eq!(
            table.health_check(&web()),
            Some(HealthCheck {
                port: 32100,
                local_endpoints: 1
            })
        );
        // A second slice lists the same address again, and another local one.
        table.set_slice(
            "default",
            "web-2",
            Some(slice(
                "web-2",
                &[
                    ("10.244.0.5", "node-a", true),
                    ("10.244.0.7", "node-a", true),
                ],
            )),
        );
        assert_eq!(count(&table), Some(2));
        // The local pod fails readiness here before its slice says so.
        table.update();
        table.set_local_ready("10.244.0.7".parse().expect("an address"), false);
        assert_eq!(table.pending().cloned().collect::<Vec<_>>(), [web()]);
        assert_eq!(count(&table), Some(1));
        assert_eq!(
            table.health_checks(),
            [(
                web(),
                HealthCheck {
                    port: 32100,
                    local_endpoints: 1
                }
            )]
        );
        table.set_service("default", "web", None);
        assert_eq!(count(&table), None);
        assert!(table.health_checks().is_empty());
    }
}
