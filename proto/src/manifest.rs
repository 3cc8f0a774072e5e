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
    let Some(kind) = Kind::from_kind(&kind_str) else {
        let supported: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
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
        let p = path.to_string();
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

/// Validates values the type system cannot (names, ranges, enums, quantities). Also folds
/// Secret.stringData into data as Kubernetes does.
pub fn validate(object: &mut Object) -> Result<(), String> {
    let meta = object.meta();
    check_name("metadata.name", &meta.name)?;
    if let Some(ns) = &meta.namespace {
        check_name("metadata.namespace", ns)?;
    }
    match object {
        Object::Pod(p) => validate_pod_spec("spec", &p.spec),
        Object::Deployment(d) => {
            let s = &d.spec;
            if let Some(r) = s.replicas
                && r < 0
            {
                return Err(format!("spec.replicas must be >= 0, got {r}"));
            }
            if s.selector.match_labels.is_empty() {
                return Err("spec.selector.matchLabels is required".into());
            }
            for (k, v) in &s.selector.match_labels {
                if s.template.metadata.labels.get(k) != Some(v) {
                    return Err(format!(
                        "spec.template.metadata.labels must match spec.selector.matchLabels ({k}={v} is missing)"
                    ));
                }
            }
            validate_pod_spec("spec.template.spec", &s.template.spec)
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
        Object::Namespace(_) | Object::Node(_) | Object::ConfigMap(_) => Ok(()),
    }
}

fn validate_pod_spec(at: &str, spec: &crate::api::PodSpec) -> Result<(), String> {
    if spec.containers.is_empty() {
        return Err(format!("{at}.containers must have at least one container"));
    }
    if spec.containers.len() > 1 {
        return Err(format!(
            "{at}.containers: only one container per pod is supported in this release, got {}",
            spec.containers.len()
        ));
    }
    if let Some(p) = &spec.restart_policy
        && !matches!(p.as_str(), "Always" | "OnFailure" | "Never")
    {
        return Err(format!(
            "{at}.restartPolicy must be Always, OnFailure or Never, got {p:?}"
        ));
    }
    let mut names = BTreeSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let at = format!("{at}.containers[{i}]");
        check_name(&format!("{at}.name"), &c.name)?;
        if !names.insert(&c.name) {
            return Err(format!("{at}.name: duplicate container name {:?}", c.name));
        }
        if c.image.is_empty() {
            return Err(format!("{at}.image is required"));
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
        for (j, e) in c.env.iter().enumerate() {
            if e.name.is_empty() {
                return Err(format!("{at}.env[{j}].name is required"));
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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn errors(text: &str) -> String {
        match parse(text) {
            Ok(_) => "ok".into(),
            Err(e) => e
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
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
                "deployment web: field spec.strategy is not supported yet and was ignored",
                "deployment web: field spec.template.spec.containers.0.livenessProbe is not supported yet and was ignored",
            ]
        "#]]
        .assert_debug_eq(&parsed[0].warnings);
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
            document 1 (gizmo g): kind "Gizmo" is not supported (supported: Namespace, Node, Pod, Deployment, ConfigMap, Secret)
            document 2 (deployment web): spec.replicas must be >= 0, got -1
            document 3 (deployment typed): spec.replicas: invalid type: string "three", expected i32
            document 4 (pod p): spec.containers[0].resources.limits.memory: invalid quantity "lots"
            document 6 (pod p): duplicate object: an earlier document already defines it"#]]
        .assert_eq(&errors(bad));
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
}
