//! Security contexts: namespaces (`NamespacesForPod`), the sandbox's
//! (`generatePodSandboxLinuxConfig`) and each container's (`determineEffectiveSecurityContext`),
//! with seccomp (`getSeccompProfile`) and AppArmor (`getAppArmorProfile`) profiles.

use bosun_cri::api;
use bosun_cri::api::security_profile::ProfileType;
use k8s_openapi::api::core::v1::{
    Container, Pod, PodSecurityContext, SELinuxOptions, SeccompProfile, SecurityContext,
};

use super::{NodeContext, SpecError};

/// Paths masked in `/proc` and `/sys` unless `procMount: Unmasked` (kept in step with
/// moby's defaults, as kubelet's `securitycontext.defaultMaskedPaths` is).
pub const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only unless `procMount: Unmasked`.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

fn pod_security_context(pod: &Pod) -> Option<&PodSecurityContext> {
    pod.spec.as_ref()?.security_context.as_ref()
}

/// The pod's namespaces, shared by its sandbox and every container: the node's network,
/// PID and IPC namespaces for `hostNetwork`, `hostPID` and `hostIPC`; otherwise the pod's
/// own, except PID, which is per container unless `shareProcessNamespace`. User namespaces
/// are the node's (`hostUsers: false` is refused).
pub(crate) fn namespace_options(pod: &Pod) -> Result<api::NamespaceOption, SpecError> {
    let spec = pod.spec.as_ref();
    let flag = |get: fn(&k8s_openapi::api::core::v1::PodSpec) -> Option<bool>| {
        spec.and_then(get).unwrap_or(false)
    };
    if spec.and_then(|s| s.host_users) == Some(false) {
        return Err(SpecError::Unsupported {
            path: "spec.hostUsers".into(),
            what: "user namespaces (hostUsers: false)".into(),
        });
    }
    let node_or_pod = |on_node: bool| {
        if on_node {
            api::NamespaceMode::Node
        } else {
            api::NamespaceMode::Pod
        }
    };
    let pid = if flag(|s| s.host_pid) {
        api::NamespaceMode::Node
    } else if flag(|s| s.share_process_namespace) {
        api::NamespaceMode::Pod
    } else {
        api::NamespaceMode::Container
    };
    Ok(api::NamespaceOption {
        network: node_or_pod(flag(|s| s.host_network)) as i32,
        pid: pid as i32,
        ipc: node_or_pod(flag(|s| s.host_ipc)) as i32,
        target_id: String::new(),
        userns_options: Some(api::UserNamespace {
            mode: api::NamespaceMode::Node as i32,
            ..Default::default()
        }),
    })
}

/// `fsGroup` first, then `supplementalGroups`, as kubelet orders them, and the policy.
fn supplemental_groups(pod: &Pod) -> Result<(Vec<i64>, i32), SpecError> {
    let Some(context) = pod_security_context(pod) else {
        return Ok((Vec::new(), api::SupplementalGroupsPolicy::Merge as i32));
    };
    let groups = context
        .fs_group
        .into_iter()
        .chain(context.supplemental_groups.iter().flatten().copied())
        .collect();
    let policy = match context.supplemental_groups_policy.as_deref() {
        None | Some("Merge") => api::SupplementalGroupsPolicy::Merge,
        Some("Strict") => api::SupplementalGroupsPolicy::Strict,
        Some(other) => {
            return Err(SpecError::Invalid {
                path: "spec.securityContext.supplementalGroupsPolicy".into(),
                value: other.to_owned(),
                reason: "must be Merge or Strict".into(),
            })
        }
    };
    Ok((groups, policy as i32))
}

fn selinux(options: Option<&SELinuxOptions>) -> Option<api::SeLinuxOption> {
    options.map(|o| api::SeLinuxOption {
        user: o.user.clone().unwrap_or_default(),
        role: o.role.clone().unwrap_or_default(),
        r#type: o.type_.clone().unwrap_or_default(),
        level: o.level.clone().unwrap_or_default(),
    })
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    pod.spec.iter().flat_map(|spec| {
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
    })
}

/// Whether any container (init, regular or ephemeral) is privileged; the sandbox must then
/// be privileged too.
fn has_privileged_container(pod: &Pod) -> bool {
    let privileged = |sc: Option<&SecurityContext>| sc.and_then(|sc| sc.privileged) == Some(true);
    let ephemeral = pod
        .spec
        .iter()
        .flat_map(|s| s.ephemeral_containers.iter().flatten());
    all_containers(pod).any(|c| privileged(c.security_context.as_ref()))
        || ephemeral
            .into_iter()
            .any(|c| privileged(c.security_context.as_ref()))
}

/// The sandbox's security context. Its seccomp profile is always RuntimeDefault, whatever the
/// pod asks for: kubelet forces it so that pods can pick stricter profiles for their
/// containers (kubernetes#84623); the pod's profile applies to containers.
pub(crate) fn sandbox_security_context(
    pod: &Pod,
) -> Result<api::LinuxSandboxSecurityContext, SpecError> {
    let context = pod_security_context(pod);
    let (supplemental_groups, supplemental_groups_policy) = supplemental_groups(pod)?;
    Ok(api::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options(pod)?),
        selinux_options: selinux(context.and_then(|c| c.se_linux_options.as_ref())),
        run_as_user: context
            .and_then(|c| c.run_as_user)
            .map(|value| api::Int64Value { value }),
        run_as_group: context
            .and_then(|c| c.run_as_group)
            .map(|value| api::Int64Value { value }),
        supplemental_groups,
        supplemental_groups_policy,
        privileged: has_privileged_container(pod),
        seccomp: Some(api::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..Default::default()
    })
}

/// The container's security context as the pod's and its own combine
/// (`DetermineEffectiveSecurityContext`): the container's fields override the pod's
/// `runAsUser`, `runAsGroup`, `runAsNonRoot` and `seLinuxOptions`; the rest is the container's.
fn effective_security_context(pod: &Pod, container: &Container) -> SecurityContext {
    let mut effective = SecurityContext::default();
    if let Some(pod_context) = pod_security_context(pod) {
        effective.se_linux_options = pod_context.se_linux_options.clone();
        effective.run_as_user = pod_context.run_as_user;
        effective.run_as_group = pod_context.run_as_group;
        effective.run_as_non_root = pod_context.run_as_non_root;
    }
    let Some(own) = &container.security_context else {
        return effective;
    };
    macro_rules! override_with_own {
        ($($field:ident),*) => {
            $(if own.$field.is_some() {
                effective.$field = own.$field.clone();
            })*
        };
    }
    override_with_own!(
        se_linux_options,
        capabilities,
        privileged,
        run_as_user,
        run_as_group,
        run_as_non_root,
        read_only_root_filesystem,
        allow_privilege_escalation,
        proc_mount
    );
    effective
}

/// The container's security context for CRI. Fails, as kubelet does, when `runAsNonRoot` is
/// set and `runAsUser` is 0 (the image's user is checked by [`verify_run_as_non_root`]).
pub(crate) fn container_security_context(
    pod: &Pod,
    container: &Container,
    path: &str,
    ctx: &NodeContext,
) -> Result<api::LinuxContainerSecurityContext, SpecError> {
    let effective = effective_security_context(pod, container);
    check_run_as_non_root(&effective, None, path)?;
    let (supplemental_groups, supplemental_groups_policy) = supplemental_groups(pod)?;
    let unmasked = effective.proc_mount.as_deref() == Some("Unmasked");
    let paths = |defaults: &[&str]| {
        if unmasked {
            Vec::new()
        } else {
            defaults.iter().map(|p| (*p).to_owned()).collect()
        }
    };
    let (apparmor, legacy_apparmor) = apparmor_profile(pod, container, path)?;
    let mut context = api::LinuxContainerSecurityContext {
        capabilities: effective.capabilities.as_ref().map(|caps| api::Capability {
            add_capabilities: caps.add.clone().unwrap_or_default(),
            drop_capabilities: caps.drop.clone().unwrap_or_default(),
            add_ambient_capabilities: Vec::new(),
        }),
        privileged: effective.privileged.unwrap_or(false),
        namespace_options: Some(namespace_options(pod)?),
        selinux_options: selinux(effective.se_linux_options.as_ref()),
        run_as_user: effective.run_as_user.map(|value| api::Int64Value { value }),
        run_as_group: effective
            .run_as_group
            .map(|value| api::Int64Value { value }),
        readonly_rootfs: effective.read_only_root_filesystem.unwrap_or(false),
        supplemental_groups,
        supplemental_groups_policy,
        no_new_privs: effective.allow_privilege_escalation == Some(false),
        masked_paths: paths(&DEFAULT_MASKED_PATHS),
        readonly_paths: paths(&DEFAULT_READONLY_PATHS),
        seccomp: Some(seccomp_profile(pod, container, path, ctx)?),
        apparmor,
        ..Default::default()
    };
    #[allow(
        deprecated,
        reason = "older runtimes read only the string form; kubelet sets both"
    )]
    {
        context.apparmor_profile = legacy_apparmor;
    }
    Ok(context)
}

/// kubelet's `verifyRunAsNonRoot`: with `runAsNonRoot`, refuses a container whose
/// `runAsUser` is 0, or, without `runAsUser`, whose image runs as root (`image_uid` 0) or as a
/// non-numeric user that cannot be checked. `image_uid` and `image_username` are what
/// `ImageStatus` reports (`uid`, `username`); `None` and `""` when the image names no user,
/// which means root, as kubelet reads it.
pub fn verify_run_as_non_root(
    pod: &Pod,
    container: &Container,
    kind: super::ContainerKind,
    image_uid: Option<i64>,
    image_username: &str,
) -> Result<(), SpecError> {
    let path = super::container_path(pod, container, kind);
    let effective = effective_security_context(pod, container);
    check_run_as_non_root(&effective, Some((image_uid, image_username)), &path)
}

fn check_run_as_non_root(
    effective: &SecurityContext,
    image_user: Option<(Option<i64>, &str)>,
    path: &str,
) -> Result<(), SpecError> {
    if effective.run_as_non_root != Some(true) {
        return Ok(());
    }
    let refuse = |reason: String| {
        Err(SpecError::RunAsNonRoot {
            path: format!("{path}.securityContext.runAsNonRoot"),
            reason,
        })
    };
    match (effective.run_as_user, image_user) {
        (Some(0), _) => refuse("runAsUser is 0".into()),
        // Without the image, only an explicit runAsUser can be checked.
        (Some(_), _) | (None, None) => Ok(()),
        (None, Some((Some(0), _))) => refuse("the image runs as root".into()),
        (None, Some((None, username))) if !username.is_empty() => refuse(format!(
            "the image's user {username:?} is not numeric, so it cannot be checked"
        )),
        // An image that names no user runs as root.
        (None, Some((None, _))) => refuse("the image runs as root".into()),
        (None, Some((Some(_), _))) => Ok(()),
    }
}

/// The container's seccomp profile: the container's `seccompProfile`, else the pod's, else
/// RuntimeDefault with kubelet's `seccompDefault` on and Unconfined without.
fn seccomp_profile(
    pod: &Pod,
    container: &Container,
    path: &str,
    ctx: &NodeContext,
) -> Result<api::SecurityProfile, SpecError> {
    let own = container
        .security_context
        .as_ref()
        .and_then(|c| c.seccomp_profile.as_ref())
        .map(|profile| (profile, format!("{path}.securityContext.seccompProfile")));
    let from_pod = || {
        pod_security_context(pod)
            .and_then(|c| c.seccomp_profile.as_ref())
            .map(|profile| (profile, "spec.securityContext.seccompProfile".to_owned()))
    };
    let profile = |profile_type: ProfileType, localhost_ref: String| api::SecurityProfile {
        profile_type: profile_type as i32,
        localhost_ref,
    };
    let Some((seccomp, field)) = own.or_else(from_pod) else {
        let default = if ctx.seccomp_default {
            ProfileType::RuntimeDefault
        } else {
            ProfileType::Unconfined
        };
        return Ok(profile(default, String::new()));
    };
    let SeccompProfile {
        type_,
        localhost_profile,
    } = seccomp;
    Ok(match type_.as_str() {
        "RuntimeDefault" => profile(ProfileType::RuntimeDefault, String::new()),
        "Localhost" => match localhost_profile.as_deref().filter(|p| !p.is_empty()) {
            Some(name) => {
                let file = ctx.seccomp_profile_root.join(name);
                profile(ProfileType::Localhost, file.to_string_lossy().into_owned())
            }
            None => {
                return Err(SpecError::Invalid {
                    path: format!("{field}.localhostProfile"),
                    value: String::new(),
                    reason: "required when type is Localhost".into(),
                })
            }
        },
        _ => profile(ProfileType::Unconfined, String::new()),
    })
}

/// The container's AppArmor profile (kubelet's `apparmor.GetProfile`): the container's
/// `appArmorProfile`, else the deprecated per-container pod annotation, else the pod's.
/// Returns the profile and its deprecated string form; unset when nothing asks for one.
fn apparmor_profile(
    pod: &Pod,
    container: &Container,
    path: &str,
) -> Result<(Option<api::SecurityProfile>, String), SpecError> {
    let own = container
        .security_context
        .as_ref()
        .and_then(|c| c.app_armor_profile.as_ref())
        .map(|p| {
            let field = format!("{path}.securityContext.appArmorProfile");
            (p.type_.clone(), p.localhost_profile.clone(), field)
        });
    let annotation = || {
        let key = format!("{APPARMOR_ANNOTATION_PREFIX}{}", container.name);
        let value = pod.metadata.annotations.as_ref()?.get(&key)?;
        let field = format!("metadata.annotations[{key}]");
        match value.as_str() {
            "runtime/default" => Some(("RuntimeDefault".to_owned(), None, field)),
            "unconfined" => Some(("Unconfined".to_owned(), None, field)),
            // Anything else is an invalid annotation, which kubelet ignores.
            other => other
                .strip_prefix("localhost/")
                .map(|name| ("Localhost".to_owned(), Some(name.to_owned()), field)),
        }
    };
    let from_pod = || {
        pod_security_context(pod)
            .and_then(|c| c.app_armor_profile.as_ref())
            .map(|p| {
                let field = "spec.securityContext.appArmorProfile".to_owned();
                (p.type_.clone(), p.localhost_profile.clone(), field)
            })
    };
    let Some((kind, localhost, field)) = own.or_else(annotation).or_else(from_pod) else {
        return Ok((None, String::new()));
    };
    let profile = |profile_type: ProfileType, localhost_ref: String| {
        Some(api::SecurityProfile {
            profile_type: profile_type as i32,
            localhost_ref,
        })
    };
    Ok(match kind.as_str() {
        "RuntimeDefault" => (
            profile(ProfileType::RuntimeDefault, String::new()),
            "runtime/default".into(),
        ),
        "Unconfined" => (
            profile(ProfileType::Unconfined, String::new()),
            "unconfined".into(),
        ),
        "Localhost" => match localhost.filter(|name| !name.is_empty()) {
            Some(name) => (
                profile(ProfileType::Localhost, name.clone()),
                format!("localhost/{name}"),
            ),
            None => {
                return Err(SpecError::Invalid {
                    path: format!("{field}.localhostProfile"),
                    value: String::new(),
                    reason: "required when type is Localhost".into(),
                })
            }
        },
        other => {
            return Err(SpecError::Invalid {
                path: format!("{field}.type"),
                value: other.to_owned(),
                reason: "must be RuntimeDefault, Unconfined or Localhost".into(),
            })
        }
    })
}
