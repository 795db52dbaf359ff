//! Registry credentials from a pod's `imagePullSecrets` (kubelet's
//! `credentialprovider/secrets.MakeDockerKeyring` and `BasicDockerKeyring`): the `auths` of
//! `kubernetes.io/dockerconfigjson` secrets and the entries of `kubernetes.io/dockercfg`
//! ones, matched against the image's registry as kubelet's keyring matches them, and
//! handed to PullImage one after the other until one works.

use std::collections::BTreeMap;
use std::fmt;

use bosun_cri::api::AuthConfig;
use bosun_cri::CriError;
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde::Deserialize;

use crate::runtime::Runtime;
use crate::store::ObjectGetter;

/// The event kubelet records when some pull secrets cannot be read.
pub const FAILED_TO_RETRIEVE_IMAGE_PULL_SECRET: &str = "FailedToRetrieveImagePullSecret";

/// The docker config entry of Docker Hub, which kubelet uses for Docker Hub images when
/// nothing else matches.
const DEFAULT_REGISTRY: &str = "index.docker.io";

/// A pull secret whose docker config cannot be read. The pull fails until it is fixed, as
/// with kubelet.
#[derive(Debug, thiserror::Error)]
#[error("image pull secret \"{namespace}/{name}\": data[{key}]: {reason}")]
pub struct PullSecretError {
    pub namespace: String,
    pub name: String,
    pub key: &'static str,
    pub reason: String,
}

/// Why PullImage failed: the pull secrets, or the runtime with every credential tried.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Secret(#[from] PullSecretError),
    #[error("{}", Aggregate(.0))]
    Runtime(Vec<CriError>),
}

/// Several errors as Kubernetes' `utilerrors.NewAggregate` prints them: one alone, else
/// `[a, b]`.
struct Aggregate<'a>(&'a [CriError]);

impl fmt::Display for Aggregate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "{one}"),
            all => {
                let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
                write!(f, "[{}]", shown.join(", "))
            }
        }
    }
}

/// A `.dockercfg` entry, or one of a `.dockerconfigjson`'s `auths`.
#[derive(Debug, Default, Deserialize)]
struct DockerConfigEntry {
    username: Option<String>,
    password: Option<String>,
    /// `base64(username:password)`, which overrides both.
    auth: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerConfigEntry>,
}

/// Credentials by registry key (`host[:port][/path]`), as kubelet's `BasicDockerKeyring`.
#[derive(Debug, Default)]
pub struct Keyring {
    creds: BTreeMap<String, Vec<AuthConfig>>,
}

impl Keyring {
    /// The keyring of `secrets`. Secrets of other types, or without their key, add nothing.
    pub fn from_secrets<'a>(
        secrets: impl IntoIterator<Item = &'a Secret>,
    ) -> Result<Keyring, PullSecretError> {
        let mut keyring = Keyring::default();
        for secret in secrets {
            keyring.add_secret(secret)?;
        }
        Ok(keyring)
    }

    fn add_secret(&mut self, secret: &Secret) -> Result<(), PullSecretError> {
        let (key, json) = match secret.type_.as_deref() {
            Some("kubernetes.io/dockerconfigjson") => (".dockerconfigjson", true),
            Some("kubernetes.io/dockercfg") => (".dockercfg", false),
            _ => return Ok(()),
        };
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.as_slice())
            .or_else(|| {
                let text = secret.string_data.as_ref()?.get(key)?;
                Some(text.as_bytes())
            })
            .filter(|d| !d.is_empty());
        let Some(data) = data else {
            return Ok(());
        };
        let invalid = |reason: String| PullSecretError {
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            name: secret.metadata.name.clone().unwrap_or_default(),
            key,
            reason,
        };
        let entries = if json {
            serde_json::from_slice::<DockerConfigJson>(data).map(|c| c.auths)
        } else {
            serde_json::from_slice(data)
        }
        .map_err(|e| invalid(e.to_string()))?;
        for (location, entry) in entries {
            let auth = credentials(&entry)
                .map_err(|reason| invalid(format!("{location}: auth: {reason}")))?;
            self.creds
                .entry(registry_key(&location))
                .or_default()
                .push(auth);
        }
        Ok(())
    }

    /// The credentials to try for `image`, in kubelet's order: those of every key that
    /// matches the image's repository, the most specific key first; else, for a Docker Hub
    /// image, those of Docker Hub's legacy entry.
    pub fn lookup(&self, image: &str) -> Vec<AuthConfig> {
        let repository = repository(image);
        let found: Vec<AuthConfig> = self
            .creds
            .iter()
            .rev()
            .filter(|(key, _)| url_matches(key, &repository))
            .flat_map(|(_, creds)| creds.iter().cloned())
            .collect();
        if found.is_empty() && is_default_registry(&repository) {
            return self
                .creds
                .get(DEFAULT_REGISTRY)
                .cloned()
                .unwrap_or_default();
        }
        found
    }
}

/// What `pod`'s pull secrets offer for `image` (kubelet's `getPullSecretsForPod`, then its
/// keyring's lookup), and the names of those that could not be read: kubelet goes on
/// without them, and so does bosun.
pub fn credentials_for(
    pod: &Pod,
    image: &str,
    objects: &dyn ObjectGetter,
) -> (Result<Vec<AuthConfig>, PullSecretError>, Vec<String>) {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut secrets = Vec::new();
    let mut missing = Vec::new();
    let names = pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten())
        .map(|r| r.name.as_str())
        .filter(|name| !name.is_empty());
    for name in names {
        match objects.secret(namespace, name) {
            Some(secret) => secrets.push(secret),
            None => missing.push(name.to_owned()),
        }
    }
    let found = Keyring::from_secrets(secrets.iter().map(|s| &**s)).map(|k| k.lookup(image));
    (found, missing)
}

/// Pulls `image` with the credentials of `pod`'s pull secrets; also returns the names of
/// those that could not be read.
pub async fn pull<R: Runtime>(
    runtime: &R,
    pod: &Pod,
    image: &str,
    objects: &dyn ObjectGetter,
) -> (Result<String, PullError>, Vec<String>) {
    let (credentials, missing) = credentials_for(pod, image, objects);
    let result = match credentials {
        Ok(credentials) => try_in_turn(credentials, |auth| runtime.pull_image(image, auth)).await,
        Err(e) => Err(e.into()),
    };
    (result, missing)
}

/// `pull` with each credential in turn until one works, or once without any when there
/// are none (kubelet's `PullImage`); every attempt's error otherwise.
async fn try_in_turn<F, Fut>(credentials: Vec<AuthConfig>, mut pull: F) -> Result<String, PullError>
where
    F: FnMut(Option<AuthConfig>) -> Fut,
    Fut: std::future::Future<Output = Result<String, CriError>>,
{
    let attempts: Vec<Option<AuthConfig>> = if credentials.is_empty() {
        vec![None]
    } else {
        credentials.into_iter().map(Some).collect()
    };
    let mut errors = Vec::new();
    for auth in attempts {
        match pull(auth).await {
            Ok(image_ref) => return Ok(image_ref),
            Err(e) => errors.push(e),
        }
    }
    Err(PullError::Runtime(errors))
}

/// The credentials of a docker config entry: `auth` when set, else username and password.
fn credentials(entry: &DockerConfigEntry) -> Result<AuthConfig, &'static str> {
    let (username, password) = match entry.auth.as_deref().filter(|a| !a.is_empty()) {
        Some(auth) => {
            let decoded = decode_base64(auth).ok_or("not valid base64")?;
            let decoded = String::from_utf8(decoded).map_err(|_| "not valid UTF-8")?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or("must be formatted as base64(username:password)")?;
            (username.to_owned(), password.to_owned())
        }
        None => (
            entry.username.clone().unwrap_or_default(),
            entry.password.clone().unwrap_or_default(),
        ),
    };
    Ok(AuthConfig {
        username,
        password,
        ..AuthConfig::default()
    })
}

/// Standard base64, padded or not, as kubelet accepts the `auth` field.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let data = text.trim_end_matches('=');
    let padded = data.len() != text.len();
    if data.len() % 4 == 1
        || text.len() - data.len() > 2
        || (padded && !text.len().is_multiple_of(4))
    {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let (mut bits, mut held) = (0u32, 0u32);
    for byte in data.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
            bits &= (1 << held) - 1;
        }
    }
    Some(out)
}

/// The key of a docker config location (kubelet's `BasicDockerKeyring.Add`): without its
/// scheme, and without a `/v1/` or `/v2/` API path, so that `https://index.docker.io/v1/`
/// is `index.docker.io`.
fn registry_key(location: &str) -> String {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = match path {
        p if p.starts_with("/v1/") || p.starts_with("/v2/") => &p[3..],
        p => p,
    };
    if path.is_empty() || path == "/" {
        host.to_owned()
    } else {
        format!("{host}{path}")
    }
}

/// The repository of an image as kubelet looks it up (`parsers.ParseImageName`, which
/// normalizes as Docker does): with its registry, without tag or digest, Docker Hub's
/// spelt `docker.io` and its official images under `library/`.
fn repository(image: &str) -> String {
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let name = match name[last_slash..].find(':') {
        Some(colon) => &name[..last_slash + colon],
        None => name,
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, path))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first, path)
        }
        _ => ("docker.io", name),
    };
    let domain = if domain == DEFAULT_REGISTRY {
        "docker.io"
    } else {
        domain
    };
    if domain == "docker.io" && !path.contains('/') {
        format!("docker.io/library/{path}")
    } else {
        format!("{domain}/{path}")
    }
}

/// Whether a repository is pulled from Docker Hub (kubelet's `isDefaultRegistryMatch`).
fn is_default_registry(repository: &str) -> bool {
    match repository.split_once('/') {
        None => !repository.is_empty(),
        Some(("", _)) => false,
        Some((first, _)) => {
            first == "docker.io"
                || first == DEFAULT_REGISTRY
                || (!first.contains(['.', ':']) && first != "localhost")
        }
    }
}

/// Whether the keyring key `glob` matches `target` (kubelet's `URLsMatchStr`): the same
/// port, as many host labels each matching its glob (`*.example.com`), and the key's path
/// a prefix of the target's.
fn url_matches(glob: &str, target: &str) -> bool {
    let (glob_host, glob_path) = split_host(glob);
    let (target_host, target_path) = split_host(target);
    let (glob_host, glob_port) = split_port(glob_host);
    let (target_host, target_port) = split_port(target_host);
    if glob_port != target_port || !target_path.starts_with(glob_path) {
        return false;
    }
    let globs: Vec<&str> = glob_host.split('.').collect();
    let labels: Vec<&str> = target_host.split('.').collect();
    globs.len() == labels.len() && globs.iter().zip(&labels).all(|(g, l)| glob_match(g, l))
}

/// `host[:port]` and `/path` of a schemeless URL.
fn split_host(url: &str) -> (&str, &str) {
    url.split_at(url.find('/').unwrap_or(url.len()))
}

/// Host and port, as Go's `net.SplitHostPort` with the whole as the host when it fails.
fn split_port(host: &str) -> (&str, &str) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((address, port)) = rest.split_once("]:") {
            return (address, port);
        }
        return (host, "");
    }
    match host.split_once(':') {
        Some((name, port)) if !port.contains(':') => (name, port),
        _ => (host, ""),
    }
}

/// Go's `filepath.Match` for one host label: `*` any run of characters, `?` any one.
/// Character classes (`[a-z]`) are not supported: a pattern with one never matches.
fn glob_match(pattern: &str, text: &str) -> bool {
    if pattern.contains(['[', '\\']) {
        return false;
    }
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == '?' || *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::ByteString;

    fn secret(name: &str, type_: &str, key: &str, value: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                namespace: Some("default".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(BTreeMap::from([(
                key.to_owned(),
                ByteString(value.as_bytes().to_vec()),
            )])),
            ..Default::default()
        }
    }

    fn config_json(auths: &str) -> Secret {
        let value = format!("{{\"auths\": {{{auths}}}}}");
        secret(
            "pull",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            &value,
        )
    }

    fn users(keyring: &Keyring, image: &str) -> Vec<String> {
        keyring
            .lookup(image)
            .into_iter()
            .map(|a| format!("{}:{}", a.username, a.password))
            .collect()
    }

    #[test]
    fn auth_is_base64_of_user_and_password_and_wins_over_them() {
        // "alice:s3cr:et" padded, and "bob:pw" unpadded.
        let keyring = Keyring::from_secrets([&config_json(
            r#""a.example.com": {"auth": "YWxpY2U6czNjcjpldA==", "username": "x", "password": "y"},
               "b.example.com": {"auth": "Ym9iOnB3"},
               "c.example.com": {"username": "carol", "password": "pw", "email": "c@example.com"}"#,
        )])
        .expect("valid");
        assert_eq!(users(&keyring, "a.example.com/app"), ["alice:s3cr:et"]);
        assert_eq!(users(&keyring, "b.example.com/app:1"), ["bob:pw"]);
        assert_eq!(users(&keyring, "c.example.com/app@sha256:00"), ["carol:pw"]);
        assert!(users(&keyring, "d.example.com/app").is_empty());
    }

    #[test]
    fn dockercfg_secrets_and_other_types() {
        let cfg = secret(
            "old",
            "kubernetes.io/dockercfg",
            ".dockercfg",
            r#"{"https://registry.example.com/v1/": {"auth": "b2xkOnB3"}}"#,
        );
        let opaque = secret("other", "Opaque", ".dockercfg", "not even json");
        let keyring = Keyring::from_secrets([&cfg, &opaque]).expect("valid");
        assert_eq!(users(&keyring, "registry.example.com/team/app"), ["old:pw"]);
    }

    #[test]
    fn an_invalid_secret_is_named_in_the_error() {
        let broken = secret(
            "pull",
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            "{",
        );
        let error = Keyring::from_secrets([&broken])
            .expect_err("invalid")
            .to_string();
        assert!(
            error.starts_with("image pull secret \"default/pull\": data[.dockerconfigjson]: "),
            "{error}"
        );
        let bad_auth = config_json(r#""r.example.com": {"auth": "bm9jb2xvbg=="}"#);
        let error = Keyring::from_secrets([&bad_auth])
            .expect_err("invalid")
            .to_string();
        assert!(
            error.ends_with("r.example.com: auth: must be formatted as base64(username:password)"),
            "{error}"
        );
    }

    #[test]
    fn keys_match_by_host_port_path_prefix_and_wildcards() {
        let keyring = Keyring::from_secrets([&config_json(
            r#""quay.io": {"username": "host", "password": ""},
               "quay.io/coreos": {"username": "path", "password": ""},
               "*.gcr.io": {"username": "wild", "password": ""},
               "registry.example.com:5000": {"username": "port", "password": ""},
               "http://plain.example.com/v2/": {"username": "v2", "password": ""}"#,
        )])
        .expect("valid");
        // The most specific key first, then the host's.
        assert_eq!(
            users(&keyring, "quay.io/coreos/etcd:v3"),
            ["path:", "host:"]
        );
        assert_eq!(users(&keyring, "quay.io/other/app"), ["host:"]);
        assert_eq!(users(&keyring, "eu.gcr.io/project/app"), ["wild:"]);
        // A wildcard stands for one label, not several, nor none.
        assert!(users(&keyring, "a.eu.gcr.io/project/app").is_empty());
        assert!(users(&keyring, "gcr.io/project/app").is_empty());
        assert_eq!(users(&keyring, "registry.example.com:5000/app"), ["port:"]);
        assert!(users(&keyring, "registry.example.com/app").is_empty());
        assert_eq!(users(&keyring, "plain.example.com/app"), ["v2:"]);
    }

    #[test]
    fn docker_hub_images_use_its_legacy_entry_when_nothing_else_matches() {
        let hub =
            config_json(r#""https://index.docker.io/v1/": {"username": "hub", "password": ""}"#);
        let keyring = Keyring::from_secrets([&hub]).expect("valid");
        for image in [
            "busybox",
            "library/busybox:1.36",
            "docker.io/someone/tool",
            "index.docker.io/a/b",
        ] {
            assert_eq!(users(&keyring, image), ["hub:"], "{image}");
        }
        assert!(users(&keyring, "quay.io/busybox").is_empty());
        assert!(users(&keyring, "localhost/busybox").is_empty());

        // An entry for docker.io matches its images by name, and before the legacy one.
        let both = config_json(
            r#""docker.io": {"username": "new", "password": ""},
               "index.docker.io": {"username": "old", "password": ""}"#,
        );
        let keyring = Keyring::from_secrets([&both]).expect("valid");
        assert_eq!(users(&keyring, "busybox"), ["new:"]);
    }

    #[test]
    fn credentials_of_several_secrets_are_all_tried() {
        let first = config_json(r#""r.example.com": {"username": "one", "password": ""}"#);
        let second = config_json(r#""r.example.com": {"username": "two", "password": ""}"#);
        let keyring = Keyring::from_secrets([&first, &second]).expect("valid");
        assert_eq!(users(&keyring, "r.example.com/app"), ["one:", "two:"]);
    }

    #[test]
    fn repositories_are_normalized_as_docker_does() {
        let cases = [
            ("busybox", "docker.io/library/busybox"),
            ("busybox:1.36", "docker.io/library/busybox"),
            ("someone/tool@sha256:00", "docker.io/someone/tool"),
            ("index.docker.io/busybox", "docker.io/library/busybox"),
            ("localhost/app:1", "localhost/app"),
            (
                "registry.example.com:5000/a/b:2",
                "registry.example.com:5000/a/b",
            ),
            ("Registry/app", "Registry/app"),
        ];
        for (image, want) in cases {
            assert_eq!(repository(image), want, "{image}");
        }
    }

    #[test]
    fn base64_padded_or_not() {
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(decode_base64("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(decode_base64("Y"), None);
        assert_eq!(decode_base64("YQ="), None);
        assert_eq!(decode_base64("Y!=="), None);
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "eu"));
        assert!(glob_match("e?", "eu"));
        assert!(glob_match("*-docker", "europe-docker"));
        assert!(!glob_match("*-docker", "europe-dock"));
        assert!(glob_match("a*b*c", "aXbYbc"));
        assert!(!glob_match("[a-z]", "a"));
    }

    #[tokio::test]
    async fn each_credential_is_tried_in_turn_and_none_when_there_are_none() {
        let auth = |user: &str| AuthConfig {
            username: user.into(),
            ..AuthConfig::default()
        };
        let mut tried = Vec::new();
        let result = try_in_turn(vec![auth("a"), auth("b")], |auth| {
            let user = auth.map(|a| a.username);
            tried.push(user.clone());
            async move {
                match user.as_deref() {
                    Some("b") => Ok("sha256:1".to_owned()),
                    _ => Err(CriError::Unimplemented { call: "PullImage" }),
                }
            }
        })
        .await;
        assert_eq!(result.expect("b works"), "sha256:1");
        assert_eq!(tried, [Some("a".to_owned()), Some("b".to_owned())]);

        let mut tried = Vec::new();
        let result = try_in_turn(Vec::new(), |auth| {
            tried.push(auth);
            async { Err(CriError::Unimplemented { call: "PullImage" }) }
        })
        .await;
        assert_eq!(tried, [None]);
        let one = result.expect_err("fails").to_string();
        let result = try_in_turn(vec![auth("a"), auth("b")], |_| async {
            Err(CriError::Unimplemented { call: "PullImage" })
        })
        .await;
        assert_eq!(
            result.expect_err("fails").to_string(),
            format!("[{one}, {one}]")
        );
    }
}
