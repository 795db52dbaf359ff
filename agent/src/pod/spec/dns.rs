//! A pod's resolver configuration and hostname, as kubelet's `pkg/kubelet/network/dns` and
//! `GeneratePodHostNameAndDomain` compute them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bosun_cri::api;
use k8s_openapi::api::core::v1::Pod;

use super::{NodeContext, SpecError};

/// Options every ClusterFirst pod gets.
const CLUSTER_FIRST_OPTIONS: [&str; 1] = ["ndots:5"];
/// At most this many nameservers reach a pod (`validation.MaxDNSNameservers`).
const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (`validation.MaxDNSSearchPaths`).
const MAX_SEARCH_PATHS: usize = 32;
/// At most this many characters in the search line (`validation.MaxDNSSearchListChars`).
const MAX_SEARCH_LINE_CHARS: usize = 2048;
/// Longer search domains crash some resolvers (glibc 2.28) and are dropped.
const MAX_SEARCH_DOMAIN_CHARS: usize = 253;
/// kubelet reads at most this much of a resolv.conf.
const MAX_RESOLV_CONF_BYTES: u64 = 10 << 20;
/// The kernel's nodename holds 64 bytes with its terminating NUL.
const MAX_HOSTNAME_CHARS: usize = 63;
const MAX_FQDN_CHARS: usize = 64;

/// The host's resolver configuration, the base of every pod's DNS config (kubelet's
/// `resolvConf` setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostDns {
    /// The parsed host resolv.conf.
    ResolvConf(ResolvConf),
    /// kubelet's `resolvConf: ""`: no host file. Pods that would use the host's DNS get the
    /// node's own loopback address and the search path `.`, which in effect disables lookups.
    Loopback,
}

impl Default for HostDns {
    /// An empty resolv.conf.
    fn default() -> Self {
        Self::ResolvConf(ResolvConf::default())
    }
}

impl HostDns {
    /// Loads kubelet's `resolvConf` setting: the file at `path`, or [`HostDns::Loopback`] for
    /// an empty path.
    pub fn load(path: &Path) -> Result<Self, ResolvConfError> {
        if path.as_os_str().is_empty() {
            return Ok(Self::Loopback);
        }
        ResolvConf::load(path).map(Self::ResolvConf)
    }
}

/// What a resolv.conf says, read as kubelet reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// A host resolv.conf that cannot be read or used. Retry after fixing the file.
#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_RESOLV_CONF_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("line {line}: nameserver without an address")]
    EmptyNameserver { line: usize },
}

impl ResolvConf {
    /// Parses resolv.conf text: `nameserver` lines accumulate (first address of each line),
    /// the last `search` line wins (trailing dots dropped, `.` skipped), `options` lines merge
    /// with a later option replacing an earlier one of the same name.
    pub fn parse(text: &str) -> Result<Self, ResolvConfError> {
        let mut conf = Self::default();
        for (index, line) in text.split('\n').enumerate() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            match fields.next() {
                Some("nameserver") => match fields.next() {
                    Some(address) => conf.nameservers.push(address.to_owned()),
                    None => return Err(ResolvConfError::EmptyNameserver { line: index + 1 }),
                },
                Some("search") => {
                    conf.searches = fields
                        .filter(|domain| *domain != ".")
                        .map(|domain| domain.strip_suffix('.').unwrap_or(domain).to_owned())
                        .collect();
                }
                Some("options") => {
                    for option in fields {
                        set_option(&mut conf.options, option_name(option), option.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(conf)
    }

    /// Reads and parses a resolv.conf file.
    pub fn load(path: &Path) -> Result<Self, ResolvConfError> {
        let read = |source| ResolvConfError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_RESOLV_CONF_BYTES {
            return Err(ResolvConfError::TooLarge {
                path: path.to_owned(),
            });
        }
        Self::parse(&std::fs::read_to_string(path).map_err(read)?)
    }
}

fn option_name(option: &str) -> &str {
    option.split(':').next().unwrap_or(option)
}

/// Sets `option` in place of any of the same name, else appends it. kubelet merges through a
/// Go map, so its order is random; keeping first-seen order is one of its possible outputs.
fn set_option(options: &mut Vec<String>, name: &str, option: String) {
    match options.iter_mut().find(|o| option_name(o) == name) {
        Some(existing) => *existing = option,
        None => options.push(option),
    }
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// Which base a pod's DNS config starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodDnsType {
    Cluster,
    Host,
    None,
}

fn pod_dns_type(pod: &Pod) -> Result<PodDnsType, SpecError> {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    Ok(match policy {
        "None" => PodDnsType::None,
        "ClusterFirstWithHostNet" => PodDnsType::Cluster,
        // A host-network pod cannot reach cluster DNS through ClusterFirst's usual path.
        "ClusterFirst" if host_network => PodDnsType::Host,
        "ClusterFirst" => PodDnsType::Cluster,
        "Default" => PodDnsType::Host,
        other => {
            return Err(SpecError::Invalid {
                path: "spec.dnsPolicy".into(),
                value: other.to_owned(),
                reason: "must be ClusterFirst, ClusterFirstWithHostNet, Default or None".into(),
            })
        }
    })
}

/// The pod's resolver configuration (kubelet's `GetPodDNS`):
/// - ClusterFirst (and ClusterFirstWithHostNet): the cluster DNS servers only, the searches
///   `<ns>.svc.<domain> svc.<domain> <domain>` then the host's, and `ndots:5`. Without
///   cluster DNS servers it falls back to Default, and a host-network pod with plain
///   ClusterFirst uses Default too.
/// - Default: the host's resolv.conf.
/// - None: nothing but `spec.dnsConfig`.
///
/// `spec.dnsConfig` is then merged in (servers and searches appended without duplicates,
/// options replacing those of the same name) and the result cut to kubelet's limits: 3
/// servers, 32 search domains of at most 253 characters, a 2048-character search line.
pub fn pod_dns_config(pod: &Pod, ctx: &NodeContext) -> Result<api::DnsConfig, SpecError> {
    let namespace = super::required(pod.metadata.namespace.as_deref(), "metadata.namespace")?;
    let host = match &ctx.resolv_conf {
        HostDns::ResolvConf(conf) => conf.clone(),
        HostDns::Loopback => ResolvConf::default(),
    };
    let mut dns = api::DnsConfig {
        servers: host.nameservers,
        searches: host.searches,
        options: host.options,
    };
    let mut dns_type = pod_dns_type(pod)?;
    if dns_type == PodDnsType::Cluster && ctx.cluster_dns.is_empty() {
        dns_type = PodDnsType::Host;
    }
    match dns_type {
        PodDnsType::None => dns = api::DnsConfig::default(),
        PodDnsType::Cluster => {
            dns.servers = ctx.cluster_dns.clone();
            if !ctx.cluster_domain.is_empty() {
                let domain = &ctx.cluster_domain;
                let mut searches = vec![
                    format!("{namespace}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ];
                push_unique(&mut searches, std::mem::take(&mut dns.searches));
                dns.searches = searches;
            }
            dns.options = CLUSTER_FIRST_OPTIONS.map(str::to_owned).to_vec();
        }
        PodDnsType::Host => {
            if ctx.resolv_conf == HostDns::Loopback {
                let v6 = ctx.host_ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv6());
                dns.servers = vec![if v6 { "::1" } else { "127.0.0.1" }.to_owned()];
                dns.searches = vec![".".to_owned()];
            }
        }
    }
    if let Some(config) = pod.spec.as_ref().and_then(|s| s.dns_config.as_ref()) {
        let mut servers = Vec::new();
        push_unique(&mut servers, std::mem::take(&mut dns.servers));
        push_unique(&mut servers, config.nameservers.iter().flatten().cloned());
        dns.servers = servers;
        let mut searches = Vec::new();
        push_unique(&mut searches, std::mem::take(&mut dns.searches));
        push_unique(&mut searches, config.searches.iter().flatten().cloned());
        dns.searches = searches;
        let mut options = Vec::new();
        for option in std::mem::take(&mut dns.options) {
            let name = option_name(&option).to_owned();
            set_option(&mut options, &name, option);
        }
        for option in config.options.iter().flatten() {
            let name = option.name.clone().unwrap_or_default();
            let rendered = match option.value.as_deref() {
                Some(value) if !value.is_empty() => format!("{name}:{value}"),
                _ => name.clone(),
            };
            set_option(&mut options, &name, rendered);
        }
        dns.options = options;
    }
    dns.servers.truncate(MAX_NAMESERVERS);
    dns.searches = fit_search_limits(dns.searches);
    Ok(dns)
}

fn fit_search_limits(mut searches: Vec<String>) -> Vec<String> {
    searches.truncate(MAX_SEARCH_PATHS);
    searches.retain(|domain| domain.len() <= MAX_SEARCH_DOMAIN_CHARS);
    let line_len = |list: &[String]| list.iter().map(|d| d.len() + 1).sum::<usize>().max(1) - 1;
    while line_len(&searches) > MAX_SEARCH_LINE_CHARS {
        searches.pop();
    }
    searches
}

/// The hostname the sandbox's UTS namespace gets (kubelet's `GeneratePodHostNameAndDomain`
/// then `GetNodenameForKernel`): `spec.hostname` or the pod's name, cut to 63 characters
/// without a trailing `-` or `.`; with `setHostnameAsFQDN` and a `spec.subdomain`, the
/// fully-qualified `<hostname>.<subdomain>.<ns>.svc.<clusterDomain>`, at most 64 characters.
pub fn pod_hostname(pod: &Pod, ctx: &NodeContext) -> Result<String, SpecError> {
    let name = super::required(pod.metadata.name.as_deref(), "metadata.name")?;
    let namespace = super::required(pod.metadata.namespace.as_deref(), "metadata.namespace")?;
    let spec = pod.spec.as_ref();
    let mut hostname = name.to_owned();
    if let Some(explicit) = spec.and_then(|s| s.hostname.as_deref()) {
        if !explicit.is_empty() {
            check_dns_label(explicit, "spec.hostname")?;
            hostname = explicit.to_owned();
        }
    }
    if hostname.len() > MAX_HOSTNAME_CHARS {
        // A DNS label or pod name is ASCII, so any byte index is a character boundary; the
        // fallback covers a name that is not.
        let cut = hostname.get(..MAX_HOSTNAME_CHARS).unwrap_or(&hostname);
        hostname = cut.trim_end_matches(['-', '.']).to_owned();
        if hostname.is_empty() {
            return Err(SpecError::Invalid {
                path: "metadata.name".into(),
                value: name.to_owned(),
                reason: "no valid hostname remains after cutting it to 63 characters".into(),
            });
        }
    }
    let subdomain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty());
    let as_fqdn = spec.and_then(|s| s.set_hostname_as_fqdn).unwrap_or(false);
    if let Some(subdomain) = subdomain {
        check_dns_label(subdomain, "spec.subdomain")?;
        if as_fqdn {
            let fqdn = format!(
                "{hostname}.{subdomain}.{namespace}.svc.{}",
                ctx.cluster_domain
            );
            if fqdn.len() > MAX_FQDN_CHARS {
                return Err(SpecError::Invalid {
                    path: "spec.setHostnameAsFQDN".into(),
                    value: fqdn,
                    reason: format!("the FQDN is longer than {MAX_FQDN_CHARS} characters"),
                });
            }
            return Ok(fqdn);
        }
    }
    Ok(hostname)
}

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
fn check_dns_label(value: &str, path: &str) -> Result<(), SpecError> {
    let bytes = value.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_HOSTNAME_CHARS
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric);
    if valid {
        Ok(())
    } else {
        Err(SpecError::Invalid {
            path: path.to_owned(),
            value: value.to_owned(),
            reason: "must be a DNS label: at most 63 lowercase letters, digits and '-', \
                     starting and ending with a letter or digit"
                .into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_read_as_kubelet_reads_it() {
        let text = "# comment\n\
                    nameserver 10.0.0.2\n\
                    nameserver 10.0.0.3 10.0.0.4\n\
                    search first.example\n\
                    search corp.example. lan . \n\
                    options ndots:2 edns0\n\
                    options ndots:3 timeout:1\n\
                    domain ignored.example\n";
        let conf = match ResolvConf::parse(text) {
            Ok(conf) => conf,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(conf.nameservers, ["10.0.0.2", "10.0.0.3"]);
        assert_eq!(conf.searches, ["corp.example", "lan"]);
        assert_eq!(conf.options, ["ndots:3", "edns0", "timeout:1"]);
    }

    #[test]
    fn resolv_conf_rejects_an_empty_nameserver() {
        assert!(matches!(
            ResolvConf::parse("search a\nnameserver\n"),
            Err(ResolvConfError::EmptyNameserver { line: 2 })
        ));
    }

    #[test]
    fn search_line_is_cut_to_kubelet_limits() {
        let long = "a".repeat(254);
        let searches = fit_search_limits(vec!["x".into(), long, "y".into()]);
        assert_eq!(searches, ["x", "y"]);

        let many: Vec<String> = (0..40).map(|i| format!("d{i}")).collect();
        assert_eq!(fit_search_limits(many).len(), 32);

        // 9 domains of 250 characters: 9 * 251 - 1 = 2258 > 2048, so the ninth goes.
        let wide: Vec<String> = (0..9).map(|i| format!("{i}{}", "b".repeat(249))).collect();
        let fitted = fit_search_limits(wide);
        assert_eq!(fitted.len(), 8);
        assert!(fitted.join(" ").len() <= MAX_SEARCH_LINE_CHARS);
    }
}
