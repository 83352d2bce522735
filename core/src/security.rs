//! A container's security context as Kubernetes resolves it: the pod's
//! settings, overridden field by field by the container's; capabilities
//! added to and dropped from the runtime's default set. Checked by the
//! StatefulSet API, applied by the node agent.

use std::collections::BTreeSet;

use petset_proto::v1;

/// Every Linux capability, without `CAP_`.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// What a container gets when it asks for nothing: the default set of
/// containerd and Docker, which Kubernetes' containers run with.
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The highest uid or gid Kubernetes accepts.
pub const MAX_ID: i64 = 2_147_483_647;

/// A capability's name without `CAP_`, upper case (`net_admin` and
/// `CAP_NET_ADMIN` are `NET_ADMIN`), or `ALL`.
pub fn capability(name: &str) -> Result<&'static str, String> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok("ALL");
    }
    CAPABILITIES
        .iter()
        .find(|c| **c == bare)
        .copied()
        .ok_or_else(|| {
            format!("{name:?} is not a Linux capability (e.g. NET_BIND_SERVICE, or ALL)")
        })
}

/// Checks a uid or gid.
pub fn id(value: i64) -> Result<(), String> {
    if (0..=MAX_ID).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "must be between 0 and {MAX_ID}, inclusive, got {value}"
        ))
    }
}

/// How a container runs, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// Its user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its supplementary groups (the pod's, and its fsGroup).
    pub groups: Vec<u32>,
    /// Its capability bounding set (all it may hold; a non-root user holds
    /// none of them after exec).
    pub capabilities: BTreeSet<&'static str>,
    /// no_new_privs.
    pub no_new_privs: bool,
    /// Its root filesystem read-only.
    pub read_only_root: bool,
    /// Refuse to run as uid 0.
    pub run_as_non_root: bool,
}

impl Effective {
    /// Resolves the pod's and the container's contexts; `default_uid` and
    /// `default_gid` are whom the container runs as when neither says
    /// (the runtime's user). Names were checked by the API; one that is
    /// not a capability is left out.
    pub fn resolve(
        pod: Option<&v1::PodSecurityContext>,
        container: Option<&v1::SecurityContext>,
        default_uid: u32,
        default_gid: u32,
    ) -> Effective {
        let pod = pod.cloned().unwrap_or_default();
        let c = container.cloned().unwrap_or_default();
        let uid = c.run_as_user.or(pod.run_as_user);
        let gid = c.run_as_group.or(pod.run_as_group);
        let mut groups: Vec<u32> = pod
            .supplemental_groups
            .iter()
            .chain(pod.fs_group.iter())
            .map(|g| *g as u32)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let privileged = c.privileged.unwrap_or(false);
        let mut capabilities: BTreeSet<&'static str> = if privileged {
            CAPABILITIES.into_iter().collect()
        } else {
            DEFAULT_CAPABILITIES.into_iter().collect()
        };
        if let Some(caps) = &c.capabilities {
            for name in caps.drop.iter().filter_map(|n| capability(n).ok()) {
                if name == "ALL" {
                    capabilities.clear();
                } else {
                    capabilities.remove(name);
                }
            }
            for name in caps.add.iter().filter_map(|n| capability(n).ok()) {
                if name == "ALL" {
                    capabilities.extend(CAPABILITIES);
                } else {
                    capabilities.insert(name);
                }
            }
        }
        Effective {
            uid: uid.map_or(default_uid, |u| u as u32),
            // A uid given without a group runs in group 0, as containerd
            // and Docker do for a numeric user.
            gid: gid.map_or(if uid.is_some() { 0 } else { default_gid }, |g| g as u32),
            groups,
            capabilities,
            no_new_privs: !c.allow_privilege_escalation.unwrap_or(true),
            read_only_root: c.read_only_root_filesystem.unwrap_or(false),
            run_as_non_root: c.run_as_non_root.or(pod.run_as_non_root).unwrap_or(false),
        }
    }

    /// util-linux setpriv's options that put a process in this state (it
    /// must start as root).
    pub fn setpriv_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
        ];
        if self.groups.is_empty() {
            args.push("--clear-groups".into());
        } else {
            let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
            args.push(format!("--groups={}", groups.join(",")));
        }
        let mut bounding = vec!["-all".to_string()];
        bounding.extend(
            self.capabilities
                .iter()
                .map(|c| format!("+{}", c.to_ascii_lowercase())),
        );
        args.push(format!("--bounding-set={}", bounding.join(",")));
        args.push("--inh-caps=-all".into());
        if self.no_new_privs {
            args.push("--no-new-privs".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_overrides_the_pod_and_capabilities_start_from_the_default_set() {
        let pod = v1::PodSecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![4000, 2000],
            fs_group: Some(2000),
            run_as_non_root: Some(true),
        };
        let container = v1::SecurityContext {
            run_as_user: Some(1001),
            capabilities: Some(v1::Capabilities {
                add: vec!["net_admin".into(), "CAP_SYS_TIME".into()],
                drop: vec!["KILL".into(), "MKNOD".into()],
            }),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        };
        let e = Effective::resolve(Some(&pod), Some(&container), 0, 0);
        assert_eq!((e.uid, e.gid), (1001, 3000));
        assert_eq!(e.groups, [2000, 4000]);
        assert!(e.capabilities.contains("NET_ADMIN") && e.capabilities.contains("SYS_TIME"));
        assert!(!e.capabilities.contains("KILL") && !e.capabilities.contains("MKNOD"));
        assert_eq!(e.capabilities.len(), DEFAULT_CAPABILITIES.len());
        assert!(e.no_new_privs && e.run_as_non_root && !e.read_only_root);
        let args = e.setpriv_args();
        assert_eq!(
            args[..3],
            ["--reuid=1001", "--regid=3000", "--groups=2000,4000"]
        );
        assert!(args.contains(&"--no-new-privs".to_string()));
        assert!(
            args[3].starts_with("--bounding-set=-all,+audit_write,+chown,"),
            "{}",
            args[3]
        );

        // Nothing asked: the runtime's user, default capabilities.
        let e = Effective::resolve(None, None, 0, 0);
        assert_eq!((e.uid, e.gid, e.no_new_privs), (0, 0, false));
        assert_eq!(e.setpriv_args()[2], "--clear-groups");
        assert_eq!(e.capabilities, DEFAULT_CAPABILITIES.into_iter().collect());
        // A uid alone runs in group 0; drop ALL leaves none, add ALL all.
        let only = |c: v1::SecurityContext| Effective::resolve(None, Some(&c), 0, 0);
        let dropped = only(v1::SecurityContext {
            run_as_user: Some(7),
            capabilities: Some(v1::Capabilities {
                add: vec![],
                drop: vec!["ALL".into()],
            }),
            ..Default::default()
        });
        assert_eq!((dropped.uid, dropped.gid), (7, 0));
        assert!(dropped.capabilities.is_empty());
        assert_eq!(dropped.setpriv_args()[3], "--bounding-set=-all");
        let privileged = only(v1::SecurityContext {
            privileged: Some(true),
            ..Default::default()
        });
        assert_eq!(privileged.capabilities.len(), CAPABILITIES.len());
    }

    #[test]
    fn names_and_ids_are_checked() {
        assert_eq!(capability("cap_net_raw"), Ok("NET_RAW"));
        assert_eq!(capability("all"), Ok("ALL"));
        assert!(capability("NET_MAGIC").is_err());
        assert!(id(-1).is_err() && id(MAX_ID + 1).is_err() && id(0).is_ok());
    }
}
