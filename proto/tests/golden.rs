//! Pins every message field, enum value and RPC of `runtime.v1` to a checked-in listing, so that
//! an edit to the `.proto` that changes the wire cannot go unnoticed. The listing was read line by
//! line against the upstream CRI definition when it was first written.
//!
//! After an intended change (a new upstream field, say), regenerate it with
//! `BOSUN_BLESS=1 cargo test -p bosun-proto --test golden` and review the diff.

use std::{fmt::Write as _, fs, path::Path};

use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};

const PACKAGE: &str = "runtime.v1";
const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cri_v1.golden");

#[test]
fn runtime_v1_matches_golden_listing() {
    let actual = render_package(PACKAGE);
    if std::env::var_os("BOSUN_BLESS").is_some_and(|v| v == "1") {
        fs::write(GOLDEN, &actual).expect("writing the golden listing");
        return;
    }
    let expected = fs::read_to_string(GOLDEN).expect("reading tests/cri_v1.golden");
    if actual != expected {
        let first_difference = actual
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, e))| a != e)
            .map(|(i, (a, e))| format!("line {}: got `{a}`, golden has `{e}`", i + 1))
            .unwrap_or_else(|| "one listing is a prefix of the other".to_owned());
        panic!(
            "runtime.v1 differs from {} ({first_difference}); if the change is intended, rerun \
             with BOSUN_BLESS=1 and review the diff",
            Path::new(GOLDEN).display()
        );
    }
}

/// One line per RPC, message field and enum value, in a stable order: services and RPCs as
/// declared, messages and enums by name, fields and values by number.
fn render_package(package: &str) -> String {
    let pool = bosun_proto::descriptor_pool();
    let mut out = String::new();

    for service in pool.services().filter(|s| s.package_name() == package) {
        for rpc in service.methods() {
            let stream = |yes: bool| if yes { "stream " } else { "" };
            writeln!(
                out,
                "{}.{}({}{}) returns ({}{})",
                service.name(),
                rpc.name(),
                stream(rpc.is_client_streaming()),
                relative(rpc.input().full_name(), package),
                stream(rpc.is_server_streaming()),
                relative(rpc.output().full_name(), package),
            )
            .expect("writing to a String cannot fail");
        }
    }

    let mut messages: Vec<MessageDescriptor> = pool
        .all_messages()
        .filter(|m| m.package_name() == package && !m.is_map_entry())
        .collect();
    messages.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    for message in &messages {
        let name = relative(message.full_name(), package);
        let mut fields: Vec<FieldDescriptor> = message.fields().collect();
        fields.sort_by_key(FieldDescriptor::number);
        if fields.is_empty() {
            writeln!(out, "{name} {{}}").expect("writing to a String cannot fail");
        }
        for field in fields {
            writeln!(
                out,
                "{name}.{} = {} {}",
                field.name(),
                field.number(),
                field_type(&field, package)
            )
            .expect("writing to a String cannot fail");
        }
    }

    let mut enums: Vec<_> = pool
        .all_enums()
        .filter(|e| e.package_name() == package)
        .collect();
    enums.sort_by(|a, b| a.full_name().cmp(b.full_name()));
    for enumeration in &enums {
        let name = relative(enumeration.full_name(), package);
        let mut values: Vec<_> = enumeration.values().collect();
        values.sort_by_key(|v| v.number());
        for value in values {
            writeln!(out, "{name}.{} = {}", value.name(), value.number())
                .expect("writing to a String cannot fail");
        }
    }
    out
}

fn field_type(field: &FieldDescriptor, package: &str) -> String {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            unreachable!("map fields are backed by an entry message");
        };
        return format!(
            "map<{}, {}>",
            kind_name(&entry.map_entry_key_field().kind(), package),
            kind_name(&entry.map_entry_value_field().kind(), package)
        );
    }
    let kind = kind_name(&field.kind(), package);
    match field.cardinality() {
        Cardinality::Repeated if field.is_packed() => format!("repeated {kind} [packed]"),
        Cardinality::Repeated => format!("repeated {kind}"),
        Cardinality::Optional if field.field_descriptor_proto().proto3_optional() => {
            format!("optional {kind}")
        }
        Cardinality::Optional | Cardinality::Required => kind,
    }
}

fn kind_name(kind: &Kind, package: &str) -> String {
    match kind {
        Kind::Double => "double".into(),
        Kind::Float => "float".into(),
        Kind::Int32 => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Uint32 => "uint32".into(),
        Kind::Uint64 => "uint64".into(),
        Kind::Sint32 => "sint32".into(),
        Kind::Sint64 => "sint64".into(),
        Kind::Fixed32 => "fixed32".into(),
        Kind::Fixed64 => "fixed64".into(),
        Kind::Sfixed32 => "sfixed32".into(),
        Kind::Sfixed64 => "sfixed64".into(),
        Kind::Bool => "bool".into(),
        Kind::String => "string".into(),
        Kind::Bytes => "bytes".into(),
        Kind::Message(m) => relative(m.full_name(), package).into(),
        Kind::Enum(e) => relative(e.full_name(), package).into(),
    }
}

fn relative<'a>(full_name: &'a str, package: &str) -> &'a str {
    full_name
        .strip_prefix(package)
        .and_then(|rest| rest.strip_prefix('.'))
        .unwrap_or(full_name)
}
