//! Node maintenance the kubectl way: `fleet label`, `fleet taint`, `fleet cordon|uncordon` and
//! `fleet drain`, which evicts through the hub so PodDisruptionBudgets hold.
use crate::Client;
use anyhow::bail;
use flotilla_proto::api::{Kind, Pod};
use flotilla_proto::scheduling::{NO_EXECUTE, NO_SCHEDULE, PREFER_NO_SCHEDULE};
use flotilla_proto::wire::Edit;
use std::time::{Duration, Instant};

/// `key=value` sets, `key-` removes (kubectl label syntax).
pub fn parse_labels(args: &[String], overwrite: bool) -> anyhow::Result<Edit> {
    let mut set = Vec::new();
    let mut remove = Vec::new();
    for a in args {
        if let Some((k, v)) = a.split_once('=') {
            flotilla_proto::manifest::check_label(k, v).map_err(|e| anyhow::anyhow!(e))?;
            set.push((k.to_string(), v.to_string()));
        } else if let Some(k) = a.strip_suffix('-') {
            remove.push(k.to_string());
        } else {
            bail!("{a:?}: expected KEY=VALUE to set a label or KEY- to remove it");
        }
    }
    if set.is_empty() && remove.is_empty() {
        bail!("at least one label update is required");
    }
    Ok(Edit::Labels {
        set,
        remove,
        overwrite,
    })
}

/// `key[=value]:Effect` adds, `key[:Effect]-` removes (kubectl taint syntax).
pub fn parse_taints(args: &[String], overwrite: bool) -> anyhow::Result<Edit> {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    let effect_ok = |e: &str| [NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE].contains(&e);
    for a in args {
        if let Some(spec) = a.strip_suffix('-') {
            let (key, effect) = spec.split_once(':').unwrap_or((spec, ""));
            let key = key.split_once('=').map_or(key, |(k, _)| k);
            if !effect.is_empty() && !effect_ok(effect) {
                bail!(
                    "{a:?}: unknown taint effect {effect:?} (NoSchedule, PreferNoSchedule or NoExecute)"
                );
            }
            remove.push((key.to_string(), effect.to_string()));
            continue;
        }
        let Some((kv, effect)) = a.rsplit_once(':') else {
            bail!(
                "{a:?}: expected KEY[=VALUE]:EFFECT to add a taint or KEY[:EFFECT]- to remove one"
            );
        };
        if !effect_ok(effect) {
            bail!(
                "{a:?}: unknown taint effect {effect:?} (NoSchedule, PreferNoSchedule or NoExecute)"
            );
        }
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        if k.is_empty() {
            bail!("{a:?}: the taint key is empty");
        }
        flotilla_proto::manifest::check_label(k, v)
            .map_err(|e| anyhow::anyhow!("{a:?}: {}", e.replacen("label", "taint", 1)))?;
        add.push((k.to_string(), v.to_string(), effect.to_string()));
    }
    if add.is_empty() && remove.is_empty() {
        bail!("at least one taint update is required");
    }
    Ok(Edit::Taints {
        add,
        remove,
        overwrite,
    })
}

pub struct DrainOptions {
    pub ignore_daemonsets: bool,
    /// Also evict pods no controller will replace.
    pub force: bool,
    /// Give up after this long (zero: never).
    pub timeout: Duration,
    /// Pause between attempts while a disruption budget refuses.
    pub retry_every: Duration,
}

/// Cordons `node` and evicts its pods, retrying those a disruption budget protects until they
/// may go or the timeout passes. `say` receives kubectl's progress lines.
pub async fn drain(
    client: &Client,
    node: &str,
    opts: &DrainOptions,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    say(client
        .edit(Kind::Node, "", node, Edit::Cordon(true))
        .await?);
    let on_node: Vec<Pod> = client
        .pods(None)
        .await?
        .into_iter()
        .filter(|p| p.spec.node_name.as_deref() == Some(node) && !p.is_terminal())
        .collect();
    let shown = |p: &Pod| {
        format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or("default"),
            p.metadata.name
        )
    };
    let controller_kind = |p: &Pod| {
        p.metadata
            .owner_references
            .iter()
            .find(|r| r.controller == Some(true))
            .map(|r| r.kind.clone())
    };
    let daemons: Vec<String> = on_node
        .iter()
        .filter(|p| controller_kind(p).as_deref() == Some("DaemonSet"))
        .map(shown)
        .collect();
    let unmanaged: Vec<String> = on_node
        .iter()
        .filter(|p| controller_kind(p).is_none())
        .map(shown)
        .collect();
    let mut problems = Vec::new();
    if !daemons.is_empty() && !opts.ignore_daemonsets {
        problems.push(format!(
            "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {}",
            daemons.join(", ")
        ));
    }
    if !unmanaged.is_empty() && !opts.force {
        problems.push(format!(
            "cannot delete Pods that declare no controller (use --force to override): {}",
            unmanaged.join(", ")
        ));
    }
    if !problems.is_empty() {
        bail!(
            "unable to drain node {node:?} due to error: {}",
            problems.join("; ")
        );
    }
    if !daemons.is_empty() {
        say(format!(
            "Warning: ignoring DaemonSet-managed Pods: {}",
            daemons.join(", ")
        ));
    }
    let mut pending: Vec<&Pod> = on_node
        .iter()
        .filter(|p| controller_kind(p).as_deref() != Some("DaemonSet"))
        .collect();
    let started = Instant::now();
    for p in &pending {
        say(format!("evicting pod {}", shown(p)));
    }
    while !pending.is_empty() {
        let mut refused = Vec::new();
        for p in pending {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            match client.evict(ns, &p.metadata.name).await {
                Ok(Ok(message)) => say(message),
                Ok(Err(reason)) => {
                    say(format!(
                        "error when evicting pods/{:?} -n {ns:?} (will retry after {}): {reason}",
                        p.metadata.name,
                        humantime::format_duration(opts.retry_every)
                    ));
                    refused.push(p);
                }
                // Gone already (its controller or someone else deleted it).
                Err(e) if e.to_string().contains("not found") => {}
                Err(e) => return Err(e),
            }
        }
        pending = refused;
        if pending.is_empty() {
            break;
        }
        if !opts.timeout.is_zero() && started.elapsed() + opts.retry_every > opts.timeout {
            bail!(
                "drain did not complete within {}: {} still protected by a PodDisruptionBudget (node {node:?} stays cordoned)",
                humantime::format_duration(opts.timeout),
                pending
                    .iter()
                    .map(|p| format!("pod {}", shown(p)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tokio::time::sleep(opts.retry_every).await;
    }
    say(format!("node/{node} drained"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn taint_syntax_is_kubectls() {
        assert_eq!(
            parse_taints(
                &args(&[
                    "dedicated=gpu:NoSchedule",
                    "spot:NoExecute",
                    "old-",
                    "x:PreferNoSchedule-"
                ]),
                false
            )
            .unwrap(),
            Edit::Taints {
                add: vec![
                    ("dedicated".into(), "gpu".into(), "NoSchedule".into()),
                    ("spot".into(), "".into(), "NoExecute".into()),
                ],
                remove: vec![
                    ("old".into(), "".into()),
                    ("x".into(), "PreferNoSchedule".into())
                ],
                overwrite: false,
            }
        );
        let err = parse_taints(&args(&["a=b:Sometimes"]), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown taint effect \"Sometimes\""), "{err}");
        assert!(parse_taints(&args(&["novalue"]), false).is_err());
    }

    #[test]
    fn label_syntax_is_kubectls() {
        assert_eq!(
            parse_labels(&args(&["zone=a", "old-"]), true).unwrap(),
            Edit::Labels {
                set: vec![("zone".into(), "a".into())],
                remove: vec!["old".into()],
                overwrite: true,
            }
        );
        assert!(parse_labels(&args(&["bad key=x"]), false).is_err());
        assert!(parse_labels(&args(&["plain"]), false).is_err());
    }
}
