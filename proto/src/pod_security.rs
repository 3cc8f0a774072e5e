//! Pod Security admission, as Kubernetes' Pod Security Standards define it, chosen per
//! namespace by its `pod-security.kubernetes.io/enforce` label: `privileged` (anything goes),
//! `baseline` (the default here: no privileged containers, no host namespaces, no added
//! capabilities beyond the baseline list, no Unconfined seccomp), or `restricted` (baseline,
//! and also: must run as non-root, must not allow privilege escalation, may add only
//! NET_BIND_SERVICE). Containers are hardened at run time whatever the level; the level decides
//! what a pod may ask to loosen.
use crate::api::{Container, PodSpec};

pub const ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

/// Capabilities the baseline level lets a container add (Kubernetes' list).
const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    /// The level a namespace label names; unset is baseline.
    pub fn parse(label: Option<&str>) -> Result<Level, String> {
        match label {
            None | Some("baseline") => Ok(Level::Baseline),
            Some("privileged") => Ok(Level::Privileged),
            Some("restricted") => Ok(Level::Restricted),
            Some(other) => Err(format!(
                "label {ENFORCE_LABEL} must be privileged, baseline or restricted, got {other:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

fn cap_name(c: &str) -> String {
    c.trim_start_matches("CAP_").to_ascii_uppercase()
}

/// Everything `spec` asks for that `level` forbids, each naming its field.
pub fn violations(level: Level, spec: &PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    if level == Level::Privileged {
        return v;
    }
    for (on, field) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if on {
            v.push(format!("spec.{field}: host namespaces are not allowed"));
        }
    }
    let pod_sc = spec.security_context.as_ref();
    if let Some(p) = pod_sc.and_then(|s| s.seccomp_profile.as_ref())
        && p.type_ == "Unconfined"
    {
        v.push("spec.securityContext.seccompProfile.type: Unconfined is not allowed".into());
    }
    for c in &spec.init_containers {
        container_violations(level, spec, "initContainers", c, &mut v);
    }
    for c in &spec.containers {
        container_violations(level, spec, "containers", c, &mut v);
    }
    v
}

fn container_violations(
    level: Level,
    spec: &PodSpec,
    field: &str,
    c: &Container,
    v: &mut Vec<String>,
) {
    let at = format!("spec.{field}[{}].securityContext", c.name);
    let sc = c.security_context.clone().unwrap_or_default();
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    if sc.privileged == Some(true) {
        v.push(format!(
            "{at}.privileged: privileged containers are not allowed"
        ));
    }
    if sc
        .seccomp_profile
        .as_ref()
        .is_some_and(|p| p.type_ == "Unconfined")
    {
        v.push(format!(
            "{at}.seccompProfile.type: Unconfined is not allowed"
        ));
    }
    let added: Vec<String> = sc
        .capabilities
        .as_ref()
        .map(|c| c.add.iter().map(|a| cap_name(a)).collect())
        .unwrap_or_default();
    let allowed: &[&str] = match level {
        Level::Restricted => &["NET_BIND_SERVICE"],
        _ => BASELINE_CAPS,
    };
    let beyond: Vec<&String> = added
        .iter()
        .filter(|a| !allowed.contains(&a.as_str()))
        .collect();
    if !beyond.is_empty() {
        let names: Vec<&str> = beyond.iter().map(|s| s.as_str()).collect();
        v.push(format!(
            "{at}.capabilities.add: {} not allowed at level {}",
            names.join(", "),
            level.as_str()
        ));
    }
    if level != Level::Restricted {
        return;
    }
    if sc.allow_privilege_escalation == Some(true) {
        v.push(format!("{at}.allowPrivilegeEscalation must be false"));
    }
    let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true);
    if !non_root {
        v.push(format!("{at}.runAsNonRoot must be true"));
    }
    if sc.run_as_user.or(pod_sc.run_as_user) == Some(0) {
        v.push(format!("{at}.runAsUser must not be 0"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Capabilities, SecurityContext};

    fn spec(sc: SecurityContext) -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: "r.io/x".into(),
                security_context: Some(sc),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn levels_refuse_what_they_forbid() {
        let caps = |add: &[&str]| SecurityContext {
            capabilities: Some(Capabilities {
                add: add.iter().map(|s| s.to_string()).collect(),
                drop: vec![],
            }),
            ..Default::default()
        };
        let privileged = SecurityContext {
            privileged: Some(true),
            ..Default::default()
        };
        assert!(violations(Level::Privileged, &spec(privileged.clone())).is_empty());
        assert_eq!(
            violations(Level::Baseline, &spec(privileged)),
            [
                "spec.containers[c].securityContext.privileged: privileged containers are not allowed"
            ]
        );
        assert!(
            violations(
                Level::Baseline,
                &spec(caps(&["NET_BIND_SERVICE", "CAP_CHOWN"]))
            )
            .is_empty()
        );
        assert_eq!(
            violations(Level::Baseline, &spec(caps(&["SYS_ADMIN", "NET_RAW"]))),
            [
                "spec.containers[c].securityContext.capabilities.add: SYS_ADMIN, NET_RAW not allowed at level baseline"
            ]
        );
        let mut host = spec(SecurityContext::default());
        host.host_network = true;
        host.host_pid = true;
        assert_eq!(
            violations(Level::Baseline, &host),
            [
                "spec.hostNetwork: host namespaces are not allowed",
                "spec.hostPID: host namespaces are not allowed"
            ]
        );
        assert_eq!(
            violations(Level::Restricted, &spec(caps(&["CHOWN"]))),
            [
                "spec.containers[c].securityContext.capabilities.add: CHOWN not allowed at level restricted",
                "spec.containers[c].securityContext.runAsNonRoot must be true"
            ]
        );
        let ok = SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        };
        assert!(violations(Level::Restricted, &spec(ok)).is_empty());
        // Init containers are held to the same rules as the others.
        let mut init = spec(SecurityContext::default());
        init.init_containers = spec(SecurityContext {
            privileged: Some(true),
            ..Default::default()
        })
        .containers;
        init.init_containers[0].name = "setup".into();
        assert_eq!(
            violations(Level::Baseline, &init),
            [
                "spec.initContainers[setup].securityContext.privileged: privileged containers are not allowed"
            ]
        );
        assert!(Level::parse(Some("strict")).is_err());
        assert_eq!(Level::parse(None).unwrap(), Level::Baseline);
    }
}
