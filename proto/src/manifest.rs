//! Kubernetes YAML manifests: parse one or many documents, report unsupported fields as warnings,
//! and reject invalid values with errors naming the document, object and field.
use crate::api::{Kind, Object, ObjectKey};
use base64::Engine as _;
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt;

/// A manifest error: which document, which object, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub document: usize,
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.object {
            Some(o) => write!(f, "document {} ({o}): {}", self.document, self.message),
            None => write!(f, "document {}: {}", self.document, self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// One parsed document and the warnings it produced.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub object: Object,
    pub warnings: Vec<String>,
}

/// Parses every document of a YAML (or JSON) stream. All documents are checked; every error is
/// returned, so the user can fix them in one go.
pub fn parse(text: &str) -> Result<Vec<Parsed>, Vec<ManifestError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = match <serde_json::Value as serde::Deserialize>::deserialize(doc) {
            Ok(serde_json::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(ManifestError {
                    document: n,
                    object: None,
                    message: format!("invalid YAML: {e}"),
                });
                // A syntax error ends the stream: later documents cannot be located reliably.
                break;
            }
        };
        match parse_value(value) {
            Ok(p) => {
                let key = p.object.key();
                if !seen.insert(key.clone()) {
                    errors.push(ManifestError {
                        document: n,
                        object: Some(describe(&key)),
                        message: "duplicate object: an earlier document already defines it".into(),
                    });
                } else {
                    out.push(p);
                }
            }
            Err(mut e) => {
                e.document = n;
                errors.push(e);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn describe(key: &ObjectKey) -> String {
    format!("{} {}", key.kind.as_str().to_ascii_lowercase(), key.name)
}

/// Parses and validates a single object given as JSON.
pub fn parse_value(value: serde_json::Value) -> Result<Parsed, ManifestError> {
    let err = |object: Option<String>, message: String| ManifestError {
        document: 0,
        object,
        message,
    };
    let Some(map) = value.as_object() else {
        return Err(err(
            None,
            "a manifest document must be a mapping with apiVersion, kind and metadata".into(),
        ));
    };
    let kind_str = map
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_string();
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_string();
    let label = if name.is_empty() {
        kind_str.to_ascii_lowercase()
    } else {
        format!("{} {name}", kind_str.to_ascii_lowercase())
    };
    if kind_str.is_empty() {
        return Err(err(None, "field kind is required".into()));
    }
    let Some(kind) = Kind::from_kind(&kind_str).filter(|k| *k != Kind::Event) else {
        if kind_str == Kind::Event.as_str() {
            return Err(err(
                Some(label),
                "kind Event cannot be applied: events are recorded by Flotilla itself (its controllers and agents)".into(),
            ));
        }
        let supported: Vec<_> = Kind::ALL
            .iter()
            .filter(|k| **k != Kind::Event)
            .map(|k| k.as_str())
            .collect();
        return Err(err(
            Some(label),
            format!(
                "kind {kind_str:?} is not supported (supported: {})",
                supported.join(", ")
            ),
        ));
    };
    let api_version = map
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if api_version != kind.api_version() {
        return Err(err(
            Some(label),
            format!(
                "apiVersion must be {:?} for kind {kind}, got {api_version:?}",
                kind.api_version()
            ),
        ));
    }

    let mut warnings = Vec::new();
    let mut value = value;
    // Status is owned by the system; like Kubernetes, a status in a manifest is not applied.
    if let Some(m) = value.as_object_mut() {
        m.remove("status");
    }
    let object = match kind {
        Kind::Namespace => Object::Namespace(typed(value, &label, &mut warnings)?),
        Kind::Node => Object::Node(typed(value, &label, &mut warnings)?),
        Kind::Pod => Object::Pod(typed(value, &label, &mut warnings)?),
        Kind::Deployment => Object::Deployment(typed(value, &label, &mut warnings)?),
        Kind::ConfigMap => Object::ConfigMap(typed(value, &label, &mut warnings)?),
        Kind::Secret => Object::Secret(typed(value, &label, &mut warnings)?),
        Kind::ReplicaSet => Object::ReplicaSet(typed(value, &label, &mut warnings)?),
        Kind::DaemonSet => Object::DaemonSet(typed(value, &label, &mut warnings)?),
        Kind::Job => Object::Job(typed(value, &label, &mut warnings)?),
        Kind::CronJob => Object::CronJob(typed(value, &label, &mut warnings)?),
        Kind::PodDisruptionBudget => {
            Object::PodDisruptionBudget(typed(value, &label, &mut warnings)?)
        }
        Kind::StatefulSet => Object::StatefulSet(typed(value, &label, &mut warnings)?),
        Kind::PersistentVolumeClaim => {
            Object::PersistentVolumeClaim(typed(value, &label, &mut warnings)?)
        }
        Kind::ControllerRevision => {
            Object::ControllerRevision(typed(value, &label, &mut warnings)?)
        }
        Kind::Service => Object::Service(typed(value, &label, &mut warnings)?),
        Kind::EndpointSlice => Object::EndpointSlice(typed(value, &label, &mut warnings)?),
        Kind::Ingress => Object::Ingress(typed(value, &label, &mut warnings)?),
        Kind::IngressClass => Object::IngressClass(typed(value, &label, &mut warnings)?),
        Kind::Middleware => Object::Middleware(typed(value, &label, &mut warnings)?),
        // Refused above; kept here so the match stays exhaustive.
        Kind::Event => Object::Event(typed(value, &label, &mut warnings)?),
    };
    let mut object = object;
    object.normalize();
    validate(&mut object).map_err(|m| err(Some(label.clone()), m))?;
    let warnings = warnings
        .into_iter()
        .map(|w| format!("{label}: field {w} is not supported yet and was ignored"))
        .collect();
    Ok(Parsed { object, warnings })
}

/// Deserializes with field paths in errors and collects the paths of fields we do not know.
fn typed<T: DeserializeOwned>(
    value: serde_json::Value,
    label: &str,
    warnings: &mut Vec<String>,
) -> Result<T, ManifestError> {
    let mut ignored = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| {
        // serde_ignored marks an Option's Some with a `?` segment; users never write one.
        let p = path
            .to_string()
            .split('.')
            .filter(|s| *s != "?")
            .collect::<Vec<_>>()
            .join(".");
        // Server-set metadata in manifests (e.g. from `fleet get -o yaml`) is accepted silently.
        if !matches!(p.as_str(), "metadata.managedFields" | "metadata.selfLink") {
            ignored.push(p)
        }
    };
    let de = serde_ignored::Deserializer::new(value, &mut note);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    warnings.extend(ignored);
    result.map_err(|e| ManifestError {
        document: 0,
        object: Some(label.to_string()),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

/// Checks a DNS-1123 subdomain/label style name as Kubernetes does.
pub fn check_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} must consist of lowercase letters, digits, '-' or '.', and start and end with a letter or digit, got {name:?}"
        ))
    }
}

/// Checks a label the way Kubernetes does: key `[prefix/]name` (prefix a DNS subdomain, name up
/// to 63 of `[A-Za-z0-9-_.]` starting and ending alphanumeric), value empty or like a name.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 63
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && n.as_bytes()[0].is_ascii_alphanumeric()
            && n.as_bytes()[n.len() - 1].is_ascii_alphanumeric()
    };
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        check_name(&format!("label key {key:?}: prefix"), p)?;
    }
    if !name_ok(name) {
        return Err(format!(
            "label key {key:?} is not valid: the name part must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(format!(
            "label {key}: value {value:?} is not valid: at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Validates values the type system cannot (names, ranges, enums, quantities). Also folds
/// Secret.stringData into data as Kubernetes does.
pub fn validate(object: &mut Object) -> Result<(), String> {
    let meta = object.meta();
    check_name("metadata.name", &meta.name)?;
    if let Some(ns) = &meta.namespace {
        check_name("metadata.namespace", ns)?;
    }
    for (k, v) in &meta.labels {
        check_label(k, v).map_err(|m| format!("metadata.labels: {m}"))?;
    }
    if let Object::Pod(_) = object {
        crate::disconnect::Policy::from_annotations("metadata.annotations", &meta.annotations)?;
        crate::outbound::Grant::http("metadata.annotations", &meta.annotations)?;
        crate::outbound::Grant::network("metadata.annotations", &meta.annotations)?;
    }
    if let Some((at, template)) = pod_template(object) {
        let at_annotations = format!("{at}.metadata.annotations");
        let annotations = &template.metadata.annotations;
        let policy = crate::disconnect::Policy::from_annotations(&at_annotations, annotations)?;
        crate::outbound::Grant::http(&at_annotations, annotations)?;
        crate::outbound::Grant::network(&at_annotations, annotations)?;
        // A DaemonSet's pod belongs to its node; a StatefulSet promises at most one pod per
        // identity, which a replacement elsewhere would break while the original still runs.
        if policy.is_some() && matches!(object, Object::DaemonSet(_) | Object::StatefulSet(_)) {
            return Err(format!(
                "{at}.metadata.annotations[{}]: {} pods are never replaced while their node is silent",
                crate::disconnect::LOST_AFTER_ANNOTATION,
                object.kind()
            ));
        }
    }
    match object {
        Object::Pod(p) => validate_pod_spec("spec", &p.spec),
        Object::Deployment(d) => {
            let s = &d.spec;
            check_replicas(s.replicas)?;
            check_selector(&s.selector, &s.template)?;
            check_non_negative(
                "spec",
                &[
                    ("minReadySeconds", s.min_ready_seconds),
                    ("revisionHistoryLimit", s.revision_history_limit),
                    ("progressDeadlineSeconds", s.progress_deadline_seconds),
                ],
            )?;
            if let Some(p) = s.progress_deadline_seconds
                && p <= s.min_ready_seconds.unwrap_or(0)
            {
                return Err(format!(
                    "spec.progressDeadlineSeconds must be greater than minReadySeconds, got {p}"
                ));
            }
            validate_strategy(s.strategy.as_ref())?;
            validate_pod_spec("spec.template.spec", &s.template.spec)
        }
        Object::ReplicaSet(rs) => {
            let s = &rs.spec;
            check_replicas(s.replicas)?;
            check_non_negative("spec", &[("minReadySeconds", s.min_ready_seconds)])?;
            check_selector(&s.selector, &s.template)?;
            validate_pod_spec("spec.template.spec", &s.template.spec)
        }
        Object::DaemonSet(ds) => {
            let s = &ds.spec;
            check_selector(&s.selector, &s.template)?;
            check_non_negative(
                "spec",
                &[
                    ("minReadySeconds", s.min_ready_seconds),
                    ("revisionHistoryLimit", s.revision_history_limit),
                ],
            )?;
            if let Some(st) = &s.update_strategy {
                check_update_strategy(
                    st.type_.as_deref(),
                    st.rolling_update.is_some(),
                    || match &st.rolling_update {
                        Some(ru) => {
                            check_rolling_update("spec.updateStrategy.rollingUpdate", ru, true)
                        }
                        None => Ok(()),
                    },
                )?;
            }
            check_restart_always("DaemonSet", &s.template.spec)?;
            validate_pod_spec("spec.template.spec", &s.template.spec)
        }
        Object::Job(j) => validate_job("spec", &j.spec),
        Object::CronJob(cj) => {
            let s = &cj.spec;
            crate::cron::Schedule::parse(&s.schedule, s.time_zone.as_deref())?;
            if let Some(p) = &s.concurrency_policy
                && !matches!(p.as_str(), "Allow" | "Forbid" | "Replace")
            {
                return Err(format!(
                    "spec.concurrencyPolicy must be Allow, Forbid or Replace, got {p:?}"
                ));
            }
            if let Some(d) = s.starting_deadline_seconds
                && d < 0
            {
                return Err(format!(
                    "spec.startingDeadlineSeconds must be >= 0, got {d}"
                ));
            }
            check_non_negative(
                "spec",
                &[
                    (
                        "successfulJobsHistoryLimit",
                        s.successful_jobs_history_limit,
                    ),
                    ("failedJobsHistoryLimit", s.failed_jobs_history_limit),
                ],
            )?;
            validate_job("spec.jobTemplate.spec", &s.job_template.spec)
        }
        Object::Secret(s) => {
            for (k, v) in std::mem::take(&mut s.string_data) {
                s.data
                    .insert(k, base64::engine::general_purpose::STANDARD.encode(v));
            }
            for (k, v) in &s.data {
                if base64::engine::general_purpose::STANDARD.decode(v).is_err() {
                    return Err(format!("data.{k} must be base64-encoded"));
                }
            }
            Ok(())
        }
        Object::Node(n) => crate::scheduling::validate_taints("spec.taints", &n.spec.taints),
        Object::PodDisruptionBudget(pdb) => {
            let s = &pdb.spec;
            let (field, value) = match (&s.min_available, &s.max_unavailable) {
                (Some(_), Some(_)) => {
                    return Err(
                        "spec.minAvailable and spec.maxUnavailable cannot both be set".into(),
                    );
                }
                (Some(v), None) => ("minAvailable", v),
                (None, Some(v)) => ("maxUnavailable", v),
                (None, None) => {
                    return Err(
                        "one of spec.minAvailable or spec.maxUnavailable is required".into(),
                    );
                }
            };
            match value.scaled(100, true) {
                Ok(v) if v < 0 => Err(format!("spec.{field} must be >= 0, got {v}")),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("spec.{field} {e}")),
            }?;
            crate::scheduling::validate_selector("spec.selector", &s.selector)
        }
        Object::StatefulSet(sts) => validate_statefulset(sts),
        Object::Service(svc) => crate::service::validate(svc),
        Object::EndpointSlice(slice) => crate::service::validate_slice(slice),
        Object::Ingress(ing) => crate::ingress::validate(ing),
        Object::IngressClass(class) => crate::ingress::validate_class(class),
        Object::Middleware(mw) => crate::ingress::validate_middleware(mw),
        Object::PersistentVolumeClaim(pvc) => validate_claim_spec("spec", &pvc.spec),
        Object::ControllerRevision(cr) if cr.revision < 0 => {
            Err(format!("revision must be >= 0, got {}", cr.revision))
        }
        Object::Namespace(_) | Object::ConfigMap(_) | Object::ControllerRevision(_) => Ok(()),
        Object::Event(_) => Err("events are recorded by Flotilla and cannot be applied".into()),
    }
}

/// The pod template of a workload object, with the path of its field.
fn pod_template(object: &Object) -> Option<(&'static str, &crate::api::PodTemplateSpec)> {
    match object {
        Object::Deployment(d) => Some(("spec.template", &d.spec.template)),
        Object::ReplicaSet(rs) => Some(("spec.template", &rs.spec.template)),
        Object::DaemonSet(ds) => Some(("spec.template", &ds.spec.template)),
        Object::Job(j) => Some(("spec.template", &j.spec.template)),
        Object::StatefulSet(sts) => Some(("spec.template", &sts.spec.template)),
        Object::CronJob(cj) => Some((
            "spec.jobTemplate.spec.template",
            &cj.spec.job_template.spec.template,
        )),
        _ => None,
    }
}

/// A DNS-1123 label (what a hostname or a Service name must be): at most 63 lowercase
/// letters, digits or '-', starting and ending with a letter or digit.
pub fn check_label_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field} must be a DNS label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit, got {name:?}"
        ))
    }
}

/// The longest StatefulSet name: its revision label `NAME-<10-character hash>` must fit a
/// label value (63).
const MAX_STATEFULSET_NAME: usize = 52;

fn validate_statefulset(sts: &crate::api::StatefulSet) -> Result<(), String> {
    let name = &sts.metadata.name;
    check_label_name("metadata.name", name).map_err(|e| {
        format!("{e} (a StatefulSet's pods are named NAME-ORDINAL and use it as their hostname)")
    })?;
    if name.len() > MAX_STATEFULSET_NAME {
        return Err(format!(
            "metadata.name must be at most {MAX_STATEFULSET_NAME} characters for a StatefulSet (its pods' controller-revision-hash label is NAME-<10-character hash>), got {}",
            name.len()
        ));
    }
    let s = &sts.spec;
    check_replicas(s.replicas)?;
    check_selector(&s.selector, &s.template)?;
    check_non_negative(
        "spec",
        &[
            ("minReadySeconds", s.min_ready_seconds),
            ("revisionHistoryLimit", s.revision_history_limit),
        ],
    )?;
    if let Some(service) = s.service_name.as_deref().filter(|n| !n.is_empty()) {
        check_label_name("spec.serviceName", service)?;
    }
    if let Some(p) = &s.pod_management_policy
        && !matches!(p.as_str(), "OrderedReady" | "Parallel")
    {
        return Err(format!(
            "spec.podManagementPolicy must be OrderedReady or Parallel, got {p:?}"
        ));
    }
    if let Some(st) = &s.update_strategy {
        check_update_strategy(
            st.type_.as_deref(),
            st.rolling_update.is_some(),
            || match st.rolling_update.as_ref().and_then(|r| r.partition) {
                Some(p) if p < 0 => Err(format!(
                    "spec.updateStrategy.rollingUpdate.partition must be >= 0, got {p}"
                )),
                _ => Ok(()),
            },
        )?;
    }
    if let Some(p) = &s.persistent_volume_claim_retention_policy {
        for (field, v) in [
            ("whenDeleted", &p.when_deleted),
            ("whenScaled", &p.when_scaled),
        ] {
            if let Some(v) = v
                && !matches!(v.as_str(), "Retain" | "Delete")
            {
                return Err(format!(
                    "spec.persistentVolumeClaimRetentionPolicy.{field} must be Retain or Delete, got {v:?}"
                ));
            }
        }
    }
    check_restart_always("StatefulSet", &s.template.spec)?;
    // The pods' volumes: the template's, plus one claim per volumeClaimTemplate (what the
    // controller adds), so volumeMounts may name either.
    let mut pod = s.template.spec.clone();
    let mut names = BTreeSet::new();
    for (i, t) in s.volume_claim_templates.iter().enumerate() {
        let at = format!("spec.volumeClaimTemplates[{i}]");
        let tname = &t.metadata.name;
        check_label_name(&format!("{at}.metadata.name"), tname)?;
        if !names.insert(tname.as_str()) {
            return Err(format!(
                "{at}.metadata.name: duplicate claim template name {tname:?}"
            ));
        }
        if pod.volumes.iter().any(|v| &v.name == tname) {
            return Err(format!(
                "{at}.metadata.name {tname:?} is also the name of a volume in spec.template.spec.volumes"
            ));
        }
        for (k, v) in &t.metadata.labels {
            check_label(k, v).map_err(|m| format!("{at}.metadata.labels: {m}"))?;
        }
        for (field, v) in [("apiVersion", &t.api_version), ("kind", &t.kind)] {
            let want = if field == "kind" {
                "PersistentVolumeClaim"
            } else {
                "v1"
            };
            if let Some(v) = v
                && v != want
            {
                return Err(format!("{at}.{field} must be {want:?}, got {v:?}"));
            }
        }
        validate_claim_spec(&format!("{at}.spec"), &t.spec)?;
        pod.volumes.push(crate::api::Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(crate::api::PersistentVolumeClaimVolumeSource {
                claim_name: sts.claim_name(tname, 0),
                read_only: false,
            }),
            ..Default::default()
        });
    }
    validate_pod_spec("spec.template.spec", &pod)
}

/// Access modes a claim may ask for: a claim is a directory on one node.
const ACCESS_MODES: [&str; 2] = ["ReadWriteOnce", "ReadWriteOncePod"];

fn validate_claim_spec(
    at: &str,
    spec: &crate::api::PersistentVolumeClaimSpec,
) -> Result<(), String> {
    if spec.access_modes.is_empty() {
        return Err(format!(
            "{at}.accessModes: at least one access mode is required ({})",
            ACCESS_MODES.join(" or ")
        ));
    }
    for (i, m) in spec.access_modes.iter().enumerate() {
        match m.as_str() {
            "ReadWriteOnce" | "ReadWriteOncePod" => {}
            "ReadOnlyMany" | "ReadWriteMany" => {
                return Err(format!(
                    "{at}.accessModes[{i}] {m:?} is not supported: a claim is a directory on one node ({})",
                    ACCESS_MODES.join(" or ")
                ));
            }
            _ => {
                return Err(format!(
                    "{at}.accessModes[{i}] {m:?} is not valid (ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod)"
                ));
            }
        }
    }
    match spec.resources.requests.get("storage") {
        None => return Err(format!("{at}.resources.requests.storage is required")),
        Some(q) => {
            q.bytes().map_err(|_| {
                format!(
                    "{at}.resources.requests.storage: invalid quantity {:?}",
                    q.0
                )
            })?;
        }
    }
    for (which, map) in [
        ("requests", &spec.resources.requests),
        ("limits", &spec.resources.limits),
    ] {
        for (res, q) in map {
            if res != "storage" {
                return Err(format!(
                    "{at}.resources.{which}.{res}: resource {res:?} is not supported (storage)"
                ));
            }
            q.bytes().map_err(|_| {
                format!("{at}.resources.{which}.storage: invalid quantity {:?}", q.0)
            })?;
        }
    }
    if let Some(m) = &spec.volume_mode
        && m != "Filesystem"
    {
        return Err(format!(
            "{at}.volumeMode {m:?} is not supported (only Filesystem: claims are directories)"
        ));
    }
    if let Some(c) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
        check_name(&format!("{at}.storageClassName"), c)?;
    }
    Ok(())
}

/// Fields that must not be negative, under `at`.
fn check_non_negative(at: &str, fields: &[(&str, Option<i32>)]) -> Result<(), String> {
    for (field, v) in fields {
        if let Some(v) = v
            && *v < 0
        {
            return Err(format!("{at}.{field} must be >= 0, got {v}"));
        }
    }
    Ok(())
}

/// DaemonSets and StatefulSets run forever: their pods must restart Always.
fn check_restart_always(kind: &str, spec: &crate::api::PodSpec) -> Result<(), String> {
    match spec.restart_policy() {
        "Always" => Ok(()),
        other => Err(format!(
            "spec.template.spec.restartPolicy must be Always for a {kind}, got {other:?}"
        )),
    }
}

/// `spec.updateStrategy.type` of a DaemonSet or StatefulSet; `rolling` checks the
/// rollingUpdate block when the type is RollingUpdate and one is given.
fn check_update_strategy(
    type_: Option<&str>,
    has_rolling: bool,
    rolling: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    match type_ {
        None | Some("RollingUpdate") if has_rolling => rolling(),
        None | Some("RollingUpdate") => Ok(()),
        Some("OnDelete") if has_rolling => Err(
            "spec.updateStrategy.rollingUpdate may not be specified when strategy type is OnDelete"
                .into(),
        ),
        Some("OnDelete") => Ok(()),
        Some(t) => Err(format!(
            "spec.updateStrategy.type must be RollingUpdate or OnDelete, got {t:?}"
        )),
    }
}

/// More replicas than one workload could ever need here; a typo such as 2000000000 would
/// otherwise have controllers create pods without end.
pub const MAX_REPLICAS: i32 = 100_000;

/// `spec.replicas` of any workload (also checked by `fleet scale`).
pub fn check_replicas(replicas: Option<i32>) -> Result<(), String> {
    match replicas {
        Some(r) if r < 0 => Err(format!("spec.replicas must be >= 0, got {r}")),
        Some(r) if r > MAX_REPLICAS => Err(format!(
            "spec.replicas must be at most {MAX_REPLICAS}, got {r}"
        )),
        _ => Ok(()),
    }
}

fn check_selector(
    selector: &crate::api::LabelSelector,
    template: &crate::api::PodTemplateSpec,
) -> Result<(), String> {
    if selector.is_empty() {
        return Err("spec.selector is required (matchLabels or matchExpressions)".into());
    }
    crate::scheduling::validate_selector("spec.selector", selector)?;
    for (k, v) in &selector.match_labels {
        if template.metadata.labels.get(k) != Some(v) {
            return Err(format!(
                "spec.template.metadata.labels must match spec.selector.matchLabels ({k}={v} is missing)"
            ));
        }
    }
    if !selector.matches(&template.metadata.labels) {
        return Err(
            "spec.template.metadata.labels must match spec.selector.matchExpressions".into(),
        );
    }
    Ok(())
}

fn validate_strategy(strategy: Option<&crate::api::DeploymentStrategy>) -> Result<(), String> {
    let Some(st) = strategy else { return Ok(()) };
    match st.type_.as_deref() {
        None | Some("RollingUpdate") => {}
        Some("Recreate") => {
            if st.rolling_update.is_some() {
                return Err(
                    "spec.strategy.rollingUpdate may not be specified when strategy type is Recreate"
                        .into(),
                );
            }
            return Ok(());
        }
        Some(t) => {
            return Err(format!(
                "spec.strategy.type must be RollingUpdate or Recreate, got {t:?}"
            ));
        }
    }
    match &st.rolling_update {
        Some(ru) => check_rolling_update("spec.strategy.rollingUpdate", ru, false),
        None => Ok(()),
    }
}

/// `surge_defaults_to_zero`: a DaemonSet's maxSurge defaults to 0 (a Deployment's to 25%).
fn check_rolling_update(
    at: &str,
    ru: &crate::api::RollingUpdateDeployment,
    surge_defaults_to_zero: bool,
) -> Result<(), String> {
    let mut zero = (ru.max_surge.is_none() && surge_defaults_to_zero) as u32;
    for (field, v) in [
        ("maxSurge", &ru.max_surge),
        ("maxUnavailable", &ru.max_unavailable),
    ] {
        let Some(v) = v else { continue };
        // Percentages are checked against 100 replicas: the rounding is the controller's business.
        let n = v
            .scaled(100, true)
            .map_err(|e| format!("{at}.{field} {e}"))?;
        if n < 0 {
            return Err(format!("{at}.{field} must be >= 0, got {v}"));
        }
        if field == "maxUnavailable" && matches!(v, crate::api::IntOrString::String(_)) && n > 100 {
            return Err(format!(
                "{at}.maxUnavailable must not be greater than 100%, got {v}"
            ));
        }
        if n == 0 {
            zero += 1;
        }
    }
    if zero == 2 {
        return Err(format!(
            "{at}.maxUnavailable may not be 0 when maxSurge is 0"
        ));
    }
    Ok(())
}

fn validate_job(at: &str, spec: &crate::api::JobSpec) -> Result<(), String> {
    check_non_negative(
        at,
        &[
            ("parallelism", spec.parallelism),
            ("completions", spec.completions),
            ("backoffLimit", spec.backoff_limit),
            ("ttlSecondsAfterFinished", spec.ttl_seconds_after_finished),
        ],
    )?;
    if let Some(d) = spec.active_deadline_seconds
        && d <= 0
    {
        return Err(format!("{at}.activeDeadlineSeconds must be > 0, got {d}"));
    }
    if let Some(m) = &spec.completion_mode
        && m != "NonIndexed"
    {
        return Err(format!(
            "{at}.completionMode {m:?} is not supported yet (only NonIndexed)"
        ));
    }
    if spec.selector.is_some() || spec.manual_selector == Some(true) {
        return Err(format!(
            "{at}.selector: a Job's selector is generated (its pods are tracked by owner); remove selector and manualSelector"
        ));
    }
    match spec.template.spec.restart_policy.as_deref() {
        Some("OnFailure" | "Never") => {}
        other => {
            return Err(format!(
                "{at}.template.spec.restartPolicy must be OnFailure or Never, got {:?}",
                other.unwrap_or("Always (the default)")
            ));
        }
    }
    validate_pod_spec(&format!("{at}.template.spec"), &spec.template.spec)
}

fn validate_probe(
    at: &str,
    probe: &crate::api::Probe,
    container: &crate::api::Container,
    liveness_or_startup: bool,
) -> Result<(), String> {
    let handlers = [
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.exec.is_some(),
    ];
    match handlers.iter().filter(|h| **h).count() {
        0 => {
            return Err(format!(
                "{at} must specify one of httpGet, tcpSocket or exec"
            ));
        }
        1 => {}
        _ => {
            return Err(format!(
                "{at} may specify only one of httpGet, tcpSocket or exec"
            ));
        }
    }
    if let Some(e) = &probe.exec
        && e.command.is_empty()
    {
        return Err(format!("{at}.exec.command must not be empty"));
    }
    let port = probe
        .http_get
        .as_ref()
        .map(|h| (&h.port, "httpGet"))
        .or(probe.tcp_socket.as_ref().map(|t| (&t.port, "tcpSocket")));
    if let Some((port, handler)) = port {
        match port {
            crate::api::IntOrString::Int(n) if !(1..=65535).contains(n) => {
                return Err(format!("{at}.{handler}.port must be 1-65535, got {n}"));
            }
            crate::api::IntOrString::String(name)
                if !container
                    .ports
                    .iter()
                    .any(|p| p.name.as_deref() == Some(name.as_str())) =>
            {
                return Err(format!(
                    "{at}.{handler}.port: no container port is named {name:?}"
                ));
            }
            _ => {}
        }
    }
    let host = probe
        .http_get
        .as_ref()
        .and_then(|h| h.host.as_ref().map(|_| "httpGet"))
        .or(probe
            .tcp_socket
            .as_ref()
            .and_then(|t| t.host.as_ref().map(|_| "tcpSocket")));
    if let Some(handler) = host {
        return Err(format!(
            "{at}.{handler}.host is not supported: probes always reach the pod itself"
        ));
    }
    if let Some(h) = &probe.http_get {
        if let Some(scheme) = &h.scheme
            && scheme != "HTTP"
        {
            return Err(format!(
                "{at}.httpGet.scheme {scheme:?} is not supported (only HTTP)"
            ));
        }
        if let Some(path) = &h.path
            && !path.starts_with('/')
        {
            return Err(format!(
                "{at}.httpGet.path must start with '/', got {path:?}"
            ));
        }
    }
    for (field, v, min) in [
        ("initialDelaySeconds", probe.initial_delay_seconds, 0),
        ("periodSeconds", probe.period_seconds, 1),
        ("timeoutSeconds", probe.timeout_seconds, 1),
        ("successThreshold", probe.success_threshold, 1),
        ("failureThreshold", probe.failure_threshold, 1),
    ] {
        if let Some(v) = v
            && v < min
        {
            return Err(format!("{at}.{field} must be >= {min}, got {v}"));
        }
    }
    if liveness_or_startup && probe.success_threshold.is_some_and(|s| s != 1) {
        return Err(format!("{at}.successThreshold must be 1"));
    }
    Ok(())
}

fn check_seccomp(at: &str, p: &crate::api::SeccompProfile) -> Result<(), String> {
    match p.type_.as_str() {
        "RuntimeDefault" | "Unconfined" => Ok(()),
        "Localhost" => Err(format!(
            "{at}.type Localhost is not supported (use RuntimeDefault, the agent's allow-list)"
        )),
        t => Err(format!(
            "{at}.type must be RuntimeDefault, Unconfined or Localhost, got {t:?}"
        )),
    }
}

/// A pod's containers with the field that lists them and their index there.
fn listed(
    spec: &crate::api::PodSpec,
) -> impl Iterator<Item = (&'static str, usize, &crate::api::Container)> {
    let init = spec.init_containers.iter().enumerate();
    let app = spec.containers.iter().enumerate();
    init.map(|(i, c)| ("initContainers", i, c))
        .chain(app.map(|(i, c)| ("containers", i, c)))
}

fn validate_pod_spec(at: &str, spec: &crate::api::PodSpec) -> Result<(), String> {
    if spec.containers.is_empty() {
        return Err(format!("{at}.containers must have at least one container"));
    }
    let mut names = std::collections::BTreeSet::new();
    for (field, i, c) in listed(spec) {
        if !names.insert(c.name.as_str()) {
            return Err(format!(
                "{at}.{field}[{i}].name: Duplicate value: {:?}",
                c.name
            ));
        }
    }
    if let Some(p) = &spec.restart_policy
        && !matches!(p.as_str(), "Always" | "OnFailure" | "Never")
    {
        return Err(format!(
            "{at}.restartPolicy must be Always, OnFailure or Never, got {p:?}"
        ));
    }
    crate::scheduling::validate_pod_spec(at, spec)?;
    crate::service::validate_pod_dns(at, spec)?;
    if let Some(rc) = &spec.runtime_class_name
        && !matches!(rc.as_str(), "wasmtime" | "runc")
    {
        return Err(format!(
            "{at}.runtimeClassName {rc:?} is not known (wasmtime or runc)"
        ));
    }
    for (i, s) in spec.image_pull_secrets.iter().enumerate() {
        check_name(&format!("{at}.imagePullSecrets[{i}].name"), &s.name)?;
    }
    if let Some(p) = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
    {
        check_seccomp(&format!("{at}.securityContext.seccompProfile"), p)?;
    }
    for (field, v) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = v {
            check_label_name(&format!("{at}.{field}"), v)?;
        }
    }
    for (field, i, c) in listed(spec) {
        let at = format!("{at}.{field}[{i}]");
        check_name(&format!("{at}.name"), &c.name)?;
        if let Some(p) = &c.restart_policy {
            if field == "containers" {
                return Err(format!(
                    "{at}.restartPolicy: may not be set for non-init containers"
                ));
            }
            if p != "Always" {
                return Err(format!("{at}.restartPolicy must be Always, got {p:?}"));
            }
        }
        // A sidecar may probe; an init container that runs to completion may not.
        if field == "initContainers" && !c.is_sidecar() {
            for (probe, set) in [
                ("livenessProbe", &c.liveness_probe),
                ("readinessProbe", &c.readiness_probe),
                ("startupProbe", &c.startup_probe),
            ] {
                if set.is_some() {
                    return Err(format!("{at}.{probe}: may not be set for init containers"));
                }
            }
        }
        if c.image.is_empty() {
            return Err(format!("{at}.image is required"));
        }
        if let Some(p) = &c.image_pull_policy
            && !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return Err(format!(
                "{at}.imagePullPolicy must be Always, IfNotPresent or Never, got {p:?}"
            ));
        }
        if let Some(sc) = &c.security_context {
            if let Some(p) = &sc.seccomp_profile {
                check_seccomp(&format!("{at}.securityContext.seccompProfile"), p)?;
            }
            for (which, caps) in sc
                .capabilities
                .iter()
                .flat_map(|c| [("add", &c.add), ("drop", &c.drop)])
            {
                for (k, cap) in caps.iter().enumerate() {
                    let name = cap.trim_start_matches("CAP_");
                    let ok = (which == "drop" && name == "ALL")
                        || (!name.is_empty()
                            && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
                    if !ok {
                        return Err(format!(
                            "{at}.securityContext.capabilities.{which}[{k}]: invalid capability {cap:?}"
                        ));
                    }
                }
            }
        }
        for (j, p) in c.ports.iter().enumerate() {
            if !(1..=65535).contains(&p.container_port) {
                return Err(format!(
                    "{at}.ports[{j}].containerPort must be 1-65535, got {}",
                    p.container_port
                ));
            }
            if let Some(h) = p.host_port
                && !(1..=65535).contains(&h)
            {
                return Err(format!("{at}.ports[{j}].hostPort must be 1-65535, got {h}"));
            }
            if let Some(proto) = &p.protocol
                && proto != "TCP"
            {
                return Err(format!(
                    "{at}.ports[{j}].protocol {proto:?} is not supported (only TCP)"
                ));
            }
        }
        for (which, map) in [
            ("requests", &c.resources.requests),
            ("limits", &c.resources.limits),
        ] {
            for (res, q) in map {
                let ok = match res.as_str() {
                    "cpu" => q.millicores().is_ok(),
                    "memory" => q.bytes().is_ok(),
                    _ => {
                        return Err(format!(
                            "{at}.resources.{which}.{res}: resource {res:?} is not supported (cpu, memory)"
                        ));
                    }
                };
                if !ok {
                    return Err(format!(
                        "{at}.resources.{which}.{res}: invalid quantity {:?}",
                        q.0
                    ));
                }
            }
        }
        for (field, probe, strict) in [
            ("livenessProbe", &c.liveness_probe, true),
            ("readinessProbe", &c.readiness_probe, false),
            ("startupProbe", &c.startup_probe, true),
        ] {
            if let Some(p) = probe {
                validate_probe(&format!("{at}.{field}"), p, c, strict)?;
            }
        }
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() {
                return Err(format!("{at}.env[{j}].name is required"));
            }
            if let Some(v) = &e.value_from {
                let sources = [
                    v.field_ref.is_some(),
                    v.config_map_key_ref.is_some(),
                    v.secret_key_ref.is_some(),
                ];
                if sources.iter().filter(|s| **s).count() != 1 {
                    return Err(format!(
                        "{at}.env[{j}].valueFrom must specify exactly one of fieldRef, configMapKeyRef or secretKeyRef"
                    ));
                }
                for (field, r) in [
                    ("configMapKeyRef", &v.config_map_key_ref),
                    ("secretKeyRef", &v.secret_key_ref),
                ] {
                    if let Some(r) = r {
                        check_name(&format!("{at}.env[{j}].valueFrom.{field}.name"), &r.name)?;
                        if r.key.is_empty() {
                            return Err(format!("{at}.env[{j}].valueFrom.{field}.key is required"));
                        }
                    }
                }
            }
            if let Some(f) = e.value_from.as_ref().and_then(|v| v.field_ref.as_ref())
                && !matches!(
                    f.field_path.as_str(),
                    "metadata.name"
                        | "metadata.namespace"
                        | "metadata.uid"
                        | "spec.nodeName"
                        | "status.podIP"
                        | "status.hostIP"
                )
            {
                return Err(format!(
                    "{at}.env[{j}].valueFrom.fieldRef.fieldPath {:?} is not supported",
                    f.field_path
                ));
            }
        }
        for (j, f) in c.env_from.iter().enumerate() {
            let refs = [
                ("configMapRef", &f.config_map_ref),
                ("secretRef", &f.secret_ref),
            ];
            if refs.iter().filter(|(_, r)| r.is_some()).count() != 1 {
                return Err(format!(
                    "{at}.envFrom[{j}] must specify exactly one of configMapRef or secretRef"
                ));
            }
            for (field, r) in refs {
                if let Some(r) = r {
                    check_name(&format!("{at}.envFrom[{j}].{field}.name"), &r.name)?;
                }
            }
        }
    }
    validate_volumes(at, spec)
}

/// The fields a downwardAPI volume file may project.
const DOWNWARD_FIELDS: [&str; 6] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "metadata.labels",
    "metadata.annotations",
    "spec.nodeName",
];

fn validate_volumes(at: &str, spec: &crate::api::PodSpec) -> Result<(), String> {
    let mut names = BTreeSet::new();
    for (i, v) in spec.volumes.iter().enumerate() {
        let at = format!("{at}.volumes[{i}]");
        check_name(&format!("{at}.name"), &v.name)?;
        if !names.insert(v.name.as_str()) {
            return Err(format!("{at}.name: duplicate volume name {:?}", v.name));
        }
        let sources = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
            v.downward_api.is_some(),
            v.persistent_volume_claim.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            1 => {}
            0 => {
                return Err(format!(
                    "{at} ({}): no supported volume source (emptyDir, hostPath, configMap, secret, downwardAPI, persistentVolumeClaim)",
                    v.name
                ));
            }
            _ => {
                return Err(format!(
                    "{at} ({}): specify exactly one volume source",
                    v.name
                ));
            }
        }
        if let Some(e) = &v.empty_dir {
            if let Some(m) = e
                .medium
                .as_deref()
                .filter(|m| !m.is_empty() && *m != "Memory")
            {
                return Err(format!(
                    "{at}.emptyDir.medium {m:?} is not valid (\"\" or Memory)"
                ));
            }
            if let Some(q) = &e.size_limit {
                q.bytes()
                    .map_err(|e| format!("{at}.emptyDir.sizeLimit: {e}"))?;
            }
        }
        if let Some(c) = &v.persistent_volume_claim {
            check_name(
                &format!("{at}.persistentVolumeClaim.claimName"),
                &c.claim_name,
            )?;
        }
        if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') || h.path.split('/').any(|c| c == "..") {
                return Err(format!(
                    "{at}.hostPath.path must be an absolute path without '..', got {:?}",
                    h.path
                ));
            }
            if let Some(t) = h.type_.as_deref().filter(|t| !t.is_empty())
                && !matches!(t, "Directory" | "DirectoryOrCreate")
            {
                return Err(format!(
                    "{at}.hostPath.type {t:?} is not supported: WASI pods mount directories (\"\", Directory or DirectoryOrCreate)"
                ));
            }
        }
        let items: Vec<(&str, &str)> = match (&v.config_map, &v.secret) {
            (Some(c), _) => {
                check_name(&format!("{at}.configMap.name"), &c.name)?;
                c.items
                    .iter()
                    .map(|k| ("configMap", k.path.as_str()))
                    .collect()
            }
            (_, Some(s)) => {
                check_name(&format!("{at}.secret.secretName"), &s.secret_name)?;
                s.items
                    .iter()
                    .map(|k| ("secret", k.path.as_str()))
                    .collect()
            }
            _ => Vec::new(),
        };
        let downward: Vec<(&str, &str)> = v
            .downward_api
            .iter()
            .flat_map(|d| d.items.iter().map(|f| ("downwardAPI", f.path.as_str())))
            .collect();
        for (j, (source, path)) in items.iter().chain(downward.iter()).enumerate() {
            check_relative(&format!("{at}.{source}.items[{j}].path"), path)?;
        }
        if let Some(d) = &v.downward_api {
            for (j, f) in d.items.iter().enumerate() {
                match &f.field_ref {
                    Some(r) if DOWNWARD_FIELDS.contains(&r.field_path.as_str()) => {}
                    Some(r) => {
                        return Err(format!(
                            "{at}.downwardAPI.items[{j}].fieldRef.fieldPath {:?} is not supported ({})",
                            r.field_path,
                            DOWNWARD_FIELDS.join(", ")
                        ));
                    }
                    None => {
                        return Err(format!("{at}.downwardAPI.items[{j}].fieldRef is required"));
                    }
                }
            }
        }
    }
    for (field, i, c) in listed(spec) {
        let mut paths = BTreeSet::new();
        for (j, m) in c.volume_mounts.iter().enumerate() {
            let at = format!("{at}.{field}[{i}].volumeMounts[{j}]");
            if !names.contains(m.name.as_str()) {
                return Err(format!(
                    "{at}.name: no volume named {:?} in the pod",
                    m.name
                ));
            }
            if !m.mount_path.starts_with('/') || m.mount_path.split('/').any(|c| c == "..") {
                return Err(format!(
                    "{at}.mountPath must be an absolute path without '..', got {:?}",
                    m.mount_path
                ));
            }
            if !paths.insert(m.mount_path.trim_end_matches('/')) {
                return Err(format!(
                    "{at}.mountPath {:?} is mounted twice",
                    m.mount_path
                ));
            }
            if m.sub_path.as_deref().is_some_and(|p| !p.is_empty()) {
                return Err(format!("{at}.subPath is not supported yet"));
            }
        }
    }
    Ok(())
}

/// A relative path of plain components (no `..`, not absolute).
fn check_relative(field: &str, path: &str) -> Result<(), String> {
    if path.is_empty()
        || path.starts_with('/')
        || path.split('/').any(|c| c == ".." || c.is_empty())
    {
        return Err(format!(
            "{field} must be a relative path without '..', got {path:?}"
        ));
    }
    Ok(())
}

/// A manifest's errors as text (`ok` when it parses), for tests.
#[cfg(test)]
pub(crate) fn errors_joined(text: &str, sep: &str) -> String {
    match parse(text) {
        Ok(_) => "ok".into(),
        Err(e) => e
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(sep),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn errors(text: &str) -> String {
        errors_joined(text, "\n")
    }

    const DEPLOY: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  strategy: {type: RollingUpdate}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: hello:latest
        resources: {requests: {cpu: 100m, memory: 32Mi}}
        livenessProbe: {httpGet: {path: /, port: 8080}}
        lifecycle: {preStop: {exec: {command: [/bin/true]}}}
      affinity: {}
"#;

    #[test]
    fn parses_deployment_with_warnings() {
        let parsed = parse(DEPLOY).unwrap();
        assert_eq!(parsed.len(), 1);
        let Object::Deployment(d) = &parsed[0].object else {
            panic!("not a deployment")
        };
        assert_eq!(d.spec.replicas, Some(3));
        assert_eq!(d.metadata.namespace.as_deref(), Some("default"));
        expect![[r#"
            [
                "deployment web: field spec.template.spec.containers.0.lifecycle is not supported yet and was ignored",
            ]
        "#]]
        .assert_debug_eq(&parsed[0].warnings);
        assert_eq!(
            d.surge_and_unavailable(),
            (1, 0),
            "25% of 3: surge rounds up, unavailable down"
        );
    }

    #[test]
    fn container_runtime_fields_are_checked() {
        let pod = |spec: &str, container: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: c, image: r.io/x{container}}}]\n{spec}\n---\n"
            )
        };
        let text = [
            pod("  runtimeClassName: runc", ""),
            pod("  runtimeClassName: kata", ""),
            pod("", ", imagePullPolicy: Sometimes"),
            pod("", ", securityContext: {capabilities: {add: [net_admin]}}"),
            pod(
                "",
                ", securityContext: {capabilities: {drop: [ALL], add: [NET_BIND_SERVICE]}}",
            ),
            pod(
                "",
                ", securityContext: {seccompProfile: {type: Localhost, localhostProfile: p.json}}",
            ),
            pod("  securityContext: {seccompProfile: {type: Strict}}", ""),
            pod("  imagePullSecrets: [{name: Bad_Name}]", ""),
        ]
        .concat();
        expect![[r#"
            document 2 (pod p): spec.runtimeClassName "kata" is not known (wasmtime or runc)
            document 3 (pod p): spec.containers[0].imagePullPolicy must be Always, IfNotPresent or Never, got "Sometimes"
            document 4 (pod p): spec.containers[0].securityContext.capabilities.add[0]: invalid capability "net_admin"
            document 5 (pod p): duplicate object: an earlier document already defines it
            document 6 (pod p): spec.containers[0].securityContext.seccompProfile.type Localhost is not supported (use RuntimeDefault, the agent's allow-list)
            document 7 (pod p): spec.securityContext.seccompProfile.type must be RuntimeDefault, Unconfined or Localhost, got "Strict"
            document 8 (pod p): spec.imagePullSecrets[0].name must consist of lowercase letters, digits, '-' or '.', and start and end with a letter or digit, got "Bad_Name""#]].assert_eq(&errors(&text));
    }

    #[test]
    fn init_containers_are_checked_like_containers_and_may_not_probe() {
        let pod = |name: &str, init: &str, container: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  initContainers: [{{name: setup, image: r.io/x{init}}}]\n  containers: [{{name: c, image: r.io/y{container}}}]\n---\n"
            )
        };
        let text = [
            pod("ok", ", command: [sh, -c, 'echo hi']", ""),
            pod("p1", ", imagePullPolicy: Sometimes", ""),
            pod("p2", ", readinessProbe: {tcpSocket: {port: 80}}", ""),
            pod(
                "p3",
                ", restartPolicy: Always, readinessProbe: {tcpSocket: {port: 80}}",
                "",
            ),
            pod("p4", ", restartPolicy: OnFailure", ""),
            pod("p5", "", ", restartPolicy: Always"),
            pod("p6", "", ", name: setup"),
            pod("p7", ", volumeMounts: [{name: nope, mountPath: /d}]", ""),
            pod("p8", ", resources: {requests: {cpu: fast}}", ""),
        ]
        .concat();
        expect![[r#"
            document 2 (pod p1): spec.initContainers[0].imagePullPolicy must be Always, IfNotPresent or Never, got "Sometimes"
            document 3 (pod p2): spec.initContainers[0].readinessProbe: may not be set for init containers
            document 5 (pod p4): spec.initContainers[0].restartPolicy must be Always, got "OnFailure"
            document 6 (pod p5): spec.containers[0].restartPolicy: may not be set for non-init containers
            document 7 (pod p6): spec.containers[0].name: Duplicate value: "setup"
            document 8 (pod p7): spec.initContainers[0].volumeMounts[0].name: no volume named "nope" in the pod
            document 9 (pod p8): spec.initContainers[0].resources.requests.cpu: invalid quantity "fast""#]].assert_eq(&errors(&text));
    }

    #[test]
    fn init_containers_count_once_in_the_pod_requests() {
        let spec: crate::api::PodSpec = serde_json::from_value(serde_json::json!({
            "initContainers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": "2", "memory": "64Mi"}}},
                {"name": "b", "image": "x", "resources": {"requests": {"memory": "1Gi"}}},
            ],
            "containers": [
                {"name": "c", "image": "x", "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}}},
                {"name": "d", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}},
            ],
        }))
        .unwrap();
        // cpu: the largest init container's 2 cores beat the 750m sum; memory: 1Gi beats 512Mi.
        assert_eq!(spec.requests(), (2000, 1 << 30));
        let names: Vec<&str> = spec.all_containers().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
        // A sidecar started first runs beside the init containers after it and beside the
        // containers: cpu 2 + 1 beats 750m + 1; memory 1Gi + 128Mi beats 512Mi + 128Mi.
        let mut with_sidecar = spec.clone();
        let mut side = spec.init_containers[0].clone();
        side.name = "side".into();
        side.restart_policy = Some("Always".into());
        side.resources.requests =
            serde_json::from_value(serde_json::json!({"cpu": "1", "memory": "128Mi"})).unwrap();
        with_sidecar.init_containers.insert(0, side);
        assert_eq!(with_sidecar.requests(), (3000, (1 << 30) + (128 << 20)));
        // Started last, it only adds to the containers' sum: 2 cores still win for cpu.
        with_sidecar.init_containers.rotate_left(1);
        assert_eq!(with_sidecar.requests(), (2000, 1 << 30));
    }

    #[test]
    fn rejects_bad_scheduling_terms() {
        let pod = |spec: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers: [{{name: c, image: x}}]\n{spec}\n---\n"
            )
        };
        let text = [
            pod("  tolerations: [{key: a, operator: Exists, value: b}]"),
            pod("  tolerations: [{key: a, value: b, effect: NoSchedule, tolerationSeconds: 5}]"),
            pod("  tolerations: [{value: b}]"),
            pod("  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: z, operator: Near, values: [a]}]}]}}}"),
            pod("  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: z, operator: Gt, values: [many]}]}]}}}"),
            pod("  affinity: {podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {app: w}}}]}}"),
            pod("  affinity: {podAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 0, podAffinityTerm: {topologyKey: zone}}]}}"),
            pod("  topologySpreadConstraints: [{maxSkew: 0, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}]"),
            pod("  topologySpreadConstraints: [{maxSkew: 1, topologyKey: zone, whenUnsatisfiable: Sometimes}]"),
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nspec: {taints: [{key: a, effect: Never}]}\n---\n".into(),
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: b}\nspec: {minAvailable: 1, maxUnavailable: 1}\n---\n".into(),
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: b, labels: {\"bad key\": x}}\nspec: {maxUnavailable: \"half\"}\n---\n".into(),
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: b}\nspec: {maxUnavailable: \"half\"}\n---\n".into(),
        ]
        .concat();
        expect![[r#"
            document 1 (pod p): spec.tolerations[0].value must be empty when operator is Exists
            document 2 (pod p): spec.tolerations[0].tolerationSeconds is only allowed with effect NoExecute
            document 3 (pod p): spec.tolerations[0].operator must be Exists when key is empty (to tolerate everything)
            document 4 (pod p): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator "Near" is not valid (In, NotIn, Exists, DoesNotExist, Gt, Lt)
            document 5 (pod p): spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values must be one integer for operator Gt
            document 6 (pod p): spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]: missing field `topologyKey`
            document 7 (pod p): spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight must be in 1..=100, got 0
            document 8 (pod p): spec.topologySpreadConstraints[0].maxSkew must be at least 1, got 0
            document 9 (pod p): spec.topologySpreadConstraints[0].whenUnsatisfiable "Sometimes" is not valid (DoNotSchedule or ScheduleAnyway)
            document 10 (node n): spec.taints[0].effect "Never" is not valid (NoSchedule, PreferNoSchedule or NoExecute)
            document 11 (poddisruptionbudget b): spec.minAvailable and spec.maxUnavailable cannot both be set
            document 12 (poddisruptionbudget b): metadata.labels: label key "bad key" is not valid: the name part must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit
            document 13 (poddisruptionbudget b): spec.maxUnavailable must be an integer or a percentage, got "half""#]].assert_eq(&errors(&text));
    }

    #[test]
    fn reports_bad_documents() {
        let bad = r#"
apiVersion: v1
kind: Gizmo
metadata: {name: g}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: -1
  selector: {matchLabels: {app: web}}
  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: x}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: typed}
spec:
  replicas: three
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: [{name: c, image: x, resources: {limits: {memory: lots}}}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p}
spec: {containers: [{name: c, image: x}]}
"#;
        expect![[r#"
            document 1 (gizmo g): kind "Gizmo" is not supported (supported: Namespace, Node, Pod, Service, EndpointSlice, Ingress, IngressClass, Middleware, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, PodDisruptionBudget, ConfigMap, Secret, PersistentVolumeClaim, ControllerRevision)
            document 2 (deployment web): spec.replicas must be >= 0, got -1
            document 3 (deployment typed): spec.replicas: invalid type: string "three", expected i32
            document 4 (pod p): spec.containers[0].resources.limits.memory: invalid quantity "lots"
            document 6 (pod p): duplicate object: an earlier document already defines it"#]]
        .assert_eq(&errors(bad));
    }

    #[test]
    fn rollout_and_probe_fields_are_checked() {
        let doc = |spec: &str, container: &str| {
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  selector: {{matchLabels: {{a: b}}}}\n{spec}\n  template:\n    metadata: {{labels: {{a: b}}}}\n    spec:\n      containers:\n      - name: c\n        image: x\n        ports: [{{name: http, containerPort: 80}}]\n{container}\n---\n"
            )
        };
        let text = [
            doc("  strategy: {type: Blue}", ""),
            doc(
                "  strategy: {type: Recreate, rollingUpdate: {maxSurge: 1}}",
                "",
            ),
            doc(
                "  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 0%}}",
                "",
            ),
            doc("  strategy: {rollingUpdate: {maxSurge: lots}}", ""),
            doc("  progressDeadlineSeconds: 5\n  minReadySeconds: 10", ""),
            doc("", "        livenessProbe: {exec: {command: []}}"),
            doc(
                "",
                "        readinessProbe: {httpGet: {path: /, port: web}}",
            ),
            doc("", "        readinessProbe: {periodSeconds: 1}"),
            doc(
                "",
                "        startupProbe: {tcpSocket: {port: http}, successThreshold: 2}",
            ),
            doc(
                "",
                "        readinessProbe: {httpGet: {path: /, port: 80, scheme: HTTPS}}",
            ),
            doc(
                "",
                "        readinessProbe: {tcpSocket: {port: 80, host: example.com}}",
            ),
        ]
        .join("");
        // Every document has the same name, so number them to avoid duplicate errors.
        let mut n = 0;
        let text: String = text
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| {
                n += 1;
                format!("{}---\n", d.replace("name: d}", &format!("name: d{n}}}")))
            })
            .collect();
        expect![[r#"
            document 1 (deployment d1): spec.strategy.type must be RollingUpdate or Recreate, got "Blue"
            document 2 (deployment d2): spec.strategy.rollingUpdate may not be specified when strategy type is Recreate
            document 3 (deployment d3): spec.strategy.rollingUpdate.maxUnavailable may not be 0 when maxSurge is 0
            document 4 (deployment d4): spec.strategy.rollingUpdate.maxSurge must be an integer or a percentage, got "lots"
            document 5 (deployment d5): spec.progressDeadlineSeconds must be greater than minReadySeconds, got 5
            document 6 (deployment d6): spec.template.spec.containers[0].livenessProbe.exec.command must not be empty
            document 7 (deployment d7): spec.template.spec.containers[0].readinessProbe.httpGet.port: no container port is named "web"
            document 8 (deployment d8): spec.template.spec.containers[0].readinessProbe must specify one of httpGet, tcpSocket or exec
            document 9 (deployment d9): spec.template.spec.containers[0].startupProbe.successThreshold must be 1
            document 10 (deployment d10): spec.template.spec.containers[0].readinessProbe.httpGet.scheme "HTTPS" is not supported (only HTTP)
            document 11 (deployment d11): spec.template.spec.containers[0].readinessProbe.tcpSocket.host is not supported: probes always reach the pod itself"#]].assert_eq(&errors(&text));
        let ok = doc(
            "  strategy: {rollingUpdate: {maxSurge: 50%, maxUnavailable: 0}}",
            "        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 2}",
        );
        assert_eq!(errors(&ok), "ok");
    }

    #[test]
    fn batch_and_daemon_fields_are_checked() {
        let job = |name: &str, spec: &str, policy: &str| {
            format!(
                "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n{spec}\n  template:\n    spec:\n      {policy}\n      containers: [{{name: c, image: x}}]\n---\n"
            )
        };
        let cron = |name: &str, spec: &str| {
            format!(
                "apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n{spec}\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          containers: [{{name: c, image: x}}]\n---\n"
            )
        };
        let ds = |name: &str, spec: &str, policy: &str| {
            format!(
                "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{a: b}}}}\n{spec}\n  template:\n    metadata: {{labels: {{a: b}}}}\n    spec:\n      {policy}\n      containers: [{{name: c, image: x}}]\n---\n"
            )
        };
        let text = [
            job("j1", "  completions: -1", "restartPolicy: Never"),
            job("j2", "  backoffLimit: 2", ""),
            job("j3", "  completionMode: Indexed", "restartPolicy: Never"),
            job(
                "j4",
                "  selector: {matchLabels: {a: b}}",
                "restartPolicy: Never",
            ),
            job(
                "j5",
                "  activeDeadlineSeconds: 0",
                "restartPolicy: OnFailure",
            ),
            cron("c1", "  schedule: '*/5 * * *'"),
            cron("c2", "  schedule: '@hourly'\n  timeZone: Moon/Base"),
            cron(
                "c3",
                "  schedule: '0 * * * *'\n  concurrencyPolicy: Sometimes",
            ),
            ds("d1", "  updateStrategy: {type: Surge}", ""),
            ds("d2", "", "restartPolicy: OnFailure"),
            ds(
                "d3",
                "  updateStrategy: {rollingUpdate: {maxUnavailable: 0}}",
                "",
            ),
        ]
        .join("");
        expect![[r#"
            document 1 (job j1): spec.completions must be >= 0, got -1
            document 2 (job j2): spec.template.spec.restartPolicy must be OnFailure or Never, got "Always (the default)"
            document 3 (job j3): spec.completionMode "Indexed" is not supported yet (only NonIndexed)
            document 4 (job j4): spec.selector: a Job's selector is generated (its pods are tracked by owner); remove selector and manualSelector
            document 5 (job j5): spec.activeDeadlineSeconds must be > 0, got 0
            document 6 (cronjob c1): spec.schedule must have five fields (minute hour day-of-month month day-of-week), got "*/5 * * *"
            document 7 (cronjob c2): spec.timeZone "Moon/Base" is not a known IANA time zone
            document 8 (cronjob c3): spec.concurrencyPolicy must be Allow, Forbid or Replace, got "Sometimes"
            document 9 (daemonset d1): spec.updateStrategy.type must be RollingUpdate or OnDelete, got "Surge"
            document 10 (daemonset d2): spec.template.spec.restartPolicy must be Always for a DaemonSet, got "OnFailure"
            document 11 (daemonset d3): spec.updateStrategy.rollingUpdate.maxUnavailable may not be 0 when maxSurge is 0"#]].assert_eq(&errors(&text));
        let ok = [
            job("ok1", "  completions: 3\n  parallelism: 2\n  ttlSecondsAfterFinished: 0", "restartPolicy: OnFailure"),
            cron("ok2", "  schedule: '30 9 * * 1-5'\n  timeZone: Europe/Berlin\n  concurrencyPolicy: Forbid"),
            ds("ok3", "  updateStrategy: {rollingUpdate: {maxUnavailable: 25%}}", ""),
        ]
        .join("");
        assert_eq!(errors(&ok), "ok");
    }

    const STS: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: 1, maxUnavailable: 2}}
  ordinals: {start: 5}
  persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete, whenScaled: Retain}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: chaos:latest
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {name: data, labels: {tier: db}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
      dataSource: {kind: VolumeSnapshot, name: snap}
"#;

    #[test]
    fn parses_statefulset_with_warnings() {
        let parsed = parse(STS).unwrap();
        let Object::StatefulSet(s) = &parsed[0].object else {
            panic!("not a statefulset")
        };
        assert_eq!((s.replicas(), s.partition()), (3, 1));
        assert!(s.deletes_claims_with_set() && !s.deletes_claims_on_scale_down());
        assert_eq!(s.claim_name("data", 2), "data-web-2");
        assert_eq!(s.claim_ordinal("data-web-2"), Some((2, "data")));
        assert_eq!(s.ordinal_of("web-10"), Some(10));
        for not_ours in ["web-", "web-01", "web-+1", "web-x", "webb-1", "data-web-1"] {
            assert_eq!(s.ordinal_of(not_ours), None, "{not_ours}");
        }
        expect![[r#"
            [
                "statefulset web: field spec.ordinals is not supported yet and was ignored",
                "statefulset web: field spec.updateStrategy.rollingUpdate.maxUnavailable is not supported yet and was ignored",
                "statefulset web: field spec.volumeClaimTemplates.0.spec.dataSource is not supported yet and was ignored",
            ]
        "#]]
        .assert_debug_eq(&parsed[0].warnings);
    }

    #[test]
    fn statefulset_and_claim_fields_are_checked() {
        let sts = |name: &str, spec: &str, template: &str, claims: &str| {
            format!(
                "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n{spec}\n  template:\n    metadata: {{labels: {{app: {template}}}}}\n    spec:\n      containers: [{{name: c, image: x, volumeMounts: [{{name: data, mountPath: /data}}]}}]\n  volumeClaimTemplates:\n{claims}\n---\n"
            )
        };
        let ok_claim = "  - metadata: {name: data}\n    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}";
        let claim = |spec: &str| format!("  - metadata: {{name: data}}\n    spec: {spec}");
        let pvc = |name: &str, spec: &str| {
            format!(
                "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec: {spec}\n---\n"
            )
        };
        let text = [
            sts("s1", "  replicas: -1", "a", ok_claim),
            sts("s2", "", "b", ok_claim),
            sts("s3", "  podManagementPolicy: Burst", "a", ok_claim),
            sts("s4", "  updateStrategy: {rollingUpdate: {partition: -2}}", "a", ok_claim),
            sts("s5", "  updateStrategy: {type: OnDelete, rollingUpdate: {partition: 1}}", "a", ok_claim),
            sts("s6", "  updateStrategy: {type: Blue}", "a", ok_claim),
            sts("s7", "  persistentVolumeClaimRetentionPolicy: {whenScaled: Keep}", "a", ok_claim),
            sts("s8", "  serviceName: My_Service", "a", ok_claim),
            sts("s9.x", "", "a", ok_claim),
            sts(&"s".repeat(53), "", "a", ok_claim),
            sts("s11", "", "a", &ok_claim.replace("name: data", "name: logs")),
            sts("s12", "", "a", &claim("{accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}")),
            sts("s13", "", "a", &claim("{accessModes: [ReadWriteOnce]}")),
            sts("s14", "", "a", &claim("{accessModes: [ReadWriteOnce], resources: {requests: {storage: lots}}}")),
            sts("s15", "", "a", &format!("{ok_claim}\n{ok_claim}")),
            sts("s16", "  minReadySeconds: -1", "a", ok_claim),
            pvc("p1", "{resources: {requests: {storage: 1Gi}}}"),
            pvc("p2", "{accessModes: [ReadWriteOnce], volumeMode: Block, resources: {requests: {storage: 1Gi}}}"),
            pvc("p3", "{accessModes: [Sometimes], resources: {requests: {storage: 1Gi}}}"),
            pvc("p4", "{accessModes: [ReadWriteOncePod], resources: {requests: {storage: 1Gi, cpu: 1}}}"),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostname: a.b\n  containers: [{name: c, image: x}]\n---\n".into(),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: q}\nspec:\n  containers: [{name: c, image: x}]\n  volumes: [{name: d, persistentVolumeClaim: {claimName: Bad}}]\n---\n".into(),
        ]
        .join("");
        expect![[r#"
            document 1 (statefulset s1): spec.replicas must be >= 0, got -1
            document 2 (statefulset s2): spec.template.metadata.labels must match spec.selector.matchLabels (app=a is missing)
            document 3 (statefulset s3): spec.podManagementPolicy must be OrderedReady or Parallel, got "Burst"
            document 4 (statefulset s4): spec.updateStrategy.rollingUpdate.partition must be >= 0, got -2
            document 5 (statefulset s5): spec.updateStrategy.rollingUpdate may not be specified when strategy type is OnDelete
            document 6 (statefulset s6): spec.updateStrategy.type must be RollingUpdate or OnDelete, got "Blue"
            document 7 (statefulset s7): spec.persistentVolumeClaimRetentionPolicy.whenScaled must be Retain or Delete, got "Keep"
            document 8 (statefulset s8): spec.serviceName must be a DNS label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit, got "My_Service"
            document 9 (statefulset s9.x): metadata.name must be a DNS label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit, got "s9.x" (a StatefulSet's pods are named NAME-ORDINAL and use it as their hostname)
            document 10 (statefulset sssssssssssssssssssssssssssssssssssssssssssssssssssss): metadata.name must be at most 52 characters for a StatefulSet (its pods' controller-revision-hash label is NAME-<10-character hash>), got 53
            document 11 (statefulset s11): spec.template.spec.containers[0].volumeMounts[0].name: no volume named "data" in the pod
            document 12 (statefulset s12): spec.volumeClaimTemplates[0].spec.accessModes[0] "ReadWriteMany" is not supported: a claim is a directory on one node (ReadWriteOnce or ReadWriteOncePod)
            document 13 (statefulset s13): spec.volumeClaimTemplates[0].spec.resources.requests.storage is required
            document 14 (statefulset s14): spec.volumeClaimTemplates[0].spec.resources.requests.storage: invalid quantity "lots"
            document 15 (statefulset s15): spec.volumeClaimTemplates[1].metadata.name: duplicate claim template name "data"
            document 16 (statefulset s16): spec.minReadySeconds must be >= 0, got -1
            document 17 (persistentvolumeclaim p1): spec.accessModes: at least one access mode is required (ReadWriteOnce or ReadWriteOncePod)
            document 18 (persistentvolumeclaim p2): spec.volumeMode "Block" is not supported (only Filesystem: claims are directories)
            document 19 (persistentvolumeclaim p3): spec.accessModes[0] "Sometimes" is not valid (ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod)
            document 20 (persistentvolumeclaim p4): spec.resources.requests.cpu: resource "cpu" is not supported (storage)
            document 21 (pod p): spec.hostname must be a DNS label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit, got "a.b"
            document 22 (pod q): spec.volumes[0].persistentVolumeClaim.claimName must consist of lowercase letters, digits, '-' or '.', and start and end with a letter or digit, got "Bad""#]].assert_eq(&errors(&text));
        let ok = [
            sts("ok1", "  replicas: 0\n  podManagementPolicy: Parallel\n  updateStrategy: {type: OnDelete}", "a", ok_claim),
            pvc("ok2", "{accessModes: [ReadWriteOncePod], storageClassName: local, volumeMode: Filesystem, resources: {requests: {storage: 512Mi}}}"),
        ]
        .join("");
        assert_eq!(errors(&ok), "ok");
    }

    #[test]
    fn folds_secret_string_data() {
        let parsed = parse(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: hunter2}\n",
        )
        .unwrap();
        let Object::Secret(s) = &parsed[0].object else {
            panic!("not a secret")
        };
        assert!(s.string_data.is_empty());
        assert_eq!(s.data["password"], "aHVudGVyMg==");
    }

    #[test]
    fn wrong_api_version_is_an_error() {
        let text = "apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata: {name: d}\n";
        expect![[r#"document 1 (deployment d): apiVersion must be "apps/v1" for kind Deployment, got "extensions/v1beta1""#]]
            .assert_eq(&errors(text));
    }

    #[test]
    fn events_cannot_be_applied() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: Event\nmetadata: {name: web.1}\nreason: Scheduled\n";
        expect![[r#"document 2 (event web.1): kind Event cannot be applied: events are recorded by Flotilla itself (its controllers and agents)"#]]
            .assert_eq(&errors(text));
    }
}
