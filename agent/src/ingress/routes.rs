//! The ingress's routes (pure): every rule of every Ingress that is ours, merged by host, in
//! the order Kubernetes defines. A request's host picks the rules (an exact host, then a
//! `*.` wildcard for its first label, then the rules without a host); within those an Exact
//! path beats any Prefix, and the longest matching Prefix wins (matched by whole path
//! elements: `/api` matches `/api` and `/api/v1`, not `/apiary`). A host whose rules match
//! no path falls through to the next, and then to the default backend. When two Ingresses
//! claim the same host, path and type, the older one keeps it.
use crate::discovery::Objects;
use flotilla_proto::Object;
use flotilla_proto::api::{Ingress, IngressBackend, IngressClass, ServiceBackendPort};
use std::collections::HashMap;

/// A Service port a route leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub namespace: String,
    pub service: String,
    pub port: ServiceBackendPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Match {
    Exact(String),
    /// Without its trailing '/' ("" for "/").
    Prefix(String),
}

#[derive(Clone, Debug)]
struct Route {
    path: Match,
    backend: BackendRef,
}

#[derive(Default, Debug)]
pub struct Routes {
    exact: HashMap<String, Vec<Route>>,
    /// By the domain after `*.`.
    wildcard: HashMap<String, Vec<Route>>,
    any: Vec<Route>,
    default: Option<BackendRef>,
}

impl Routes {
    pub fn build(objects: &Objects) -> Routes {
        let mut routes = Routes::default();
        for ing in ours(objects) {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let to = |b: &IngressBackend| {
                b.service.as_ref().map(|s| BackendRef {
                    namespace: ns.to_string(),
                    service: s.name.clone(),
                    port: s.port.clone(),
                })
            };
            if routes.default.is_none() {
                routes.default = ing.spec.default_backend.as_ref().and_then(to);
            }
            for rule in &ing.spec.rules {
                let list = match rule.host.as_deref() {
                    None | Some("") => &mut routes.any,
                    Some(h) => match h.strip_prefix("*.") {
                        Some(domain) => routes.wildcard.entry(domain.to_string()).or_default(),
                        None => routes.exact.entry(h.to_string()).or_default(),
                    },
                };
                for p in rule.http.iter().flat_map(|h| &h.paths) {
                    let Some(backend) = to(&p.backend) else {
                        continue;
                    };
                    let path = p.path.as_deref().unwrap_or("/");
                    let path = match p.path_type.as_str() {
                        "Exact" => Match::Exact(path.to_string()),
                        // ImplementationSpecific is a Prefix here.
                        _ => Match::Prefix(path.trim_end_matches('/').to_string()),
                    };
                    if !list.iter().any(|r| r.path == path) {
                        list.push(Route { path, backend });
                    }
                }
            }
        }
        for list in routes
            .exact
            .values_mut()
            .chain(routes.wildcard.values_mut())
            .chain([&mut routes.any])
        {
            // Exact paths first, then prefixes longest first.
            list.sort_by_key(|r| match &r.path {
                Match::Exact(_) => (0, 0),
                Match::Prefix(p) => (1, usize::MAX - p.len()),
            });
        }
        routes
    }

    /// Where a request for `host` (any case, with or without a port) and `path` goes.
    pub fn find(&self, host: &str, path: &str) -> Option<&BackendRef> {
        let host = host_name(host);
        let wildcard = host
            .split_once('.')
            .and_then(|(_, domain)| self.wildcard.get(domain));
        [self.exact.get(host.as_str()), wildcard, Some(&self.any)]
            .into_iter()
            .flatten()
            .find_map(|list| list.iter().find(|r| r.path.matches(path)))
            .map(|r| &r.backend)
            .or(self.default.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.any.is_empty()
            && self.default.is_none()
    }
}

/// The Ingresses the ingress serves (`ingress::is_ours`), oldest first (RFC 3339 times sort
/// by time), so the older one keeps whatever two of them claim.
pub fn ours(objects: &Objects) -> Vec<&Ingress> {
    let classes: Vec<&IngressClass> = objects
        .values()
        .filter_map(|o| match o {
            Object::IngressClass(c) => Some(c),
            _ => None,
        })
        .collect();
    let mut ingresses: Vec<&Ingress> = objects
        .values()
        .filter_map(|o| match o {
            Object::Ingress(i) => Some(i),
            _ => None,
        })
        .filter(|i| flotilla_proto::ingress::is_ours(i, classes.iter().copied()))
        .collect();
    ingresses.sort_by_key(|i| i.metadata.creation_timestamp.clone());
    ingresses
}

impl Match {
    fn matches(&self, path: &str) -> bool {
        match self {
            Match::Exact(p) => p == path,
            Match::Prefix(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

/// The host without a port or a trailing dot, lowercase.
fn host_name(host: &str) -> String {
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ingress(name: &str, created: &str, spec: serde_json::Value) -> Object {
        Object::from_json(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": spec,
        }))
        .unwrap()
    }

    fn path(path: &str, kind: &str, svc: &str) -> serde_json::Value {
        serde_json::json!({"path": path, "pathType": kind,
            "backend": {"service": {"name": svc, "port": {"number": 80}}}})
    }

    fn objects(list: Vec<Object>) -> Objects {
        Arc::new(list.into_iter().map(|o| (o.key(), o)).collect())
    }

    fn to(routes: &Routes, host: &str, p: &str) -> String {
        routes
            .find(host, p)
            .map_or("404".into(), |b| b.service.clone())
    }

    #[test]
    fn host_then_path_precedence() {
        let objs = objects(vec![
            ingress(
                "a",
                "2026-01-01T00:00:00Z",
                serde_json::json!({
                    "defaultBackend": {"service": {"name": "fallback", "port": {"number": 80}}},
                    "rules": [
                        {"host": "shop.example.com", "http": {"paths": [
                            path("/", "Prefix", "shop"),
                            path("/api/", "Prefix", "api"),
                            path("/api/v2", "Prefix", "api-v2"),
                            path("/api", "Exact", "api-exact"),
                        ]}},
                        {"host": "*.example.com", "http": {"paths": [path("/", "Prefix", "wild")]}},
                        {"http": {"paths": [path("/status", "Exact", "status")]}},
                    ],
                }),
            ),
            // A younger Ingress claiming shop's "/" loses it, but adds a path of its own.
            ingress(
                "b",
                "2026-02-01T00:00:00Z",
                serde_json::json!({
                    "defaultBackend": {"service": {"name": "young-fallback", "port": {"number": 80}}},
                    "rules": [{"host": "shop.example.com", "http": {"paths": [
                        path("/", "Prefix", "young"),
                        path("/cart", "ImplementationSpecific", "cart"),
                    ]}}],
                }),
            ),
        ]);
        let r = Routes::build(&objs);
        let cases = [
            ("shop.example.com", "/"),
            ("SHOP.example.com:8080", "/index.html"),
            ("shop.example.com", "/api"),
            ("shop.example.com", "/api/"),
            ("shop.example.com", "/api/v1"),
            ("shop.example.com", "/api/v2/x"),
            ("shop.example.com", "/apiary"),
            ("shop.example.com", "/cart/1"),
            ("shop.example.com", "/status"),
            ("blog.example.com", "/post"),
            ("a.blog.example.com", "/post"),
            ("example.com", "/status"),
            ("example.com", "/other"),
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|(h, p)| format!("{h}{p} -> {}", to(&r, h, p)))
            .collect();
        expect_test::expect![[r#"
            shop.example.com/ -> shop
            SHOP.example.com:8080/index.html -> shop
            shop.example.com/api -> api-exact
            shop.example.com/api/ -> api
            shop.example.com/api/v1 -> api
            shop.example.com/api/v2/x -> api-v2
            shop.example.com/apiary -> shop
            shop.example.com/cart/1 -> cart
            shop.example.com/status -> shop
            blog.example.com/post -> wild
            a.blog.example.com/post -> fallback
            example.com/status -> status
            example.com/other -> fallback"#]]
        .assert_eq(&got.join("\n"));
    }

    #[test]
    fn other_controllers_ingresses_are_not_routed() {
        let class = Object::from_json(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"},
        }))
        .unwrap();
        let mut theirs = ingress(
            "n",
            "2026-01-01T00:00:00Z",
            serde_json::json!({"rules": [{"http": {"paths": [path("/", "Prefix", "web")]}}]}),
        );
        if let Object::Ingress(i) = &mut theirs {
            i.spec.ingress_class_name = Some("nginx".into());
        }
        let r = Routes::build(&objects(vec![class, theirs]));
        assert!(r.is_empty());
        assert_eq!(to(&r, "a", "/"), "404");
    }
}
