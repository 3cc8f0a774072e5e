//! `fleet rollout pause|resume|restart|undo` and `fleet set image`: each one change to a
//! Deployment, made in one transaction; the Deployment controller does the rest.
use crate::controller::deployment::template_hash;
use crate::store::{StoreError, Tx};
use flotilla_proto::api::{
    CHANGE_CAUSE_ANNOTATION, Deployment, Kind, Object, ObjectKey, RESTARTED_AT_ANNOTATION,
    TEMPLATE_HASH_LABEL,
};
use flotilla_proto::wire::RolloutAction;

/// Applies `action` to the Deployment at `key`; returns the line kubectl would print.
pub fn apply(
    tx: &mut Tx<'_>,
    key: &ObjectKey,
    action: &RolloutAction,
    now: &str,
) -> Result<String, StoreError> {
    let Some(Object::Deployment(mut d)) = tx.get(key)? else {
        return Err(StoreError::NotFound(key.clone()));
    };
    let name = format!("deployment.apps/{}", key.name);
    let refuse = |why: String| {
        Err(StoreError::Invalid(format!(
            "deployments.apps \"{}\" {why}",
            key.name
        )))
    };
    let message = match action {
        RolloutAction::Pause => {
            if d.spec.paused {
                return refuse("is already paused".into());
            }
            d.spec.paused = true;
            format!("{name} paused")
        }
        RolloutAction::Resume => {
            if !d.spec.paused {
                return refuse("is not paused".into());
            }
            d.spec.paused = false;
            format!("{name} resumed")
        }
        RolloutAction::Restart => {
            if d.spec.paused {
                return refuse("can't restart paused deployment (run rollout resume first)".into());
            }
            d.spec
                .template
                .metadata
                .annotations
                .insert(RESTARTED_AT_ANNOTATION.into(), now.into());
            format!("{name} restarted")
        }
        RolloutAction::SetImage { images } => {
            for (container, image) in images {
                let mut found = false;
                let spec = &mut d.spec.template.spec;
                for c in spec.init_containers.iter_mut().chain(&mut spec.containers) {
                    if container == "*" || &c.name == container {
                        c.image = image.clone();
                        found = true;
                    }
                }
                if !found {
                    return Err(StoreError::Invalid(format!(
                        "unable to find container named \"{container}\""
                    )));
                }
                if image.is_empty() {
                    return Err(StoreError::Invalid(format!(
                        "container {container}: image must not be empty"
                    )));
                }
            }
            format!("{name} image updated")
        }
        RolloutAction::Undo { to_revision } => {
            if d.spec.paused {
                return refuse("is paused: resume it before rolling back".into());
            }
            match undo(tx, &mut d, *to_revision)? {
                Some(m) => m,
                None => format!("{name} rolled back"),
            }
        }
    };
    tx.put(Object::Deployment(d))?;
    Ok(message)
}

/// Puts the template of `to_revision` (0: the one before the current) back into `d`. Returns a
/// message instead when the template already matches.
fn undo(tx: &Tx<'_>, d: &mut Deployment, to_revision: i64) -> Result<Option<String>, StoreError> {
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    let history = d.history(tx.list(Kind::ReplicaSet, Some(&namespace))?);
    let target = if to_revision == 0 {
        // The newest revision that is not the current template.
        let current = template_hash(&d.spec.template);
        history
            .iter()
            .rev()
            .find(|rs| rs.metadata.labels.get(TEMPLATE_HASH_LABEL) != Some(&current))
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "no rollout history found for deployment \"{}\"",
                    d.metadata.name
                ))
            })?
    } else {
        history
            .iter()
            .find(|rs| rs.revision() == to_revision)
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "unable to find specified revision {to_revision} in history"
                ))
            })?
    };
    let mut template = target.spec.template.clone();
    template.metadata.labels.remove(TEMPLATE_HASH_LABEL);
    if template == d.spec.template {
        return Ok(Some(format!(
            "deployment.apps/{} skipped rollback (current template already matches revision {})",
            d.metadata.name,
            target.revision()
        )));
    }
    d.spec.template = template;
    match target.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION) {
        Some(cause) => {
            d.metadata
                .annotations
                .insert(CHANGE_CAUSE_ANNOTATION.into(), cause.clone());
        }
        None => {
            d.metadata.annotations.remove(CHANGE_CAUSE_ANNOTATION);
        }
    }
    Ok(None)
}
