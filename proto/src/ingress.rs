//! What an Ingress and an IngressClass may say: the API server's checks, and the fields this
//! release refuses rather than ignores.
use crate::api::{INGRESS_CONTROLLER, Ingress, IngressBackend, IngressClass};

/// Whether the agents' ingress serves `ing`: its class is one of ours, or it names none
/// and no other controller's class is the default. The hub (for the status) and the agents
/// (for their routes) decide with this one rule.
pub fn is_ours<'a>(ing: &Ingress, classes: impl IntoIterator<Item = &'a IngressClass>) -> bool {
    let mut classes = classes.into_iter();
    match ing.spec.ingress_class_name.as_deref() {
        Some(name) => {
            classes.any(|c| c.metadata.name == name && c.spec.controller == INGRESS_CONTROLLER)
        }
        None => !classes.any(|c| c.is_default() && c.spec.controller != INGRESS_CONTROLLER),
    }
}
use crate::service::{check_dns1035, check_port, check_port_name};

/// The path types an Ingress path may have.
const PATH_TYPES: [&str; 3] = ["Exact", "ImplementationSpecific", "Prefix"];

pub fn validate(ing: &Ingress) -> Result<(), String> {
    let s = &ing.spec;
    if let Some(class) = &s.ingress_class_name {
        crate::manifest::check_name("spec.ingressClassName", class)?;
    }
    if s.default_backend.is_none() && s.rules.is_empty() {
        return Err(
            "spec: Invalid value: either `defaultBackend` or `rules` must be specified".into(),
        );
    }
    if let Some(b) = &s.default_backend {
        check_backend("spec.defaultBackend", b)?;
    }
    for (i, rule) in s.rules.iter().enumerate() {
        if let Some(host) = &rule.host {
            check_host(&format!("spec.rules[{i}].host"), host)?;
        }
        let Some(http) = &rule.http else { continue };
        for (j, p) in http.paths.iter().enumerate() {
            let at = format!("spec.rules[{i}].http.paths[{j}]");
            if !PATH_TYPES.contains(&p.path_type.as_str()) {
                return Err(if p.path_type.is_empty() {
                    format!("{at}.pathType: Required value: pathType must be specified")
                } else {
                    format!(
                        "{at}.pathType: Unsupported value: {:?}: supported values: {}",
                        p.path_type,
                        PATH_TYPES.map(|t| format!("\"{t}\"")).join(", ")
                    )
                });
            }
            match p.path.as_deref() {
                Some(path) if path.starts_with('/') => {}
                None | Some("") if p.path_type == "ImplementationSpecific" => {}
                Some(path) => {
                    return Err(format!(
                        "{at}.path: Invalid value: {path:?}: must be an absolute path"
                    ));
                }
                None => {
                    return Err(format!(
                        "{at}.path: Required value: must be specified when pathType is {}",
                        p.path_type
                    ));
                }
            }
            check_backend(&format!("{at}.backend"), &p.backend)?;
        }
    }
    for (i, tls) in s.tls.iter().enumerate() {
        for (j, host) in tls.hosts.iter().enumerate() {
            check_host(&format!("spec.tls[{i}].hosts[{j}]"), host)?;
        }
        if let Some(name) = &tls.secret_name {
            crate::manifest::check_name(&format!("spec.tls[{i}].secretName"), name)?;
        }
    }
    Ok(())
}

pub fn validate_class(class: &IngressClass) -> Result<(), String> {
    let controller = &class.spec.controller;
    let Some((domain, path)) = controller.split_once('/') else {
        return Err(format!(
            "spec.controller: Invalid value: {controller:?}: must be a domain-prefixed path (such as {INGRESS_CONTROLLER:?})"
        ));
    };
    crate::manifest::check_name("spec.controller", domain)?;
    if path.is_empty() || controller.len() > 250 {
        return Err(format!(
            "spec.controller: Invalid value: {controller:?}: must be a domain-prefixed path of at most 250 characters"
        ));
    }
    if class.spec.parameters.is_some() {
        return Err(format!(
            "spec.parameters: not supported yet: the {INGRESS_CONTROLLER} controller takes no parameters"
        ));
    }
    Ok(())
}

fn check_backend(at: &str, b: &IngressBackend) -> Result<(), String> {
    match (&b.service, &b.resource) {
        (Some(_), Some(_)) => Err(format!(
            "{at}: Invalid value: cannot set both service and resource"
        )),
        (None, Some(_)) => Err(format!(
            "{at}.resource: not supported yet: only Service backends are"
        )),
        (None, None) => Err(format!(
            "{at}: Required value: one backend type must be specified"
        )),
        (Some(svc), None) => {
            check_dns1035(&format!("{at}.service.name"), &svc.name)?;
            match (&svc.port.name, svc.port.number) {
                (Some(_), Some(_)) => Err(format!(
                    "{at}.service.port: Invalid value: cannot set both port name & port number"
                )),
                (Some(name), None) => check_port_name(&format!("{at}.service.port.name"), name),
                (None, Some(n)) => check_port(&format!("{at}.service.port.number"), n),
                (None, None) => Err(format!(
                    "{at}.service.port: Invalid value: port name or number is required"
                )),
            }
        }
    }
}

/// A DNS subdomain, or one with a `*.` in front (a wildcard for exactly one label); not an IP.
fn check_host(field: &str, host: &str) -> Result<(), String> {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{field}: Invalid value: {host:?}: must be a DNS name, not an IP address"
        ));
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    if name.contains('*') {
        return Err(format!(
            "{field}: Invalid value: {host:?}: a wildcard may only be the first label, as in \"*.example.com\""
        ));
    }
    crate::manifest::check_name(field, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> String {
        crate::manifest::errors_joined(yaml, "; ")
    }

    fn ing(spec: &str) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\nspec:\n{spec}"
        )
    }

    fn rule(host: &str, path: &str, backend: &str) -> String {
        ing(&format!(
            "  rules:\n  - host: {host}\n    http:\n      paths:\n      - {{{path}, backend: {backend}}}\n"
        ))
    }

    const SVC: &str = "{service: {name: web, port: {number: 80}}}";

    #[test]
    fn ingress_fields_are_checked() {
        let cases = [
            rule("a.example.com", "path: /, pathType: Prefix", SVC),
            rule("'*.example.com'", "path: /api, pathType: Exact", SVC),
            rule("a.example.com", "pathType: ImplementationSpecific", SVC),
            ing(&format!("  defaultBackend: {SVC}\n")),
            ing("  ingressClassName: flotilla\n"),
            rule("a.example.com", "path: /", SVC),
            rule("a.example.com", "path: /, pathType: Regex", SVC),
            rule("a.example.com", "path: api, pathType: Prefix", SVC),
            rule("a.example.com", "pathType: Exact", SVC),
            rule("10.0.0.1", "path: /, pathType: Prefix", SVC),
            rule("a.*.com", "path: /, pathType: Prefix", SVC),
            rule("A.com", "path: /, pathType: Prefix", SVC),
            rule(
                "a.com",
                "path: /, pathType: Prefix",
                "{service: {name: web}}",
            ),
            rule(
                "a.com",
                "path: /, pathType: Prefix",
                "{service: {name: web, port: {number: 80, name: http}}}",
            ),
            rule(
                "a.com",
                "path: /, pathType: Prefix",
                "{service: {name: web, port: {number: 0}}}",
            ),
            rule(
                "a.com",
                "path: /, pathType: Prefix",
                "{service: {name: 9web, port: {name: http}}}",
            ),
            rule(
                "a.com",
                "path: /, pathType: Prefix",
                "{resource: {kind: Bucket, name: b}}",
            ),
            rule("a.com", "path: /, pathType: Prefix", "{}"),
            ing(
                "  tls: [{hosts: [a.com], secretName: a-tls}]\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
            ),
            ing(
                "  tls: [{hosts: [A.com], secretName: a-tls}]\n  defaultBackend: {service: {name: web, port: {number: 80}}}\n",
            ),
        ];
        let got: Vec<String> = cases.iter().map(|c| errors(c)).collect();
        expect_test::expect![[r#"
            ok
            ok
            ok
            ok
            document 1 (ingress web): spec: Invalid value: either `defaultBackend` or `rules` must be specified
            document 1 (ingress web): spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified
            document 1 (ingress web): spec.rules[0].http.paths[0].pathType: Unsupported value: "Regex": supported values: "Exact", "ImplementationSpecific", "Prefix"
            document 1 (ingress web): spec.rules[0].http.paths[0].path: Invalid value: "api": must be an absolute path
            document 1 (ingress web): spec.rules[0].http.paths[0].path: Required value: must be specified when pathType is Exact
            document 1 (ingress web): spec.rules[0].host: Invalid value: "10.0.0.1": must be a DNS name, not an IP address
            document 1 (ingress web): spec.rules[0].host: Invalid value: "a.*.com": a wildcard may only be the first label, as in "*.example.com"
            document 1 (ingress web): spec.rules[0].host must consist of lowercase letters, digits, '-' or '.', and start and end with a letter or digit, got "A.com"
            document 1 (ingress web): spec.rules[0].http.paths[0].backend.service.port: Invalid value: port name or number is required
            document 1 (ingress web): spec.rules[0].http.paths[0].backend.service.port: Invalid value: cannot set both port name & port number
            document 1 (ingress web): spec.rules[0].http.paths[0].backend.service.port.number: Invalid value: 0: must be between 1 and 65535, inclusive
            document 1 (ingress web): spec.rules[0].http.paths[0].backend.service.name: Invalid value: "9web": a Service name must start with a lowercase letter (DNS-1035 label)
            document 1 (ingress web): spec.rules[0].http.paths[0].backend.resource: not supported yet: only Service backends are
            document 1 (ingress web): spec.rules[0].http.paths[0].backend: Required value: one backend type must be specified
            ok
            document 1 (ingress web): spec.tls[0].hosts[0] must consist of lowercase letters, digits, '-' or '.', and start and end with a letter or digit, got "A.com""#]]
        .assert_eq(&got.join("\n"));
    }

    #[test]
    fn ours_by_class_or_default() {
        let class = |name: &str, controller: &str, default: bool| {
            let mut c = IngressClass::default();
            c.metadata.name = name.into();
            c.spec.controller = controller.into();
            if default {
                c.metadata
                    .annotations
                    .insert(crate::api::DEFAULT_CLASS_ANNOTATION.into(), "true".into());
            }
            c
        };
        let named = |name: Option<&str>| {
            let mut i = Ingress::default();
            i.spec.ingress_class_name = name.map(str::to_string);
            i
        };
        let ours = class("flotilla", INGRESS_CONTROLLER, true);
        let theirs = class("nginx", "k8s.io/ingress-nginx", false);
        let classes = [ours.clone(), theirs.clone()];
        assert!(is_ours(&named(None), &classes));
        assert!(is_ours(&named(Some("flotilla")), &classes));
        assert!(!is_ours(&named(Some("nginx")), &classes));
        assert!(!is_ours(&named(Some("missing")), &classes));
        let nginx_default = [class("nginx", "k8s.io/ingress-nginx", true)];
        assert!(!is_ours(&named(None), &nginx_default));
        assert!(is_ours(&named(None), &[]));
    }

    #[test]
    fn ingress_class_fields_are_checked() {
        let class = |spec: &str| {
            errors(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: c\nspec:\n{spec}"
            ))
        };
        let got = [
            class("  controller: flotilla.io/ingress"),
            class("  controller: traefik.io/ingress-controller"),
            class("  controller: nginx"),
            class("  controller: flotilla.io/ingress\n  parameters: {kind: X, name: y}"),
        ];
        expect_test::expect![[r#"
            ok
            ok
            document 1 (ingressclass c): spec.controller: Invalid value: "nginx": must be a domain-prefixed path (such as "flotilla.io/ingress")
            document 1 (ingressclass c): spec.parameters: not supported yet: the flotilla.io/ingress controller takes no parameters"#]]
        .assert_eq(&got.join("\n"));
    }
}
