//! The ingress end to end: the hub and two agents in network namespaces of their own,
//! node-0 the gateway, wasi:http backends on both nodes, and curl from node-1's namespace
//! calling node-0's ingress on port 80 with the hosts and paths of an Ingress. Checked: host
//! and path rules pick the backend Kubernetes would (exact host, wildcard, Exact before
//! Prefix, longest prefix, whole path elements, default backend), traffic crosses to the
//! other node over the mesh, the endpoint sees the ingress's forwarding headers (not the
//! client's forged ones) and a request id, a wasi:http pod on the gateway itself is handed
//! its requests in process (they pass with its port firewalled), a missing service is a 503 that names it,
//! oversized request heads are refused while normal requests keep flowing, the status lists
//! the gateway, and a node that is no gateway does not listen. Over HTTPS: the certificate
//! of the Ingress's TLS Secret by SNI (HTTP/2 by ALPN, HTTP/1.1 too), the default
//! self-signed one for other names, and a renewed Secret served without a restart. Then the
//! middlewares and canaries; failover and slow clients; the limits (bodies, header count,
//! idle connections, the connection cap) with redirectRegex and the Warning events of an
//! Ingress naming what does not exist; and a container pod on the other node (pulled from a
//! registry in the hub's namespace) reached through the ingress. Needs root, iproute2 and
//! curl, and for the last test runc, iptables and docker-registry (CI has them).
use flotilla_proto::Object;
use flotilla_testkit::netns::Net;
use flotilla_testkit::{Cluster, eventually};

fn backend(name: &str, node: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      containers:
      - name: web
        image: hello:latest
        resources: {{requests: {{cpu: 100m, memory: 32Mi}}, limits: {{memory: 64Mi}}}}
        env:
        - {{name: FLOTILLA_POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: FLOTILLA_NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
    )
}

const INGRESS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: site}
spec:
  defaultBackend: {service: {name: web, port: {number: 80}}}
  rules:
  - host: shop.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}
      - {path: /api, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
      - {path: /api/exact, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /gone, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}
  - host: "*.apps.example"
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}
"#;

/// A CA and a certificate it signed for `host`: (CA PEM, certificate PEM, key PEM).
fn issue(host: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Subject and issuer must differ, or the leaf reads as self-signed.
    ca.distinguished_name
        .push(DnType::CommonName, format!("test CA for {host}"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![host.to_string()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, host);
    let leaf = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert),
        b64(key)
    )
}

const SECURE: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure}
spec:
  tls: [{hosts: [secure.example], secretName: secure-tls}]
  rules:
  - host: secure.example
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"#;

/// curl over HTTPS from node-1's namespace to node-0's ingress for `host`, trusting `ca`
/// (a file), or anything with None: (HTTP version, status, body), or None when the
/// handshake or verification failed.
fn get_tls(
    net: &Net,
    host: &str,
    ca: Option<&str>,
    http2: bool,
) -> Option<(String, String, String)> {
    let resolve = format!("{host}:443:{}", Net::agent_ip(0));
    let url = format!("https://{host}/");
    let mut args = vec![
        "curl",
        "-s",
        "-m",
        "10",
        "--resolve",
        &resolve,
        "-w",
        "\n%{http_version} %{http_code}",
    ];
    match ca {
        Some(ca) => args.extend(["--cacert", ca]),
        None => args.push("-k"),
    }
    args.push(if http2 { "--http2" } else { "--http1.1" });
    args.push(&url);
    let out = net.agent_ns(1).exec(&args);
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n')?;
    let (version, code) = tail.split_once(' ')?;
    Some((version.to_string(), code.to_string(), body.to_string()))
}

/// curl from node-1's namespace to node-0's ingress: (status, body).
fn get(net: &Net, host: &str, path: &str, extra: &[&str]) -> (String, String) {
    let url = format!("http://{}{path}", Net::agent_ip(0));
    let host = format!("Host: {host}");
    let mut args = vec!["-H", &host];
    args.extend_from_slice(extra);
    args.push(&url);
    net.agent_ns(1).curl(&args)
}

/// Which deployment answered (hello's greeting names the pod), or the status code.
fn who(net: &Net, host: &str, path: &str) -> String {
    let (code, body) = get(net, host, path, &[]);
    body.strip_prefix("hello from ")
        .and_then(|rest| rest.split('-').next())
        .map_or(code, str::to_string)
}

#[test]
fn ingress_routes_by_host_and_path_to_services_on_any_node() {
    flotilla_testkit::init_tracing();
    let net = Net::create(2).expect("network namespaces (needs root and iproute2)");
    net.block_on(async {
        let cluster = Cluster::builder()
            .agents(2)
            .label(0, flotilla_proto::service::GATEWAY_LABEL, "true")
            .on(&net)
            .start()
            .await;
        cluster.wait_nodes_ready(2).await;
        cluster.push_example("hello").await;
        cluster
            .apply(&backend("web", "node-1"))
            .await
            .expect("apply web");
        cluster
            .apply(&backend("api", "node-0"))
            .await
            .expect("apply api");
        cluster.apply(INGRESS).await.expect("apply ingress");
        cluster.wait_ready("web", 1).await;
        let api = cluster.wait_ready("api", 1).await;

        eventually("the ingress to route", || async {
            (who(&net, "shop.example", "/api/x") == "api"
                && who(&net, "shop.example", "/") == "web")
                .then_some(())
        })
        .await;
        let cases = [
            ("shop.example", "/"),
            ("SHOP.example:80", "/cart"),
            ("shop.example", "/api"),
            ("shop.example", "/api/v1"),
            ("shop.example", "/api/exact"),
            ("shop.example", "/apiary"),
            ("shop.example", "/gone/x"),
            ("x.apps.example", "/"),
            ("a.b.apps.example", "/"),
            ("elsewhere.example", "/"),
        ];
        let got: Vec<String> = cases
            .iter()
            .map(|(h, p)| format!("{h}{p} -> {}", who(&net, h, p)))
            .collect();
        expect_test::expect![[r#"
            shop.example/ -> web
            SHOP.example:80/cart -> web
            shop.example/api -> api
            shop.example/api/v1 -> api
            shop.example/api/exact -> web
            shop.example/apiary -> web
            shop.example/gone/x -> 503
            x.apps.example/ -> api
            a.b.apps.example/ -> web
            elsewhere.example/ -> web"#]]
        .assert_eq(&got.join("\n"));

        // web runs on node-1, so node-0's ingress reached it over the mesh; the endpoint
        // sees the ingress's view of the client, not what the client claims.
        let (code, body) = get(
            &net,
            "shop.example",
            "/",
            &["-H", "X-Forwarded-For: 6.6.6.6"],
        );
        assert_eq!(code, "200");
        assert!(body.contains(" on node-1\n"), "{body}");
        let client = Net::agent_ip(1).to_string();
        assert!(
            body.contains(&format!("x-forwarded-for: {client}\n")),
            "{body}"
        );
        assert!(body.contains(&format!("x-real-ip: {client}\n")), "{body}");
        assert!(body.contains("x-forwarded-host: shop.example\n"), "{body}");
        assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
        let id = body
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("a request id");
        assert_eq!(id.len(), 32, "{id}");
        let (_, body) = get(&net, "shop.example", "/", &["-H", "X-Request-Id: abc-123"]);
        assert!(body.contains("x-request-id: abc-123\n"), "{body}");

        let (code, body) = get(&net, "shop.example", "/gone", &[]);
        assert_eq!(code, "503");
        assert_eq!(
            body,
            "service default/missing does not exist or has no such port\n"
        );

        // api runs on the gateway itself: its requests are handed to the component in
        // process, so they pass even with its port closed to everything, the gateway too.
        let endpoint = api[0].status.endpoint.clone().expect("api's endpoint");
        let port = endpoint.rsplit(':').next().expect("a port").to_string();
        let firewall = |op: &str| {
            let out = net.agent_ns(0).exec(&[
                "iptables", op, "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP",
            ]);
            assert!(out.status.success(), "iptables {op}");
        };
        firewall("-I");
        let direct =
            net.agent_ns(0)
                .exec(&["curl", "-s", "-m", "2", &format!("http://{endpoint}/")]);
        assert!(
            !direct.status.success(),
            "{endpoint} answers despite the firewall"
        );
        assert_eq!(who(&net, "shop.example", "/api/in-process"), "api");
        firewall("-D");

        // HTTP/2 without TLS, for clients that start with its preface (h2c).
        let (code, body) = get(&net, "shop.example", "/api", &["--http2-prior-knowledge"]);
        assert_eq!(code, "200", "h2c: {body}");
        assert!(body.starts_with("hello from api-"), "{body}");

        // An oversized request head is refused; the next request is served as before.
        let big = format!("X-Big: {}", "a".repeat(40 * 1024));
        let (code, _) = get(&net, "shop.example", "/", &["-H", &big]);
        assert_eq!(code, "431", "a 40 KiB header");
        assert_eq!(who(&net, "shop.example", "/"), "web");

        // The status names the gateway; node-1 is none and does not listen.
        let c = cluster.fleet().await;
        let ing = eventually("the ingress's address in status", || async {
            let list = c
                .get(flotilla_proto::Kind::Ingress, Some("default"), Some("site"))
                .await
                .expect("get ingress");
            list.into_iter().find_map(|o| match o {
                Object::Ingress(i) if !i.status.load_balancer.ingress.is_empty() => Some(i),
                _ => None,
            })
        })
        .await;
        let ips: Vec<String> = ing
            .status
            .load_balancer
            .ingress
            .iter()
            .filter_map(|i| i.ip.clone())
            .collect();
        assert_eq!(ips, [Net::agent_ip(0).to_string()]);
        c.close().await;
        let url = format!("http://{}/", Net::agent_ip(1));
        let out =
            net.agent_ns(0)
                .exec(&["curl", "-s", "-m", "5", "-H", "Host: shop.example", &url]);
        assert!(!out.status.success(), "node-1 is no gateway but answered");

        // HTTPS: the Secret's certificate for its host, by SNI, over HTTP/2 or HTTP/1.1.
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = issue("secure.example");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca).unwrap();
        let ca_file = ca_file.to_str().unwrap().to_string();
        cluster
            .apply(&tls_secret("secure-tls", &cert, &key))
            .await
            .expect("apply the TLS secret");
        cluster.apply(SECURE).await.expect("apply the TLS ingress");
        let (version, code, body) = eventually("HTTPS with the secret's certificate", || async {
            get_tls(&net, "secure.example", Some(&ca_file), true)
        })
        .await;
        assert_eq!((version.as_str(), code.as_str()), ("2", "200"), "{body}");
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
        let (version, code, _) =
            get_tls(&net, "secure.example", Some(&ca_file), false).expect("HTTPS over HTTP/1.1");
        assert_eq!((version.as_str(), code.as_str()), ("1.1", "200"));
        // Other names get the default certificate, which nobody's CA signed.
        assert_eq!(get_tls(&net, "shop.example", Some(&ca_file), true), None);
        let (_, code, body) = get_tls(&net, "shop.example", None, true).expect("-k");
        assert_eq!(code, "200", "{body}");

        // A renewed certificate (from another CA) is served without a restart.
        let (ca2, cert2, key2) = issue("secure.example");
        let ca2_file = dir.path().join("ca2.pem");
        std::fs::write(&ca2_file, &ca2).unwrap();
        let ca2_file = ca2_file.to_str().unwrap().to_string();
        cluster
            .apply(&tls_secret("secure-tls", &cert2, &key2))
            .await
            .expect("renew the TLS secret");
        eventually("the renewed certificate", || async {
            get_tls(&net, "secure.example", Some(&ca2_file), true)
        })
        .await;

        // Without the hub, the gateway routes by what it knows.
        let mut cluster = cluster;
        cluster.stop_hub().await;
        assert_eq!(who(&net, "shop.example", "/api/v2"), "api");
        assert_eq!(who(&net, "shop.example", "/"), "web");
        assert!(get_tls(&net, "secure.example", Some(&ca2_file), true).is_some());
        cluster.shutdown().await;
    });
}

const MIDDLEWARES: &str = r#"
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: to-https}
spec: {redirectScheme: {scheme: https, permanent: true}}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: strip}
spec: {stripPrefix: {prefixes: [/app]}}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: hdr}
spec:
  headers:
    customRequestHeaders: {X-Env: prod}
    customResponseHeaders: {X-Served-By: flotilla}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: auth}
spec: {basicAuth: {secret: users, headerField: X-Auth-User}}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: office}
spec: {ipAllowList: {sourceRange: [192.168.0.0/16]}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: redirect
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: default-to-https@kubernetescrd}
spec:
  rules:
  - host: redirect.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: "default-strip@kubernetescrd, default-hdr@kubernetescrd"}
spec:
  rules:
  - host: mw.example
    http: {paths: [{path: /app, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: private
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: default-auth@kubernetescrd}
spec:
  rules:
  - host: private.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: office
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: default-office@kubernetescrd}
spec:
  rules:
  - host: office.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: broken
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: default-nope@kubernetescrd}
spec:
  rules:
  - host: broken.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: stable}
spec:
  rules:
  - host: canary.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: next
  annotations:
    nginx.ingress.kubernetes.io/canary: "true"
    nginx.ingress.kubernetes.io/canary-weight: "25"
spec:
  rules:
  - host: canary.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: api, port: {number: 80}}}}]}
"#;

/// The response headers of a request from node-1 to node-0's ingress.
fn head(net: &Net, host: &str, path: &str) -> String {
    let url = format!("http://{}{path}", Net::agent_ip(0));
    let host = format!("Host: {host}");
    let out = net.agent_ns(1).exec(&[
        "curl",
        "-s",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-D",
        "-",
        "-H",
        &host,
        &url,
    ]);
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

#[test]
fn ingress_middlewares_and_weighted_canary() {
    flotilla_testkit::init_tracing();
    let net = Net::create(2).expect("network namespaces (needs root and iproute2)");
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("access.log");
    net.block_on(async {
        let p = log_path.clone();
        let cluster = Cluster::builder()
            .agents(2)
            .label(0, flotilla_proto::service::GATEWAY_LABEL, "true")
            .on(&net)
            .configure(move |i, cfg| {
                if i == 0 {
                    cfg.ingress_access_log = Some(p.clone());
                }
            })
            .start()
            .await;
        cluster.wait_nodes_ready(2).await;
        cluster.push_example("hello").await;
        cluster.apply(&backend("web", "node-1")).await.expect("apply web");
        cluster.apply(&backend("api", "node-0")).await.expect("apply api");
        let hash = bcrypt::hash("s3cret", 8).unwrap();
        let users = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(format!("alice:{hash}\n"))
        };
        cluster
            .apply(&format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: users}}\ndata: {{users: {users}}}\n"
            ))
            .await
            .expect("apply the users secret");
        cluster.apply(MIDDLEWARES).await.expect("apply middlewares and ingresses");
        cluster.wait_ready("web", 1).await;
        cluster.wait_ready("api", 1).await;
        eventually("the ingress to route", || async {
            (who(&net, "canary.example", "/") != "404" && who(&net, "mw.example", "/app") == "web")
                .then_some(())
        })
        .await;

        // redirectScheme: HTTP gets a permanent redirect to the same URL over HTTPS; HTTPS
        // is served.
        let h = head(&net, "redirect.example", "/x?y=1");
        assert!(h.starts_with("http/1.1 301"), "{h}");
        assert!(h.contains("location: https://redirect.example/x?y=1\r\n"), "{h}");
        let (_, code, body) = get_tls(&net, "redirect.example", None, true).expect("HTTPS");
        assert_eq!(code, "200", "{body}");

        // stripPrefix then headers: the endpoint sees the path without /app, the prefix and
        // the added header; the client sees the added response header.
        let (code, body) = get(&net, "mw.example", "/app/items?q=1", &[]);
        assert_eq!(code, "200");
        assert!(body.contains("path: /items\n"), "{body}");
        assert!(body.contains("x-forwarded-prefix: /app\n"), "{body}");
        assert!(body.contains("x-env: prod\n"), "{body}");
        assert!(head(&net, "mw.example", "/app").contains("x-served-by: flotilla\r\n"));

        // basicAuth: no or wrong credentials get 401 with a challenge; alice gets through,
        // and the endpoint is told who she is.
        let h = head(&net, "private.example", "/");
        assert!(h.starts_with("http/1.1 401"), "{h}");
        assert!(h.contains("www-authenticate: basic realm=\"flotilla\"\r\n"), "{h}");
        let (code, _) = get(&net, "private.example", "/", &["-u", "alice:wrong"]);
        assert_eq!(code, "401");
        let (code, body) = eventually("alice to be let in", || async {
            let (code, body) = get(&net, "private.example", "/", &["-u", "alice:s3cret"]);
            (code == "200").then_some((code, body))
        })
        .await;
        assert_eq!(code, "200");
        assert!(body.contains("x-auth-user: alice\n"), "{body}");

        // The access log has a JSON line per request, the refused ones too.
        let log = eventually("the access log", || async {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            text.contains("\"status\":401").then_some(text)
        })
        .await;
        let refused: serde_json::Value = log
            .lines()
            .find(|l| l.contains("private.example") && l.contains("\"status\":401"))
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .expect("the 401 logged");
        assert_eq!(refused["method"], "GET");
        assert_eq!(refused["uri"], "/");
        assert_eq!(refused["client"], Net::agent_ip(1).to_string());
        assert_eq!(refused["protocol"], "HTTP/1.1");
        assert_eq!(refused["request_id"].as_str().map(str::len), Some(32));

        // ipAllowList: node-1 (10.77.0.0/24) is not in the office range.
        assert_eq!(get(&net, "office.example", "/", &[]).0, "403");
        // A Middleware that does not exist closes its route, and only that one.
        let (code, body) = get(&net, "broken.example", "/", &[]);
        assert_eq!(code, "503", "{body}");
        assert!(body.contains("middleware default-nope"), "{body}");
        assert_eq!(who(&net, "mw.example", "/app"), "web");

        // The canary Ingress takes 25 of every 100 requests for its host and path: 10,000
        // requests over one kept-alive connection.
        let dir = tempfile::tempdir().unwrap();
        let urls = dir.path().join("urls");
        let url = format!("url = \"http://{}/\"\n", Net::agent_ip(0));
        std::fs::write(&urls, url.repeat(10_000)).unwrap();
        let out = net.agent_ns(1).exec(&[
            "curl",
            "-s",
            "-m",
            "300",
            "-H",
            "Host: canary.example",
            "-K",
            urls.to_str().unwrap(),
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        let web = text.matches("hello from web-").count();
        let api = text.matches("hello from api-").count();
        assert_eq!(web + api, 10_000, "every request answered");
        let share = api as f64 / 10_000.0;
        assert!((share - 0.25).abs() <= 0.02, "canary share {share}");
        cluster.shutdown().await;
    });
}

/// Two deployments behind one Service `pair` (both on node-1, so the gateway balances over
/// both rather than preferring its own).
const PAIR: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: pair}
spec:
  selector: {tier: pair}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: pair}
spec:
  rules:
  - host: pair.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: pair, port: {number: 80}}}}]}
"#;

fn pair_member(name: &str, node: &str) -> String {
    backend(name, node).split("---").next().unwrap().replace(
        &format!("metadata: {{labels: {{app: {name}}}}}"),
        &format!("metadata: {{labels: {{app: {name}, tier: pair}}}}"),
    )
}

#[test]
fn ingress_fails_over_when_an_endpoint_dies_and_bounds_slow_clients() {
    flotilla_testkit::init_tracing();
    let net = Net::create(2).expect("network namespaces (needs root and iproute2)");
    net.block_on(async {
        let cluster = Cluster::builder()
            .agents(2)
            .label(0, flotilla_proto::service::GATEWAY_LABEL, "true")
            .on(&net)
            .start()
            .await;
        cluster.wait_nodes_ready(2).await;
        cluster.push_example("hello").await;
        cluster
            .apply(&pair_member("pair-a", "node-1"))
            .await
            .expect("apply pair-a");
        cluster
            .apply(&pair_member("pair-b", "node-1"))
            .await
            .expect("apply pair-b");
        cluster
            .apply(PAIR)
            .await
            .expect("apply the service and ingress");
        cluster.wait_ready("pair-a", 1).await;
        let b = cluster.wait_ready("pair-b", 1).await;
        eventually("both members to answer", || async {
            let bodies: Vec<String> = (0..6)
                .map(|_| get(&net, "pair.example", "/", &[]).1)
                .collect();
            let from = |p: &str| {
                bodies
                    .iter()
                    .any(|b| b.starts_with(&format!("hello from {p}-")))
            };
            (from("pair-a") && from("pair-b")).then_some(())
        })
        .await;

        // Slow clients: 100 connections that send half a request head and stall. Normal
        // requests keep being served meanwhile, and each stalled one is closed once the
        // header timeout is over.
        let ingress = std::net::SocketAddr::new(Net::agent_ip(0), 80);
        let started = std::time::Instant::now();
        let mut slow = Vec::new();
        for _ in 0..100 {
            let mut s = tokio::net::TcpStream::connect(ingress)
                .await
                .expect("connect");
            tokio::io::AsyncWriteExt::write_all(
                &mut s,
                b"GET / HTTP/1.1\r\nHost: pair.example\r\n",
            )
            .await
            .unwrap();
            slow.push(s);
        }
        for _ in 0..5 {
            assert_eq!(get(&net, "pair.example", "/", &[]).0, "200");
        }
        for mut s in slow {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
            )
            .await;
            assert!(
                read.is_ok(),
                "a stalled connection is still open after 20 s"
            );
        }
        let waited = started.elapsed();
        assert!(
            waited >= flotilla_agent::ingress::HEADER_TIMEOUT,
            "closed after {waited:?}"
        );

        // pair-b's endpoint dies mid-run (its port resets every connection): requests keep
        // being answered, by pair-a from then on, with none lost.
        let endpoint = b[0].status.endpoint.clone().expect("pair-b's endpoint");
        let port = endpoint.rsplit(':').next().expect("a port").to_string();
        let dir = tempfile::tempdir().unwrap();
        let urls = dir.path().join("urls");
        let url = format!("url = \"http://{}/\"\n", Net::agent_ip(0));
        std::fs::write(&urls, url.repeat(1000)).unwrap();
        let text = std::thread::scope(|s| {
            let load = s.spawn(|| {
                net.agent_ns(1).exec(&[
                    "curl",
                    "-s",
                    "-m",
                    "120",
                    "--rate",
                    "200/s",
                    "-H",
                    "Host: pair.example",
                    "-w",
                    "code=%{http_code}\n",
                    "-K",
                    urls.to_str().unwrap(),
                ])
            });
            std::thread::sleep(std::time::Duration::from_secs(2));
            let out = net.agent_ns(1).exec(&[
                "iptables",
                "-I",
                "INPUT",
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ]);
            assert!(out.status.success(), "iptables");
            String::from_utf8_lossy(&load.join().unwrap().stdout).to_string()
        });
        let answers: Vec<&str> = text
            .split("code=")
            .skip(1)
            .map(|a| a.get(..3).unwrap_or(a))
            .collect();
        assert_eq!(answers.len(), 1000, "every request answered");
        assert!(answers.iter().all(|c| *c == "200"), "{answers:?}");
        let greetings: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("hello from "))
            .collect();
        assert!(
            greetings[..100].iter().any(|g| g.starts_with("pair-b")),
            "pair-b served before"
        );
        assert!(
            greetings[greetings.len() - 500..]
                .iter()
                .all(|g| g.starts_with("pair-a")),
            "pair-b is gone"
        );
        cluster.shutdown().await;
    });
}

const LIMIT_MIDDLEWARES: &str = r#"
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: small}
spec:
  buffering: {maxRequestBodyBytes: 1024}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: moved}
spec:
  redirectRegex: {regex: "^http://old\\.example/(.*)", replacement: "https://new.example/${1}", permanent: true}
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: {name: guarded}
spec:
  basicAuth: {secret: no-such-users}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: refs
  annotations: {traefik.ingress.kubernetes.io/router.middlewares: "default-nope, default-guarded"}
spec:
  tls: [{hosts: [refs.example], secretName: no-such-tls}]
  rules:
  - host: refs.example
    http:
      paths:
      - {path: /ghost, pathType: Prefix, backend: {service: {name: ghost, port: {number: 80}}}}
      - {path: /web, pathType: Prefix, backend: {service: {name: web, port: {number: 81}}}}
"#;

/// An Ingress `name` sending every path of `host` to the Service `web`, with `annotations`
/// (a YAML flow map).
fn site(name: &str, host: &str, annotations: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, annotations: {annotations}}}\nspec:\n  rules:\n  - host: {host}\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n"
    )
}

/// The limits test's objects: its Middlewares, the refs Ingress, and a site per limit.
fn limits() -> String {
    [
        LIMIT_MIDDLEWARES.to_string(),
        site("limits", "limits.example", "{}"),
        site(
            "small",
            "small.example",
            "{traefik.ingress.kubernetes.io/router.middlewares: default-small@kubernetescrd}",
        ),
        site(
            "big",
            "big.example",
            "{nginx.ingress.kubernetes.io/proxy-body-size: \"0\"}",
        ),
        site(
            "moved",
            "old.example",
            "{traefik.ingress.kubernetes.io/router.middlewares: default-moved}",
        ),
    ]
    .concat()
}

/// curl POSTing `file` from node-1's namespace to node-0's ingress: the status.
fn post(net: &Net, host: &str, file: &std::path::Path, chunked: bool) -> String {
    let url = format!("http://{}/", Net::agent_ip(0));
    let host = format!("Host: {host}");
    let data = format!("@{}", file.display());
    let mut args = vec![
        "curl",
        "-s",
        "-m",
        "20",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &host,
    ];
    if chunked {
        args.extend(["-H", "Transfer-Encoding: chunked"]);
    }
    args.extend(["--data-binary", &data, &url]);
    String::from_utf8_lossy(&net.agent_ns(1).exec(&args).stdout).to_string()
}

/// Reads from `s` until the ingress closes it; how long that took, or None after `limit`.
async fn closed_after(
    s: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    tokio::time::timeout(limit, tokio::io::AsyncReadExt::read_to_end(s, &mut buf))
        .await
        .ok()
        .map(|_| started.elapsed())
}

#[test]
fn ingress_limits_bodies_headers_idle_and_connections_and_reports_bad_references() {
    flotilla_testkit::init_tracing();
    let net = Net::create(2).expect("network namespaces (needs root and iproute2)");
    let idle = std::time::Duration::from_secs(2);
    net.block_on(async {
        let cluster = Cluster::builder()
            .agents(2)
            .label(0, flotilla_proto::service::GATEWAY_LABEL, "true")
            .on(&net)
            .configure(move |i, cfg| {
                if i == 0 {
                    cfg.ingress_idle_timeout = idle;
                    cfg.ingress_max_body_size = 1 << 20;
                    cfg.ingress_max_connections = 40;
                }
            })
            .start()
            .await;
        cluster.wait_nodes_ready(2).await;
        cluster.push_example("hello").await;
        cluster
            .apply(&backend("web", "node-1"))
            .await
            .expect("apply web");
        cluster.apply(&limits()).await.expect("apply the ingresses");
        cluster.wait_ready("web", 1).await;
        eventually("the ingress to route", || async {
            (who(&net, "limits.example", "/") == "web").then_some(())
        })
        .await;

        // Bodies: the default limit (1 MiB here), a buffering Middleware's (1 KiB) and the
        // proxy-body-size annotation's (none), by Content-Length and chunked. The endpoint
        // reads what it is sent, so a cut-off stream is seen before it answers.
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, size: usize| {
            let p = dir.path().join(name);
            std::fs::write(&p, vec![b'x'; size]).unwrap();
            p
        };
        let (kib2, mib2) = (file("2k", 2048), file("2m", 2 << 20));
        let half = file("512", 512);
        let got: Vec<String> = [
            ("limits.example", &kib2, false),
            ("limits.example", &mib2, false),
            ("limits.example", &mib2, true),
            ("small.example", &half, false),
            ("small.example", &kib2, false),
            ("small.example", &kib2, true),
            ("big.example", &mib2, false),
            ("big.example", &mib2, true),
        ]
        .iter()
        .map(|(host, f, chunked)| {
            let size = std::fs::metadata(f).unwrap().len();
            let how = if *chunked { "chunked" } else { "length" };
            format!("{host} {size} {how} -> {}", post(&net, host, f, *chunked))
        })
        .collect();
        expect_test::expect![[r#"
            limits.example 2048 length -> 200
            limits.example 2097152 length -> 413
            limits.example 2097152 chunked -> 413
            small.example 512 length -> 200
            small.example 2048 length -> 413
            small.example 2048 chunked -> 413
            big.example 2097152 length -> 200
            big.example 2097152 chunked -> 200"#]]
        .assert_eq(&got.join("\n"));
        let (code, body) = get(
            &net,
            "big.example",
            "/",
            &["--data-binary", &format!("@{}", mib2.display())],
        );
        assert_eq!(code, "200");
        assert!(body.contains("body: 2097152 bytes\n"), "{body}");

        // Too many header fields: 431, and the next request is served.
        let many: Vec<String> = (0..120).map(|i| format!("X-Field-{i}: {i}")).collect();
        let mut args = Vec::new();
        for h in &many {
            args.extend(["-H", h.as_str()]);
        }
        assert_eq!(get(&net, "limits.example", "/", &args).0, "431");
        assert_eq!(get(&net, "limits.example", "/", &[]).0, "200");

        // redirectRegex.
        let h = head(&net, "old.example", "/a/b?c=1");
        assert!(h.starts_with("http/1.1 301"), "{h}");
        assert!(
            h.contains("location: https://new.example/a/b?c=1\r\n"),
            "{h}"
        );

        // Idle connections are closed: one that never says anything (which no header
        // timeout sees), and a kept-alive one after its request.
        let ingress = std::net::SocketAddr::new(Net::agent_ip(0), 80);
        let mut silent = tokio::net::TcpStream::connect(ingress).await.unwrap();
        let mut kept = tokio::net::TcpStream::connect(ingress).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(
            &mut kept,
            b"GET / HTTP/1.1\r\nHost: limits.example\r\n\r\n",
        )
        .await
        .unwrap();
        let limit = std::time::Duration::from_secs(15);
        let silent_closed = closed_after(&mut silent, limit).await;
        let kept_closed = closed_after(&mut kept, limit).await;
        assert!(
            silent_closed.is_some_and(|t| t >= idle),
            "silent: {silent_closed:?}"
        );
        assert!(kept_closed.is_some(), "kept-alive: still open");

        // Past the connection limit (40 here) new connections get a 503; once those close,
        // requests are served again.
        let mut held = Vec::new();
        for _ in 0..40 {
            held.push(tokio::net::TcpStream::connect(ingress).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (code, body) = get(&net, "limits.example", "/", &[]);
        assert_eq!(code, "503", "{body}");
        assert!(body.contains("overloaded"), "{body}");
        drop(held);
        eventually("requests served again", || async {
            (get(&net, "limits.example", "/", &[]).0 == "200").then_some(())
        })
        .await;

        // What the refs Ingress names but cannot have is reported on it; its routes answer
        // 503 (its Middlewares are missing), and every other Ingress is served as before.
        for (reason, says) in [
            ("BackendNotFound", "service default/ghost does not exist"),
            ("BackendNotFound", "service default/web has no port 81"),
            (
                "InvalidTLSSecret",
                "secret default/no-such-tls cannot be served",
            ),
            (
                "MiddlewareNotFound",
                "middleware default-nope does not exist",
            ),
            (
                "InvalidBasicAuthSecret",
                "secret default/no-such-users of middleware default-guarded",
            ),
        ] {
            eventually(&format!("{reason}: {says}"), || async {
                cluster.events("default").await.into_iter().find(|e| {
                    e.involved_object.kind == "Ingress"
                        && e.involved_object.name == "refs"
                        && e.reason == reason
                        && e.message.contains(says)
                        && e.type_ == flotilla_proto::api::EventType::Warning
                })
            })
            .await;
        }
        assert_eq!(get(&net, "refs.example", "/ghost", &[]).0, "503");
        assert_eq!(who(&net, "limits.example", "/"), "web");
        cluster.shutdown().await;
    });
}

/// A container pod (busybox httpd, pulled from a registry in the hub's namespace) on node-1,
/// behind a Service and an Ingress that node-0 serves.
const BOX: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: box, labels: {app: box}}
spec:
  terminationGracePeriodSeconds: 1
  nodeSelector: {kubernetes.io/hostname: node-1}
  containers:
  - name: web
    image: REGISTRY/test/web:v1
    ports: [{containerPort: 8080}]
    readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: box}
spec:
  selector: {app: box}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: box}
spec:
  rules:
  - host: box.example
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: box, port: {name: http}}}}]}
"#;

#[test]
fn ingress_reaches_a_container_on_another_node() {
    use flotilla_testkit::registry::{Registry, busybox_image, require_container_tools};
    require_container_tools("ingress to container");
    flotilla_testkit::init_tracing();
    let net = Net::create(2).expect("network namespaces (needs root and iproute2)");
    net.block_on(async {
        let registry = Registry::start_on(Net::HUB_IP.into()).expect("registry");
        let host = registry.host();
        let web = busybox_image(
            &["httpd", "-f", "-p", "8080", "-h", "/var/www"],
            serde_json::json!({"User": "app"}),
        )
        .unwrap();
        registry.push("test/web:v1", &web).await.expect("push");
        let cluster = Cluster::builder()
            .agents(2)
            .label(0, flotilla_proto::service::GATEWAY_LABEL, "true")
            .registry(&host)
            .on(&net)
            .start()
            .await;
        cluster.wait_nodes_ready(2).await;
        cluster
            .apply(&BOX.replace("REGISTRY", &host))
            .await
            .expect("apply the pod, service and ingress");
        let pods = cluster.wait_ready("box", 1).await;
        assert_eq!(pods[0].spec.node_name.as_deref(), Some("node-1"));
        // node-0's ingress reaches the container's pod address on node-1 over the mesh.
        let (code, body) = eventually("the container through the ingress", || async {
            let (code, body) = get(&net, "box.example", "/", &[]);
            (code == "200").then_some((code, body))
        })
        .await;
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("200", "hello from a container\n")
        );
        for _ in 0..20 {
            assert_eq!(get(&net, "box.example", "/", &[]).0, "200");
        }

        let c = cluster.fleet().await;
        c.delete(flotilla_proto::Kind::Pod, "default", "box")
            .await
            .expect("delete the pod");
        c.close().await;
        eventually("the container pod gone", || async {
            cluster.pods().await.is_empty().then_some(())
        })
        .await;
        cluster.shutdown().await;
    });
}
