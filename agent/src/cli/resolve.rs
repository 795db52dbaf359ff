//! Resolving what a user typed (an ID or a unique prefix of one) to a full ID, as crictl and
//! docker do.

use anyhow::{bail, Result};
use bosun_cri::CriClient;

/// The single ID in `ids` that equals or starts with `prefix`. A `sha256:` in front of an
/// ID or of the prefix is not needed to match (image IDs carry it, users often leave it out).
pub fn unique_prefix<'a>(
    kind: &str,
    prefix: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<String> {
    let bare = |s: &'a str| s.strip_prefix("sha256:").unwrap_or(s);
    let wanted = prefix.strip_prefix("sha256:").unwrap_or(prefix);
    if wanted.is_empty() {
        bail!("{kind} ID must not be empty");
    }
    let mut found: Vec<&str> = Vec::new();
    for id in ids {
        if bare(id) == wanted {
            return Ok(id.to_owned());
        }
        if bare(id).starts_with(wanted) {
            found.push(id);
        }
    }
    match found.as_slice() {
        [one] => Ok((*one).to_owned()),
        [] => bail!("{kind} {prefix:?} not found"),
        many => bail!(
            "{kind} ID prefix {prefix:?} is ambiguous: it matches {}",
            many.join(", ")
        ),
    }
}

/// A container ID from an ID or unique prefix.
pub async fn container(client: &CriClient, prefix: &str) -> Result<String> {
    let containers = client.list_containers(None).await?;
    unique_prefix(
        "container",
        prefix,
        containers.iter().map(|c| c.id.as_str()),
    )
}

/// A pod sandbox ID from an ID or unique prefix.
pub async fn pod(client: &CriClient, prefix: &str) -> Result<String> {
    let pods = client.list_pod_sandbox(None).await?;
    unique_prefix("pod sandbox", prefix, pods.iter().map(|p| p.id.as_str()))
}

/// An image ID from an ID, a unique ID prefix, or a reference (`busybox:1`,
/// `docker.io/library/busybox:1`, `repo@sha256:…`).
pub async fn image(client: &CriClient, name: &str) -> Result<String> {
    if let Some(status) = client.image_status(name, false).await? {
        if let Some(image) = status.image {
            return Ok(image.id);
        }
    }
    let images = client.list_images(None).await?;
    unique_prefix("image", name, images.iter().map(|i| i.id.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_resolve_to_one_id() {
        let ids = ["abc123", "abd456", "f00"];
        assert_eq!(unique_prefix("container", "abc", ids).unwrap(), "abc123");
        assert_eq!(unique_prefix("container", "f00", ids).unwrap(), "f00");
        let err = unique_prefix("container", "ab", ids)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ambiguous") && err.contains("abc123") && err.contains("abd456"),
            "{err}"
        );
        let err = unique_prefix("container", "zzz", ids)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "container \"zzz\" not found");
        assert!(unique_prefix("container", "", ids).is_err());
    }

    #[test]
    fn image_ids_match_with_or_without_their_algorithm() {
        let ids = ["sha256:abc123", "sha256:def456"];
        assert_eq!(unique_prefix("image", "abc", ids).unwrap(), "sha256:abc123");
        assert_eq!(
            unique_prefix("image", "sha256:def", ids).unwrap(),
            "sha256:def456"
        );
        assert!(unique_prefix("image", "sha256:", ids).is_err());
    }

    #[test]
    fn an_exact_id_wins_over_longer_ones() {
        let ids = ["abc", "abcdef"];
        assert_eq!(unique_prefix("pod sandbox", "abc", ids).unwrap(), "abc");
    }
}
