//! What an Ingress and an IngressClass may say: the API server's checks, and the fields this
//! release refuses rather than ignores.
use crate::api::{
    BODY_SIZE_ANNOTATION, CANARY_ANNOTATION, CANARY_WEIGHT_ANNOTATION,
    CANARY_WEIGHT_TOTAL_ANNOTATION, DEFAULT_INGRESS_CLASS, ENTRYPOINTS_ANNOTATION,
    INGRESS_CONTROLLER, Ingress, IngressBackend, IngressClass, LOAD_BALANCE_ANNOTATION,
    MIDDLEWARES_ANNOTATION, Middleware, ROUTER_TLS_ANNOTATION,
};

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
    check_annotations(ing)?;
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

/// The middlewares an Ingress's routes apply, in order, by their key
/// ([`middleware_key`]); the annotation's `@kubernetescrd` suffix is optional.
pub fn middleware_refs(ing: &Ingress) -> Result<Vec<String>, String> {
    let Some(list) = ing.metadata.annotations.get(MIDDLEWARES_ANNOTATION) else {
        return Ok(Vec::new());
    };
    let at = format!("metadata.annotations[{MIDDLEWARES_ANNOTATION}]");
    list.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (name, provider) = r.split_once('@').unwrap_or((r, "kubernetescrd"));
            if provider != "kubernetescrd" {
                return Err(format!(
                    "{at}: Invalid value: {r:?}: only Middleware objects (@kubernetescrd) can be referenced, not @{provider}"
                ));
            }
            crate::manifest::check_name(&at, name)?;
            Ok(name.to_string())
        })
        .collect()
}

/// How an Ingress annotation names a Middleware: `<namespace>-<name>` (Traefik's).
pub fn middleware_key(mw: &Middleware) -> String {
    let ns = mw.metadata.namespace.as_deref().unwrap_or("default");
    format!("{ns}-{}", mw.metadata.name)
}

/// Which listeners an Ingress's routes serve: (HTTP, HTTPS).
pub fn entrypoints(ing: &Ingress) -> Result<(bool, bool), String> {
    let a = &ing.metadata.annotations;
    let tls_only = match a.get(ROUTER_TLS_ANNOTATION).map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => {
            return Err(format!(
                "metadata.annotations[{ROUTER_TLS_ANNOTATION}]: Invalid value: {v:?}: must be \"true\" or \"false\""
            ));
        }
    };
    let Some(list) = a.get(ENTRYPOINTS_ANNOTATION) else {
        return Ok((!tls_only, true));
    };
    let (mut http, mut https) = (false, false);
    for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match e {
            "web" => http = true,
            "websecure" => https = true,
            _ => {
                return Err(format!(
                    "metadata.annotations[{ENTRYPOINTS_ANNOTATION}]: Unsupported value: {e:?}: supported values: \"web\" (HTTP), \"websecure\" (HTTPS)"
                ));
            }
        }
    }
    Ok((http && !tls_only, https))
}

/// A canary Ingress's share of its paths' requests: `(weight, total)`, or None when it is
/// no canary.
pub fn canary(ing: &Ingress) -> Result<Option<(u32, u32)>, String> {
    let a = &ing.metadata.annotations;
    let at = |k: &str| format!("metadata.annotations[{k}]");
    match a.get(CANARY_ANNOTATION).map(String::as_str) {
        None | Some("false") => return Ok(None),
        Some("true") => {}
        Some(v) => {
            return Err(format!(
                "{}: Invalid value: {v:?}: must be \"true\" or \"false\"",
                at(CANARY_ANNOTATION)
            ));
        }
    }
    let number = |k: &str| -> Result<Option<u32>, String> {
        a.get(k)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{}: Invalid value: {v:?}: must be a whole number", at(k)))
            })
            .transpose()
    };
    let total = number(CANARY_WEIGHT_TOTAL_ANNOTATION)?.unwrap_or(100);
    if total == 0 {
        return Err(format!(
            "{}: Invalid value: \"0\": must be at least 1",
            at(CANARY_WEIGHT_TOTAL_ANNOTATION)
        ));
    }
    let Some(weight) = number(CANARY_WEIGHT_ANNOTATION)? else {
        return Err(format!(
            "{}: Required value: a canary needs a weight (canaries by header or cookie are not supported yet)",
            at(CANARY_WEIGHT_ANNOTATION)
        ));
    };
    if weight > total {
        return Err(format!(
            "{}: Invalid value: {weight}: must be at most the total, {total}",
            at(CANARY_WEIGHT_ANNOTATION)
        ));
    }
    if a.contains_key(MIDDLEWARES_ANNOTATION) {
        return Err(format!(
            "{}: a canary Ingress takes the middlewares of the Ingress it is a canary of",
            at(MIDDLEWARES_ANNOTATION)
        ));
    }
    Ok(Some((weight, total)))
}

/// Whether an Ingress's routes balance by least requests (else round robin).
pub fn least_request(ing: &Ingress) -> Result<bool, String> {
    match ing
        .metadata
        .annotations
        .get(LOAD_BALANCE_ANNOTATION)
        .map(String::as_str)
    {
        None | Some("round-robin") => Ok(false),
        Some("least-request") => Ok(true),
        Some(v) => Err(format!(
            "metadata.annotations[{LOAD_BALANCE_ANNOTATION}]: Unsupported value: {v:?}: supported values: \"round-robin\", \"least-request\""
        )),
    }
}

/// The Traefik and ingress-nginx annotations of an Ingress for this controller (one naming
/// no class, or the default one): those supported are checked, the others refused rather
/// than ignored.
fn check_annotations(ing: &Ingress) -> Result<(), String> {
    if ing
        .spec
        .ingress_class_name
        .as_deref()
        .is_some_and(|c| c != DEFAULT_INGRESS_CLASS)
    {
        return Ok(());
    }
    const SUPPORTED: [&str; 8] = [
        LOAD_BALANCE_ANNOTATION,
        BODY_SIZE_ANNOTATION,
        MIDDLEWARES_ANNOTATION,
        ENTRYPOINTS_ANNOTATION,
        ROUTER_TLS_ANNOTATION,
        CANARY_ANNOTATION,
        CANARY_WEIGHT_ANNOTATION,
        CANARY_WEIGHT_TOTAL_ANNOTATION,
    ];
    for key in ing.metadata.annotations.keys() {
        let controller_specific = key.starts_with("traefik.ingress.kubernetes.io/")
            || key.starts_with("nginx.ingress.kubernetes.io/")
            || key.starts_with("flotilla.io/");
        if controller_specific && !SUPPORTED.contains(&key.as_str()) {
            return Err(format!(
                "metadata.annotations[{key}]: not supported yet (supported: {})",
                SUPPORTED.join(", ")
            ));
        }
    }
    middleware_refs(ing)?;
    least_request(ing)?;
    entrypoints(ing)?;
    canary(ing)?;
    body_size(ing)?;
    Ok(())
}

/// The paths of an Ingress's rules, with the host of each.
pub fn paths(ing: &Ingress) -> impl Iterator<Item = (Option<&str>, &crate::api::HttpIngressPath)> {
    ing.spec.rules.iter().flat_map(|rule| {
        rule.http
            .iter()
            .flat_map(|h| &h.paths)
            .map(|p| (rule.host.as_deref(), p))
    })
}

/// Every Service an Ingress sends requests to: its default backend's and its paths'.
pub fn backends(ing: &Ingress) -> impl Iterator<Item = &crate::api::IngressServiceBackend> {
    ing.spec
        .default_backend
        .iter()
        .chain(paths(ing).map(|(_, p)| &p.backend))
        .filter_map(|b| b.service.as_ref())
}

/// The request body limit ingress-nginx's `proxy-body-size` annotation sets, if any:
/// Some(0) is no limit.
pub fn body_size(ing: &Ingress) -> Result<Option<u64>, String> {
    let Some(v) = ing.metadata.annotations.get(BODY_SIZE_ANNOTATION) else {
        return Ok(None);
    };
    let bad = || {
        format!(
            "metadata.annotations[{BODY_SIZE_ANNOTATION}]: Invalid value: {v:?}: must be a size such as 512k, 8m or 1g, or 0 for no limit"
        )
    };
    parse_size(v).map(Some).ok_or_else(bad)
}

/// A size as nginx writes it: bytes, or a number with a `k`, `m` or `g` suffix (either case).
pub fn parse_size(v: &str) -> Option<u64> {
    let t = v.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 'b'),
    };
    let scale: u64 = match unit {
        'b' => 1,
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// One kind of step per Middleware, each checked; a Middleware of a kind this release does
/// not have is refused.
pub fn validate_middleware(mw: &Middleware) -> Result<(), String> {
    let s = &mw.spec;
    let set = [
        s.strip_prefix.is_some(),
        s.add_prefix.is_some(),
        s.redirect_scheme.is_some(),
        s.basic_auth.is_some(),
        s.ip_allow_list.is_some(),
        s.headers.is_some(),
        s.rate_limit.is_some(),
        s.redirect_regex.is_some(),
        s.buffering.is_some(),
    ];
    match set.iter().filter(|b| **b).count() {
        1 => {}
        0 => {
            return Err(
                "spec: Required value: one of stripPrefix, addPrefix, redirectScheme, redirectRegex, basicAuth, ipAllowList, headers, rateLimit or buffering (the other Traefik middlewares are not supported yet)"
                    .into(),
            );
        }
        _ => {
            return Err(
                "spec: Invalid value: a Middleware has one kind of step; chain them in the Ingress annotation".into(),
            );
        }
    }
    let absolute = |field: &str, p: &str| {
        if p.starts_with('/') {
            Ok(())
        } else {
            Err(format!(
                "{field}: Invalid value: {p:?}: must be an absolute path"
            ))
        }
    };
    if let Some(sp) = &s.strip_prefix {
        if sp.prefixes.is_empty() {
            return Err("spec.stripPrefix.prefixes: Required value".into());
        }
        for (i, p) in sp.prefixes.iter().enumerate() {
            absolute(&format!("spec.stripPrefix.prefixes[{i}]"), p)?;
        }
    }
    if let Some(ap) = &s.add_prefix {
        absolute("spec.addPrefix.prefix", &ap.prefix)?;
    }
    if let Some(r) = &s.redirect_scheme {
        if !matches!(r.scheme.as_str(), "http" | "https") {
            return Err(format!(
                "spec.redirectScheme.scheme: Unsupported value: {:?}: supported values: \"http\", \"https\"",
                r.scheme
            ));
        }
        redirect_port(r)?;
    }
    if let Some(b) = &s.basic_auth {
        crate::manifest::check_name("spec.basicAuth.secret", &b.secret)?;
        if let Some(h) = &b.header_field {
            check_header_name("spec.basicAuth.headerField", h)?;
        }
    }
    if let Some(a) = &s.ip_allow_list {
        if a.source_range.is_empty() {
            return Err("spec.ipAllowList.sourceRange: Required value".into());
        }
        for (i, r) in a.source_range.iter().enumerate() {
            parse_net(&format!("spec.ipAllowList.sourceRange[{i}]"), r)?;
        }
        for (i, r) in a
            .ip_strategy
            .iter()
            .flat_map(|s| &s.excluded_ips)
            .enumerate()
        {
            parse_net(&format!("spec.ipAllowList.ipStrategy.excludedIPs[{i}]"), r)?;
        }
    }
    if let Some(r) = &s.rate_limit {
        rate_period(r)?;
        if let Some(h) = r
            .source_criterion
            .as_ref()
            .and_then(|c| c.request_header_name.as_deref())
        {
            check_header_name("spec.rateLimit.sourceCriterion.requestHeaderName", h)?;
        }
        for (i, n) in r
            .source_criterion
            .iter()
            .flat_map(|c| &c.ip_strategy)
            .flat_map(|s| &s.excluded_ips)
            .enumerate()
        {
            parse_net(
                &format!("spec.rateLimit.sourceCriterion.ipStrategy.excludedIPs[{i}]"),
                n,
            )?;
        }
    }
    if let Some(r) = &s.redirect_regex {
        redirect_regex(r)?;
        if r.replacement.is_empty() {
            return Err("spec.redirectRegex.replacement: Required value".into());
        }
    }
    if let Some(b) = &s.buffering {
        for (field, v) in [
            ("maxRequestBodyBytes", b.max_request_body_bytes),
            ("memRequestBodyBytes", b.mem_request_body_bytes),
            ("maxResponseBodyBytes", b.max_response_body_bytes),
            ("memResponseBodyBytes", b.mem_response_body_bytes),
        ] {
            if v.is_some_and(|n| n < 0) {
                return Err(format!(
                    "spec.buffering.{field}: Invalid value: {}: must be greater than or equal to 0",
                    v.unwrap_or_default()
                ));
            }
        }
        if b.max_response_body_bytes.is_some_and(|n| n > 0) {
            return Err(
                "spec.buffering.maxResponseBodyBytes: not supported yet (the ingress limits request bodies only)".into(),
            );
        }
        if b.retry_expression.as_deref().is_some_and(|e| !e.is_empty()) {
            return Err("spec.buffering.retryExpression: not supported yet (idempotent requests without a body are retried on another endpoint when one fails)".into());
        }
    }
    if let Some(h) = &s.headers {
        if h.sts_seconds < 0 {
            return Err(format!(
                "spec.headers.stsSeconds: Invalid value: {}: must be greater than or equal to 0",
                h.sts_seconds
            ));
        }
        for (field, v) in [
            ("customFrameOptionsValue", &h.custom_frame_options_value),
            ("customBrowserXSSValue", &h.custom_browser_xss_value),
            ("contentSecurityPolicy", &h.content_security_policy),
            (
                "contentSecurityPolicyReportOnly",
                &h.content_security_policy_report_only,
            ),
            ("referrerPolicy", &h.referrer_policy),
            ("permissionsPolicy", &h.permissions_policy),
        ] {
            if let Some(v) = v {
                check_header_value(&format!("spec.headers.{field}"), v)?;
            }
        }
        for (i, host) in h.allowed_hosts.iter().enumerate() {
            check_host(&format!("spec.headers.allowedHosts[{i}]"), host)?;
        }
        for (i, n) in h.hosts_proxy_headers.iter().enumerate() {
            check_header_name(&format!("spec.headers.hostsProxyHeaders[{i}]"), n)?;
        }
        for (n, v) in &h.ssl_proxy_headers {
            check_header_name("spec.headers.sslProxyHeaders", n)?;
            check_header_value(&format!("spec.headers.sslProxyHeaders[{n}]"), v)?;
        }
        for (i, m) in h.access_control_allow_methods.iter().enumerate() {
            check_header_name(&format!("spec.headers.accessControlAllowMethods[{i}]"), m)?;
        }
        for (field, list) in [
            ("accessControlAllowHeaders", &h.access_control_allow_headers),
            (
                "accessControlExposeHeaders",
                &h.access_control_expose_headers,
            ),
        ] {
            for (i, n) in list.iter().enumerate() {
                if n != "*" {
                    check_header_name(&format!("spec.headers.{field}[{i}]"), n)?;
                }
            }
        }
        for (field, map) in [
            ("customRequestHeaders", &h.custom_request_headers),
            ("customResponseHeaders", &h.custom_response_headers),
        ] {
            for (k, v) in map {
                let at = format!("spec.headers.{field}[{k}]");
                check_header_name(&at, k)?;
                check_header_value(&at, v)?;
            }
        }
    }
    Ok(())
}

/// A basicAuth user's password as its Secret holds it.
#[derive(Debug)]
pub enum Cred {
    /// An htpasswd bcrypt hash (`$2y$…`).
    Bcrypt(String),
    /// A `kubernetes.io/basic-auth` Secret's password.
    Plain(String),
}

pub type Users = std::collections::HashMap<String, Cred>;

/// The users of a basicAuth Secret: htpasswd lines under `users` (bcrypt hashes only), or a
/// `kubernetes.io/basic-auth` Secret's `username` and `password`. The agents serve with it;
/// the hub checks with it, to report a Secret the routes cannot use.
pub fn basic_auth_users(secret: &crate::Object) -> Result<Users, String> {
    let crate::Object::Secret(s) = secret else {
        return Err("not a Secret".into());
    };
    let field = |k: &str| -> Result<Option<String>, String> {
        s.value(k)?
            .map(|bytes| String::from_utf8(bytes).map_err(|_| format!("data[{k}] is not UTF-8")))
            .transpose()
    };
    let mut users = Users::new();
    if s.type_.as_deref() == Some("kubernetes.io/basic-auth") {
        let (Some(user), Some(password)) = (field("username")?, field("password")?) else {
            return Err(
                "a kubernetes.io/basic-auth Secret needs data[username] and data[password]".into(),
            );
        };
        users.insert(user, Cred::Plain(password));
        return Ok(users);
    }
    let Some(lines) = field("users")? else {
        return Err("data[users] (htpasswd lines) is missing".into());
    };
    for (i, line) in lines.lines().map(str::trim).enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            return Err(format!("data[users] line {}: expected user:hash", i + 1));
        };
        if !hash.starts_with("$2") {
            return Err(format!(
                "data[users] line {} ({user}): only bcrypt hashes ($2y$…, htpasswd -B) are supported",
                i + 1
            ));
        }
        users.insert(user.to_string(), Cred::Bcrypt(hash.to_string()));
    }
    Ok(users)
}

/// A header value: no control characters but tab.
fn check_header_value(at: &str, v: &str) -> Result<(), String> {
    if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err(format!(
            "{at}: Invalid value: {v:?}: control characters are not allowed"
        ));
    }
    Ok(())
}

/// A redirectRegex's pattern, compiled (the size of the compiled program bounded, so a
/// pattern cannot make a gateway build a huge automaton).
pub fn redirect_regex(r: &crate::api::RedirectRegex) -> Result<regex::Regex, String> {
    if r.regex.is_empty() {
        return Err("spec.redirectRegex.regex: Required value".into());
    }
    regex::RegexBuilder::new(&r.regex)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            // A syntax error is a drawing of the pattern ending in "error: why".
            let text = e.to_string();
            let why = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(&text)
                .to_string();
            format!(
                "spec.redirectRegex.regex: Invalid value: {:?}: {why}",
                r.regex
            )
        })
}

/// The port of a redirectScheme, if it names one (a number, or a string of one).
pub fn redirect_port(r: &crate::api::RedirectScheme) -> Result<Option<u16>, String> {
    let bad = |v: &dyn std::fmt::Display| {
        Err(format!(
            "spec.redirectScheme.port: Invalid value: {v}: must be between 1 and 65535, inclusive"
        ))
    };
    let n = match &r.port {
        None => return Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => return Ok(None),
        Some(serde_json::Value::String(s)) => s.parse::<u64>().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(v) => return bad(v),
    };
    match n {
        Some(n @ 1..=65535) => Ok(Some(n as u16)),
        _ => bad(r.port.as_ref().unwrap_or(&serde_json::Value::Null)),
    }
}

/// A rateLimit's period: a duration (`1s`, `1m`, Go's `1m30s`) or a number of seconds;
/// 1 s when not given.
pub fn rate_period(r: &crate::api::RateLimit) -> Result<std::time::Duration, String> {
    let bad = |v: &dyn std::fmt::Display| {
        Err(format!(
            "spec.rateLimit.period: Invalid value: {v}: must be a positive duration such as \"1s\" or \"1m\""
        ))
    };
    let d = match &r.period {
        None => return Ok(std::time::Duration::from_secs(1)),
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(n) => std::time::Duration::from_secs(n),
            None => return bad(n),
        },
        Some(serde_json::Value::String(s)) => match humantime::parse_duration(s) {
            Ok(d) => d,
            Err(_) => return bad(&format!("{s:?}")),
        },
        Some(v) => return bad(v),
    };
    if d.is_zero() {
        return bad(&"0");
    }
    Ok(d)
}

/// An address or a CIDR block.
pub fn parse_net(field: &str, s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| {
            format!("{field}: Invalid value: {s:?}: must be an IP address or a CIDR block")
        })
}

/// An HTTP field name (RFC 9110 token).
fn check_header_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: Invalid value: {name:?}: must be an HTTP header name"
        ))
    }
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

    #[test]
    fn sizes_read_as_nginx_writes_them() {
        let got: Vec<Option<u64>> = ["0", "100", "512k", "8M", "1g", "", "x", "8x", "-1", "k"]
            .iter()
            .map(|s| parse_size(s))
            .collect();
        let want = [
            Some(0),
            Some(100),
            Some(512 << 10),
            Some(8 << 20),
            Some(1 << 30),
            None,
            None,
            None,
            None,
            None,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn middlewares_and_annotations_are_checked() {
        let mw = |spec: &str| {
            errors(&format!(
                "apiVersion: traefik.io/v1alpha1\nkind: Middleware\nmetadata:\n  name: m\nspec:\n{spec}"
            ))
        };
        let annotated = |annotations: &str| {
            errors(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n  annotations:\n{annotations}\nspec:\n  defaultBackend: {SVC}\n"
            ))
        };
        let got = [
            mw("  stripPrefix: {prefixes: [/api]}"),
            mw("  redirectScheme: {scheme: https, port: \"8443\", permanent: true}"),
            mw("  basicAuth: {secret: users}"),
            mw("  ipAllowList: {sourceRange: [10.0.0.0/8, 192.168.1.7], ipStrategy: {depth: 1}}"),
            mw("  headers: {customRequestHeaders: {X-Env: prod, X-Drop: \"\"}}"),
            mw("  addPrefix: {prefix: /v1}"),
            mw(
                "  redirectRegex: {regex: \"^https?://old.example/(.*)\", replacement: \"https://new.example/${1}\"}",
            ),
            mw("  redirectRegex: {regex: \"^(abc\", replacement: /x}"),
            mw("  redirectRegex: {regex: \"^/a\"}"),
            mw("  buffering: {maxRequestBodyBytes: 1048576, memRequestBodyBytes: 4096}"),
            mw("  buffering: {maxRequestBodyBytes: -1}"),
            mw("  buffering: {maxResponseBodyBytes: 10}"),
            mw("  buffering: {retryExpression: \"IsNetworkError() && Attempts() < 2\"}"),
            mw("  forwardAuth: {address: http://auth}"),
            mw("  stripPrefix: {prefixes: [/a]}\n  addPrefix: {prefix: /b}"),
            mw("  stripPrefix: {prefixes: [api]}"),
            mw("  redirectScheme: {scheme: ftp}"),
            mw("  redirectScheme: {scheme: https, port: 70000}"),
            mw("  ipAllowList: {sourceRange: [10.0.0.0/33]}"),
            mw("  headers: {customResponseHeaders: {\"bad name\": x}}"),
            mw(
                "  headers: {stsSeconds: 31536000, stsIncludeSubdomains: true, frameDeny: true, contentTypeNosniff: true, allowedHosts: [shop.example]}",
            ),
            mw("  headers: {stsSeconds: -1}"),
            mw("  headers: {contentSecurityPolicy: \"default-src 'self'\\n\"}"),
            mw("  headers: {allowedHosts: [\"Bad Host\"]}"),
            mw(
                "  headers: {hostsProxyHeaders: [X-Forwarded-Host], sslProxyHeaders: {X-Forwarded-Proto: https}}",
            ),
            mw("  headers: {hostsProxyHeaders: [\"X Host\"]}"),
            mw("  headers: {sslProxyHeaders: {X-Forwarded-Proto: \"https\\n\"}}"),
            annotated(
                "    traefik.ingress.kubernetes.io/router.middlewares: default-auth@kubernetescrd, default-strip",
            ),
            annotated("    traefik.ingress.kubernetes.io/router.middlewares: default-auth@file"),
            annotated("    traefik.ingress.kubernetes.io/router.entrypoints: websecure"),
            annotated("    traefik.ingress.kubernetes.io/router.entrypoints: admin"),
            annotated("    traefik.ingress.kubernetes.io/router.priority: \"10\""),
            annotated(
                "    nginx.ingress.kubernetes.io/canary: \"true\"\n    nginx.ingress.kubernetes.io/canary-weight: \"25\"",
            ),
            annotated("    nginx.ingress.kubernetes.io/canary: \"true\""),
            annotated(
                "    nginx.ingress.kubernetes.io/canary: \"true\"\n    nginx.ingress.kubernetes.io/canary-weight: \"120\"",
            ),
            annotated("    nginx.ingress.kubernetes.io/rewrite-target: /"),
            annotated("    flotilla.io/load-balance: least-request"),
            annotated("    flotilla.io/load-balance: random"),
            annotated("    nginx.ingress.kubernetes.io/proxy-body-size: 8m"),
            annotated("    nginx.ingress.kubernetes.io/proxy-body-size: 8x"),
        ];
        expect_test::expect![[r#"
            ok
            ok
            ok
            ok
            ok
            ok
            ok
            document 1 (middleware m): spec.redirectRegex.regex: Invalid value: "^(abc": unclosed group
            document 1 (middleware m): spec.redirectRegex.replacement: Required value
            ok
            document 1 (middleware m): spec.buffering.maxRequestBodyBytes: Invalid value: -1: must be greater than or equal to 0
            document 1 (middleware m): spec.buffering.maxResponseBodyBytes: not supported yet (the ingress limits request bodies only)
            document 1 (middleware m): spec.buffering.retryExpression: not supported yet (idempotent requests without a body are retried on another endpoint when one fails)
            document 1 (middleware m): spec: Required value: one of stripPrefix, addPrefix, redirectScheme, redirectRegex, basicAuth, ipAllowList, headers, rateLimit or buffering (the other Traefik middlewares are not supported yet)
            document 1 (middleware m): spec: Invalid value: a Middleware has one kind of step; chain them in the Ingress annotation
            document 1 (middleware m): spec.stripPrefix.prefixes[0]: Invalid value: "api": must be an absolute path
            document 1 (middleware m): spec.redirectScheme.scheme: Unsupported value: "ftp": supported values: "http", "https"
            document 1 (middleware m): spec.redirectScheme.port: Invalid value: 70000: must be between 1 and 65535, inclusive
            document 1 (middleware m): spec.ipAllowList.sourceRange[0]: Invalid value: "10.0.0.0/33": must be an IP address or a CIDR block
            document 1 (middleware m): spec.headers.customResponseHeaders[bad name]: Invalid value: "bad name": must be an HTTP header name
            ok
            document 1 (middleware m): spec.headers.stsSeconds: Invalid value: -1: must be greater than or equal to 0
            document 1 (middleware m): spec.headers.contentSecurityPolicy: Invalid value: "default-src 'self'\n": control characters are not allowed
            document 1 (middleware m): spec.headers.allowedHosts[0] must consist of lowercase letters, digits, '-' or '.', and start and end with a letter or digit, got "Bad Host"
            ok
            document 1 (middleware m): spec.headers.hostsProxyHeaders[0]: Invalid value: "X Host": must be an HTTP header name
            document 1 (middleware m): spec.headers.sslProxyHeaders[X-Forwarded-Proto]: Invalid value: "https\n": control characters are not allowed
            ok
            document 1 (ingress web): metadata.annotations[traefik.ingress.kubernetes.io/router.middlewares]: Invalid value: "default-auth@file": only Middleware objects (@kubernetescrd) can be referenced, not @file
            ok
            document 1 (ingress web): metadata.annotations[traefik.ingress.kubernetes.io/router.entrypoints]: Unsupported value: "admin": supported values: "web" (HTTP), "websecure" (HTTPS)
            document 1 (ingress web): metadata.annotations[traefik.ingress.kubernetes.io/router.priority]: not supported yet (supported: flotilla.io/load-balance, nginx.ingress.kubernetes.io/proxy-body-size, traefik.ingress.kubernetes.io/router.middlewares, traefik.ingress.kubernetes.io/router.entrypoints, traefik.ingress.kubernetes.io/router.tls, nginx.ingress.kubernetes.io/canary, nginx.ingress.kubernetes.io/canary-weight, nginx.ingress.kubernetes.io/canary-weight-total)
            ok
            document 1 (ingress web): metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]: Required value: a canary needs a weight (canaries by header or cookie are not supported yet)
            document 1 (ingress web): metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]: Invalid value: 120: must be at most the total, 100
            document 1 (ingress web): metadata.annotations[nginx.ingress.kubernetes.io/rewrite-target]: not supported yet (supported: flotilla.io/load-balance, nginx.ingress.kubernetes.io/proxy-body-size, traefik.ingress.kubernetes.io/router.middlewares, traefik.ingress.kubernetes.io/router.entrypoints, traefik.ingress.kubernetes.io/router.tls, nginx.ingress.kubernetes.io/canary, nginx.ingress.kubernetes.io/canary-weight, nginx.ingress.kubernetes.io/canary-weight-total)
            ok
            document 1 (ingress web): metadata.annotations[flotilla.io/load-balance]: Unsupported value: "random": supported values: "round-robin", "least-request"
            ok
            document 1 (ingress web): metadata.annotations[nginx.ingress.kubernetes.io/proxy-body-size]: Invalid value: "8x": must be a size such as 512k, 8m or 1g, or 0 for no limit"#]].assert_eq(&got.join("\n"));
    }
}
