//! The ingress's routes (pure): every rule of every Ingress that is ours, merged by host, in
//! the order Kubernetes defines. A request's host picks the rules (an exact host, then a
//! `*.` wildcard for its first label, then the rules without a host); within those an Exact
//! path beats any Prefix, and the longest matching Prefix wins (matched by whole path
//! elements: `/api` matches `/api` and `/api/v1`, not `/apiary`). A host whose rules match
//! no path falls through to the next, and then to the default backend. When two Ingresses
//! claim the same host, path and type, the older one keeps it.
//!
//! A route carries its Ingress's middlewares ([`Chain`]) and listeners (Traefik's
//! `router.entrypoints`/`router.tls` annotations). A canary Ingress (ingress-nginx's
//! `canary`/`canary-weight` annotations) adds no routes: it takes its weight's share of the
//! requests of the same host and path of the others.
use super::middleware::Chain;
use crate::discovery::Objects;
use crate::mesh::table::Balancing;
use flotilla_proto::Object;
use flotilla_proto::api::{Ingress, IngressBackend, IngressClass, Middleware, ServiceBackendPort};
use flotilla_proto::ingress as rules;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A Service port a route leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub namespace: String,
    pub service: String,
    pub port: ServiceBackendPort,
}

/// Where a route's requests go, and what is done to them on the way.
#[derive(Debug)]
pub struct Dest {
    pub backend: BackendRef,
    /// A canary's backend, its weight and the weight's total.
    pub canary: Option<(BackendRef, u64, u64)>,
    pub chain: Arc<Chain>,
    /// How an endpoint of the backend is picked.
    pub how: Balancing,
    /// Requests so far, for the canary's share.
    count: AtomicU64,
}

impl Dest {
    fn new(backend: BackendRef, chain: Arc<Chain>, how: Balancing) -> Dest {
        Dest {
            backend,
            canary: None,
            chain,
            how,
            count: AtomicU64::new(0),
        }
    }

    /// The backend of the next request: the canary's for exactly `weight` of every `total`
    /// requests, spread evenly (request n goes to the canary when ⌊(n+1)·w/t⌋ > ⌊n·w/t⌋).
    pub fn pick(&self) -> &BackendRef {
        let Some((canary, w, t)) = &self.canary else {
            return &self.backend;
        };
        let n = self.count.fetch_add(1, Ordering::Relaxed) % t;
        if (n + 1) * w / t > n * w / t {
            canary
        } else {
            &self.backend
        }
    }
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
    /// Served on the HTTP and the HTTPS listener.
    http: bool,
    https: bool,
    dest: Arc<Dest>,
}

#[derive(Default, Debug)]
pub struct Routes {
    exact: HashMap<String, Vec<Route>>,
    /// By the domain after `*.`.
    wildcard: HashMap<String, Vec<Route>>,
    any: Vec<Route>,
    default: Option<Route>,
}

impl Routes {
    pub fn build(objects: &Objects) -> Routes {
        let middlewares: HashMap<String, &Middleware> = objects
            .values()
            .filter_map(|o| match o {
                Object::Middleware(m) => Some((rules::middleware_key(m), m)),
                _ => None,
            })
            .collect();
        let mut routes = Routes::default();
        let (canaries, mains): (Vec<&Ingress>, Vec<&Ingress>) = ours(objects)
            .into_iter()
            .partition(|i| matches!(rules::canary(i), Ok(Some(_))));
        for ing in mains {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let chain = Arc::new(Chain::build(ns, ing, &middlewares));
            let (http, https) = rules::entrypoints(ing).unwrap_or((true, true));
            let how = match rules::least_request(ing) {
                Ok(true) => Balancing::LeastRequest,
                _ => Balancing::RoundRobin,
            };
            let route = |path, b: &IngressBackend| {
                backend_ref(ns, b).map(|backend| Route {
                    path,
                    http,
                    https,
                    dest: Arc::new(Dest::new(backend, chain.clone(), how)),
                })
            };
            if routes.default.is_none() {
                routes.default = ing
                    .spec
                    .default_backend
                    .as_ref()
                    .and_then(|b| route(Match::Prefix(String::new()), b));
            }
            for (host, p) in rules::paths(ing) {
                let list = routes.list(host);
                let path = path_match(p);
                let claimed = |r: &Route| r.path == path && (r.http && http || r.https && https);
                if !list.iter().any(claimed)
                    && let Some(r) = route(path.clone(), &p.backend)
                {
                    list.push(r);
                }
            }
        }
        for ing in canaries {
            let Ok(Some((weight, total))) = rules::canary(ing) else {
                continue;
            };
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            let add = |r: &mut Route, b: &IngressBackend| {
                // The main route's Dest is not shared yet: it gets its canary in place.
                if let (Some(dest), Some(to)) = (Arc::get_mut(&mut r.dest), backend_ref(ns, b))
                    && dest.canary.is_none()
                {
                    dest.canary = Some((to, weight.into(), total.into()));
                }
            };
            if let (Some(r), Some(b)) = (routes.default.as_mut(), &ing.spec.default_backend) {
                add(r, b);
            }
            for (host, p) in rules::paths(ing) {
                let path = path_match(p);
                if let Some(r) = routes.list(host).iter_mut().find(|r| r.path == path) {
                    add(r, &p.backend);
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

    /// The rules of `host` as an Ingress writes it (none: any host).
    fn list(&mut self, host: Option<&str>) -> &mut Vec<Route> {
        match host {
            None | Some("") => &mut self.any,
            Some(h) => match h.strip_prefix("*.") {
                Some(domain) => self.wildcard.entry(domain.to_string()).or_default(),
                None => self.exact.entry(h.to_string()).or_default(),
            },
        }
    }

    /// Where a request for host `name` (as [`host_name`] gives it) and `path` on the HTTP
    /// or the HTTPS listener goes.
    pub fn find(&self, name: &str, path: &str, https: bool) -> Option<&Arc<Dest>> {
        let host = name;
        let wildcard = host
            .split_once('.')
            .and_then(|(_, domain)| self.wildcard.get(domain));
        let serves = |r: &&Route| if https { r.https } else { r.http };
        [self.exact.get(host), wildcard, Some(&self.any)]
            .into_iter()
            .flatten()
            .find_map(|list| list.iter().filter(serves).find(|r| r.path.matches(path)))
            .or(self.default.as_ref().filter(serves))
            .map(|r| &r.dest)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.wildcard.is_empty()
            && self.any.is_empty()
            && self.default.is_none()
    }
}

/// Every path of an Ingress, with the host of its rule.
fn path_match(p: &flotilla_proto::api::HttpIngressPath) -> Match {
    let path = p.path.as_deref().unwrap_or("/");
    match p.path_type.as_str() {
        "Exact" => Match::Exact(path.to_string()),
        // ImplementationSpecific is a Prefix here.
        _ => Match::Prefix(path.trim_end_matches('/').to_string()),
    }
}

fn backend_ref(ns: &str, b: &IngressBackend) -> Option<BackendRef> {
    b.service.as_ref().map(|s| BackendRef {
        namespace: ns.to_string(),
        service: s.name.clone(),
        port: s.port.clone(),
    })
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
        .filter(|i| rules::is_ours(i, classes.iter().copied()))
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
pub fn host_name(host: &str) -> String {
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
            .find(&host_name(host), p, false)
            .map_or("404".into(), |d| d.backend.service.clone())
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

    fn annotated(
        name: &str,
        created: &str,
        annotations: serde_json::Value,
        spec: serde_json::Value,
    ) -> Object {
        let mut o = ingress(name, created, spec);
        if let Object::Ingress(i) = &mut o {
            i.metadata.annotations = serde_json::from_value(annotations).unwrap();
        }
        o
    }

    #[test]
    fn canary_takes_exactly_its_weight_spread_evenly() {
        let rules = |svc: &str| serde_json::json!({"rules": [{"host": "a.com", "http": {"paths": [path("/", "Prefix", svc)]}}]});
        let objs = objects(vec![
            ingress("main", "2026-01-01T00:00:00Z", rules("stable")),
            annotated(
                "canary",
                "2026-01-02T00:00:00Z",
                serde_json::json!({
                    "nginx.ingress.kubernetes.io/canary": "true",
                    "nginx.ingress.kubernetes.io/canary-weight": "1",
                    "nginx.ingress.kubernetes.io/canary-weight-total": "4",
                }),
                rules("next"),
            ),
            // A canary of a host nobody else routes adds nothing.
            annotated(
                "stray",
                "2026-01-03T00:00:00Z",
                serde_json::json!({
                    "nginx.ingress.kubernetes.io/canary": "true",
                    "nginx.ingress.kubernetes.io/canary-weight": "50",
                }),
                serde_json::json!({"rules": [{"host": "b.com", "http": {"paths": [path("/", "Prefix", "b")]}}]}),
            ),
        ]);
        let r = Routes::build(&objs);
        let dest = r.find("a.com", "/x", false).unwrap();
        let picks: Vec<&str> = (0..8).map(|_| dest.pick().service.as_str()).collect();
        assert_eq!(
            picks,
            [
                "stable", "stable", "stable", "next", "stable", "stable", "stable", "next"
            ]
        );
        let next = (0..10_000)
            .filter(|_| dest.pick().service == "next")
            .count();
        assert_eq!(next, 2500);
        assert_eq!(to(&r, "b.com", "/"), "404");
    }

    #[test]
    fn entrypoints_pick_the_listener() {
        let objs = objects(vec![
            annotated(
                "secure",
                "2026-01-01T00:00:00Z",
                serde_json::json!({"traefik.ingress.kubernetes.io/router.entrypoints": "websecure"}),
                serde_json::json!({"rules": [{"host": "a.com", "http": {"paths": [path("/", "Prefix", "secure")]}}]}),
            ),
            annotated(
                "plain",
                "2026-01-02T00:00:00Z",
                serde_json::json!({"traefik.ingress.kubernetes.io/router.entrypoints": "web"}),
                serde_json::json!({"rules": [{"host": "a.com", "http": {"paths": [path("/", "Prefix", "plain")]}}]}),
            ),
        ]);
        let r = Routes::build(&objs);
        assert_eq!(
            r.find("a.com", "/", true).unwrap().backend.service,
            "secure"
        );
        assert_eq!(
            r.find("a.com", "/", false).unwrap().backend.service,
            "plain"
        );
    }
}
