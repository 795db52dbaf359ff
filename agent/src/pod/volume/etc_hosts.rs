//! The pod's `/etc/hosts` (kubelet's `ensureHostsFile`): `<pod_dir>/etc-hosts`, written before
//! each container is created and mounted read-write at `/etc/hosts`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::HostAlias;

use super::layout::{at, ensure_mode, etc_hosts_file, IoFailure};

/// Where containers see the file, and where the node's own is.
pub const ETC_HOSTS_PATH: &str = "/etc/hosts";

const MANAGED_HEADER: &str = "# Kubernetes-managed hosts file.\n";
const HOST_NETWORK_HEADER: &str = "# Kubernetes-managed hosts file (host network).\n";
const FILE_MODE: u32 = 0o644;

/// What the file is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostsSource {
    /// A pod with its own network: localhost, the ip6 names, the pod's IPs with its name.
    Managed {
        /// The short hostname (`spec.hostname` or the pod's name).
        hostname: String,
        /// `<subdomain>.<namespace>.svc.<clusterDomain>`, or empty without `spec.subdomain`.
        domain: String,
    },
    /// A host-network pod: a copy of the node's file.
    Node { file: PathBuf },
}

/// kubelet's content for a pod with its own network namespace.
pub(crate) fn managed_content(
    pod_ips: &[String],
    hostname: &str,
    domain: &str,
    aliases: &[HostAlias],
) -> String {
    let mut out = String::from(MANAGED_HEADER);
    out.push_str("127.0.0.1\tlocalhost\n");
    out.push_str("::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str("fe00::0\tip6-localnet\n");
    out.push_str("fe00::0\tip6-mcastprefix\n");
    out.push_str("fe00::1\tip6-allnodes\n");
    out.push_str("fe00::2\tip6-allrouters\n");
    for ip in pod_ips {
        if domain.is_empty() {
            out.push_str(&format!("{ip}\t{hostname}\n"));
        } else {
            out.push_str(&format!("{ip}\t{hostname}.{domain}\t{hostname}\n"));
        }
    }
    out.push_str(&alias_entries(aliases));
    out
}

/// kubelet's content for a host-network pod: the node's file under a header, then the
/// aliases.
pub(crate) fn node_content(node_file: &[u8], aliases: &[HostAlias]) -> Vec<u8> {
    let mut out = HOST_NETWORK_HEADER.as_bytes().to_vec();
    out.extend_from_slice(node_file);
    out.extend_from_slice(alias_entries(aliases).as_bytes());
    out
}

/// `hostAliases`, one line per IP with its names tab-separated, after a blank line and a
/// comment; nothing without aliases.
fn alias_entries(aliases: &[HostAlias]) -> String {
    if aliases.is_empty() {
        return String::new();
    }
    let mut out = String::from("\n# Entries added by HostAliases.\n");
    for alias in aliases {
        let names = alias.hostnames.as_deref().unwrap_or_default().join("\t");
        out.push_str(&format!("{}\t{names}\n", alias.ip));
    }
    out
}

/// Writes the pod's file and returns its path. The file is rewritten in place (same inode),
/// as running containers bind-mount it, and only when its content changes.
pub(crate) fn ensure(
    pod_dir: &Path,
    source: &HostsSource,
    pod_ips: &[String],
    aliases: &[HostAlias],
) -> Result<PathBuf, IoFailure> {
    let content = match source {
        HostsSource::Managed { hostname, domain } => {
            managed_content(pod_ips, hostname, domain, aliases).into_bytes()
        }
        HostsSource::Node { file } => {
            let node_file = fs::read(file).map_err(at("reading the node's hosts file", file))?;
            node_content(&node_file, aliases)
        }
    };
    let path = etc_hosts_file(pod_dir);
    let unchanged = match fs::read(&path) {
        Ok(existing) => existing == content,
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(error) => return Err(at("reading", &path)(error)),
    };
    if !unchanged {
        fs::write(&path, &content).map_err(at("writing", &path))?;
    }
    ensure_mode(&path, FILE_MODE)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(ip: &str, names: &[&str]) -> HostAlias {
        HostAlias {
            ip: ip.into(),
            hostnames: Some(names.iter().map(|n| (*n).to_owned()).collect()),
        }
    }

    const BOILERPLATE: &str = "# Kubernetes-managed hosts file.\n\
        127.0.0.1\tlocalhost\n\
        ::1\tlocalhost ip6-localhost ip6-loopback\n\
        fe00::0\tip6-localnet\n\
        fe00::0\tip6-mcastprefix\n\
        fe00::1\tip6-allnodes\n\
        fe00::2\tip6-allrouters\n";

    #[test]
    fn pod_ip_and_hostname() {
        let content = managed_content(&["10.200.0.4".into()], "nginx", "", &[]);
        assert_eq!(content, format!("{BOILERPLATE}10.200.0.4\tnginx\n"));
    }

    #[test]
    fn subdomain_dual_stack_and_aliases() {
        let content = managed_content(
            &["10.244.0.5".into(), "fd00::5".into()],
            "web-0",
            "web.default.svc.cluster.local",
            &[
                alias("127.0.0.1", &["foo.local", "bar.local"]),
                alias("10.1.2.3", &["foo.remote"]),
            ],
        );
        assert_eq!(
            content,
            format!(
                "{BOILERPLATE}\
                 10.244.0.5\tweb-0.web.default.svc.cluster.local\tweb-0\n\
                 fd00::5\tweb-0.web.default.svc.cluster.local\tweb-0\n\
                 \n\
                 # Entries added by HostAliases.\n\
                 127.0.0.1\tfoo.local\tbar.local\n\
                 10.1.2.3\tfoo.remote\n"
            )
        );
    }

    #[test]
    fn host_network_copies_the_node_file() {
        let content = node_content(b"127.0.0.1 localhost\n", &[alias("10.0.0.1", &["db"])]);
        assert_eq!(
            String::from_utf8(content).expect("UTF-8"),
            "# Kubernetes-managed hosts file (host network).\n\
             127.0.0.1 localhost\n\
             \n\
             # Entries added by HostAliases.\n\
             10.0.0.1\tdb\n"
        );
    }

    #[test]
    fn rewrites_in_place_only_when_changed() {
        use std::os::unix::fs::MetadataExt;

        let dir = tempfile::tempdir().expect("tempdir");
        let source = HostsSource::Managed {
            hostname: "web".into(),
            domain: String::new(),
        };
        let path = ensure(dir.path(), &source, &["10.0.0.2".into()], &[]).expect("writes");
        assert_eq!(path, dir.path().join("etc-hosts"));
        assert_eq!(fs::metadata(&path).expect("exists").mode() & 0o7777, 0o644);
        let inode = fs::metadata(&path).expect("exists").ino();
        let modified = fs::metadata(&path)
            .expect("exists")
            .modified()
            .expect("mtime");

        ensure(dir.path(), &source, &["10.0.0.2".into()], &[]).expect("checks");
        let again = fs::metadata(&path).expect("exists");
        assert_eq!(
            again.modified().expect("mtime"),
            modified,
            "nothing written"
        );

        ensure(dir.path(), &source, &["10.0.0.3".into()], &[]).expect("writes");
        let changed = fs::metadata(&path).expect("exists");
        assert_eq!(
            changed.ino(),
            inode,
            "same inode: bind mounts see the change"
        );
        assert!(fs::read_to_string(&path)
            .expect("reads")
            .ends_with("10.0.0.3\tweb\n"));
    }
}
