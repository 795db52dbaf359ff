//! Pod configuration (kubelet's `pkg/kubelet/config`): merges the pods of every source —
//! the manifest directory and, in a cluster, the API server — into one desired set keyed by
//! UID, and knows when every source has delivered its first complete list. Until then a pod
//! that no source names may still be wanted, so nothing may be taken for an orphan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::source::PodUpdate;
use crate::store::Source;

/// The pods of every source, merged. A UID belongs to the first source that names it.
#[derive(Debug, Default)]
pub struct PodConfig {
    by_source: BTreeMap<Source, BTreeMap<String, Arc<Pod>>>,
    /// Sources expected to deliver pods.
    expected: BTreeSet<Source>,
    /// Sources that have delivered a complete list.
    seen: BTreeSet<Source>,
}

impl PodConfig {
    /// A configuration that is complete once each of `sources` has listed its pods.
    pub fn new(sources: &[Source]) -> Self {
        PodConfig {
            expected: sources.iter().copied().collect(),
            ..PodConfig::default()
        }
    }

    /// Applies `update` from `source`; returns the UIDs whose desired pod changed.
    pub fn apply(&mut self, source: Source, update: PodUpdate) -> BTreeSet<String> {
        let before = self.desired();
        let pods = self.by_source.entry(source).or_default();
        match update {
            PodUpdate::Set(set) => {
                *pods = set
                    .into_iter()
                    .filter_map(|p| Some((uid(&p)?, p)))
                    .collect();
                self.seen.insert(source);
            }
            PodUpdate::Apply(pod) => {
                if let Some(uid) = uid(&pod) {
                    pods.insert(uid, pod);
                }
            }
            PodUpdate::Delete(pod) => {
                if let Some(uid) = uid(&pod) {
                    pods.remove(&uid);
                }
            }
        }
        let after = self.desired();
        let mut changed: BTreeSet<String> = before
            .iter()
            .filter(|(uid, pod)| after.get(*uid).is_none_or(|now| !Arc::ptr_eq(now, pod)))
            .map(|(uid, _)| uid.clone())
            .collect();
        changed.extend(
            after
                .keys()
                .filter(|uid| !before.contains_key(*uid))
                .cloned(),
        );
        changed
    }

    /// Every desired pod by UID.
    pub fn desired(&self) -> BTreeMap<String, Arc<Pod>> {
        let mut all = BTreeMap::new();
        for pods in self.by_source.values() {
            for (uid, pod) in pods {
                all.entry(uid.clone()).or_insert_with(|| pod.clone());
            }
        }
        all
    }

    /// The desired pod of `uid`.
    pub fn get(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.by_source.values().find_map(|pods| pods.get(uid))
    }

    /// Whether every expected source has delivered a complete list.
    pub fn all_sources_seen(&self) -> bool {
        self.expected.is_subset(&self.seen)
    }
}

fn uid(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone().filter(|uid| !uid.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, image: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": uid, "namespace": "default", "uid": uid},
                "spec": {"containers": [{"name": "c", "image": image}]},
            }))
            .expect("a pod"),
        )
    }

    #[test]
    fn sources_merge_and_changes_name_their_uids() {
        let mut config = PodConfig::new(&[Source::File, Source::Api]);
        let a = pod("a", "busybox");
        let changed = config.apply(Source::File, PodUpdate::Set(vec![a.clone()]));
        assert_eq!(changed, BTreeSet::from(["a".to_owned()]));
        assert!(!config.all_sources_seen());
        // The same pod again is no change.
        assert!(config
            .apply(Source::File, PodUpdate::Set(vec![a.clone()]))
            .is_empty());
        let changed = config.apply(Source::Api, PodUpdate::Set(vec![pod("b", "busybox")]));
        assert_eq!(changed, BTreeSet::from(["b".to_owned()]));
        assert!(config.all_sources_seen());
        let changed = config.apply(Source::Api, PodUpdate::Apply(pod("b", "nginx")));
        assert_eq!(changed, BTreeSet::from(["b".to_owned()]));
        let changed = config.apply(Source::Api, PodUpdate::Delete(pod("b", "nginx")));
        assert_eq!(changed, BTreeSet::from(["b".to_owned()]));
        assert_eq!(config.desired().keys().collect::<Vec<_>>(), ["a"]);
        assert!(config.get("a").is_some_and(|p| Arc::ptr_eq(p, &a)));
    }
}
