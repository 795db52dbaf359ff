//! The stats provider over fixture cgroup and proc trees, the Summary's JSON and the
//! `/metrics/resource` text against golden files, CPU rates from two samples, a fake runtime
//! end to end, and the real host's node numbers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bosun_cri::{api, CriClient};
use bosun_proto::cri::image_service_server::{ImageService, ImageServiceServer};
use bosun_proto::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use super::*;

/// 2021-06-22T21:11:18.302091597Z, the instant kubelet's own collector tests use.
const T: i64 = 1_624_396_278_302_091_597;
const SECOND: i64 = 1_000_000_000;

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/server/testdata/stats")
        .join(name);
    std::fs::read_to_string(&path).expect("golden file")
}

// ---- fixture trees --------------------------------------------------------------------------

/// A temporary directory standing in for `/proc` and the cgroup mounts.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let fixture = Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        fixture.write(
            "proc/stat",
            "cpu  2252070 0 450763 1253556 9141 0 9111 1180 0 0\n\
             cpu0 1110385 0 221773 647972 3389 0 3505 615 0 0\n\
             intr 1 2 3\n\
             btime 1700000000\n\
             processes 4242\n",
        );
        fixture.write(
            "proc/meminfo",
            "MemTotal:        8000000 kB\n\
             MemFree:         3000000 kB\n\
             MemAvailable:    6000000 kB\n\
             AnonPages:       1000000 kB\n\
             Inactive(file):   500000 kB\n\
             SwapTotal:          1000 kB\n\
             SwapFree:            600 kB\n",
        );
        fixture.write("proc/vmstat", "pgfault 777\npgmajfault 7\n");
        fixture.write("proc/loadavg", "0.10 0.20 0.30 2/345 6789\n");
        fixture.write("proc/sys/kernel/pid_max", "4194304\n");
        fixture.write("proc/sys/kernel/threads-max", "190000\n");
        fixture.write(
            "proc/1/net/dev",
            &net_dev(&[
                ("lo", [100, 1, 100, 1]),
                ("ens5", [9000, 9, 8000, 8]),
                ("veth1234", [5, 0, 5, 0]),
            ]),
        );
        fixture
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn write(&self, relative: &str, content: &str) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, content).expect("write fixture");
    }

    /// A host like this project's machines: CPU, memory and pids bound to cgroup v1, cgroup2
    /// mounted beside them without those controllers.
    fn hybrid(&self) -> HostPaths {
        self.write("cgroup/unified/cgroup.controllers", "hugetlb\n");
        let mounts = format!(
            "tmpfs {d}/cgroup tmpfs rw,relatime,mode=755 0 0\n\
             cgroup {d}/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
             cgroup {d}/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0\n\
             cgroup {d}/cgroup/memory cgroup rw,relatime,memory 0 0\n\
             cgroup {d}/cgroup/pids cgroup rw,nosuid,relatime,pids 0 0\n\
             cgroup2 {d}/cgroup/unified cgroup2 rw,relatime 0 0\n",
            d = self.dir.path().display()
        );
        HostPaths::from_mounts(self.path("proc"), &mounts)
    }

    /// A cgroup v2 only host.
    fn unified(&self) -> HostPaths {
        self.write(
            "cgroup/unified/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
        let mounts = format!(
            "cgroup2 {d}/cgroup/unified cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n",
            d = self.dir.path().display()
        );
        HostPaths::from_mounts(self.path("proc"), &mounts)
    }
}

/// A `/proc/<pid>/net/dev` with (name, [rx bytes, rx errors, tx bytes, tx errors]).
fn net_dev(interfaces: &[(&str, [u64; 4])]) -> String {
    let mut text = String::from(
        "Inter-|   Receive                                                |  Transmit\n \
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n",
    );
    for (name, [rx, rx_errors, tx, tx_errors]) in interfaces {
        text.push_str(&format!(
            "{name:>6}: {rx} 10 {rx_errors} 0 0 0 0 0 {tx} 20 {tx_errors} 0 0 0 0 0\n"
        ));
    }
    text
}

/// A clock the test moves.
#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn at(unix_nanos: i64) -> Self {
        TestClock(Arc::new(AtomicI64::new(unix_nanos)))
    }

    fn advance(&self, by: Duration) {
        let nanos = i64::try_from(by.as_nanos()).expect("short duration");
        self.0.fetch_add(nanos, Ordering::SeqCst);
    }

    fn now(&self) -> SystemTime {
        let nanos = u64::try_from(self.0.load(Ordering::SeqCst)).expect("after the epoch");
        SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos)
    }
}

fn provider(host: HostPaths, root_dir: &Path, clock: &TestClock) -> StatsProvider {
    let clock = clock.clone();
    StatsProvider::new(
        host,
        "/kubepods".to_owned(),
        root_dir.to_owned(),
        "node-a".to_owned(),
    )
    .with_clock(move || clock.now())
}

// ---- what the runtime answers ---------------------------------------------------------------

fn sandbox(id: &str, name: &str, uid: &str, ours: bool) -> api::PodSandbox {
    let mut labels = HashMap::from([
        (keys::POD_NAME.to_owned(), name.to_owned()),
        (keys::POD_NAMESPACE.to_owned(), "default".to_owned()),
        (keys::POD_UID.to_owned(), uid.to_owned()),
    ]);
    if ours {
        labels.insert(
            keys::MANAGED_BY.to_owned(),
            keys::MANAGED_BY_VALUE.to_owned(),
        );
    }
    api::PodSandbox {
        id: id.to_owned(),
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.to_owned(),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        state: api::PodSandboxState::SandboxReady as i32,
        created_at: T - 600 * SECOND,
        labels,
        ..Default::default()
    }
}

fn container(id: &str, sandbox_id: &str, name: &str, state: api::ContainerState) -> api::Container {
    api::Container {
        id: id.to_owned(),
        pod_sandbox_id: sandbox_id.to_owned(),
        metadata: Some(api::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        state: state as i32,
        created_at: T - 300 * SECOND,
        labels: HashMap::from([(keys::CONTAINER_NAME.to_owned(), name.to_owned())]),
        ..Default::default()
    }
}

fn value(v: u64) -> Option<api::UInt64Value> {
    Some(api::UInt64Value { value: v })
}

/// The runtime's stats of a container; `None` leaves CPU or memory out, as a runtime may.
fn container_stats(
    id: &str,
    at: i64,
    cpu_nanos: Option<u64>,
    working_set: Option<u64>,
) -> api::ContainerStats {
    api::ContainerStats {
        attributes: Some(api::ContainerAttributes {
            id: id.to_owned(),
            ..Default::default()
        }),
        cpu: cpu_nanos.map(|usage| api::CpuUsage {
            timestamp: at,
            usage_core_nano_seconds: value(usage),
            ..Default::default()
        }),
        memory: working_set.map(|ws| api::MemoryUsage {
            timestamp: at,
            working_set_bytes: value(ws),
            usage_bytes: value(ws + 10_000_000),
            rss_bytes: value(ws / 2),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---- Time and the Summary's JSON ------------------------------------------------------------

#[test]
fn time_is_written_as_metav1_time_in_whole_seconds() {
    let time = Time::from_unix_nanos(T);
    let json = serde_json::to_string(&time).expect("serialize");
    assert_eq!(json, "\"2021-06-22T21:11:18Z\"");
    let back: Time = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, Time::from_unix_nanos(1_624_396_278 * SECOND));
    assert_eq!(time.unix_millis(), 1_624_396_278_302);
    let system = SystemTime::UNIX_EPOCH + Duration::from_nanos(T as u64);
    assert_eq!(Time::from_system_time(system), time);
}

/// A summary with every field bosun fills, at whole seconds so it survives the JSON.
fn full_summary() -> Summary {
    let t = Time::from_unix_nanos(1_624_396_278 * SECOND);
    let fs = FsStats {
        time: t,
        available_bytes: Some(600),
        capacity_bytes: Some(1000),
        used_bytes: Some(400),
        inodes_free: Some(60),
        inodes: Some(100),
        inodes_used: Some(40),
    };
    let cpu = CpuStats {
        time: t,
        usage_nano_cores: Some(250_000_000),
        usage_core_nano_seconds: Some(10_000_000_000),
    };
    let memory = MemoryStats {
        time: t,
        available_bytes: Some(3000),
        usage_bytes: Some(2000),
        working_set_bytes: Some(1000),
        rss_bytes: Some(500),
        page_faults: Some(7),
        major_page_faults: Some(1),
    };
    let eth0 = InterfaceStats {
        name: "eth0".to_owned(),
        rx_bytes: Some(5000),
        rx_errors: Some(2),
        tx_bytes: Some(7000),
        tx_errors: Some(3),
    };
    let network = NetworkStats {
        time: t,
        default_interface: eth0.clone(),
        interfaces: vec![eth0],
    };
    let app = ContainerStats {
        name: "app".to_owned(),
        start_time: Some(t),
        cpu: Some(cpu.clone()),
        memory: Some(memory.clone()),
        rootfs: Some(FsStats {
            used_bytes: Some(4096),
            inodes_used: Some(10),
            ..fs.clone()
        }),
    };
    Summary {
        node: NodeStats {
            node_name: "node-a".to_owned(),
            system_containers: vec![ContainerStats {
                name: "pods".to_owned(),
                start_time: Some(t),
                cpu: Some(cpu.clone()),
                memory: Some(memory.clone()),
                rootfs: None,
            }],
            start_time: Some(t),
            cpu: Some(cpu.clone()),
            memory: Some(memory.clone()),
            network: Some(network.clone()),
            fs: Some(fs.clone()),
            runtime: Some(RuntimeStats {
                image_fs: Some(fs.clone()),
                container_fs: Some(fs),
            }),
            rlimit: Some(RlimitStats {
                time: t,
                maxpid: Some(4_194_304),
                curproc: Some(345),
            }),
            swap: Some(SwapStats {
                time: t,
                swap_available_bytes: Some(600),
                swap_usage_bytes: Some(400),
            }),
        },
        pods: vec![PodStats {
            pod_ref: PodReference {
                name: "web".to_owned(),
                namespace: "default".to_owned(),
                uid: "uid-1".to_owned(),
            },
            start_time: Some(t),
            containers: vec![app],
            cpu: Some(cpu),
            memory: Some(memory),
            network: Some(network),
            process_stats: Some(ProcessStats {
                process_count: Some(5),
            }),
        }],
    }
}

#[test]
fn the_summary_json_has_kubelets_field_names() {
    let expected: serde_json::Value =
        serde_json::from_str(&golden("summary.json")).expect("golden JSON");
    let summary = full_summary();
    assert_eq!(
        serde_json::to_value(&summary).expect("serialize"),
        expected,
        "{}",
        serde_json::to_string_pretty(&summary).expect("serialize")
    );
    let back: Summary = serde_json::from_value(expected).expect("deserialize the golden file");
    assert_eq!(back, summary);
}

#[test]
fn absent_values_are_left_out_and_unknown_start_times_are_null() {
    let summary = Summary {
        node: NodeStats {
            node_name: "n".to_owned(),
            ..NodeStats::default()
        },
        pods: Vec::new(),
    };
    assert_eq!(
        serde_json::to_string(&summary).expect("serialize"),
        r#"{"node":{"nodeName":"n","startTime":null},"pods":[]}"#
    );
}

// ---- /metrics/resource ----------------------------------------------------------------------

fn cpu_at(at: i64, usage: u64) -> Option<CpuStats> {
    Some(CpuStats {
        time: Time::from_unix_nanos(at),
        usage_nano_cores: None,
        usage_core_nano_seconds: Some(usage),
    })
}

fn memory_at(at: i64, working_set: u64) -> Option<MemoryStats> {
    Some(MemoryStats {
        time: Time::from_unix_nanos(at),
        working_set_bytes: Some(working_set),
        usage_bytes: Some(working_set * 2),
        ..MemoryStats::default()
    })
}

fn pod(name: &str, namespace: &str, containers: Vec<ContainerStats>) -> PodStats {
    PodStats {
        pod_ref: PodReference {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid: format!("uid-{name}"),
        },
        containers,
        ..PodStats::default()
    }
}

fn metric_container(name: &str, started: i64) -> ContainerStats {
    ContainerStats {
        name: name.to_owned(),
        start_time: Some(Time::from_unix_nanos(started)),
        ..ContainerStats::default()
    }
}

/// The values of kubelet's own collector tests, so the golden text can be checked against
/// theirs line by line, plus a large value, a container without memory and pod totals.
fn metrics_summary() -> Summary {
    let mut pod_a = pod(
        "pod_a",
        "namespace_a",
        vec![
            ContainerStats {
                cpu: cpu_at(T, 10_000_000_000),
                memory: memory_at(T, 1000),
                ..metric_container("container_a", T - 30 * SECOND)
            },
            ContainerStats {
                cpu: cpu_at(T, 1_234_567_891_000),
                ..metric_container("container_b", T - 120 * SECOND)
            },
        ],
    );
    pod_a.cpu = cpu_at(T, 1_244_567_891_000);
    pod_a.memory = memory_at(T, 2_000_000);
    let mut pod_b = pod(
        "pod_b",
        "namespace_b",
        vec![ContainerStats {
            cpu: cpu_at(T, 250_000_000),
            memory: memory_at(T, 123_456_789),
            ..metric_container("container_a", T - 600 * SECOND)
        }],
    );
    pod_b.cpu = cpu_at(T, 250_000_000);
    Summary {
        node: NodeStats {
            node_name: "node-a".to_owned(),
            cpu: cpu_at(T, 10_000_000_000),
            memory: memory_at(T, 1000),
            swap: Some(SwapStats {
                time: Time::from_unix_nanos(T + 10 * SECOND),
                swap_available_bytes: None,
                swap_usage_bytes: Some(500),
            }),
            ..NodeStats::default()
        },
        // Out of order on purpose: the text is sorted as the Go client sorts it.
        pods: vec![pod_b, pod_a],
    }
}

#[test]
fn resource_metrics_match_the_golden_text() {
    let text = resource_metrics(Some(&metrics_summary()));
    assert_eq!(text, golden("resource_metrics.txt"), "got:\n{text}");
}

#[test]
fn a_failed_summary_is_a_scrape_error_alone() {
    assert_eq!(
        resource_metrics(None),
        "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n\
         # TYPE resource_scrape_error gauge\n\
         resource_scrape_error 1\n"
    );
}

#[test]
fn missing_values_write_no_sample_and_a_label_set_is_written_once() {
    let twin = |cpu| {
        let mut p = pod(
            "web",
            "default",
            vec![ContainerStats {
                cpu,
                ..metric_container("app", 0)
            }],
        );
        p.pod_ref.uid = "another sandbox".to_owned();
        p
    };
    let summary = Summary {
        node: NodeStats {
            cpu: Some(CpuStats {
                time: Time::from_unix_nanos(T),
                usage_nano_cores: Some(1),
                usage_core_nano_seconds: None,
            }),
            ..NodeStats::default()
        },
        pods: vec![
            twin(cpu_at(T, SECOND as u64)),
            twin(cpu_at(T, SECOND as u64)),
        ],
    };
    let text = resource_metrics(Some(&summary));
    assert!(!text.contains("node_cpu_usage_seconds_total"), "{text}");
    // A start time at the epoch is left out, as kubelet does.
    assert!(!text.contains("container_start_time_seconds"), "{text}");
    assert_eq!(
        text.matches("container_cpu_usage_seconds_total{").count(),
        1,
        "{text}"
    );
}

#[test]
fn values_are_formatted_as_go_formats_them() {
    for (value, expected) in [
        (0.0, "0"),
        (1.0, "1"),
        (10.0, "10"),
        (0.25, "0.25"),
        (357.35491, "357.35491"),
        (123_456.0, "123456"),
        (1e6, "1e+06"),
        (123_456_789.0, "1.23456789e+08"),
        (1_624_396_248.302_091_6, "1.6243962483020916e+09"),
        (1.844_674_370_912_777_4e19, "1.8446743709127774e+19"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-2.5e-7, "-2.5e-07"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
    ] {
        assert_eq!(format_value(value), expected, "{value}");
    }
    assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

// ---- usageNanoCores -------------------------------------------------------------------------

fn sample(at: i64, usage_core_nanos: u64) -> CpuSample {
    CpuSample {
        at: Time::from_unix_nanos(at),
        usage_core_nanos,
    }
}

#[test]
fn usage_nano_cores_comes_from_two_samples() {
    let mut cache = CpuCache::default();
    let key = || CpuKey::Container("c1".to_owned());
    cache.start_round();
    assert_eq!(cache.usage_nano_cores(key(), sample(T, 1_000)), None);
    // Half a core over ten seconds.
    let rate = cache.usage_nano_cores(key(), sample(T + 10 * SECOND, 5 * SECOND as u64 + 1_000));
    assert_eq!(rate, Some(500_000_000));
    // Half a second later is too soon to say: the last rate again, and the base stays.
    let rate = cache.usage_nano_cores(
        key(),
        sample(T + 10 * SECOND + SECOND / 2, 9 * SECOND as u64),
    );
    assert_eq!(rate, Some(500_000_000));
    // Two cores over the 1.5 s since the base.
    let rate = cache.usage_nano_cores(
        key(),
        sample(T + 11 * SECOND + SECOND / 2, 8 * SECOND as u64 + 1_000),
    );
    assert_eq!(rate, Some(2_000_000_000));
    // A counter that went backwards (the cgroup was re-created) starts over.
    assert_eq!(
        cache.usage_nano_cores(key(), sample(T + 20 * SECOND, 100)),
        None
    );
    let rate = cache.usage_nano_cores(key(), sample(T + 22 * SECOND, 100 + SECOND as u64));
    assert_eq!(rate, Some(500_000_000));
}

#[test]
fn what_a_round_did_not_sample_is_forgotten() {
    let mut cache = CpuCache::default();
    cache.start_round();
    cache.usage_nano_cores(CpuKey::Pod("a".to_owned()), sample(T, 0));
    cache.usage_nano_cores(CpuKey::Pod("b".to_owned()), sample(T, 0));
    cache.end_round();
    cache.start_round();
    cache.usage_nano_cores(CpuKey::Pod("a".to_owned()), sample(T + 2 * SECOND, 0));
    cache.end_round();
    let later = sample(T + 4 * SECOND, 2 * SECOND as u64);
    assert_eq!(
        cache.usage_nano_cores(CpuKey::Pod("a".to_owned()), later),
        Some(1_000_000_000)
    );
    assert_eq!(
        cache.usage_nano_cores(CpuKey::Pod("b".to_owned()), later),
        None
    );
}

// ---- the hierarchies ------------------------------------------------------------------------

#[test]
fn hierarchies_come_from_the_mount_table() {
    let fixture = Fixture::new();
    let hybrid = fixture.hybrid();
    let v1 = |dir: &str| {
        Some(Hierarchy {
            mount_point: fixture.path(dir),
            version: CgroupVersion::V1,
        })
    };
    assert_eq!(hybrid.cpu, v1("cgroup/cpuacct"));
    assert_eq!(hybrid.memory, v1("cgroup/memory"));
    assert_eq!(hybrid.pids, v1("cgroup/pids"));
    assert_eq!(hybrid.proc, fixture.path("proc"));

    let unified = fixture.unified();
    let v2 = Some(Hierarchy {
        mount_point: fixture.path("cgroup/unified"),
        version: CgroupVersion::V2,
    });
    assert_eq!(
        (&unified.cpu, &unified.memory, &unified.pids),
        (&v2, &v2, &v2)
    );

    // cgroup v2 without the memory controller: CPU time is still counted there.
    fixture.write("cgroup/unified/cgroup.controllers", "cpu\n");
    let mounts = format!(
        "cgroup2 {} cgroup2 rw 0 0\n",
        fixture.path("cgroup/unified").display()
    );
    let partial = HostPaths::from_mounts(fixture.path("proc"), &mounts);
    assert_eq!(
        (&partial.cpu, &partial.memory, &partial.pids),
        (&v2, &None, &None)
    );

    // cpu and cpuacct mounted together, as most v1 hosts do.
    let joint = HostPaths::from_mounts(
        PathBuf::from("/proc"),
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n",
    );
    assert_eq!(
        joint.cpu.map(|h| h.mount_point),
        Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
    );
}

// ---- the provider over fixture files --------------------------------------------------------

/// One pod (`web`, Burstable) with two running containers and an exited one, and a sandbox
/// that is not bosun's, on a cgroup v1 host.
fn v1_pod(fixture: &Fixture) -> RuntimeView {
    fixture.write("cgroup/cpuacct/cpuacct.usage", "50000000000\n");
    fixture.write("cgroup/memory/memory.usage_in_bytes", "4000000000\n");
    fixture.write(
        "cgroup/memory/memory.stat",
        "cache 1\nrss 2\npgfault 3\ninactive_file 4\n\
         total_rss 2000000000\ntotal_pgfault 100\ntotal_pgmajfault 3\n\
         total_inactive_file 1000000000\n",
    );
    fixture.write("cgroup/cpuacct/kubepods/cpuacct.usage", "4000000000\n");
    fixture.write(
        "cgroup/memory/kubepods/memory.usage_in_bytes",
        "600000000\n",
    );
    fixture.write(
        "cgroup/memory/kubepods/memory.stat",
        "total_inactive_file 100000000\n",
    );
    fixture.write(
        "cgroup/memory/kubepods/memory.limit_in_bytes",
        "7000000000\n",
    );
    let pod = "kubepods/burstable/poduid-1";
    fixture.write(
        &format!("cgroup/cpuacct/{pod}/cpuacct.usage"),
        "3000000000\n",
    );
    fixture.write(
        &format!("cgroup/memory/{pod}/memory.usage_in_bytes"),
        "300000000\n",
    );
    fixture.write(
        &format!("cgroup/memory/{pod}/memory.stat"),
        "total_inactive_file 100000000\ntotal_rss 150000000\n\
         total_pgfault 40\ntotal_pgmajfault 1\n",
    );
    fixture.write(
        &format!("cgroup/memory/{pod}/memory.limit_in_bytes"),
        "9223372036854771712\n",
    );
    fixture.write(&format!("cgroup/pids/{pod}/pids.current"), "5\n");
    // The runtime leaves out the sidecar's memory: its cgroup has it.
    fixture.write(
        &format!("cgroup/memory/{pod}/c2/memory.usage_in_bytes"),
        "50000000\n",
    );
    fixture.write(
        &format!("cgroup/memory/{pod}/c2/memory.stat"),
        "total_inactive_file 10000000\n",
    );
    fixture.write(
        "proc/4242/net/dev",
        &net_dev(&[("lo", [1, 0, 1, 0]), ("eth0", [5000, 2, 7000, 3])]),
    );

    let mut app = container_stats("c1", T, Some(2_000_000_000), Some(120_000_000));
    app.writable_layer = Some(api::FilesystemUsage {
        timestamp: T,
        fs_id: Some(api::FilesystemIdentifier {
            mountpoint: fixture.path("").display().to_string(),
        }),
        used_bytes: value(4096),
        inodes_used: value(10),
    });
    RuntimeView {
        sandboxes: vec![sandbox("s1", "web", "uid-1", true)],
        containers: vec![
            container("c1", "s1", "app", api::ContainerState::ContainerRunning),
            container("c2", "s1", "sidecar", api::ContainerState::ContainerRunning),
            container("c0", "s1", "app", api::ContainerState::ContainerExited),
            container(
                "x1",
                "other",
                "theirs",
                api::ContainerState::ContainerRunning,
            ),
        ],
        stats: vec![
            app,
            container_stats("c2", T, Some(500_000_000), None),
            container_stats("c0", T, Some(1), Some(1)),
            container_stats("x1", T, Some(1), Some(1)),
        ],
        image_fs: None,
        sandbox_pids: HashMap::from([("s1".to_owned(), 4242)]),
    }
}

#[test]
fn the_summary_reads_cgroup_v1_proc_and_the_runtime() {
    let fixture = Fixture::new();
    let view = v1_pod(&fixture);
    let clock = TestClock::at(T);
    let provider = provider(fixture.hybrid(), &fixture.path("bosun"), &clock);
    let summary = provider.build(&view, Detail::Full);
    let now = Time::from_unix_nanos(T);

    let node = &summary.node;
    assert_eq!(node.node_name, "node-a");
    assert_eq!(
        node.start_time,
        Some(Time::from_unix_nanos(1_700_000_000 * SECOND))
    );
    assert_eq!(
        node.cpu,
        Some(CpuStats {
            time: now,
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(50_000_000_000),
        })
    );
    assert_eq!(
        node.memory,
        Some(MemoryStats {
            time: now,
            // MemTotal − working set.
            available_bytes: Some(8_192_000_000 - 3_000_000_000),
            usage_bytes: Some(4_000_000_000),
            working_set_bytes: Some(3_000_000_000),
            rss_bytes: Some(2_000_000_000),
            page_faults: Some(100),
            major_page_faults: Some(3),
        })
    );
    assert_eq!(
        node.swap,
        Some(SwapStats {
            time: now,
            swap_available_bytes: Some(600 * 1024),
            swap_usage_bytes: Some(400 * 1024),
        })
    );
    let pods_cgroup = &node.system_containers[0];
    assert_eq!(pods_cgroup.name, "pods");
    assert_eq!(
        pods_cgroup
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds),
        Some(4_000_000_000)
    );
    let pods_memory = pods_cgroup.memory.as_ref().expect("pods memory");
    assert_eq!(pods_memory.working_set_bytes, Some(500_000_000));
    assert_eq!(pods_memory.available_bytes, Some(6_500_000_000));
    let network = node.network.as_ref().expect("node network");
    let names: Vec<&str> = network.interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["ens5"], "loopback and veths are left out");
    assert_eq!(network.default_interface, InterfaceStats::default());
    let fs = node.fs.as_ref().expect("node fs");
    assert!(fs.capacity_bytes > Some(0) && fs.inodes > Some(0), "{fs:?}");
    assert_eq!(
        node.rlimit,
        Some(RlimitStats {
            time: now,
            maxpid: Some(190_000),
            curproc: Some(345),
        })
    );
    assert_eq!(node.runtime, None, "the runtime named no image file system");

    assert_eq!(summary.pods.len(), 1, "{:?}", summary.pods);
    let pod = &summary.pods[0];
    assert_eq!(
        pod.pod_ref,
        PodReference {
            name: "web".to_owned(),
            namespace: "default".to_owned(),
            uid: "uid-1".to_owned(),
        }
    );
    assert_eq!(
        pod.start_time,
        Some(Time::from_unix_nanos(T - 600 * SECOND))
    );
    assert_eq!(
        pod.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(3_000_000_000)
    );
    assert_eq!(
        pod.memory,
        Some(MemoryStats {
            time: now,
            available_bytes: None,
            usage_bytes: Some(300_000_000),
            working_set_bytes: Some(200_000_000),
            rss_bytes: Some(150_000_000),
            page_faults: Some(40),
            major_page_faults: Some(1),
        })
    );
    assert_eq!(
        pod.process_stats,
        Some(ProcessStats {
            process_count: Some(5)
        })
    );
    let network = pod.network.as_ref().expect("pod network");
    assert_eq!(network.default_interface.name, "eth0");
    assert_eq!(
        (
            network.default_interface.rx_bytes,
            network.default_interface.rx_errors,
            network.default_interface.tx_bytes,
            network.default_interface.tx_errors
        ),
        (Some(5000), Some(2), Some(7000), Some(3))
    );

    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "sidecar"], "only running containers");
    let app = &pod.containers[0];
    assert_eq!(
        app.start_time,
        Some(Time::from_unix_nanos(T - 300 * SECOND))
    );
    assert_eq!(
        app.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(2_000_000_000)
    );
    let memory = app.memory.as_ref().expect("app memory");
    assert_eq!(
        (
            memory.working_set_bytes,
            memory.usage_bytes,
            memory.rss_bytes
        ),
        (Some(120_000_000), Some(130_000_000), Some(60_000_000))
    );
    let rootfs = app.rootfs.as_ref().expect("app rootfs");
    assert_eq!(
        (rootfs.used_bytes, rootfs.inodes_used),
        (Some(4096), Some(10))
    );
    assert!(rootfs.capacity_bytes > Some(0), "{rootfs:?}");
    let sidecar = &pod.containers[1];
    assert_eq!(
        sidecar.memory.as_ref().and_then(|m| m.working_set_bytes),
        Some(40_000_000),
        "from the container's cgroup"
    );
    assert_eq!(sidecar.rootfs, None);
}

#[test]
fn a_second_summary_has_cpu_rates() {
    let fixture = Fixture::new();
    let mut view = v1_pod(&fixture);
    let clock = TestClock::at(T);
    let provider = provider(fixture.hybrid(), &fixture.path("bosun"), &clock);
    provider.build(&view, Detail::CpuAndMemory);

    clock.advance(Duration::from_secs(10));
    fixture.write("cgroup/cpuacct/cpuacct.usage", "65000000000\n");
    fixture.write(
        "cgroup/cpuacct/kubepods/burstable/poduid-1/cpuacct.usage",
        "5000000000\n",
    );
    view.stats[0] = container_stats("c1", T + 10 * SECOND, Some(3_000_000_000), Some(1));
    let summary = provider.build(&view, Detail::CpuAndMemory);

    let rate = |cpu: &Option<CpuStats>| cpu.as_ref().and_then(|c| c.usage_nano_cores);
    assert_eq!(rate(&summary.node.cpu), Some(1_500_000_000));
    let pod = &summary.pods[0];
    assert_eq!(rate(&pod.cpu), Some(200_000_000));
    assert_eq!(rate(&pod.containers[0].cpu), Some(100_000_000));
    // The sidecar's runtime sample did not move: no CPU used.
    assert_eq!(
        rate(&pod.containers[1].cpu),
        None,
        "same timestamp, too soon"
    );
    // CPU and memory only: no file systems, network or limits.
    assert_eq!(
        (
            &summary.node.fs,
            &summary.node.network,
            &summary.node.rlimit
        ),
        (&None, &None, &None)
    );
    assert_eq!((&pod.network, &pod.containers[0].rootfs), (&None, &None));
}

#[test]
fn cgroup_v2_node_memory_comes_from_meminfo_and_the_root_memory_stat() {
    let fixture = Fixture::new();
    fixture.write(
        "cgroup/unified/cpu.stat",
        "usage_usec 60000000\nuser_usec 1\n",
    );
    fixture.write(
        "cgroup/unified/memory.stat",
        "anon 2000000000\ninactive_file 1000000000\npgfault 10\npgmajfault 1\n",
    );
    let pod = "cgroup/unified/kubepods/poduid-2";
    fixture.write(&format!("{pod}/cpu.stat"), "usage_usec 2000000\n");
    fixture.write(&format!("{pod}/memory.current"), "200000000\n");
    fixture.write(
        &format!("{pod}/memory.stat"),
        "anon 100000000\ninactive_file 50000000\npgfault 20\npgmajfault 0\n",
    );
    fixture.write(&format!("{pod}/memory.max"), "268435456\n");
    fixture.write(&format!("{pod}/pids.current"), "3\n");
    // The runtime said nothing of this container's CPU or memory.
    fixture.write(&format!("{pod}/c9/cpu.stat"), "usage_usec 1500000\n");
    fixture.write(&format!("{pod}/c9/memory.current"), "120000000\n");
    fixture.write(&format!("{pod}/c9/memory.stat"), "inactive_file 20000000\n");
    fixture.write(&format!("{pod}/c9/memory.max"), "max\n");
    let view = RuntimeView {
        sandboxes: vec![sandbox("s2", "db", "uid-2", true)],
        containers: vec![container(
            "c9",
            "s2",
            "db",
            api::ContainerState::ContainerRunning,
        )],
        stats: vec![container_stats("c9", T, None, None)],
        ..RuntimeView::default()
    };
    let clock = TestClock::at(T);
    let provider = provider(fixture.unified(), &fixture.path("bosun"), &clock);
    let summary = provider.build(&view, Detail::CpuAndMemory);
    let now = Time::from_unix_nanos(T);

    assert_eq!(
        summary.node.cpu.and_then(|c| c.usage_core_nano_seconds),
        Some(60_000_000_000)
    );
    // usage = MemTotal − MemFree; working set = usage − inactive_file.
    assert_eq!(
        summary.node.memory,
        Some(MemoryStats {
            time: now,
            available_bytes: Some(8_192_000_000 - 4_120_000_000),
            usage_bytes: Some(5_120_000_000),
            working_set_bytes: Some(4_120_000_000),
            rss_bytes: Some(2_000_000_000),
            page_faults: Some(10),
            major_page_faults: Some(1),
        })
    );
    let pod = &summary.pods[0];
    assert_eq!(
        pod.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(2_000_000_000)
    );
    assert_eq!(
        pod.memory,
        Some(MemoryStats {
            time: now,
            available_bytes: Some(268_435_456 - 150_000_000),
            usage_bytes: Some(200_000_000),
            working_set_bytes: Some(150_000_000),
            rss_bytes: Some(100_000_000),
            page_faults: Some(20),
            major_page_faults: Some(0),
        })
    );
    assert_eq!(
        pod.process_stats.as_ref().and_then(|p| p.process_count),
        Some(3)
    );
    let db = &pod.containers[0];
    assert_eq!(
        db.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds),
        Some(1_500_000_000)
    );
    let memory = db.memory.as_ref().expect("db memory");
    assert_eq!(
        (memory.working_set_bytes, memory.available_bytes),
        (Some(100_000_000), None)
    );
}

#[test]
fn without_cgroups_the_node_reads_proc_and_a_pod_sums_its_containers() {
    let fixture = Fixture::new();
    let view = RuntimeView {
        sandboxes: vec![sandbox("s3", "api", "uid-3", true)],
        containers: vec![
            container("a", "s3", "one", api::ContainerState::ContainerRunning),
            container("b", "s3", "two", api::ContainerState::ContainerRunning),
        ],
        stats: vec![
            container_stats("a", T - SECOND, Some(1_000_000_000), Some(10_000_000)),
            container_stats("b", T, Some(2_000_000_000), Some(20_000_000)),
        ],
        ..RuntimeView::default()
    };
    let clock = TestClock::at(T);
    let provider = provider(
        HostPaths::from_mounts(fixture.path("proc"), ""),
        &fixture.path("bosun"),
        &clock,
    );
    let summary = provider.build(&view, Detail::CpuAndMemory);

    // /proc/stat: user + nice + system + irq + softirq + steal ticks of 10 ms.
    let busy_ticks = 2_252_070 + 450_763 + 9_111 + 1_180;
    assert_eq!(
        summary.node.cpu.and_then(|c| c.usage_core_nano_seconds),
        Some(busy_ticks * 10_000_000)
    );
    let memory = summary.node.memory.expect("node memory");
    assert_eq!(memory.usage_bytes, Some(5_120_000_000));
    assert_eq!(memory.working_set_bytes, Some(5_120_000_000 - 512_000_000));
    assert_eq!(memory.rss_bytes, Some(1_024_000_000));
    assert_eq!(
        (memory.page_faults, memory.major_page_faults),
        (Some(777), Some(7))
    );
    assert!(summary.node.system_containers.is_empty());

    let pod = &summary.pods[0];
    assert_eq!(
        pod.cpu,
        Some(CpuStats {
            time: Time::from_unix_nanos(T),
            usage_nano_cores: None,
            usage_core_nano_seconds: Some(3_000_000_000),
        })
    );
    let memory = pod.memory.as_ref().expect("pod memory");
    assert_eq!(memory.working_set_bytes, Some(30_000_000));
    assert_eq!(memory.available_bytes, None);
    assert_eq!(pod.process_stats, None);
}

#[test]
fn the_sandbox_pid_is_read_from_the_verbose_status_info() {
    let info = |json: &str| HashMap::from([("info".to_owned(), json.to_owned())]);
    assert_eq!(
        sandbox_pid(&info(r#"{"pid":4242,"processStatus":"running"}"#)),
        Some(4242)
    );
    assert_eq!(sandbox_pid(&info(r#"{"pid":0}"#)), None);
    assert_eq!(sandbox_pid(&info("not json")), None);
    assert_eq!(sandbox_pid(&HashMap::new()), None);
}

// ---- against a runtime ----------------------------------------------------------------------

/// A runtime that answers the calls a scrape makes from a fixed view, counting the verbose
/// sandbox statuses asked for.
struct FakeRuntime {
    view: RuntimeView,
    image_fs_mountpoint: String,
    status_calls: AtomicUsize,
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl RuntimeService for FakeRuntime {
    async fn version(&self, _: tonic::Request<api::VersionRequest>) -> Reply<api::VersionResponse> {
        Ok(tonic::Response::new(api::VersionResponse {
            version: "0.1.0".to_owned(),
            runtime_name: "fake".to_owned(),
            runtime_version: "0.0.1".to_owned(),
            runtime_api_version: "v1".to_owned(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        _: tonic::Request<api::ListPodSandboxRequest>,
    ) -> Reply<api::ListPodSandboxResponse> {
        Ok(tonic::Response::new(api::ListPodSandboxResponse {
            items: self.view.sandboxes.clone(),
        }))
    }

    async fn list_containers(
        &self,
        _: tonic::Request<api::ListContainersRequest>,
    ) -> Reply<api::ListContainersResponse> {
        Ok(tonic::Response::new(api::ListContainersResponse {
            containers: self.view.containers.clone(),
        }))
    }

    async fn list_container_stats(
        &self,
        _: tonic::Request<api::ListContainerStatsRequest>,
    ) -> Reply<api::ListContainerStatsResponse> {
        Ok(tonic::Response::new(api::ListContainerStatsResponse {
            stats: self.view.stats.clone(),
        }))
    }

    async fn pod_sandbox_status(
        &self,
        request: tonic::Request<api::PodSandboxStatusRequest>,
    ) -> Reply<api::PodSandboxStatusResponse> {
        self.status_calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        let pid = self
            .view
            .sandbox_pids
            .get(&request.pod_sandbox_id)
            .ok_or_else(|| tonic::Status::not_found("no such sandbox"))?;
        let info = if request.verbose {
            HashMap::from([(
                "info".to_owned(),
                format!(r#"{{"pid":{pid},"image":"pause"}}"#),
            )])
        } else {
            HashMap::new()
        };
        Ok(tonic::Response::new(api::PodSandboxStatusResponse {
            info,
            ..Default::default()
        }))
    }
}

#[tonic::async_trait]
impl ImageService for FakeRuntime {
    async fn image_fs_info(
        &self,
        _: tonic::Request<api::ImageFsInfoRequest>,
    ) -> Reply<api::ImageFsInfoResponse> {
        Ok(tonic::Response::new(api::ImageFsInfoResponse {
            image_filesystems: vec![api::FilesystemUsage {
                timestamp: T,
                fs_id: Some(api::FilesystemIdentifier {
                    mountpoint: self.image_fs_mountpoint.clone(),
                }),
                used_bytes: value(1 << 30),
                inodes_used: value(5000),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}

async fn serve(runtime: Arc<FakeRuntime>, socket: &Path) -> CriClient {
    let listener = UnixListener::bind(socket).expect("bind the fake runtime's socket");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::from_arc(runtime.clone()))
            .add_service(ImageServiceServer::from_arc(runtime))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let endpoint = format!("unix://{}", socket.display());
    CriClient::connect(&endpoint, Duration::from_secs(10))
        .await
        .expect("connected to the fake runtime")
}

#[tokio::test]
async fn a_summary_from_a_runtime_reads_the_image_fs_and_each_sandbox_pid_once() {
    let fixture = Fixture::new();
    let view = v1_pod(&fixture);
    let runtime = Arc::new(FakeRuntime {
        view,
        image_fs_mountpoint: fixture.path("").display().to_string(),
        status_calls: AtomicUsize::new(0),
    });
    let client = serve(runtime.clone(), &fixture.path("cri.sock")).await;
    let clock = TestClock::at(T);
    let provider = provider(fixture.hybrid(), &fixture.path("bosun"), &clock);

    let summary = provider.summary(&client).await.expect("summary");
    let image_fs = summary
        .node
        .runtime
        .as_ref()
        .and_then(|r| r.image_fs.as_ref())
        .expect("image fs");
    assert_eq!(
        (image_fs.used_bytes, image_fs.inodes_used),
        (Some(1 << 30), Some(5000))
    );
    assert!(image_fs.capacity_bytes > Some(0), "{image_fs:?}");
    assert_eq!(
        summary
            .node
            .runtime
            .as_ref()
            .and_then(|r| r.container_fs.as_ref()),
        Some(image_fs),
        "writable layers live with the images"
    );
    let pod = &summary.pods[0];
    assert_eq!(
        pod.network.as_ref().map(|n| n.default_interface.rx_bytes),
        Some(Some(5000))
    );

    clock.advance(Duration::from_secs(15));
    let again = provider.summary(&client).await.expect("summary");
    assert!(again.pods[0].network.is_some());
    assert_eq!(
        runtime.status_calls.load(Ordering::SeqCst),
        1,
        "the sandbox's pid is asked for once"
    );

    // The eviction manager's round: the node's signals as the summary has them, no pod, and
    // the CPU rates of the next summary untouched.
    let signals = provider.node_signals(&client).await.expect("node signals");
    assert!(signals.pods.is_empty());
    assert_eq!(
        (
            &signals.node.memory,
            &signals.node.fs,
            &signals.node.runtime
        ),
        (&again.node.memory, &again.node.fs, &again.node.runtime)
    );
    assert!(signals.node.rlimit.is_some() && signals.node.cpu.is_none());
    clock.advance(Duration::from_secs(15));
    let after = provider.summary(&client).await.expect("summary");
    assert!(
        after.pods[0]
            .cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores)
            .is_some(),
        "{:?}",
        after.pods[0].cpu
    );

    let text = provider.scrape_resource_metrics(&client).await;
    assert!(
        text.contains(
            "container_cpu_usage_seconds_total{container=\"app\",namespace=\"default\",pod=\"web\"} 2 1624396278302\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("resource_scrape_error 0\n"), "{text}");
}

#[tokio::test]
async fn a_runtime_that_does_not_answer_is_a_scrape_error() {
    let fixture = Fixture::new();
    let socket = fixture.path("cri.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(
                bosun_tests::fake_cri::VersionOnly,
            ))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    let client = CriClient::connect(
        &format!("unix://{}", socket.display()),
        Duration::from_secs(10),
    )
    .await
    .expect("connect");
    let clock = TestClock::at(T);
    let provider = provider(fixture.hybrid(), &fixture.path("bosun"), &clock);
    let err = provider.summary(&client).await.expect_err("no list calls");
    assert!(matches!(err, StatsError::Runtime { .. }), "{err}");
    assert!(provider
        .scrape_resource_metrics(&client)
        .await
        .ends_with("resource_scrape_error 1\n"));
}

// ---- the real host --------------------------------------------------------------------------

#[test]
fn the_real_hosts_node_numbers_are_plausible() {
    let root_dir = tempfile::tempdir().expect("tempdir");
    let provider = StatsProvider::new(
        HostPaths::host(),
        "/kubepods".to_owned(),
        root_dir.path().to_owned(),
        "this-host".to_owned(),
    );
    let first = provider.build(&RuntimeView::default(), Detail::Full).node;
    // Use some CPU so that the node's counter must move.
    let until = std::time::Instant::now() + Duration::from_millis(50);
    let mut spins = 0u64;
    while std::time::Instant::now() < until {
        spins = std::hint::black_box(spins.wrapping_add(1));
    }
    let second = provider.build(&RuntimeView::default(), Detail::Full).node;

    let usage = |node: &NodeStats| node.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds);
    assert!(usage(&first) > Some(0), "{:?}", first.cpu);
    assert!(
        usage(&second) > usage(&first),
        "{:?} then {:?}",
        first.cpu,
        second.cpu
    );
    let memory = second.memory.as_ref().expect("node memory");
    let working_set = memory.working_set_bytes.expect("working set");
    assert!(working_set > 0, "{memory:?}");
    assert!(Some(working_set) <= memory.usage_bytes, "{memory:?}");
    assert!(memory.available_bytes > Some(0), "{memory:?}");
    let now = Time::from_system_time(SystemTime::now());
    assert!(
        second.start_time.is_some_and(|boot| boot < now),
        "{:?}",
        second.start_time
    );
    let fs = second.fs.as_ref().expect("node fs");
    assert!(
        fs.capacity_bytes >= fs.available_bytes && fs.capacity_bytes > Some(0),
        "{fs:?}"
    );
    let rlimit = second.rlimit.as_ref().expect("rlimit");
    assert!(
        rlimit.maxpid > Some(0) && rlimit.curproc > Some(0),
        "{rlimit:?}"
    );

    let text = resource_metrics(Some(&Summary {
        node: second,
        pods: Vec::new(),
    }));
    assert!(text.contains("\nnode_cpu_usage_seconds_total "), "{text}");
    assert!(text.contains("\nnode_memory_working_set_bytes "), "{text}");
}
