//! Narrow views of large CRI answers: messages with a subset of a CRI message's fields, under
//! the same numbers, so that decoding skips the other fields instead of allocating them.

use std::collections::HashMap;

use bosun_proto::runtime::v1 as api;

/// `ListPodSandboxResponse`, with [`Sandbox`]es.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Sandboxes {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<Sandbox>,
}

/// `PodSandbox`: `id`, `state`, `created_at` and `labels`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Sandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(int64, tag = "4")]
    pub created_at: i64,
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
}

impl From<Sandbox> for api::PodSandbox {
    fn from(brief: Sandbox) -> Self {
        api::PodSandbox {
            id: brief.id,
            state: brief.state,
            created_at: brief.created_at,
            labels: brief.labels,
            ..api::PodSandbox::default()
        }
    }
}

/// `ListContainersResponse`, with [`Container`]s.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Containers {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

/// `Container`: `id`, `pod_sandbox_id`, `state`, `created_at` and `labels`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(int32, tag = "6")]
    pub state: i32,
    #[prost(int64, tag = "7")]
    pub created_at: i64,
    #[prost(map = "string, string", tag = "8")]
    pub labels: HashMap<String, String>,
}

impl From<Container> for api::Container {
    fn from(brief: Container) -> Self {
        api::Container {
            id: brief.id,
            pod_sandbox_id: brief.pod_sandbox_id,
            state: brief.state,
            created_at: brief.created_at,
            labels: brief.labels,
            ..api::Container::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_brief_views_read_their_fields_of_the_full_messages_and_skip_the_rest() {
        let labels = HashMap::from([("io.kubernetes.pod.uid".to_owned(), "u1".to_owned())]);
        let annotations = HashMap::from([("a".to_owned(), "b".to_owned())]);
        let sandbox = api::PodSandbox {
            id: "s1".into(),
            metadata: Some(api::PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 2,
            }),
            state: api::PodSandboxState::SandboxNotready as i32,
            created_at: 42,
            labels: labels.clone(),
            annotations: annotations.clone(),
            runtime_handler: "runc".into(),
        };
        let full = api::ListPodSandboxResponse {
            items: vec![sandbox.clone()],
        };
        let brief = Sandboxes::decode(full.encode_to_vec().as_slice()).expect("decodes");
        let back: Vec<api::PodSandbox> = brief.items.into_iter().map(Into::into).collect();
        assert_eq!(
            back,
            [api::PodSandbox {
                metadata: None,
                annotations: HashMap::new(),
                runtime_handler: String::new(),
                ..sandbox
            }]
        );

        let container = api::Container {
            id: "c1".into(),
            pod_sandbox_id: "s1".into(),
            metadata: Some(api::ContainerMetadata {
                name: "app".into(),
                attempt: 3,
            }),
            image: Some(api::ImageSpec {
                image: "busybox".into(),
                ..api::ImageSpec::default()
            }),
            image_ref: "sha256:1".into(),
            state: api::ContainerState::ContainerExited as i32,
            created_at: 7,
            labels: labels.clone(),
            annotations,
            image_id: "sha256:2".into(),
        };
        let full = api::ListContainersResponse {
            containers: vec![container.clone()],
        };
        let brief = Containers::decode(full.encode_to_vec().as_slice()).expect("decodes");
        let back: Vec<api::Container> = brief.containers.into_iter().map(Into::into).collect();
        assert_eq!(
            back,
            [api::Container {
                id: "c1".into(),
                pod_sandbox_id: "s1".into(),
                state: api::ContainerState::ContainerExited as i32,
                created_at: 7,
                labels,
                ..api::Container::default()
            }]
        );
    }
}
