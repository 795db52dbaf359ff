//! NetworkPolicy for pods bosun did not start: `bosun proxy` learns this node's pods from the
//! API server (their address, labels and named ports) and finds each one's host-side
//! interface by its address ([`PodInterfaces`]: the route to it for routed CNIs such as ptp,
//! the network namespace holding it for bridged ones such as the bridge plugin). A pod whose
//! interface is not there yet (its sandbox is still being wired) is looked for again every
//! [`RETRY`]; a pod gone, or moved to another address, leaves the enforcer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bosun_netdp::pod_interfaces::PodInterfaces;
use bosun_netdp::policy::PolicyPod;

use crate::policy::PolicyEnforcer;
use crate::store::{ObjectKey, Store};
use crate::util::{error_chain, sleep_or_never};

/// How often pods whose interface was not found are looked for again.
pub const RETRY: Duration = Duration::from_secs(2);
/// How often, before the enforcer has read the policies, it is asked again.
const UNREAD_POLL: Duration = Duration::from_millis(50);

/// Keeps `enforcer`'s endpoints equal to the pods of `local` (this node's pods with an
/// address) whose interface can be found, until the task is dropped.
pub async fn follow(enforcer: Arc<PolicyEnforcer>, local: Store<PolicyPod>) {
    let mut changes = local.subscribe();
    let mut interfaces = Some(PodInterfaces::new());
    let mut admitted: BTreeMap<ObjectKey, Arc<PolicyPod>> = BTreeMap::new();
    loop {
        let mut retry = None;
        if local.is_synced() && !enforcer.all_read() {
            // Nothing can be placed before the policies are read: ask again soon rather
            // than at the interface retry's pace.
            retry = Some(UNREAD_POLL);
        } else if local.is_synced() {
            let wanted: BTreeMap<ObjectKey, Arc<PolicyPod>> = local.entries().into_iter().collect();
            let gone: Vec<ObjectKey> = admitted
                .keys()
                .filter(|key| !wanted.contains_key(*key))
                .cloned()
                .collect();
            for key in gone {
                admitted.remove(&key);
                enforcer.release(&key.to_string()).await;
            }
            let unplaced: BTreeSet<ObjectKey> = wanted
                .iter()
                .filter(|(key, pod)| admitted.get(*key) != Some(*pod))
                .map(|(key, _)| key.clone())
                .collect();
            for key in unplaced {
                let pod = wanted[&key].clone();
                match place(&enforcer, &mut interfaces, &key, &pod).await {
                    Ok(true) => {
                        admitted.insert(key, pod);
                    }
                    Ok(false) => retry = Some(RETRY),
                    Err(message) => {
                        tracing::warn!(pod = %key, %message, "network policy for a local pod");
                        retry = Some(RETRY);
                    }
                }
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            () = sleep_or_never(retry) => {}
        }
    }
}

/// Finds `pod`'s interface and admits it: `Ok(false)` if there is no interface yet.
async fn place(
    enforcer: &PolicyEnforcer,
    interfaces: &mut Option<PodInterfaces>,
    key: &ObjectKey,
    pod: &PolicyPod,
) -> Result<bool, String> {
    let mut finder = interfaces.take().unwrap_or_default();
    let ip = pod.ip;
    let joined = tokio::task::spawn_blocking(move || {
        let found = finder.find(ip);
        (finder, found)
    })
    .await;
    let (finder, found) = joined.map_err(|e| format!("finding the pod's interface: {e}"))?;
    *interfaces = Some(finder);
    let interface =
        found.map_err(|e| format!("finding the interface of {ip}: {}", error_chain(&e)))?;
    let Some(interface) = interface else {
        tracing::debug!(pod = %key, %ip, "no interface for the pod's address yet");
        return Ok(false);
    };
    // The pod's key stands for its UID, and its address for its sandbox: a pod that comes
    // back at another address is placed again.
    let uid = key.to_string();
    enforcer
        .admit_interface(pod.clone(), &uid, &ip.to_string(), interface)
        .await?;
    Ok(true)
}
