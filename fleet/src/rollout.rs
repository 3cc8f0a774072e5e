//! `fleet rollout status|history`: what kubectl prints for a Deployment's rollout, computed
//! from the Deployment and its ReplicaSets, and for a StatefulSet's, from its status (pure;
//! `main` does the polling and printing).
use crate::output::table;
use flotilla_proto::api::{
    CHANGE_CAUSE_ANNOTATION, Deployment, ReplicaSet, StatefulSet, TEMPLATE_HASH_LABEL, condition,
};

/// Where a rollout stands, in kubectl's words.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Waiting(String),
    Done(String),
    Failed(String),
}

pub fn status(d: &Deployment) -> Progress {
    let name = &d.metadata.name;
    if d.metadata.generation > d.status.observed_generation {
        return Progress::Waiting("Waiting for deployment spec update to be observed...".into());
    }
    if condition(&d.status.conditions, "Progressing")
        .is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    {
        return Progress::Failed(format!(
            "deployment \"{name}\" exceeded its progress deadline"
        ));
    }
    let s = &d.status;
    let want = d.replicas();
    if s.updated_replicas < want {
        Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} out of {want} new replicas have been updated...",
            s.updated_replicas
        ))
    } else if s.replicas > s.updated_replicas {
        Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
            s.replicas - s.updated_replicas
        ))
    } else if s.available_replicas < s.updated_replicas {
        Progress::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} of {} updated replicas are available...",
            s.available_replicas, s.updated_replicas
        ))
    } else {
        Progress::Done(format!("deployment \"{name}\" successfully rolled out"))
    }
}

/// kubectl's `rollout status statefulset/NAME` (its statefulSetStatusViewer).
pub fn statefulset_status(s: &StatefulSet) -> Progress {
    if s.is_on_delete() {
        return Progress::Failed(
            "rollout status is only available for RollingUpdate strategy type".into(),
        );
    }
    let st = &s.status;
    if st.observed_generation == 0 || s.metadata.generation > st.observed_generation {
        return Progress::Waiting("Waiting for statefulset spec update to be observed...".into());
    }
    let want = s.replicas();
    if st.ready_replicas < want {
        return Progress::Waiting(format!(
            "Waiting for {} pods to be ready...",
            want - st.ready_replicas
        ));
    }
    let partitioned = s
        .spec
        .update_strategy
        .as_ref()
        .is_some_and(|u| u.rolling_update.is_some());
    if partitioned {
        let target = want - s.partition();
        if st.updated_replicas < target {
            return Progress::Waiting(format!(
                "Waiting for partitioned roll out to finish: {} out of {target} new pods have been updated...",
                st.updated_replicas
            ));
        }
        return Progress::Done(format!(
            "partitioned roll out complete: {} new pods have been updated...",
            st.updated_replicas
        ));
    }
    if st.update_revision != st.current_revision {
        return Progress::Waiting(format!(
            "waiting for statefulset rolling update to complete {} pods at revision {}...",
            st.updated_replicas, st.update_revision
        ));
    }
    Progress::Done(format!(
        "statefulset rolling update complete {} pods at revision {}...",
        st.current_replicas, st.current_revision
    ))
}

/// `rollout history`: every revision with its change-cause, or one revision's pod template.
pub fn history(
    d: &Deployment,
    rss: &[ReplicaSet],
    revision: Option<i64>,
) -> Result<String, String> {
    let mut rss: Vec<&ReplicaSet> = rss.iter().filter(|rs| rs.revision() > 0).collect();
    rss.sort_by_key(|rs| rs.revision());
    let name = &d.metadata.name;
    if let Some(n) = revision {
        let rs = rss
            .iter()
            .find(|rs| rs.revision() == n)
            .ok_or_else(|| format!("unable to find the specified revision {n}"))?;
        let mut template = rs.spec.template.clone();
        template.metadata.labels.remove(TEMPLATE_HASH_LABEL);
        let yaml = serde_yaml_ng::to_string(&template).unwrap_or_default();
        let indented: String = yaml.lines().map(|l| format!("  {l}\n")).collect();
        return Ok(format!(
            "deployment.apps/{name} with revision #{n}\nPod Template:\n{indented}"
        ));
    }
    let rows: Vec<Vec<String>> = rss
        .iter()
        .map(|rs| {
            vec![
                rs.revision().to_string(),
                rs.metadata
                    .annotations
                    .get(CHANGE_CAUSE_ANNOTATION)
                    .cloned()
                    .unwrap_or_else(|| "<none>".into()),
            ]
        })
        .collect();
    Ok(format!(
        "deployment.apps/{name}\n{}",
        table(&["REVISION", "CHANGE-CAUSE"], &rows)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api::{Condition, DeploymentStatus};

    fn dep(replicas: i32, status: DeploymentStatus) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.name = "web".into();
        d.metadata.generation = 2;
        d.spec.replicas = Some(replicas);
        d.status = status;
        d.status.observed_generation = 2;
        d
    }

    #[test]
    fn status_lines_like_kubectl() {
        let s = |updated, total, available| DeploymentStatus {
            updated_replicas: updated,
            replicas: total,
            available_replicas: available,
            ..Default::default()
        };
        let lines: Vec<_> = [s(1, 4, 1), s(3, 4, 2), s(3, 3, 2), s(3, 3, 3)]
            .into_iter()
            .map(|st| status(&dep(3, st)))
            .collect();
        expect_test::expect![[r#"
            [
                Waiting(
                    "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...",
                ),
                Waiting(
                    "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...",
                ),
                Waiting(
                    "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...",
                ),
                Done(
                    "deployment \"web\" successfully rolled out",
                ),
            ]
        "#]]
        .assert_debug_eq(&lines);
        let mut stuck = dep(3, s(1, 4, 3));
        stuck.status.conditions.push(Condition::new(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            "",
        ));
        assert_eq!(
            status(&stuck),
            Progress::Failed("deployment \"web\" exceeded its progress deadline".into())
        );
        let mut unobserved = dep(3, s(3, 3, 3));
        unobserved.status.observed_generation = 1;
        assert!(matches!(status(&unobserved), Progress::Waiting(_)));
    }

    #[test]
    fn statefulset_status_lines_like_kubectl() {
        use flotilla_proto::api::{
            RollingUpdateStatefulSetStrategy, StatefulSetStatus, StatefulSetUpdateStrategy,
        };
        let set = |partition: Option<i32>, ready, updated, current: &str| {
            let mut s = StatefulSet::default();
            s.metadata.generation = 2;
            s.spec.replicas = Some(3);
            s.spec.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: partition
                    .map(|p| RollingUpdateStatefulSetStrategy { partition: Some(p) }),
            });
            s.status = StatefulSetStatus {
                observed_generation: 2,
                ready_replicas: ready,
                updated_replicas: updated,
                current_replicas: if current == "web-2" {
                    updated
                } else {
                    3 - updated
                },
                current_revision: current.into(),
                update_revision: "web-2".into(),
                ..Default::default()
            };
            s
        };
        let lines: Vec<_> = [
            set(Some(0), 1, 1, "web-1"),
            set(Some(1), 3, 1, "web-1"),
            set(Some(1), 3, 2, "web-1"),
            set(None, 3, 2, "web-1"),
            set(None, 3, 3, "web-2"),
        ]
        .iter()
        .map(statefulset_status)
        .collect();
        expect_test::expect![[r#"
            [
                Waiting(
                    "Waiting for 2 pods to be ready...",
                ),
                Waiting(
                    "Waiting for partitioned roll out to finish: 1 out of 2 new pods have been updated...",
                ),
                Done(
                    "partitioned roll out complete: 2 new pods have been updated...",
                ),
                Waiting(
                    "waiting for statefulset rolling update to complete 2 pods at revision web-2...",
                ),
                Done(
                    "statefulset rolling update complete 3 pods at revision web-2...",
                ),
            ]
        "#]]
        .assert_debug_eq(&lines);
    }
}
