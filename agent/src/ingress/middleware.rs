//! The steps an ingress route applies to its requests: the Middleware objects (Traefik's
//! `traefik.io/v1alpha1` shape) its Ingress names in the `router.middlewares` annotation,
//! in that order. A step may answer the request itself (a redirect, 401, 403), change it
//! (path, headers) or change the response's headers.
//!
//! A route whose Ingress names a Middleware that does not exist answers 503 rather than
//! serving without it: a missing basicAuth must not open the route.
use bytes::Bytes;
use flotilla_proto::Object;
use flotilla_proto::api::{Ingress, Middleware};
use flotilla_proto::ingress as rules;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tracing::warn;

/// One step of a route.
#[derive(Debug)]
pub enum Step {
    /// Removes the first of these prefixes the path starts with.
    StripPrefix(Vec<String>),
    AddPrefix(String),
    RedirectScheme {
        https: bool,
        port: Option<u16>,
        permanent: bool,
    },
    /// Redirects a URL matching `regex` to `replacement` (groups expanded).
    RedirectRegex {
        regex: regex::Regex,
        replacement: String,
        permanent: bool,
    },
    BasicAuth {
        /// The Secret's namespace and name.
        secret: (String, String),
        realm: String,
        remove_header: bool,
        header_field: Option<HeaderName>,
    },
    AllowList {
        nets: Vec<IpNet>,
        /// `ipStrategy`: the depth in X-Forwarded-For, or the addresses to skip in it.
        strategy: Option<(u32, Vec<IpNet>)>,
    },
    /// Headers to set (a value) or remove (None), on the request and on the response, and
    /// the CORS policy.
    Headers {
        request: Vec<(HeaderName, Option<HeaderValue>)>,
        response: Vec<(HeaderName, Option<HeaderValue>)>,
        cors: Option<Box<Cors>>,
        secure: Option<Box<Secure>>,
    },
    /// A token bucket per client (by `source`) of `burst` tokens, refilled at `rate` a
    /// second; kept in [`State`] under the Middleware's key.
    RateLimit {
        key: Arc<str>,
        rate: f64,
        burst: f64,
        source: Source,
    },
}

/// What a rate limit counts requests by.
#[derive(Debug)]
pub enum Source {
    /// The client's address as the ingress determined it.
    Client,
    /// An address from a trusted proxy's X-Forwarded-For (`ipStrategy`).
    Forwarded(u32, Vec<IpNet>),
    Host,
    Header(HeaderName),
}

/// A headers Middleware's security fields, as headers.
#[derive(Debug, Default)]
pub struct Secure {
    /// Strict-Transport-Security, and whether it goes on plain HTTP answers too.
    sts: Option<HeaderValue>,
    force_sts: bool,
    /// X-Frame-Options, X-Content-Type-Options, CSP and the like: on every answer.
    always: Vec<(HeaderName, HeaderValue)>,
    /// The hosts served (lowercase); empty is any.
    allowed_hosts: Vec<String>,
    /// Headers that may hold the host instead of Host, the first present wins.
    host_headers: Vec<HeaderName>,
    /// Header values that make a request an HTTPS one (a proxy in front terminated TLS).
    https_headers: Vec<(HeaderName, HeaderValue)>,
}

/// A headers Middleware's CORS fields, as header values.
#[derive(Debug)]
pub struct Cors {
    /// Any origin (`*` in the list), or these.
    any: bool,
    origins: Vec<String>,
    methods: Option<HeaderValue>,
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
    vary: bool,
}

impl Cors {
    /// The Access-Control-Allow-Origin for a request from `origin`, if it is allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_str().ok()?;
        self.origins
            .iter()
            .any(|a| a.eq_ignore_ascii_case(o))
            .then(|| origin.clone())
    }

    /// The headers every answer to an allowed cross-origin request carries.
    fn common(&self, h: &mut HeaderMap, allow: HeaderValue) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if self.vary && !self.any {
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// The steps of one Ingress's routes.
#[derive(Debug, Default)]
pub struct Chain {
    pub steps: Vec<Step>,
    /// A Middleware the Ingress names that does not exist (or cannot be used).
    pub missing: Option<String>,
    /// The request body limit a buffering Middleware (or else the Ingress's
    /// `proxy-body-size` annotation) sets, 0 for none; None leaves the ingress's default.
    pub max_body: Option<u64>,
}

/// What the steps see of a request besides the request itself.
pub struct Ctx<'a> {
    pub https: bool,
    /// The Host header's name, without a port.
    pub host: &'a str,
    /// The Host header as the client sent it.
    pub authority: &'a str,
    /// The client's address as the ingress determined it (the peer, or what a trusted
    /// proxy forwarded).
    pub client: IpAddr,
    /// The X-Forwarded-For addresses a trusted proxy sent, left to right (empty from others).
    pub forwarded_for: &'a [IpAddr],
    /// Whether the peer is a trusted proxy (`--ingress-trusted-proxy`): only then do
    /// `hostsProxyHeaders` and `sslProxyHeaders` count.
    pub trusted: bool,
}

impl Chain {
    pub fn build(ns: &str, ing: &Ingress, middlewares: &HashMap<String, &Middleware>) -> Chain {
        let mut chain = Chain {
            max_body: rules::body_size(ing).ok().flatten(),
            ..Chain::default()
        };
        for key in rules::middleware_refs(ing).unwrap_or_default() {
            let m = middlewares.get(&key);
            if let Some(b) = m.and_then(|m| m.spec.buffering.as_ref()) {
                chain.max_body = Some(b.max_request_body_bytes.unwrap_or(0).max(0) as u64);
                continue;
            }
            match m.map(|m| step(ns, m)) {
                Some(Ok(Some(s))) => chain.steps.push(s),
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    warn!(middleware = key, error = %e, "ingress middleware is unusable");
                    chain.missing.get_or_insert(key);
                }
                None => {
                    chain.missing.get_or_insert(key);
                }
            }
        }
        chain
    }

    /// Runs the request steps in order; Err is the answer of a step that answers the
    /// request itself.
    pub async fn request<B>(
        &self,
        req: &mut Request<B>,
        ctx: &Ctx<'_>,
        state: &State,
    ) -> Result<(), Response<Bytes>> {
        if let Some(name) = &self.missing {
            return Err(answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("middleware {name} does not exist or is unusable\n"),
            ));
        }
        for step in &self.steps {
            match step {
                Step::StripPrefix(prefixes) => {
                    let path = req.uri().path();
                    if let Some(p) = prefixes.iter().find(|p| path.starts_with(p.as_str())) {
                        let rest = &path[p.len()..];
                        let new = if rest.starts_with('/') {
                            rest.to_string()
                        } else {
                            format!("/{rest}")
                        };
                        if let Ok(v) = HeaderValue::from_str(p) {
                            req.headers_mut()
                                .insert(HeaderName::from_static("x-forwarded-prefix"), v);
                        }
                        set_path(req, &new);
                    }
                }
                Step::AddPrefix(prefix) => {
                    let new = format!("{prefix}{}", req.uri().path());
                    set_path(req, &new);
                }
                Step::RedirectScheme {
                    https,
                    port,
                    permanent,
                } => {
                    if *https != ctx.https {
                        return Err(redirect(req, ctx, *https, *port, *permanent));
                    }
                }
                Step::RedirectRegex {
                    regex,
                    replacement,
                    permanent,
                } => {
                    let scheme = if ctx.https { "https" } else { "http" };
                    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let url = format!("{scheme}://{}{target}", ctx.authority);
                    if regex.is_match(&url) {
                        let to = regex.replace(&url, replacement.as_str());
                        // Traefik's rule: a URL already where it is sent goes on.
                        if to != url {
                            return Err(moved(req.method(), &to, *permanent));
                        }
                    }
                }
                Step::BasicAuth {
                    secret,
                    realm,
                    remove_header,
                    header_field,
                } => {
                    let Some(user) = state.auth.check(secret, req.headers()).await else {
                        let mut r = answer(StatusCode::UNAUTHORIZED, "401 Unauthorized\n".into());
                        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\"")) {
                            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                        }
                        return Err(r);
                    };
                    if *remove_header {
                        req.headers_mut().remove(header::AUTHORIZATION);
                    }
                    if let Some(h) = header_field
                        && let Ok(v) = HeaderValue::from_str(&user)
                    {
                        req.headers_mut().insert(h.clone(), v);
                    }
                }
                Step::AllowList { nets, strategy } => {
                    let ip = match strategy {
                        None => Some(ctx.client),
                        Some((depth, excluded)) => {
                            from_forwarded(ctx.forwarded_for, *depth, excluded)
                        }
                    };
                    if !ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip))) {
                        return Err(answer(StatusCode::FORBIDDEN, "403 Forbidden\n".into()));
                    }
                }
                Step::Headers {
                    request,
                    cors,
                    secure,
                    ..
                } => {
                    if let Some(secure) = secure
                        && !secure.allowed_hosts.is_empty()
                    {
                        let proxied =
                            secure
                                .host_headers
                                .iter()
                                .filter(|_| ctx.trusted)
                                .find_map(|n| {
                                    let v = req.headers().get(n)?.to_str().ok()?;
                                    (!v.is_empty()).then(|| super::routes::host_name(v))
                                });
                        let host = proxied.as_deref().unwrap_or(ctx.host);
                        if !secure.allowed_hosts.iter().any(|h| h == host) {
                            return Err(answer(StatusCode::BAD_REQUEST, "Bad Host\n".into()));
                        }
                    }
                    if let Some(cors) = cors
                        && let Some(answer) = preflight(cors, req)
                    {
                        return Err(answer);
                    }
                    set_headers(req.headers_mut(), request)
                }
                Step::RateLimit {
                    key,
                    rate,
                    burst,
                    source,
                } => {
                    let who = match source {
                        Source::Client => Some(ctx.client.to_string()),
                        Source::Forwarded(depth, excluded) => {
                            from_forwarded(ctx.forwarded_for, *depth, excluded)
                                .map(|ip| ip.to_string())
                        }
                        Source::Host => Some(ctx.host.to_string()),
                        Source::Header(h) => req
                            .headers()
                            .get(h)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string),
                    };
                    if let Err(wait) = state.take(key, who.unwrap_or_default(), *rate, *burst) {
                        let mut r = answer(
                            StatusCode::TOO_MANY_REQUESTS,
                            "429 Too Many Requests\n".into(),
                        );
                        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                        return Err(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether a proxy in front took this request over HTTPS, by a headers Middleware's
    /// `sslProxyHeaders` (the caller asks only when the peer is a trusted proxy).
    pub fn proxied_https(&self, headers: &HeaderMap) -> bool {
        self.steps.iter().any(|step| match step {
            Step::Headers {
                secure: Some(s), ..
            } => s
                .https_headers
                .iter()
                .any(|(n, v)| headers.get(n) == Some(v)),
            _ => false,
        })
    }

    /// Applies the response steps (the headers ones: security headers, custom ones, CORS
    /// for a request from `origin`) to a response's headers; `https` says whether the
    /// request came over HTTPS (to us, or to a proxy in front: `proxied_https`).
    pub fn response(&self, headers: &mut HeaderMap, origin: Option<&HeaderValue>, https: bool) {
        for step in &self.steps {
            if let Step::Headers {
                response,
                cors,
                secure,
                ..
            } = step
            {
                if let Some(secure) = secure {
                    for (name, v) in &secure.always {
                        headers.insert(name.clone(), v.clone());
                    }
                    if let Some(sts) = &secure.sts
                        && (https || secure.force_sts)
                    {
                        headers.insert(header::STRICT_TRANSPORT_SECURITY, sts.clone());
                    }
                }
                set_headers(headers, response);
                if let (Some(cors), Some(origin)) = (cors, origin)
                    && let Some(allow) = cors.allow(origin)
                {
                    cors.common(headers, allow);
                    if let Some(v) = &cors.expose {
                        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
                    }
                }
            }
        }
    }
}

/// The ingress's own answer to a CORS preflight (OPTIONS with Origin and
/// Access-Control-Request-Method); None for other requests.
fn preflight<B>(cors: &Cors, req: &Request<B>) -> Option<Response<Bytes>> {
    let h = req.headers();
    if req.method() != Method::OPTIONS || !h.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let origin = h.get(header::ORIGIN)?;
    let mut r = answer(StatusCode::OK, String::new());
    r.headers_mut().remove(header::CONTENT_TYPE);
    if let Some(allow) = cors.allow(origin) {
        let out = r.headers_mut();
        cors.common(out, allow);
        for (name, v) in [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &cors.methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.headers),
            (header::ACCESS_CONTROL_MAX_AGE, &cors.max_age),
        ] {
            if let Some(v) = v {
                out.insert(name, v.clone());
            }
        }
    }
    Some(r)
}

/// The step a Middleware object describes; None for one that changes nothing (a
/// rateLimit of `average: 0`, Traefik's "no limit").
fn step(ns: &str, m: &Middleware) -> anyhow::Result<Option<Step>> {
    let s = &m.spec;
    let headers = |map: &std::collections::BTreeMap<String, String>| {
        map.iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())?;
                let value = (!v.is_empty())
                    .then(|| HeaderValue::from_str(v))
                    .transpose()?;
                Ok((name, value))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let nets = |list: &[String]| {
        list.iter()
            .map(|r| rules::parse_net("", r).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()
    };
    Ok(Some(if let Some(p) = &s.strip_prefix {
        Step::StripPrefix(p.prefixes.clone())
    } else if let Some(p) = &s.add_prefix {
        Step::AddPrefix(p.prefix.trim_end_matches('/').to_string())
    } else if let Some(r) = &s.redirect_scheme {
        Step::RedirectScheme {
            https: r.scheme == "https",
            port: rules::redirect_port(r).map_err(anyhow::Error::msg)?,
            permanent: r.permanent,
        }
    } else if let Some(r) = &s.redirect_regex {
        Step::RedirectRegex {
            regex: rules::redirect_regex(r).map_err(anyhow::Error::msg)?,
            replacement: r.replacement.clone(),
            permanent: r.permanent,
        }
    } else if let Some(b) = &s.basic_auth {
        Step::BasicAuth {
            secret: (ns.to_string(), b.secret.clone()),
            realm: b.realm.clone().unwrap_or_else(|| "flotilla".into()),
            remove_header: b.remove_header,
            header_field: b
                .header_field
                .as_deref()
                .map(|h| HeaderName::from_bytes(h.as_bytes()))
                .transpose()?,
        }
    } else if let Some(a) = &s.ip_allow_list {
        Step::AllowList {
            nets: nets(&a.source_range)?,
            strategy: a
                .ip_strategy
                .as_ref()
                .map(|st| Ok::<_, anyhow::Error>((st.depth, nets(&st.excluded_ips)?)))
                .transpose()?,
        }
    } else if let Some(h) = &s.headers {
        let list = |l: &[String]| {
            (!l.is_empty())
                .then(|| HeaderValue::from_str(&l.join(", ")))
                .transpose()
        };
        let cors = !h.access_control_allow_origin_list.is_empty();
        Step::Headers {
            secure: secure(h)?,
            request: headers(&h.custom_request_headers)?,
            response: headers(&h.custom_response_headers)?,
            cors: cors
                .then(|| {
                    Ok::<_, anyhow::Error>(Box::new(Cors {
                        any: h.access_control_allow_origin_list.iter().any(|o| o == "*"),
                        origins: h.access_control_allow_origin_list.clone(),
                        methods: list(&h.access_control_allow_methods)?,
                        headers: list(&h.access_control_allow_headers)?,
                        expose: list(&h.access_control_expose_headers)?,
                        credentials: h.access_control_allow_credentials,
                        max_age: h.access_control_max_age.map(HeaderValue::from),
                        vary: h.add_vary_header,
                    }))
                })
                .transpose()?,
        }
    } else if let Some(r) = &s.rate_limit {
        let period = rules::rate_period(r).map_err(anyhow::Error::msg)?;
        let c = r.source_criterion.as_ref();
        let source = match c {
            Some(c) if c.request_host => Source::Host,
            Some(c) if c.request_header_name.is_some() => Source::Header(HeaderName::from_bytes(
                c.request_header_name
                    .as_deref()
                    .unwrap_or_default()
                    .as_bytes(),
            )?),
            Some(c) => match &c.ip_strategy {
                Some(st) => Source::Forwarded(st.depth, nets(&st.excluded_ips)?),
                None => Source::Client,
            },
            None => Source::Client,
        };
        if r.average == 0 {
            return Ok(None);
        }
        Step::RateLimit {
            key: rules::middleware_key(m).into(),
            rate: r.average as f64 / period.as_secs_f64(),
            burst: r.burst.unwrap_or(1).max(1) as f64,
            source,
        }
    } else {
        anyhow::bail!("it has no step this release supports")
    }))
}

/// The security headers a headers Middleware asks for, if any.
fn secure(h: &flotilla_proto::api::HeadersMiddleware) -> anyhow::Result<Option<Box<Secure>>> {
    let mut out = Secure::default();
    let dev = h.is_development;
    if h.sts_seconds > 0 && !dev {
        let mut v = format!("max-age={}", h.sts_seconds);
        if h.sts_include_subdomains {
            v.push_str("; includeSubDomains");
        }
        if h.sts_preload {
            v.push_str("; preload");
        }
        out.sts = Some(HeaderValue::from_str(&v)?);
        out.force_sts = h.force_sts_header;
    }
    let frame = match &h.custom_frame_options_value {
        Some(v) if !v.is_empty() => Some(v.as_str()),
        _ => h.frame_deny.then_some("DENY"),
    };
    let xss = match &h.custom_browser_xss_value {
        Some(v) if !v.is_empty() => Some(v.as_str()),
        _ => h.browser_xss_filter.then_some("1; mode=block"),
    };
    let set = [
        (header::X_FRAME_OPTIONS, frame),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            h.content_type_nosniff.then_some("nosniff"),
        ),
        (header::X_XSS_PROTECTION, xss),
        (
            header::CONTENT_SECURITY_POLICY,
            h.content_security_policy.as_deref(),
        ),
        (
            header::CONTENT_SECURITY_POLICY_REPORT_ONLY,
            h.content_security_policy_report_only.as_deref(),
        ),
        (header::REFERRER_POLICY, h.referrer_policy.as_deref()),
        (
            HeaderName::from_static("permissions-policy"),
            h.permissions_policy.as_deref(),
        ),
    ];
    for (name, v) in set {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.always.push((name, HeaderValue::from_str(v)?));
        }
    }
    if !dev {
        out.allowed_hosts = h
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        out.host_headers = h
            .hosts_proxy_headers
            .iter()
            .map(|n| HeaderName::try_from(n.as_str()))
            .collect::<Result<_, _>>()?;
    }
    if out.sts.is_some() {
        out.https_headers = h
            .ssl_proxy_headers
            .iter()
            .map(|(n, v)| Ok((HeaderName::try_from(n.as_str())?, HeaderValue::from_str(v)?)))
            .collect::<anyhow::Result<_>>()?;
    }
    let any = out.sts.is_some() || !out.always.is_empty() || !out.allowed_hosts.is_empty();
    Ok(any.then(|| Box::new(out)))
}

/// The client address `ipStrategy` picks from a trusted proxy's X-Forwarded-For: the
/// `depth`th from the right, or (depth 0) the rightmost not in `excluded`.
fn from_forwarded(list: &[IpAddr], depth: u32, excluded: &[IpNet]) -> Option<IpAddr> {
    if depth > 0 {
        return list.len().checked_sub(depth as usize).map(|i| list[i]);
    }
    list.iter()
        .rev()
        .find(|ip| !excluded.iter().any(|n| n.contains(*ip)))
        .copied()
}

fn set_headers(h: &mut HeaderMap, changes: &[(HeaderName, Option<HeaderValue>)]) {
    for (name, value) in changes {
        match value {
            Some(v) => {
                h.insert(name.clone(), v.clone());
            }
            None => {
                h.remove(name);
            }
        }
    }
}

/// Replaces the path of a request's target, keeping its query.
fn set_path<B>(req: &mut Request<B>, path: &str) {
    let mut parts = req.uri().clone().into_parts();
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The same URL with another scheme (and port).
fn redirect<B>(
    req: &Request<B>,
    ctx: &Ctx<'_>,
    https: bool,
    port: Option<u16>,
    permanent: bool,
) -> Response<Bytes> {
    let scheme = if https { "https" } else { "http" };
    let host = if ctx.host.contains(':') {
        format!(
            "[{}]",
            ctx.host.trim_start_matches('[').trim_end_matches(']')
        )
    } else {
        ctx.host.to_string()
    };
    let port = port.map(|p| format!(":{p}")).unwrap_or_default();
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    moved(
        req.method(),
        &format!("{scheme}://{host}{port}{target}"),
        permanent,
    )
}

/// A redirect to `location`: 301/302 for GET and HEAD, 308/307 (which keep the method and
/// body) for the others.
fn moved(method: &Method, location: &str, permanent: bool) -> Response<Bytes> {
    let safe = matches!(*method, Method::GET | Method::HEAD);
    let status = match (permanent, safe) {
        (true, true) => StatusCode::MOVED_PERMANENTLY,
        (true, false) => StatusCode::PERMANENT_REDIRECT,
        (false, true) => StatusCode::FOUND,
        (false, false) => StatusCode::TEMPORARY_REDIRECT,
    };
    let mut r = answer(status, format!("{location}\n"));
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn answer(status: StatusCode, body: String) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

use rules::{Cred, Users};

/// The basicAuth users of every Middleware, by Secret, and the credentials already found
/// good (bcrypt is made to be slow: a client sending the same header again is not checked
/// again).
#[derive(Default)]
pub struct Auth {
    pub users: arc_swap::ArcSwap<HashMap<(String, String), Arc<Users>>>,
    verified: Mutex<HashSet<[u8; 32]>>,
}

/// What the steps keep between requests, across route rebuilds: the basicAuth users and
/// the rate limits' buckets.
#[derive(Default)]
pub struct State {
    pub auth: Auth,
    buckets: Mutex<HashMap<(Arc<str>, String), Bucket>>,
}

/// Clients a rate limit keeps buckets for before it forgets those that are full again.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: std::time::Instant,
}

impl State {
    /// Takes a token from `who`'s bucket of limit `key`; Err is how long until one is there.
    fn take(
        &self,
        key: &Arc<str>,
        who: String,
        rate: f64,
        burst: f64,
    ) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + (now - b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let b = buckets.entry((key.clone(), who)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = (b.tokens + (now - b.at).as_secs_f64() * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// How many good credentials [`Auth`] remembers before it starts over.
const VERIFIED_MAX: usize = 4096;

impl Auth {
    /// The user a request's `Authorization: Basic` header authenticates against `secret`.
    async fn check(&self, secret: &(String, String), headers: &HeaderMap) -> Option<String> {
        use base64::Engine as _;
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        let users = self.users.load().get(secret).cloned()?;
        let cred = users.get(user)?;
        let good = match cred {
            Cred::Plain(p) => Sha256::digest(p.as_bytes()) == Sha256::digest(password.as_bytes()),
            Cred::Bcrypt(hash) => {
                let mut key = Sha256::new();
                for part in [&secret.0, &secret.1, user, password, hash] {
                    key.update(part.as_bytes());
                    key.update([0]);
                }
                let key: [u8; 32] = key.finalize().into();
                let known = self.lock().contains(&key);
                known || {
                    let (password, hash) = (password.to_string(), hash.clone());
                    let ok = tokio::task::spawn_blocking(move || {
                        bcrypt::verify(password, &hash).unwrap_or(false)
                    })
                    .await
                    .unwrap_or(false);
                    if ok {
                        let mut verified = self.lock();
                        if verified.len() >= VERIFIED_MAX {
                            verified.clear();
                        }
                        verified.insert(key);
                    }
                    ok
                }
            }
        };
        good.then(|| user.to_string())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.verified.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the Secret of every basicAuth Middleware (from the hub, else the sealed cache).
/// One that cannot be used is logged and left out, so its routes refuse everyone.
pub async fn load_users(shared: &crate::Shared) -> HashMap<(String, String), Arc<Users>> {
    let objects = shared.discovery.borrow().clone();
    let wanted: HashSet<(String, String)> = objects
        .values()
        .filter_map(|o| match o {
            Object::Middleware(m) => m.spec.basic_auth.as_ref().map(|b| {
                let ns = m.metadata.namespace.as_deref().unwrap_or("default");
                (ns.to_string(), b.secret.clone())
            }),
            _ => None,
        })
        .collect();
    let mut out = HashMap::new();
    for (ns, name) in wanted {
        let what = format!("{ns}/{name}");
        match crate::envsource::fetch(shared, flotilla_proto::Kind::Secret, &ns, &name).await {
            Ok(Some(secret)) => match rules::basic_auth_users(&secret) {
                Ok(u) => {
                    out.insert((ns, name), Arc::new(u));
                }
                Err(e) => {
                    warn!(secret = what, error = %e, "basicAuth secret is unusable; its routes refuse everyone")
                }
            },
            Ok(None) => {
                warn!(
                    secret = what,
                    "basicAuth secret does not exist; its routes refuse everyone"
                )
            }
            Err(e) => warn!(secret = what, error = %e, "cannot read basicAuth secret"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mw(name: &str, spec: serde_json::Value) -> Middleware {
        match Object::from_json(serde_json::json!({
            "apiVersion": "traefik.io/v1alpha1", "kind": "Middleware",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec,
        }))
        .unwrap()
        {
            Object::Middleware(m) => m,
            _ => unreachable!(),
        }
    }

    fn chain(names: &str, list: &[Middleware]) -> Chain {
        let mut ing = Ingress::default();
        ing.metadata.annotations.insert(
            flotilla_proto::api::MIDDLEWARES_ANNOTATION.into(),
            names.into(),
        );
        let map = list.iter().map(|m| (rules::middleware_key(m), m)).collect();
        Chain::build("default", &ing, &map)
    }

    async fn run(chain: &Chain, uri: &str, https: bool, client: &str) -> String {
        let mut req = Request::get(uri).body(()).unwrap();
        let ctx = Ctx {
            https,
            host: "shop.example.com",
            authority: "shop.example.com",
            client: client.parse().unwrap(),
            forwarded_for: &["203.0.113.9".parse().unwrap(), "10.1.1.1".parse().unwrap()],
            trusted: true,
        };
        let state = State::default();
        match chain.request(&mut req, &ctx, &state).await {
            Ok(()) => {
                let mut h: Vec<String> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                    .collect();
                h.sort();
                format!("forward {} [{}]", req.uri(), h.join(" "))
            }
            Err(r) => format!(
                "{} {}",
                r.status().as_u16(),
                r.headers()
                    .get(header::LOCATION)
                    .map_or("", |v| v.to_str().unwrap())
            ),
        }
    }

    #[tokio::test]
    async fn steps_in_order() {
        let list = [
            mw(
                "strip",
                serde_json::json!({"stripPrefix": {"prefixes": ["/api", "/shop/"]}}),
            ),
            mw("add", serde_json::json!({"addPrefix": {"prefix": "/v1"}})),
            mw(
                "https",
                serde_json::json!({"redirectScheme": {"scheme": "https", "port": "8443", "permanent": true}}),
            ),
            mw(
                "office",
                serde_json::json!({"ipAllowList": {"sourceRange": ["192.168.0.0/16"]}}),
            ),
            mw(
                "depth",
                serde_json::json!({"ipAllowList": {"sourceRange": ["203.0.113.0/24"], "ipStrategy": {"depth": 2}}}),
            ),
            mw(
                "hdr",
                serde_json::json!({"headers": {"customRequestHeaders": {"X-Env": "prod", "X-Drop": ""}}}),
            ),
            mw(
                "moved",
                serde_json::json!({"redirectRegex": {"regex": "^https?://shop\\.example\\.com/old/(.*)", "replacement": "https://shop.example.com/new/${1}", "permanent": true}}),
            ),
            mw(
                "small",
                serde_json::json!({"buffering": {"maxRequestBodyBytes": 1024, "memRequestBodyBytes": 512}}),
            ),
        ];
        let got = [
            run(
                &chain("default-strip@kubernetescrd", &list),
                "/api/items?x=1",
                false,
                "10.0.0.1",
            )
            .await,
            run(&chain("default-strip", &list), "/apiary", false, "10.0.0.1").await,
            run(
                &chain("default-strip", &list),
                "/shop/cart",
                false,
                "10.0.0.1",
            )
            .await,
            run(
                &chain("default-strip,default-add", &list),
                "/api",
                false,
                "10.0.0.1",
            )
            .await,
            run(&chain("default-https", &list), "/a?b=c", false, "10.0.0.1").await,
            run(&chain("default-https", &list), "/a", true, "10.0.0.1").await,
            run(&chain("default-office", &list), "/", false, "192.168.4.4").await,
            run(&chain("default-office", &list), "/", false, "10.0.0.1").await,
            run(&chain("default-depth", &list), "/", false, "10.0.0.1").await,
            run(&chain("default-hdr", &list), "/", false, "10.0.0.1").await,
            run(
                &chain("default-strip,default-gone", &list),
                "/api",
                false,
                "10.0.0.1",
            )
            .await,
            run(
                &chain("default-moved", &list),
                "/old/a/b?c=d",
                false,
                "10.0.0.1",
            )
            .await,
            run(&chain("default-moved", &list), "/new/a", true, "10.0.0.1").await,
        ];
        let limited = chain("default-small,default-hdr", &list);
        assert_eq!((limited.max_body, limited.steps.len()), (Some(1024), 1));
        assert_eq!(chain("default-hdr", &list).max_body, None);
        expect_test::expect![[r#"
            forward /items?x=1 [x-forwarded-prefix=/api]
            forward /ary [x-forwarded-prefix=/api]
            forward /cart [x-forwarded-prefix=/shop/]
            forward /v1/ [x-forwarded-prefix=/api]
            301 https://shop.example.com:8443/a?b=c
            forward /a []
            forward / []
            403 
            forward / []
            forward / [x-env=prod]
            503 
            301 https://shop.example.com/new/a/b?c=d
            forward /new/a []"#]]
        .assert_eq(&got.join("\n"));
    }

    #[tokio::test]
    async fn basic_auth_against_htpasswd_and_basic_auth_secrets() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let htpasswd = Object::from_json(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "users"},
            "data": {"users": b64(&format!("# admins\nalice:{hash}\n"))},
        }))
        .unwrap();
        let plain = Object::from_json(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bob"},
            "type": "kubernetes.io/basic-auth",
            "data": {"username": b64("bob"), "password": b64("hunter2")},
        }))
        .unwrap();
        let md5 = Object::from_json(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "old"},
            "data": {"users": b64("carol:$apr1$abc$def\n")},
        }))
        .unwrap();
        let err = rules::basic_auth_users(&md5).unwrap_err().to_string();
        assert!(err.contains("only bcrypt"), "{err}");
        let auth = Auth::default();
        let key = |n: &str| ("default".to_string(), n.to_string());
        auth.users.store(Arc::new(HashMap::from([
            (
                key("users"),
                Arc::new(rules::basic_auth_users(&htpasswd).unwrap()),
            ),
            (
                key("bob"),
                Arc::new(rules::basic_auth_users(&plain).unwrap()),
            ),
        ])));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        let basic = |up: &str| with(&format!("Basic {}", b64(up)));
        assert_eq!(
            auth.check(&key("users"), &basic("alice:s3cret"))
                .await
                .as_deref(),
            Some("alice")
        );
        // Again, from the verified set.
        assert_eq!(
            auth.check(&key("users"), &basic("alice:s3cret"))
                .await
                .as_deref(),
            Some("alice")
        );
        assert_eq!(auth.lock().len(), 1);
        assert_eq!(auth.check(&key("users"), &basic("alice:wrong")).await, None);
        assert_eq!(
            auth.check(&key("users"), &basic("mallory:s3cret")).await,
            None
        );
        assert_eq!(auth.check(&key("users"), &with("Bearer abc")).await, None);
        assert_eq!(auth.check(&key("users"), &HeaderMap::new()).await, None);
        assert_eq!(
            auth.check(&key("bob"), &basic("bob:hunter2"))
                .await
                .as_deref(),
            Some("bob")
        );
        assert_eq!(auth.check(&key("bob"), &basic("bob:hunter3")).await, None);
        assert_eq!(
            auth.check(&key("missing"), &basic("bob:hunter2")).await,
            None
        );
    }

    #[tokio::test]
    async fn rate_limit_per_client_with_bursts() {
        let list = [mw(
            "slow",
            serde_json::json!({"rateLimit": {"average": 60, "period": "1m", "burst": 2}}),
        )];
        let chain = chain("default-slow", &list);
        let state = State::default();
        let mut codes = Vec::new();
        for client in ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"] {
            let mut req = Request::get("/").body(()).unwrap();
            let ctx = Ctx {
                https: false,
                host: "a",
                authority: "a",
                client: client.parse().unwrap(),
                forwarded_for: &[],
                trusted: false,
            };
            codes.push(match chain.request(&mut req, &ctx, &state).await {
                Ok(()) => "ok".to_string(),
                Err(r) => format!(
                    "{} retry-after {}",
                    r.status().as_u16(),
                    r.headers()[header::RETRY_AFTER].to_str().unwrap()
                ),
            });
        }
        assert_eq!(codes, ["ok", "ok", "429 retry-after 1", "ok"]);
    }

    #[tokio::test]
    async fn cors_preflight_and_responses() {
        let list = [mw(
            "cors",
            serde_json::json!({"headers": {
                "accessControlAllowOriginList": ["https://app.example"],
                "accessControlAllowMethods": ["GET", "PUT"],
                "accessControlAllowHeaders": ["content-type"],
                "accessControlExposeHeaders": ["x-total"],
                "accessControlAllowCredentials": true,
                "accessControlMaxAge": 600,
                "addVaryHeader": true,
            }}),
        )];
        let chain = chain("default-cors", &list);
        let state = State::default();
        let ctx = Ctx {
            https: true,
            host: "api.example",
            authority: "api.example",
            client: "10.0.0.1".parse().unwrap(),
            forwarded_for: &[],
            trusted: false,
        };
        let show = |h: &HeaderMap| {
            let mut v: Vec<String> = h
                .iter()
                .filter(|(k, _)| k.as_str().starts_with("access-control") || *k == header::VARY)
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect();
            v.sort();
            v.join("; ")
        };
        let preflight = |origin: &str| {
            Request::options("/x")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "PUT")
                .body(())
                .unwrap()
        };
        let mut got = Vec::new();
        for origin in ["https://app.example", "https://evil.example"] {
            let mut req = preflight(origin);
            let r = chain.request(&mut req, &ctx, &state).await.unwrap_err();
            got.push(format!(
                "preflight {origin}: {} [{}]",
                r.status().as_u16(),
                show(r.headers())
            ));
        }
        for origin in ["https://app.example", "https://evil.example"] {
            let mut req = Request::get("/x")
                .header(header::ORIGIN, origin)
                .body(())
                .unwrap();
            chain.request(&mut req, &ctx, &state).await.unwrap();
            let mut h = HeaderMap::new();
            chain.response(&mut h, req.headers().get(header::ORIGIN), true);
            got.push(format!("get {origin}: [{}]", show(&h)));
        }
        expect_test::expect![[r#"
            preflight https://app.example: 200 [access-control-allow-credentials: true; access-control-allow-headers: content-type; access-control-allow-methods: GET, PUT; access-control-allow-origin: https://app.example; access-control-max-age: 600; vary: Origin]
            preflight https://evil.example: 200 []
            get https://app.example: [access-control-allow-credentials: true; access-control-allow-origin: https://app.example; access-control-expose-headers: x-total; vary: Origin]
            get https://evil.example: []"#]].assert_eq(&got.join("\n"));
    }

    #[tokio::test]
    async fn security_headers_and_allowed_hosts() {
        let list = [mw(
            "secure",
            serde_json::json!({"headers": {
                "stsSeconds": 31536000, "stsIncludeSubdomains": true, "stsPreload": true,
                "frameDeny": true, "contentTypeNosniff": true, "browserXssFilter": true,
                "contentSecurityPolicy": "default-src 'self'", "referrerPolicy": "no-referrer",
                "permissionsPolicy": "camera=()", "allowedHosts": ["Shop.example"],
                "customResponseHeaders": {"X-Frame-Options": "SAMEORIGIN"},
                "hostsProxyHeaders": ["X-Forwarded-Host"],
                "sslProxyHeaders": {"X-Forwarded-Proto": "https"},
            }}),
        )];
        let chain = chain("default-secure", &list);
        let state = State::default();
        let mut got = Vec::new();
        // A proxy in front says where the request was going, and that it came over HTTPS.
        let proxied = [
            ("x-forwarded-host", "SHOP.example:443"),
            ("x-forwarded-proto", "https"),
        ];
        // From a client that is no trusted proxy, they count for nothing.
        for (host, https, forwarded, trusted) in [
            ("shop.example", true, &[][..], false),
            ("shop.example", false, &[][..], false),
            ("evil.example", true, &[][..], false),
            ("inner.svc", false, &proxied[..], true),
            (
                "shop.example",
                false,
                &[("x-forwarded-host", "evil.example")][..],
                true,
            ),
            ("inner.svc", false, &proxied[..], false),
            ("shop.example", false, &proxied[..], false),
        ] {
            let ctx = Ctx {
                https,
                host,
                authority: host,
                client: "10.0.0.1".parse().unwrap(),
                forwarded_for: &[],
                trusted,
            };
            let mut req = Request::get("/").body(()).unwrap();
            for (n, v) in forwarded {
                req.headers_mut().insert(*n, HeaderValue::from_static(v));
            }
            let https_seen = https || (trusted && chain.proxied_https(req.headers()));
            let host = format!(
                "{host}{}",
                match (forwarded.is_empty(), trusted) {
                    (true, _) => "",
                    (false, true) => " (proxied)",
                    (false, false) => " (claims proxied)",
                }
            );
            match chain.request(&mut req, &ctx, &state).await {
                Ok(()) => {
                    let mut h = HeaderMap::new();
                    chain.response(&mut h, None, https_seen);
                    let mut v: Vec<String> = h
                        .iter()
                        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                        .collect();
                    v.sort();
                    got.push(format!("{host} https={https}: {}", v.join("; ")));
                }
                Err(r) => got.push(format!("{host} https={https}: {}", r.status().as_u16())),
            }
        }
        expect_test::expect![[r#"
            shop.example https=true: content-security-policy: default-src 'self'; permissions-policy: camera=(); referrer-policy: no-referrer; strict-transport-security: max-age=31536000; includeSubDomains; preload; x-content-type-options: nosniff; x-frame-options: SAMEORIGIN; x-xss-protection: 1; mode=block
            shop.example https=false: content-security-policy: default-src 'self'; permissions-policy: camera=(); referrer-policy: no-referrer; x-content-type-options: nosniff; x-frame-options: SAMEORIGIN; x-xss-protection: 1; mode=block
            evil.example https=true: 400
            inner.svc (proxied) https=false: content-security-policy: default-src 'self'; permissions-policy: camera=(); referrer-policy: no-referrer; strict-transport-security: max-age=31536000; includeSubDomains; preload; x-content-type-options: nosniff; x-frame-options: SAMEORIGIN; x-xss-protection: 1; mode=block
            shop.example (proxied) https=false: 400
            inner.svc (claims proxied) https=false: 400
            shop.example (claims proxied) https=false: content-security-policy: default-src 'self'; permissions-policy: camera=(); referrer-policy: no-referrer; x-content-type-options: nosniff; x-frame-options: SAMEORIGIN; x-xss-protection: 1; mode=block"#]].assert_eq(&got.join("\n"));
    }
}
