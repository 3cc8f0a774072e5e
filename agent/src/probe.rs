//! Liveness, readiness and startup probes (httpGet, tcpSocket, exec) with Kubernetes' timing
//! and thresholds. A wasi:http component has one listener, so its probes reach the component
//! whatever container port they name; a container's probes reach the port they name on the
//! pod's address, and exec probes run their command in the container. The [`Prober`] is a small state
//! machine: [`Prober::next`] waits for the next due probe, runs it, and says what changed.
use flotilla_proto::api::{Container, ContainerPort, IntOrString, Probe};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// Runs a command in the container with a timeout: its exit code, or why it could not run.
pub type Exec = Arc<
    dyn Fn(Vec<String>, Duration) -> futures::future::BoxFuture<'static, Result<i32, String>>
        + Send
        + Sync,
>;

/// What probes reach.
#[derive(Clone)]
pub enum Target {
    /// A wasi:http pod's one listener (None: the pod serves nothing).
    Endpoint(Option<SocketAddr>),
    /// A container pod: probes dial the port they name on the pod's address, exec probes use
    /// `exec`.
    Pod {
        ip: IpAddr,
        ports: Vec<ContainerPort>,
        exec: Exec,
    },
}
use tokio::time::Instant;

/// What a probe round changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Readiness changed; the message says why when it turned false.
    Ready(bool, Option<String>),
    /// The startup probe succeeded (readiness may have changed with it: see `ready`).
    Started,
    /// Liveness or startup failed: the container must be restarted.
    Restart {
        reason: &'static str,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Startup,
    Liveness,
    Readiness,
}

struct Track {
    which: Which,
    probe: Probe,
    next: Instant,
    successes: u32,
    failures: u32,
}

pub struct Prober {
    target: Target,
    tracks: Vec<Track>,
    started: Instant,
    startup_done: bool,
    ready: bool,
    /// The last readiness failure reported (not repeated while it stays the same).
    unready_reason: Option<String>,
}

impl Prober {
    /// Probes of `c` against `target` (an endpoint of None fails every probe),
    /// timed from `started`.
    pub fn new(c: &Container, target: Target, started: Instant) -> Prober {
        let mut tracks = Vec::new();
        for (which, probe) in [
            (Which::Startup, &c.startup_probe),
            (Which::Liveness, &c.liveness_probe),
            (Which::Readiness, &c.readiness_probe),
        ] {
            if let Some(p) = probe {
                tracks.push(Track {
                    which,
                    next: started + p.initial_delay(),
                    probe: p.clone(),
                    successes: 0,
                    failures: 0,
                });
            }
        }
        let startup_done = c.startup_probe.is_none();
        Prober {
            target,
            ready: startup_done && c.readiness_probe.is_none(),
            startup_done,
            tracks,
            started,
            unready_reason: None,
        }
    }

    /// Whether the container counts as ready now.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Whether the container is past its startup probe (at once without one).
    pub fn started(&self) -> bool {
        self.startup_done
    }

    fn active(&self, t: &Track) -> bool {
        (t.which == Which::Startup) != self.startup_done
    }

    /// Waits for the next due probe and runs it, until something changes. Never returns when
    /// the container has no probes.
    pub async fn next(&mut self) -> Verdict {
        loop {
            let due = (0..self.tracks.len())
                .filter(|i| self.active(&self.tracks[*i]))
                .min_by_key(|i| self.tracks[*i].next);
            let Some(i) = due else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(self.tracks[i].next).await;
            let result = check(&self.tracks[i].probe, &self.target).await;
            if let Some(v) = self.record(i, result) {
                return v;
            }
        }
    }

    /// Counts one result and decides; pure apart from the clock.
    fn record(&mut self, i: usize, result: Result<(), String>) -> Option<Verdict> {
        let now = Instant::now();
        let t = &mut self.tracks[i];
        t.next = now + t.probe.period();
        let which = t.which;
        match result {
            Ok(()) => {
                t.successes += 1;
                t.failures = 0;
                if t.successes < t.probe.success_threshold() {
                    return None;
                }
                match which {
                    Which::Startup => {
                        self.startup_done = true;
                        // Liveness and readiness begin now, after their own initial delays.
                        for o in self.tracks.iter_mut().filter(|o| o.which != Which::Startup) {
                            o.next = (self.started + o.probe.initial_delay()).max(now);
                        }
                        let has_readiness = self.tracks.iter().any(|o| o.which == Which::Readiness);
                        self.ready |= !has_readiness;
                        Some(Verdict::Started)
                    }
                    Which::Liveness => None,
                    Which::Readiness if !self.ready => {
                        self.ready = true;
                        self.unready_reason = None;
                        Some(Verdict::Ready(true, None))
                    }
                    Which::Readiness => None,
                }
            }
            Err(e) => {
                t.failures += 1;
                t.successes = 0;
                if t.failures < t.probe.failure_threshold() {
                    return None;
                }
                match which {
                    Which::Startup => Some(Verdict::Restart {
                        reason: "StartupProbeFailed",
                        message: format!("Startup probe failed: {e}"),
                    }),
                    Which::Liveness => Some(Verdict::Restart {
                        reason: "LivenessProbeFailed",
                        message: format!("Liveness probe failed: {e}"),
                    }),
                    Which::Readiness => {
                        // Reported when readiness is lost, and when the reason changes, so the
                        // Ready condition says why a pod never became ready.
                        let why = format!("Readiness probe failed: {e}");
                        if !self.ready && self.unready_reason.as_ref() == Some(&why) {
                            return None;
                        }
                        self.ready = false;
                        self.unready_reason = Some(why.clone());
                        Some(Verdict::Ready(false, Some(why)))
                    }
                }
            }
        }
    }
}

/// Runs one probe within its timeout.
/// The port a probe names, by number or by the container port's name.
fn probe_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port is named {name:?}")),
    }
}

async fn check(probe: &Probe, target: &Target) -> Result<(), String> {
    let target = match target {
        Target::Endpoint(Some(addr)) => *addr,
        Target::Endpoint(None) => return Err("the pod serves no endpoint to probe".into()),
        Target::Pod { exec, .. } if probe.exec.is_some() => {
            let argv = probe
                .exec
                .as_ref()
                .map(|e| e.command.clone())
                .unwrap_or_default();
            let shown = argv.join(" ");
            return match exec(argv, probe.timeout()).await {
                Ok(0) => Ok(()),
                Ok(code) => Err(format!("command {shown:?} exited with {code}")),
                Err(e) => Err(format!("command {shown:?} failed: {e}")),
            };
        }
        Target::Pod { ip, ports, .. } => {
            let port = match (&probe.http_get, &probe.tcp_socket) {
                (Some(h), _) => probe_port(&h.port, ports)?,
                (None, Some(t)) => probe_port(&t.port, ports)?,
                (None, None) => return Err("the probe names no action".into()),
            };
            SocketAddr::new(*ip, port)
        }
    };
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| format!("dial tcp {target}: {e}"))?;
        let Some(get) = &probe.http_get else {
            return Ok(()); // tcpSocket: the connection is the check
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP probe failed: {e}"))?;
        let mut req = http::Request::get(get.path.as_deref().unwrap_or("/"))
            .header(http::header::HOST, target.to_string())
            .header(http::header::CONNECTION, "close")
            .header(
                http::header::USER_AGENT,
                concat!("flotilla-probe/", env!("CARGO_PKG_VERSION")),
            );
        for h in &get.http_headers {
            req = req.header(h.name.as_str(), h.value.as_str());
        }
        let req = req
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| format!("invalid probe request: {e}"))?;
        // Drive the connection only until the response head arrives; dropping it closes it.
        let resp = tokio::select! {
            r = sender.send_request(req) => r.map_err(|e| format!("HTTP probe failed: {e}"))?,
            c = conn => return Err(match c {
                Ok(()) => "HTTP probe failed: connection closed before a response".to_string(),
                Err(e) => format!("HTTP probe failed: {e}"),
            }),
        };
        let status = resp.status();
        if (200..400).contains(&status.as_u16()) {
            Ok(())
        } else {
            Err(format!(
                "HTTP probe failed with statuscode: {}",
                status.as_u16()
            ))
        }
    };
    match tokio::time::timeout(probe.timeout(), attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timed out after {}",
            humantime::format_duration(probe.timeout())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(failure: i32, success: i32) -> Probe {
        Probe {
            tcp_socket: Some(flotilla_proto::api::TcpSocketAction {
                port: flotilla_proto::api::IntOrString::Int(80),
                host: None,
            }),
            period_seconds: Some(1),
            failure_threshold: Some(failure),
            success_threshold: Some(success),
            ..Default::default()
        }
    }

    fn container(startup: bool, live: bool, ready: bool) -> Container {
        Container {
            startup_probe: startup.then(|| probe(2, 1)),
            liveness_probe: live.then(|| probe(3, 1)),
            readiness_probe: ready.then(|| probe(2, 2)),
            ..Default::default()
        }
    }

    fn index(p: &Prober, which: Which) -> usize {
        p.tracks.iter().position(|t| t.which == which).unwrap()
    }

    #[test]
    fn no_probes_means_ready_at_once() {
        let p = Prober::new(
            &container(false, false, false),
            Target::Endpoint(None),
            Instant::now(),
        );
        assert!(p.ready());
    }

    #[tokio::test]
    async fn readiness_needs_its_success_threshold_and_drops_after_failures() {
        let mut p = Prober::new(
            &container(false, false, true),
            Target::Endpoint(None),
            Instant::now(),
        );
        let r = index(&p, Which::Readiness);
        assert!(!p.ready());
        assert_eq!(p.record(r, Ok(())), None);
        assert_eq!(p.record(r, Ok(())), Some(Verdict::Ready(true, None)));
        assert_eq!(p.record(r, Err("503".into())), None);
        assert_eq!(
            p.record(r, Err("503".into())),
            Some(Verdict::Ready(
                false,
                Some("Readiness probe failed: 503".into())
            ))
        );
        // Already unready: more failures change nothing.
        assert_eq!(p.record(r, Err("503".into())), None);
    }

    #[tokio::test]
    async fn liveness_restarts_after_consecutive_failures_only() {
        let mut p = Prober::new(
            &container(false, true, false),
            Target::Endpoint(None),
            Instant::now(),
        );
        let l = index(&p, Which::Liveness);
        assert_eq!(p.record(l, Err("x".into())), None);
        assert_eq!(p.record(l, Err("x".into())), None);
        assert_eq!(p.record(l, Ok(())), None);
        assert_eq!(p.record(l, Err("x".into())), None);
        assert_eq!(p.record(l, Err("x".into())), None);
        assert!(matches!(
            p.record(l, Err("x".into())),
            Some(Verdict::Restart {
                reason: "LivenessProbeFailed",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn startup_gates_the_others() {
        let mut p = Prober::new(
            &container(true, true, false),
            Target::Endpoint(None),
            Instant::now(),
        );
        let (s, l) = (index(&p, Which::Startup), index(&p, Which::Liveness));
        assert!(!p.ready() && !p.started());
        assert!(p.active(&p.tracks[s]) && !p.active(&p.tracks[l]));
        assert_eq!(p.record(s, Ok(())), Some(Verdict::Started));
        assert!(
            p.ready() && p.started(),
            "no readiness probe: ready once started"
        );
        assert!(!p.active(&p.tracks[s]) && p.active(&p.tracks[l]));
        let mut q = Prober::new(
            &container(true, false, false),
            Target::Endpoint(None),
            Instant::now(),
        );
        let s = index(&q, Which::Startup);
        assert_eq!(q.record(s, Err("refused".into())), None);
        assert!(matches!(
            q.record(s, Err("refused".into())),
            Some(Verdict::Restart {
                reason: "StartupProbeFailed",
                ..
            })
        ));
    }

    #[tokio::test]
    async fn probes_without_an_endpoint_fail() {
        let p = probe(1, 1);
        assert_eq!(
            check(&p, &Target::Endpoint(None)).await,
            Err("the pod serves no endpoint to probe".into())
        );
    }
}
