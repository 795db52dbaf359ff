//! The CRI v1 API (`runtime.v1`: RuntimeService and ImageService) as generated Rust types and
//! tonic clients. The `.proto` under `proto/cri/` is wire-compatible with the upstream
//! definition; it is compiled at build time by a pure-Rust compiler, so no `protoc` is needed.
//! This crate knows the protocol and nothing about how it is used.
//!
//! Besides the messages it offers tonic servers (so other crates can test against an in-memory
//! fake runtime), the compiled descriptor set, and [`to_json`], which renders any message the way
//! `crictl -o json` does.
//!
//! It also carries the gRPC health checking protocol ([`grpc_health::v1`]), which gRPC probes
//! speak to a container; it is not part of CRI and is left out of [`FILE_DESCRIPTOR_SET`].

use std::{fmt, sync::OnceLock};

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// Generated code for the `runtime.v1` package.
pub mod runtime {
    /// Messages, enums, and the `runtime_service_client`, `image_service_client`,
    /// `runtime_service_server` and `image_service_server` modules.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/runtime.v1.rs"));
    }
}

/// Short path to the generated CRI v1 types: `bosun_proto::cri::PodSandbox`.
pub use runtime::v1 as cri;

/// Generated code for the `grpc.health.v1` package.
pub mod grpc_health {
    /// `HealthCheckRequest`, `HealthCheckResponse` (with its `ServingStatus`), and the
    /// `health_client` and `health_server` modules.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
    }
}

/// The encoded `FileDescriptorSet` of `cri/v1/api.proto`, as compiled at build time.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor.bin"));

/// Descriptors of every `runtime.v1` message, decoded once on first use.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The bytes were produced by the build script from a file the compiler accepted, and the
        // `descriptor_pool_decodes` test decodes them, so this cannot fail at run time.
        DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("embedded CRI descriptor set is valid")
    })
}

// `debug_redact` in the .proto marks these fields, but prost ignores the option, so the redaction
// is done here. A PullImageRequest logged with `{:?}` then shows whether a secret was given, never
// the secret.
impl fmt::Debug for cri::AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redacted(secret: &str) -> &'static str {
            if secret.is_empty() {
                ""
            } else {
                "<redacted>"
            }
        }
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &redacted(&self.password))
            .field("auth", &redacted(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &redacted(&self.identity_token))
            .field("registry_token", &redacted(&self.registry_token))
            .finish()
    }
}

/// Why a message could not be rendered as JSON.
///
/// Every variant is a programming error (a type that is not part of `runtime.v1`, or a bug in
/// this crate), never a condition of the runtime: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum ProtoJsonError {
    /// The message's full name is not in the embedded descriptor set.
    #[error("message type {full_name} is not in the CRI descriptor set")]
    UnknownMessage { full_name: String },
    /// The message's encoding did not decode against its own descriptor.
    #[error("re-decoding {full_name} against its descriptor")]
    Decode {
        full_name: String,
        #[source]
        source: prost::DecodeError,
    },
    /// The dynamic message could not be serialized.
    #[error("serializing {full_name} to JSON")]
    Serialize {
        full_name: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Renders `msg` in the protobuf JSON mapping as `crictl -o json` prints it (crictl marshals with
/// protojson's `EmitDefaultValues`): lowerCamelCase field names, enums by name, 64-bit integers
/// as strings; scalars, enums, lists and maps appear even at their default value (so
/// `"state": "SANDBOX_READY"`, the zero value, is shown), while unset message fields are left out.
pub fn to_json<M: prost::Message + prost::Name>(
    msg: &M,
) -> Result<serde_json::Value, ProtoJsonError> {
    let full_name = M::full_name();
    let descriptor = descriptor_pool()
        .get_message_by_name(&full_name)
        .ok_or_else(|| ProtoJsonError::UnknownMessage {
            full_name: full_name.clone(),
        })?;
    let dynamic =
        DynamicMessage::decode(descriptor, msg.encode_to_vec().as_slice()).map_err(|source| {
            ProtoJsonError::Decode {
                full_name: full_name.clone(),
                source,
            }
        })?;
    let options = SerializeOptions::new()
        .stringify_64_bit_integers(true)
        .use_enum_numbers(false)
        .use_proto_field_name(false)
        // `false` keeps fields without presence at their defaults but still skips unset
        // messages: protojson's EmitDefaultValues, which is what crictl uses.
        .skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|source| ProtoJsonError::Serialize { full_name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_pool_decodes() {
        let pool = descriptor_pool();
        assert!(pool
            .get_service_by_name("runtime.v1.RuntimeService")
            .is_some());
        assert!(pool
            .get_service_by_name("runtime.v1.ImageService")
            .is_some());
        assert!(pool
            .get_message_by_name("runtime.v1.PodSandboxStatus")
            .is_some());
    }

    #[test]
    fn generated_names_resolve_in_the_pool() {
        use prost::Name as _;
        for name in [
            cri::PodSandboxStatus::full_name(),
            cri::SecurityProfile::full_name(),
            cri::IdMapping::full_name(),
            cri::CdiDevice::full_name(),
            cri::UInt64Value::full_name(),
        ] {
            assert!(
                descriptor_pool().get_message_by_name(&name).is_some(),
                "{name} missing"
            );
        }
        assert_eq!(
            cri::PodSandboxStatus::full_name(),
            "runtime.v1.PodSandboxStatus"
        );
    }

    #[test]
    fn auth_config_debug_hides_secrets() {
        let auth = cri::AuthConfig {
            username: "me".into(),
            password: "pw-secret".into(),
            auth: "auth-secret".into(),
            server_address: "registry.example".into(),
            identity_token: "id-secret".into(),
            registry_token: String::new(),
        };
        let shown = format!(
            "{:?}",
            cri::PullImageRequest {
                auth: Some(auth),
                ..Default::default()
            }
        );
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("\"me\"") && shown.contains("registry.example"),
            "{shown}"
        );
        assert!(shown.contains("password: \"<redacted>\""), "{shown}");
        assert!(shown.contains("registry_token: \"\""), "{shown}");
    }

    #[test]
    fn health_messages_have_the_upstream_wire_shape() {
        use grpc_health::v1::{health_check_response::ServingStatus, *};
        use prost::Message as _;

        let request = HealthCheckRequest {
            service: "db".to_owned(),
        };
        assert_eq!(request.encode_to_vec(), b"\x0a\x02db");
        let response = HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        };
        assert_eq!(response.encode_to_vec(), [0x08, 0x02]);
        let names: Vec<_> = (0..=3)
            .map(|n| ServingStatus::try_from(n).map(|s| s.as_str_name()))
            .collect();
        assert_eq!(
            names,
            [
                Ok("UNKNOWN"),
                Ok("SERVING"),
                Ok("NOT_SERVING"),
                Ok("SERVICE_UNKNOWN")
            ]
        );
        assert_eq!(health_server::SERVICE_NAME, "grpc.health.v1.Health");
    }

    #[test]
    fn to_json_rejects_foreign_messages() {
        let err = to_json(&prost_types::Duration {
            seconds: 1,
            nanos: 0,
        })
        .unwrap_err();
        assert!(
            matches!(&err, ProtoJsonError::UnknownMessage { full_name } if full_name == "google.protobuf.Duration"),
            "{err:?}"
        );
    }
}
