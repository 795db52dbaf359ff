use super::*;
use crate::server::stats::{
    ContainerStats, FsStats, MemoryStats, NodeStats, PodReference, RlimitStats, RuntimeStats,
};

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).expect("fixture parses")
}

fn hard(pairs: &[(&str, &str)]) -> EvictionConfig {
    let hard = map(pairs);
    let empty = BTreeMap::new();
    EvictionConfig::parse(&EvictionFields {
        hard: &hard,
        soft: &empty,
        soft_grace_period: &empty,
        minimum_reclaim: &empty,
        ..EvictionFields::default()
    })
    .expect("valid")
}

#[test]
fn thresholds_parse_as_kubelet_reads_them() {
    let hard = map(&[
        ("memory.available", "100Mi"),
        ("nodefs.available", "10%"),
        ("imagefs.inodesFree", "0%"),
    ]);
    let soft = map(&[("memory.available", "1Gi")]);
    let grace = map(&[("memory.available", "1m30s")]);
    let reclaim = map(&[("memory.available", "500Mi")]);
    let config = EvictionConfig::parse(&EvictionFields {
        hard: &hard,
        soft: &soft,
        soft_grace_period: &grace,
        minimum_reclaim: &reclaim,
        max_pod_grace_period: Some(20),
        pressure_transition_period: Some("30s"),
        monitoring_period: Some("1s"),
    })
    .expect("valid");
    // A zero threshold is disabled.
    assert_eq!(config.thresholds.len(), 3);
    let memory = &config.thresholds[0];
    assert_eq!(memory.signal, Signal::MemoryAvailable);
    assert!(memory.is_hard());
    assert_eq!(memory.value.quantity(0), 100 << 20);
    assert_eq!(
        memory.min_reclaim.as_ref().map(|v| v.quantity(0)),
        Some(500 << 20)
    );
    assert_eq!(config.thresholds[1].value, Value::Percentage(0.1));
    assert_eq!(config.thresholds[1].value.quantity(1000), 100);
    assert_eq!(
        config.thresholds[2].grace_period,
        Some(Duration::from_secs(90))
    );
    assert_eq!(config.max_pod_grace_period, 20);
    assert_eq!(config.pressure_transition_period, Duration::from_secs(30));
    assert_eq!(config.monitoring_period, Duration::from_secs(1));
    // Defaults.
    let empty = BTreeMap::new();
    let defaults = EvictionConfig::parse(&EvictionFields {
        hard: &empty,
        soft: &empty,
        soft_grace_period: &empty,
        minimum_reclaim: &empty,
        ..EvictionFields::default()
    })
    .expect("valid");
    assert_eq!(
        defaults.pressure_transition_period,
        Duration::from_secs(300)
    );
    assert_eq!(defaults.monitoring_period, Duration::from_secs(10));
}

#[test]
fn bad_thresholds_name_the_field_and_the_value() {
    let empty = BTreeMap::new();
    let error = |hard: &[(&str, &str)], soft: &[(&str, &str)], grace: &[(&str, &str)]| {
        let (hard, soft, grace) = (map(hard), map(soft), map(grace));
        EvictionConfig::parse(&EvictionFields {
            hard: &hard,
            soft: &soft,
            soft_grace_period: &grace,
            minimum_reclaim: &empty,
            ..EvictionFields::default()
        })
        .expect_err("invalid")
        .to_string()
    };
    let e = error(&[("memory.avail", "1Gi")], &[], &[]);
    assert!(
        e.starts_with("evictionHard: invalid value \"memory.avail\": unsupported eviction signal"),
        "{e}"
    );
    let e = error(&[("memory.available", "lots")], &[], &[]);
    assert!(
        e.starts_with("evictionHard[memory.available]: invalid value \"lots\": not a quantity"),
        "{e}"
    );
    let e = error(&[("nodefs.available", "120%")], &[], &[]);
    assert_eq!(e, "evictionHard[nodefs.available]: invalid value \"120%\": a percentage must be between 0% and 100%");
    let e = error(&[("memory.available", "-1Mi")], &[], &[]);
    assert_eq!(
        e,
        "evictionHard[memory.available]: invalid value \"-1Mi\": must not be negative"
    );
    let e = error(&[], &[("memory.available", "1Gi")], &[]);
    assert_eq!(e, "evictionSoft[memory.available]: invalid value \"1Gi\": no grace period given in evictionSoftGracePeriod for memory.available");
    let e = error(&[], &[], &[("memory.available", "soon")]);
    assert!(
        e.starts_with("evictionSoftGracePeriod[memory.available]: invalid value \"soon\""),
        "{e}"
    );
    let bad_period = EvictionConfig::parse(&EvictionFields {
        hard: &empty,
        soft: &empty,
        soft_grace_period: &empty,
        minimum_reclaim: &empty,
        pressure_transition_period: Some("5 minutes"),
        ..EvictionFields::default()
    })
    .expect_err("invalid");
    assert_eq!(bad_period.field, "evictionPressureTransitionPeriod");
    assert_eq!(bad_period.value, "5 minutes");
}

#[test]
fn quantities_print_as_kubelet_prints_them() {
    assert_eq!(format_bytes(100 << 20), "100Mi");
    assert_eq!(format_bytes(3 << 30), "3Gi");
    assert_eq!(format_bytes(1536), "1536");
    assert_eq!(format_bytes(2048), "2Ki");
    assert_eq!(format_bytes(1000), "1000");
    assert_eq!(format_bytes(0), "0");
    assert_eq!(format_quantity(5000, Signal::NodeFsInodesFree), "5k");
    assert_eq!(format_quantity(4_194_304, Signal::PidAvailable), "4194304");
}

fn summary(memory_available: u64, working_set: u64) -> Summary {
    Summary {
        node: NodeStats {
            memory: Some(MemoryStats {
                available_bytes: Some(memory_available),
                working_set_bytes: Some(working_set),
                ..MemoryStats::default()
            }),
            fs: Some(FsStats {
                available_bytes: Some(10 << 30),
                capacity_bytes: Some(100 << 30),
                inodes_free: Some(900),
                inodes: Some(1000),
                ..FsStats::default()
            }),
            runtime: Some(RuntimeStats {
                image_fs: Some(FsStats {
                    available_bytes: Some(20 << 30),
                    capacity_bytes: Some(100 << 30),
                    ..FsStats::default()
                }),
                container_fs: None,
            }),
            rlimit: Some(RlimitStats {
                maxpid: Some(32768),
                curproc: Some(768),
                ..RlimitStats::default()
            }),
            ..NodeStats::default()
        },
        pods: Vec::new(),
    }
}

#[test]
fn signals_are_observed_from_the_summary() {
    let observed = observe(&summary(3 << 30, 1 << 30));
    assert_eq!(
        observed[&Signal::MemoryAvailable],
        Observation {
            available: 3 << 30,
            capacity: 4 << 30
        }
    );
    assert_eq!(observed[&Signal::NodeFsAvailable].available, 10 << 30);
    assert_eq!(
        observed[&Signal::NodeFsInodesFree],
        Observation {
            available: 900,
            capacity: 1000
        }
    );
    assert_eq!(observed[&Signal::ImageFsAvailable].capacity, 100 << 30);
    // No inode counts for the image file system: no signal.
    assert!(!observed.contains_key(&Signal::ImageFsInodesFree));
    assert_eq!(
        observed[&Signal::PidAvailable],
        Observation {
            available: 32000,
            capacity: 32768
        }
    );
}

#[test]
fn conditions_stay_true_for_the_transition_period() {
    let mut config = hard(&[("memory.available", "1Gi")]);
    config.pressure_transition_period = Duration::from_secs(300);
    let mut manager = Manager::new(config);
    let low = observe(&summary(512 << 20, 3 << 30));
    let fine = observe(&summary(3 << 30, 1 << 30));
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);

    let decision = manager.step(&low, at(0));
    assert_eq!(
        decision.conditions,
        Pressure::from([Condition::MemoryPressure])
    );
    // A hard threshold acts at once.
    assert_eq!(
        decision.reclaim.map(|t| t.signal),
        Some(Signal::MemoryAvailable)
    );
    // Recovered: nothing to reclaim, but the condition holds for five minutes after it
    // was last seen.
    let decision = manager.step(&fine, at(10));
    assert_eq!(decision.reclaim, None);
    assert!(decision.conditions.contains(&Condition::MemoryPressure));
    assert!(manager
        .step(&fine, at(299))
        .conditions
        .contains(&Condition::MemoryPressure));
    assert!(manager.step(&fine, at(300)).conditions.is_empty());
}

#[test]
fn soft_thresholds_wait_for_their_grace_period_and_minimum_reclaim_holds_them() {
    let empty = BTreeMap::new();
    let soft = map(&[("memory.available", "1Gi")]);
    let grace = map(&[("memory.available", "30s")]);
    let reclaim = map(&[("memory.available", "1Gi")]);
    let config = EvictionConfig::parse(&EvictionFields {
        hard: &empty,
        soft: &soft,
        soft_grace_period: &grace,
        minimum_reclaim: &reclaim,
        max_pod_grace_period: Some(10),
        ..EvictionFields::default()
    })
    .expect("valid");
    let mut manager = Manager::new(config);
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);
    let low = observe(&summary(512 << 20, 3 << 30));
    let decision = manager.step(&low, at(0));
    // Pressure at once, eviction only after the grace period.
    assert!(decision.conditions.contains(&Condition::MemoryPressure));
    assert_eq!(decision.reclaim, None);
    assert_eq!(manager.step(&low, at(29)).reclaim, None);
    let decision = manager.step(&low, at(30));
    let threshold = decision.reclaim.expect("grace period over");
    // 1.5 GiB available is past the threshold, not past threshold + minimum reclaim.
    let better = observe(&summary(1536 << 20, 2 << 30));
    assert!(manager.step(&better, at(40)).reclaim.is_some());
    assert!(!manager.resolved(&better));
    let fine = observe(&summary(3 << 30, 1 << 30));
    assert!(manager.step(&fine, at(50)).reclaim.is_none());
    assert!(manager.resolved(&fine));
    // Soft: the shorter of the pod's grace period and evictionMaxPodGracePeriod.
    let long = pod("spec: {terminationGracePeriodSeconds: 60, containers: [{name: c}]}");
    let short = pod("spec: {terminationGracePeriodSeconds: 3, containers: [{name: c}]}");
    assert_eq!(
        manager.grace_period(&threshold, &long),
        Duration::from_secs(10)
    );
    assert_eq!(
        manager.grace_period(&threshold, &short),
        Duration::from_secs(3)
    );
    let hard_threshold = Threshold {
        grace_period: None,
        ..threshold
    };
    assert_eq!(
        manager.grace_period(&hard_threshold, &long),
        IMMEDIATE_GRACE
    );
}

#[test]
fn memory_is_reclaimed_before_disk() {
    let mut manager = Manager::new(hard(&[
        ("nodefs.available", "50%"),
        ("memory.available", "1Gi"),
    ]));
    let decision = manager.step(&observe(&summary(512 << 20, 3 << 30)), Instant::now());
    assert_eq!(
        decision.conditions,
        Pressure::from([Condition::MemoryPressure, Condition::DiskPressure])
    );
    assert_eq!(
        decision.reclaim.map(|t| t.signal),
        Some(Signal::MemoryAvailable)
    );
}

fn named(name: &str, extra: &str) -> Arc<Pod> {
    Arc::new(pod(&format!(
        "metadata: {{name: {name}, uid: {name}}}\nspec:\n{extra}"
    )))
}

fn using(memory: i64) -> PodUsage {
    PodUsage {
        memory: Some(memory),
        processes: Some(memory),
        ..PodUsage::default()
    }
}

#[test]
fn memory_ranking_is_over_request_then_priority_then_usage_above_request() {
    let mut pods = vec![
        named(
            "burstable-within",
            "  containers: [{name: c, resources: {requests: {memory: 100Mi}}}]\n",
        ),
        named("besteffort-small", "  containers: [{name: c}]\n"),
        named("besteffort-big", "  containers: [{name: c}]\n"),
        named(
            "high-priority",
            "  priority: 1000\n  containers: [{name: c}]\n",
        ),
        named("no-stats", "  containers: [{name: c}]\n"),
    ];
    let usage = HashMap::from([
        ("burstable-within".to_owned(), using(90 << 20)),
        ("besteffort-small".to_owned(), using(10 << 20)),
        ("besteffort-big".to_owned(), using(50 << 20)),
        ("high-priority".to_owned(), using(500 << 20)),
    ]);
    rank(&mut pods, Signal::MemoryAvailable, &usage);
    let order: Vec<&str> = pods
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(
        order,
        [
            "no-stats",
            "besteffort-big",
            "besteffort-small",
            "high-priority",
            "burstable-within"
        ]
    );
}

#[test]
fn pid_ranking_is_priority_then_processes() {
    let mut pods = vec![
        named("few", "  containers: [{name: c}]\n"),
        named(
            "many-important",
            "  priority: 10\n  containers: [{name: c}]\n",
        ),
        named("many", "  containers: [{name: c}]\n"),
    ];
    let usage = HashMap::from([
        ("few".to_owned(), using(2)),
        ("many-important".to_owned(), using(200)),
        ("many".to_owned(), using(100)),
    ]);
    rank(&mut pods, Signal::PidAvailable, &usage);
    let order: Vec<&str> = pods
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect();
    assert_eq!(order, ["many", "few", "many-important"]);
}

#[test]
fn the_eviction_message_is_kubelets() {
    let mut manager = Manager::new(hard(&[("memory.available", "25%")]));
    let observations = observe(&summary(512 << 20, 3584 << 20));
    let decision = manager.step(&observations, Instant::now());
    let threshold = decision.reclaim.clone().expect("met");
    let pod = named(
        "web",
        "  containers:\n  - {name: app, resources: {requests: {memory: 64Mi}}}\n  - {name: small}\n  - {name: sidecar, resources: {requests: {memory: 1Gi}}}\n",
    );
    let usage = PodUsage {
        memory: Some(300 << 20),
        containers: vec![
            ContainerUsage {
                name: "app".into(),
                memory: Some(200 << 20),
                ..ContainerUsage::default()
            },
            ContainerUsage {
                name: "small".into(),
                memory: Some(1536),
                ..ContainerUsage::default()
            },
            ContainerUsage {
                name: "sidecar".into(),
                memory: Some(100 << 20),
                ..ContainerUsage::default()
            },
        ],
        ..PodUsage::default()
    };
    let message = eviction_message(&threshold, &decision.met, &observations, &pod, Some(&usage));
    assert_eq!(
        message,
        "The node was low on resource: memory. Threshold quantity: 1Gi, available: 512Mi. \
         Container app was using 200Mi, request is 64Mi, has larger consumption of memory. \
         Container small was using 1536, request is 0, has larger consumption of memory. "
    );
}

#[test]
fn local_storage_limits_evict_with_kubelets_messages() {
    let pod = pod(
        "metadata: {name: p, uid: p}\nspec:\n  volumes:\n  - {name: scratch, emptyDir: {sizeLimit: 1Mi}}\n  containers:\n  - {name: app, resources: {limits: {ephemeral-storage: 2Mi}}}\n  - {name: log, resources: {limits: {ephemeral-storage: 4Mi}}}\n",
    );
    let mut usage = PodUsage {
        ephemeral_storage: Some(1 << 20),
        volumes: BTreeMap::from([("scratch".to_owned(), 512 << 10)]),
        containers: vec![ContainerUsage {
            name: "app".into(),
            ephemeral_storage: Some(1 << 20),
            ..ContainerUsage::default()
        }],
        ..PodUsage::default()
    };
    assert_eq!(local_storage_violation(&pod, &usage), None);
    usage.containers[0].ephemeral_storage = Some(3 << 20);
    assert_eq!(
        local_storage_violation(&pod, &usage).as_deref(),
        Some("Container app exceeded its local ephemeral storage limit \"2Mi\". ")
    );
    usage.ephemeral_storage = Some(7 << 20);
    assert_eq!(
        local_storage_violation(&pod, &usage).as_deref(),
        Some("Pod ephemeral local storage usage exceeds the total limit of containers 6Mi. ")
    );
    usage.volumes.insert("scratch".into(), 2 << 20);
    assert_eq!(
        local_storage_violation(&pod, &usage).as_deref(),
        Some("Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". ")
    );
}

#[test]
fn only_pods_with_a_local_storage_limit_need_their_usage_read() {
    let limited = [
        "metadata: {name: p}\nspec:\n  volumes:\n  - {name: s, emptyDir: {sizeLimit: 1Mi}}\n  containers: [{name: c}]\n",
        "metadata: {name: p}\nspec:\n  containers:\n  - {name: c, resources: {limits: {ephemeral-storage: 2Mi}}}\n",
    ];
    for yaml in limited {
        assert!(has_local_storage_limit(&pod(yaml)), "{yaml}");
    }
    let unlimited = [
        "metadata: {name: p}\nspec:\n  volumes:\n  - {name: s, emptyDir: {}}\n  containers:\n  - {name: c, resources: {limits: {memory: 1Gi}}}\n",
        "metadata: {name: p}\nspec: {containers: [{name: c}]}\n",
    ];
    for yaml in unlimited {
        assert!(!has_local_storage_limit(&pod(yaml)), "{yaml}");
    }
}

#[test]
fn admission_under_pressure_is_kubelets() {
    let memory = Pressure::from([Condition::MemoryPressure]);
    let disk = Pressure::from([Condition::DiskPressure]);
    let best_effort = pod("metadata: {name: b}\nspec: {containers: [{name: c}]}");
    let burstable = pod(
        "metadata: {name: b}\nspec: {containers: [{name: c, resources: {requests: {cpu: 10m}}}]}",
    );
    let tolerating = pod(
        "metadata: {name: b}\nspec:\n  tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]\n  containers: [{name: c}]\n",
    );
    let critical = pod("metadata: {name: b}\nspec: {priorityClassName: system-node-critical, containers: [{name: c}]}");
    let static_pod = pod("metadata: {name: b, annotations: {kubernetes.io/config.source: file}}\nspec: {containers: [{name: c}]}");

    assert!(admit(&Pressure::new(), &best_effort, true).is_ok());
    let rejection = admit(&memory, &best_effort, true).expect_err("refused");
    assert_eq!(rejection.reason, "Evicted");
    assert_eq!(
        rejection.message,
        "The node had condition: [MemoryPressure]. "
    );
    assert_eq!(
        rejection.status_message(),
        "Pod was rejected: The node had condition: [MemoryPressure]. "
    );
    assert!(admit(&memory, &burstable, true).is_ok());
    assert!(admit(&memory, &tolerating, true).is_ok());
    assert!(admit(&disk, &burstable, true).is_err());
    let both = Pressure::from([Condition::MemoryPressure, Condition::DiskPressure]);
    assert_eq!(
        admit(&both, &tolerating, true)
            .expect_err("refused")
            .message,
        "The node had condition: [MemoryPressure DiskPressure]. "
    );
    // Critical pods always; static pods in a cluster, not standalone (module docs).
    assert!(admit(&disk, &critical, false).is_ok());
    assert!(admit(&disk, &static_pod, true).is_ok());
    assert!(admit(&disk, &static_pod, false).is_err());
}

#[test]
fn critical_pods_are_kubelets_and_standalone_static_pods_are_not() {
    let mirror = pod("metadata: {name: m, annotations: {kubernetes.io/config.mirror: abc}}\nspec: {containers: []}");
    let priority = pod("metadata: {name: m}\nspec: {priority: 2000001000, containers: []}");
    let plain = pod("metadata: {name: m, annotations: {kubernetes.io/config.source: api}}\nspec: {containers: []}");
    assert!(is_critical(&mirror, true));
    assert!(is_critical(&priority, true));
    assert!(is_critical(&priority, false));
    assert!(!is_critical(&plain, true));
}

#[test]
fn pod_usage_reads_the_summary_logs_and_empty_dirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = spec::NodeContext {
        pod_logs_dir: dir.path().join("logs"),
        pods_dir: dir.path().join("pods"),
        ..spec::NodeContext::default()
    };
    let pod = pod(
        "metadata: {name: p, namespace: default, uid: u1}\nspec:\n  volumes:\n  - {name: scratch, emptyDir: {}}\n  - {name: ram, emptyDir: {medium: Memory}}\n  containers: [{name: app}]\n",
    );
    let scratch = ctx
        .pods_dir
        .join("u1/volumes/kubernetes.io~empty-dir/scratch");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    std::fs::write(scratch.join("data"), vec![1u8; 64 << 10]).expect("write");
    let logs = ctx.pod_logs_dir.join("default_p_u1/app");
    std::fs::create_dir_all(&logs).expect("mkdir");
    std::fs::write(logs.join("0.log"), vec![1u8; 16 << 10]).expect("write");
    let stats = PodStats {
        pod_ref: PodReference {
            name: "p".into(),
            namespace: "default".into(),
            uid: "u1".into(),
        },
        memory: Some(MemoryStats {
            working_set_bytes: Some(5 << 20),
            ..MemoryStats::default()
        }),
        containers: vec![ContainerStats {
            name: "app".into(),
            rootfs: Some(FsStats {
                used_bytes: Some(8 << 10),
                inodes_used: Some(3),
                ..FsStats::default()
            }),
            ..ContainerStats::default()
        }],
        ..PodStats::default()
    };
    let dirs = PodDirs {
        pods_dir: ctx.pods_dir.clone(),
        ctx: Arc::new(ctx),
    };
    let usage = pod_usage(&pod, Some(&stats), &dirs);
    assert_eq!(usage.memory, Some(5 << 20));
    let scratch_bytes = usage.volumes["scratch"];
    assert!(scratch_bytes >= 64 << 10, "{scratch_bytes}");
    assert!(!usage.volumes.contains_key("ram"));
    let app = &usage.containers[0];
    let app_bytes = app.ephemeral_storage.expect("measured");
    assert!(app_bytes >= (8 << 10) + (16 << 10), "{app_bytes}");
    assert_eq!(usage.ephemeral_storage, Some(app_bytes + scratch_bytes));
}
