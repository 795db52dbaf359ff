//! Strict decoding of a parsed manifest into a typed Kubernetes object, in the manner of
//! `kubectl --validate=strict`: a type error is reported at the field it happened in, and
//! fields the type does not know are listed instead of being dropped silently.
//!
//! k8s-openapi's `Deserialize` impls skip unknown fields with `IgnoredAny` and report errors
//! without a location. Decoding goes through [`Tracked`], a deserializer over a
//! `serde_json::Value` that keeps the path to the value being decoded; that path is the
//! location of an error, and every value the target type asks to ignore is an unknown field.

use std::cell::RefCell;
use std::fmt::Write as _;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::Value;

/// One problem found while decoding: where (a field path such as `spec.containers[0].name`,
/// empty for the object itself) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Decodes `value` as a `T`. On success the unknown fields are returned as problems (empty
/// when there were none); on failure, the unknown fields seen before the failing field and
/// then the failure itself.
pub(crate) fn decode<T: DeserializeOwned>(
    value: &Value,
) -> Result<(T, Vec<Problem>), Vec<Problem>> {
    let trail = RefCell::new(Trail::default());
    let result = T::deserialize(Tracked {
        value,
        trail: &trail,
    });
    let trail = trail.into_inner();
    let mut problems: Vec<Problem> = trail
        .unknown
        .into_iter()
        .map(|field| Problem::new(field, "unknown field"))
        .collect();
    match result {
        Ok(typed) => Ok((typed, problems)),
        Err(err) => {
            problems.push(located(&trail.current, &err.to_string()));
            Err(problems)
        }
    }
}

/// Turns serde's message into one that names the field: serde reports a missing field at
/// the object that lacks it, which reads better as the field itself being required.
fn located(path: &[Segment], message: &str) -> Problem {
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'));
    match missing {
        Some(name) => {
            let mut full = path.to_vec();
            full.push(Segment::Field(name.to_string()));
            Problem::new(render(&full), "required value")
        }
        None => Problem::new(render(path), message),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Field(String),
    Index(usize),
}

/// Renders a path the way Kubernetes writes field paths: `spec.containers[0].ports[1].name`.
fn render(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Field(name) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(name);
            }
            Segment::Index(index) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "[{index}]");
            }
        }
    }
    out
}

#[derive(Default)]
struct Trail {
    /// Path to the value being decoded. A segment is popped only when its value decoded, so
    /// after a failure this is where it happened.
    current: Vec<Segment>,
    unknown: Vec<String>,
}

#[derive(Clone, Copy)]
struct Tracked<'de> {
    value: &'de Value,
    trail: &'de RefCell<Trail>,
}

impl<'de> Tracked<'de> {
    fn child<T>(
        self,
        segment: Segment,
        value: &'de Value,
        seed: T,
    ) -> Result<T::Value, serde_json::Error>
    where
        T: DeserializeSeed<'de>,
    {
        self.trail.borrow_mut().current.push(segment);
        let decoded = seed.deserialize(Tracked {
            value,
            trail: self.trail,
        })?;
        self.trail.borrow_mut().current.pop();
        Ok(decoded)
    }
}

impl<'de> de::Deserializer<'de> for Tracked<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else if let Some(f) = n.as_f64() {
                    visitor.visit_f64(f)
                } else {
                    Err(de::Error::custom(format!("unsupported number {n}")))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter().enumerate(),
                parent: self,
            }),
            Value::Object(map) => visitor.visit_map(Map {
                entries: map.iter(),
                pending: None,
                parent: self,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        // No Kubernetes type decodes as a Rust enum's tagged form; serde_json's own handling
        // is enough, and the error still lands at this value's path.
        de::Deserializer::deserialize_enum(self.value, name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let mut trail = self.trail.borrow_mut();
        let field = render(&trail.current);
        trail.unknown.push(field);
        drop(trail);
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

struct Seq<'de, I> {
    items: I,
    parent: Tracked<'de>,
}

impl<'de, I> SeqAccess<'de> for Seq<'de, I>
where
    I: Iterator<Item = (usize, &'de Value)>,
{
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        match self.items.next() {
            Some((index, value)) => self
                .parent
                .child(Segment::Index(index), value, seed)
                .map(Some),
            None => Ok(None),
        }
    }
}

struct Map<'de> {
    entries: serde_json::map::Iter<'de>,
    pending: Option<(&'de str, &'de Value)>,
    parent: Tracked<'de>,
}

impl<'de> MapAccess<'de> for Map<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.pending = Some((key.as_str(), value));
                seed.deserialize(BorrowedStrDeserializer::new(key.as_str()))
                    .map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| de::Error::custom("a map value was asked for before its key"))?;
        self.parent
            .child(Segment::Field(key.to_string()), value, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn problems(value: Value) -> Vec<Problem> {
        match decode::<Pod>(&value) {
            Ok((_, problems)) => problems,
            Err(problems) => problems,
        }
    }

    #[test]
    fn unknown_fields_are_reported_at_their_path() {
        let found = problems(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "lables": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolcy": "Always"}]}
        }));
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["metadata.lables", "spec.containers[0].imagePullPolcy"]
        );
        assert!(found.iter().all(|p| p.message == "unknown field"));
    }

    #[test]
    fn type_errors_name_their_field() {
        let found = problems(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": "http"}]}]}
        }));
        assert_eq!(
            found,
            [Problem::new(
                "spec.containers[0].ports[0].containerPort",
                "invalid type: string \"http\", expected i32"
            )]
        );
    }

    #[test]
    fn missing_required_fields_name_the_field() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
        // Most k8s-openapi types decode a missing required field as its default, which
        // validation then rejects; the few that refuse are reported at the missing field.
        let value = json!({"type": "Ready", "status": "True", "reason": "R", "message": ""});
        let found = match decode::<Condition>(&value) {
            Ok((_, problems)) | Err(problems) => problems,
        };
        assert_eq!(
            found,
            [Problem::new("lastTransitionTime", "required value")]
        );
    }

    #[test]
    fn explicit_nulls_are_not_unknown() {
        let found = problems(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "resources": {}}]},
            "status": {}
        }));
        assert_eq!(found, []);
    }

    #[test]
    fn quantities_and_int_or_strings_accept_numbers_and_strings() {
        let value = json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{
                "name": "c",
                "resources": {"limits": {"cpu": 1, "memory": "64Mi"}},
                "livenessProbe": {"httpGet": {"port": "http"}},
                "readinessProbe": {"tcpSocket": {"port": 8080}}
            }]}
        });
        let (pod, found) = decode::<Pod>(&value).expect("decodes");
        assert_eq!(found, []);
        let container = &pod.spec.expect("spec").containers[0];
        let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
        assert_eq!(
            limits.and_then(|l| l.get("cpu")).map(|q| q.0.as_str()),
            Some("1")
        );
    }
}
