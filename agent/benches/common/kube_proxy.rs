//! kube-proxy's iptables mode as the benchmarks compare bosun with it: the rules kube-proxy
//! 1.28's iptables proxier writes for a set of Service ports (`syncProxyRules`,
//! `writeServiceToEndpointRules`), with `--cluster-cidr` set, ClusterIPs and, for a port with
//! one, its node port; and `iptables-restore` of them in a network namespace, timed.
//!
//! A module of its own beside `common` and `lab`, included by the benchmarks that load
//! kube-proxy's rules (`services`, `nodeport`).

use std::io::{Read as _, Seek as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::lab::{check_interrupted, interrupted};

/// Above this many endpoints kube-proxy leaves the comments out of its per-Service chains
/// (`largeClusterEndpointsThreshold`).
const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

/// kube-proxy's sync would be killed by nobody, but a benchmark has to end.
pub const RESTORE_LIMIT: Duration = Duration::from_secs(300);

/// One TCP Service port as kube-proxy sees it.
pub struct PortInfo {
    /// `ServicePortName.String()`: "namespace/name", or "namespace/name:port" for a named port.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Its ready endpoints, in the EndpointSlice's order.
    pub endpoints: Vec<SocketAddrV4>,
    /// `spec.ports[].nodePort` of a NodePort Service (`externalTrafficPolicy: Cluster`).
    pub node_port: Option<u16>,
}

/// An `iptables-restore` input and what it holds.
pub struct Ruleset {
    pub text: String,
    pub rules: usize,
    pub chains: usize,
}

impl Ruleset {
    fn new() -> Ruleset {
        Ruleset {
            text: String::new(),
            rules: 0,
            chains: 0,
        }
    }

    fn table(&mut self, name: &str) {
        self.text.push('*');
        self.text.push_str(name);
        self.text.push('\n');
    }

    fn chains<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            self.text.push(':');
            self.text.push_str(name);
            self.text.push_str(" - [0:0]\n");
            self.chains += 1;
        }
    }

    fn rules<'a>(&mut self, rules: impl IntoIterator<Item = &'a String>) {
        for rule in rules {
            self.text.push_str(rule);
            self.text.push('\n');
            self.rules += 1;
        }
    }

    fn commit(&mut self) {
        self.text.push_str("COMMIT\n");
    }
}

/// The whole ruleset of a set of Service ports. The jumps from the built-in chains, which
/// kube-proxy ensures one by one, are part of it here.
pub struct KubeProxyRules {
    filter_chains: Vec<String>,
    filter_rules: Vec<String>,
    /// kube-proxy's own chains in the nat table and their rules.
    nat_chains: Vec<String>,
    nat_rules: Vec<String>,
    services: Vec<ServiceRules>,
    /// KUBE-SERVICES' last rule.
    nodeports: String,
}

/// The chains of one Service port and their rules.
struct ServiceRules {
    /// KUBE-SVC-…, KUBE-EXT-… for a node port, then its KUBE-SEP-….
    chains: Vec<String>,
    rules: Vec<String>,
    /// Its rule in KUBE-SERVICES.
    portal: String,
    /// Its rule in KUBE-NODEPORTS.
    node_port: Option<String>,
}

fn owned(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| (*l).to_owned()).collect()
}

impl KubeProxyRules {
    /// The rules for `ports`, in this order (kube-proxy's is its map's, so any one); traffic
    /// to a ClusterIP from outside `cluster_cidr` is masqueraded.
    pub fn new(ports: &[PortInfo], cluster_cidr: &str) -> KubeProxyRules {
        let filter_chains = owned(&[
            "KUBE-EXTERNAL-SERVICES",
            "KUBE-FORWARD",
            "KUBE-NODEPORTS",
            "KUBE-PROXY-FIREWALL",
            "KUBE-SERVICES",
        ]);
        let filter_rules = owned(&[
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
            "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
            "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ]);
        let nat_chains = owned(&[
            "KUBE-SERVICES",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
        ]);
        let nat_rules = owned(&[
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
            "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
        ]);
        let endpoints: usize = ports.iter().map(|p| p.endpoints.len()).sum();
        let large = endpoints > LARGE_CLUSTER_ENDPOINTS;
        KubeProxyRules {
            filter_chains,
            filter_rules,
            nat_chains,
            nat_rules,
            services: ports
                .iter()
                .map(|p| service_rules(p, large, cluster_cidr))
                .collect(),
            nodeports: "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; \
                        NOTE: this must be the last rule in this chain\" -m addrtype \
                        --dst-type LOCAL -j KUBE-NODEPORTS"
                .to_owned(),
        }
    }

    /// One input with everything, as kube-proxy's full sync writes it.
    pub fn whole(&self) -> Ruleset {
        self.input(0..self.services.len())
    }

    /// The same rules as inputs of `per` Services each, to be restored with `--noflush` one
    /// after the other: iptables-nft-restore's time grows with the square of its input, and
    /// these add up to the same tables far sooner.
    pub fn parts(&self, per: usize) -> impl Iterator<Item = Ruleset> + '_ {
        let n = self.services.len();
        (0..n.div_ceil(per)).map(move |part| self.input(part * per..n.min((part + 1) * per)))
    }

    /// The input for the Services in `range`; the first range brings the tables' fixed part,
    /// the last one KUBE-SERVICES' last rule. KUBE-SERVICES and KUBE-NODEPORTS are declared
    /// (which flushes them under `--noflush`) only by the first.
    fn input(&self, range: std::ops::Range<usize>) -> Ruleset {
        let first = range.start == 0;
        let last = range.end == self.services.len();
        let services = &self.services[range];
        let mut ruleset = Ruleset::new();
        if first {
            ruleset.table("filter");
            ruleset.chains(&self.filter_chains);
            ruleset.rules(&self.filter_rules);
            ruleset.commit();
        }
        ruleset.table("nat");
        if first {
            ruleset.chains(&self.nat_chains);
        }
        ruleset.chains(services.iter().flat_map(|s| &s.chains));
        if first {
            ruleset.rules(&self.nat_rules);
        }
        ruleset.rules(services.iter().flat_map(|s| &s.node_port));
        ruleset.rules(services.iter().flat_map(|s| &s.rules));
        ruleset.rules(services.iter().map(|s| &s.portal));
        if last {
            ruleset.rules([&self.nodeports]);
        }
        ruleset.commit();
        ruleset
    }
}

fn service_rules(port: &PortInfo, large: bool, cluster_cidr: &str) -> ServiceRules {
    // `appendServiceCommentLocked`: no comments in the per-Service chains of a large cluster.
    let comment = |text: &str| {
        if large {
            String::new()
        } else {
            format!(" -m comment --comment {text}")
        }
    };
    let port_name = &port.name;
    let (vip, service_port) = (port.cluster_ip, port.port);
    let hash = chain_hash(&format!("{port_name}tcp"));
    let svc = format!("KUBE-SVC-{hash}");
    let mut chains = vec![svc.clone()];
    let mut rules = vec![format!(
        "-A {svc} -m comment --comment \"{port_name} cluster IP\" -m tcp -p tcp -d {vip}/32 \
         --dport {service_port} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"
    )];
    // `externalTrafficPolicy: Cluster`: every external packet is masqueraded, in case its
    // endpoint is on another node; then it takes the ClusterIP's way to an endpoint.
    let node_port = port.node_port.map(|node_port| {
        let ext = format!("KUBE-EXT-{hash}");
        rules.push(format!(
            "-A {ext} -m comment --comment \"masquerade traffic for {port_name} external \
             destinations\" -j KUBE-MARK-MASQ"
        ));
        rules.push(format!("-A {ext} -j {svc}"));
        chains.push(ext.clone());
        format!(
            "-A KUBE-NODEPORTS -m comment --comment {port_name} -m tcp -p tcp --dport \
             {node_port} -j {ext}"
        )
    });
    let count = port.endpoints.len();
    for (k, endpoint) in port.endpoints.iter().enumerate() {
        let sep = format!(
            "KUBE-SEP-{}",
            chain_hash(&format!("{port_name}tcp{endpoint}"))
        );
        let remaining = count - k;
        let probability = if remaining > 1 {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / remaining as f64
            )
        } else {
            String::new()
        };
        rules.push(format!(
            "-A {svc}{}{probability} -j {sep}",
            comment(&format!("\"{port_name} -> {endpoint}\""))
        ));
        let sep_comment = comment(port_name);
        rules.push(format!(
            "-A {sep}{sep_comment} -s {}/32 -j KUBE-MARK-MASQ",
            endpoint.ip()
        ));
        rules.push(format!(
            "-A {sep}{sep_comment} -m tcp -p tcp -j DNAT --to-destination {endpoint}"
        ));
        chains.push(sep);
    }
    ServiceRules {
        chains,
        rules,
        portal: format!(
            "-A KUBE-SERVICES -m comment --comment \"{port_name} cluster IP\" -m tcp -p tcp \
             -d {vip}/32 --dport {service_port} -j {svc}"
        ),
        node_port,
    }
}

/// kube-proxy's `portProtoHash`: the first 16 characters of the base32 (RFC 4648) of the
/// SHA-256 of `text`.
pub fn chain_hash(text: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(text.as_bytes());
    // 16 characters of 5 bits are the first 10 bytes.
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, byte| acc << 8 | u128::from(*byte));
    (0..16)
        .rev()
        .map(|i| char::from(ALPHABET[((bits >> (i * 5)) & 31) as usize]))
        .collect()
}

/// Fails unless [`chain_hash`] names chains as kube-proxy does: `default/kubernetes:https` is
/// KUBE-SVC-NPX46M4PTMTKRN6Y on every kube-proxy node.
pub fn check_chain_names() -> Result<()> {
    anyhow::ensure!(
        chain_hash("default/kubernetes:httpstcp") == "NPX46M4PTMTKRN6Y",
        "the chain names are not kube-proxy's"
    );
    Ok(())
}

/// How loading the rules went.
pub enum Load {
    Took(Duration),
    /// Killed after [`RESTORE_LIMIT`].
    GaveUp(Duration),
}

/// `iptables-restore` in the namespace, with kube-proxy's flags, timed from start to exit.
pub fn iptables_restore(netns: &str, ruleset: &Ruleset) -> Result<Load> {
    let mut input = tempfile::tempfile().context("creating the restore input")?;
    input
        .write_all(ruleset.text.as_bytes())
        .and_then(|()| input.rewind())
        .context("writing the restore input")?;
    let started = Instant::now();
    // `ip netns exec` execs the command itself (no fork), so killing the child kills it.
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "iptables-restore"])
        .args(["-w", "5", "-W", "100000", "--noflush", "--counters"])
        .stdin(input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting iptables-restore")?;
    loop {
        if let Some(status) = child.try_wait().context("waiting for iptables-restore")? {
            let took = started.elapsed();
            if !status.success() {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                bail!("iptables-restore in {netns}: {status}: {}", stderr.trim());
            }
            return Ok(Load::Took(took));
        }
        let interrupted = interrupted();
        if interrupted || started.elapsed() > RESTORE_LIMIT {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            return Ok(Load::GaveUp(started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Loads `rules` into `netns` in parts of `per` Services; how long that took in all.
pub fn restore_in_parts(netns: &str, rules: &KubeProxyRules, per: usize) -> Result<Duration> {
    let started = Instant::now();
    for part in rules.parts(per) {
        match iptables_restore(netns, &part)? {
            Load::Took(_) => {}
            Load::GaveUp(after) => {
                bail!("iptables-restore of {per} Services gave up after {after:?}")
            }
        }
    }
    Ok(started.elapsed())
}
