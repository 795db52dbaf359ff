//! Image references as container runtimes normalise them: `busybox` is
//! `docker.io/library/busybox:latest`.

/// Normalises an image reference the way containerd's CRI does: a name with no registry
/// domain gets `docker.io` (and `library/` when it has a single path component), and a name
/// with neither tag nor digest gets `:latest`.
pub fn normalize(reference: &str) -> String {
    let (name, suffix) = split_suffix(reference);
    let name = match name.split_once('/') {
        None => format!("docker.io/library/{name}"),
        Some((first, _)) if is_domain(first) => name.to_owned(),
        Some(_) => format!("docker.io/{name}"),
    };
    match suffix {
        Some(suffix) => format!("{name}{suffix}"),
        None => format!("{name}:latest"),
    }
}

/// Whether a reference carries an explicit tag or digest.
pub fn has_tag_or_digest(reference: &str) -> bool {
    split_suffix(reference).1.is_some()
}

/// Splits `name[:tag][@digest]` into the name and the `:tag`/`@digest` suffix, if any.
fn split_suffix(reference: &str) -> (&str, Option<&str>) {
    if let Some(at) = reference.find('@') {
        return (&reference[..at], Some(&reference[at..]));
    }
    // A ':' after the last '/' starts the tag; one before it is a registry port.
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].find(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (&reference[..at], Some(&reference[at..]))
        }
        None => (reference, None),
    }
}

fn is_domain(component: &str) -> bool {
    component == "localhost" || component.contains('.') || component.contains(':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_containerd() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("someone/tool:v2", "docker.io/someone/tool:v2"),
            ("localhost/bosun/pause:1", "localhost/bosun/pause:1"),
            ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
            ("myreg:5000/app", "myreg:5000/app:latest"),
            (
                "busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "docker.io/library/busybox@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), want, "{input}");
        }
        assert!(has_tag_or_digest("a/b:c"));
        assert!(!has_tag_or_digest("myreg:5000/app"));
    }
}
