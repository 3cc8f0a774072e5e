//! One pod's life on this node: fetch its artifact, run it under wasmtime with its restart
//! policy and back-off, serve it if it is a wasi:http component, and report its status.
use crate::Shared;
use crate::probe::{Prober, Verdict};
use crate::runtime::wasm::{Artifact, ArtifactKind, GuestSpec, WasmError};
use crate::supervisor::Event;
use flotilla_proto::api::EventType::{self, Normal, Warning};
use flotilla_proto::api::{
    Condition, ContainerState, ContainerStatus, Pod, PodStatus, StateRunning, StateTerminated,
    StateWaiting, condition,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Annotation bounding one wasi:http request's run time (a guest stuck in a loop is interrupted).
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "flotilla.io/request-timeout";
/// Annotation: "false" gives every wasi:http request a fresh instance (like `wasmtime serve`).
pub const INSTANCE_REUSE_ANNOTATION: &str = "flotilla.io/instance-reuse";
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A container that ran this long without failing has its back-off reset (as in Kubernetes).
const BACKOFF_RESET: Duration = Duration::from_secs(600);

struct Reporter {
    uid: String,
    events: mpsc::UnboundedSender<Event>,
    status: PodStatus,
    container: ContainerStatus,
    /// Why the container is not ready (a failed readiness probe), for the Ready condition.
    unready_message: Option<String>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Reporter {
    fn send(&mut self, phase: &str) {
        self.status.phase = phase.to_string();
        let ready = self.container.ready;
        let cond = |t: &str, ok: bool| Condition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            ..Default::default()
        };
        let mut conditions = vec![
            cond("PodScheduled", true),
            cond("Initialized", true),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ];
        // A condition's transition time moves only when its status does (minReadySeconds and
        // rollouts count from it).
        for c in &mut conditions {
            c.last_transition_time = match condition(&self.status.conditions, &c.type_) {
                Some(old) if old.status == c.status => old.last_transition_time.clone(),
                _ => Some(now()),
            };
            if c.type_ == "Ready" && !ready {
                c.reason = Some("ContainersNotReady".into());
                c.message = self.unready_message.clone();
            }
        }
        self.status.conditions = conditions;
        self.status.container_statuses = vec![self.container.clone()];
        let _ = self.events.send(Event::Status {
            uid: self.uid.clone(),
            status: Box::new(self.status.clone()),
        });
    }

    fn waiting(&mut self, reason: &str, message: Option<String>) {
        self.container.ready = false;
        self.container.state = ContainerState {
            waiting: Some(StateWaiting {
                reason: Some(reason.into()),
                message,
            }),
            ..Default::default()
        };
        let phase = if self.container.restart_count > 0 {
            "Running"
        } else {
            "Pending"
        };
        self.send(phase);
    }

    fn running(&mut self, started: &str, ready: bool) {
        self.container.ready = ready;
        self.container.state = ContainerState {
            running: Some(StateRunning {
                started_at: started.into(),
            }),
            ..Default::default()
        };
        self.status
            .start_time
            .get_or_insert_with(|| started.to_string());
        self.send("Running");
    }

    fn terminated(&mut self, code: i32, reason: &str, started: &str) -> ContainerState {
        ContainerState {
            terminated: Some(StateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                started_at: Some(started.into()),
                finished_at: Some(now()),
            }),
            ..Default::default()
        }
    }
}

/// Runs until cancelled (pod removed) or, for pods that do not restart, until done.
pub async fn run(
    shared: Arc<Shared>,
    pod: Pod,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) {
    let uid = pod.metadata.uid.clone();
    let Some(container) = pod.spec.containers.first().cloned() else {
        let _ = events.send(Event::Exited { uid });
        return;
    };
    let node_ip = shared.cfg.node_ip.to_string();
    let mut rep = Reporter {
        uid: uid.clone(),
        events: events.clone(),
        status: PodStatus {
            host_ip: Some(node_ip.clone()),
            pod_ip: Some(node_ip.clone()),
            ..Default::default()
        },
        container: ContainerStatus {
            name: container.name.clone(),
            image: container.image.clone(),
            ..Default::default()
        },
        unready_message: None,
    };
    rep.waiting("ContainerCreating", None);
    let log = shared.log_for(&pod);
    let mut backoff = shared.cfg.backoff_base;

    let image = &container.image;
    // Pull: retried with back-off until it works or the pod is removed.
    let artifact = loop {
        event(
            &shared,
            &pod,
            Normal,
            "Pulling",
            format!("Pulling image {image:?}"),
        );
        let pull_started = Instant::now();
        match crate::artifacts::load(&shared, image).await {
            Ok(a) => {
                let took = go_duration(pull_started.elapsed());
                let message = format!("Successfully pulled image {image:?} in {took}");
                event(&shared, &pod, Normal, "Pulled", message);
                break a;
            }
            Err(e) => {
                warn!(pod = %pod.metadata.name, error = %e, "image pull failed");
                log.note(&format!("failed to pull {image}: {e}"));
                let message = format!("Failed to pull image {image:?}: {e}");
                event(&shared, &pod, Warning, "Failed", message);
                event(
                    &shared,
                    &pod,
                    Warning,
                    "Failed",
                    "Error: ErrImagePull".into(),
                );
                rep.waiting("ErrImagePull", Some(e.to_string()));
                if sleep_or_cancel(backoff, &cancel).await {
                    return exited(&events, uid);
                }
                let message = format!("Back-off pulling image {image:?}");
                event(&shared, &pod, Normal, "BackOff", message);
                event(
                    &shared,
                    &pod,
                    Warning,
                    "Failed",
                    "Error: ImagePullBackOff".into(),
                );
                rep.waiting("ImagePullBackOff", Some(e.to_string()));
                backoff = (backoff * 2).min(shared.cfg.backoff_max);
            }
        }
    };
    rep.container.image_id = artifact.digest.clone();
    backoff = shared.cfg.backoff_base;

    // Environment: ConfigMaps and Secrets may be missing for now; retried with back-off.
    let env = loop {
        match crate::envsource::resolve(&shared, &pod, &container, &node_ip).await {
            Ok(env) => break env,
            Err(e) => {
                warn!(pod = %pod.metadata.name, error = %e, "cannot build the container's environment");
                log.note(&format!("CreateContainerConfigError: {e}"));
                event(&shared, &pod, Warning, "Failed", format!("Error: {e}"));
                rep.waiting("CreateContainerConfigError", Some(e));
                if sleep_or_cancel(backoff, &cancel).await {
                    return exited(&events, uid);
                }
                backoff = (backoff * 2).min(shared.cfg.backoff_max);
            }
        }
    };
    backoff = shared.cfg.backoff_base;
    // Volumes: a missing ConfigMap or host directory may appear later; retried with back-off.
    let mounts = loop {
        match crate::volumes::prepare(&shared, &pod, &container).await {
            Ok(m) => break m,
            Err(e) => {
                warn!(pod = %pod.metadata.name, error = %e, "cannot set up volumes");
                log.note(&e);
                event(&shared, &pod, Warning, "FailedMount", e.clone());
                rep.waiting("ContainerCreating", Some(e));
                if sleep_or_cancel(backoff, &cancel).await {
                    return exited(&events, uid);
                }
                backoff = (backoff * 2).min(shared.cfg.backoff_max);
            }
        }
    };
    backoff = shared.cfg.backoff_base;
    if pod
        .spec
        .volumes
        .iter()
        .any(|v| v.config_map.is_some() || v.secret.is_some())
    {
        shared
            .tracker
            .spawn(refresh_volumes(shared.clone(), pod.clone(), cancel.clone()));
    }
    let mut spec = guest_spec(&pod, &container, env, log.clone());
    spec.mounts = mounts;
    let spec = Arc::new(spec);
    let policy = pod.spec.restart_policy().to_string();
    loop {
        let started_at = now();
        let started = Instant::now();
        let outcome = run_once(
            &shared,
            &artifact,
            &pod,
            &container,
            spec.clone(),
            &mut rep,
            &started_at,
            &cancel,
        )
        .await;
        if cancel.is_cancelled() {
            return exited(&events, uid);
        }
        let (code, reason) = outcome.unwrap_or_else(|e| {
            event(&shared, &pod, Warning, "Failed", format!("Error: {e}"));
            (128, format!("Error: {e}"))
        });
        log.note(&format!(
            "container {} exited with code {code} ({reason})",
            container.name
        ));
        let last = rep.terminated(code, &reason, &started_at);
        let restart = match policy.as_str() {
            "Always" => true,
            "OnFailure" => code != 0,
            _ => false,
        };
        if !restart {
            rep.container.ready = false;
            rep.container.state = last;
            rep.send(if code == 0 { "Succeeded" } else { "Failed" });
            info!(pod = %pod.metadata.name, code, "pod finished");
            // Stay until the pod is removed, so status and logs remain visible.
            cancel.cancelled().await;
            return exited(&events, uid);
        }
        if started.elapsed() >= BACKOFF_RESET {
            backoff = shared.cfg.backoff_base;
        }
        rep.container.last_state = Some(last);
        rep.container.restart_count += 1;
        let msg = format!(
            "back-off {} restarting failed container={} pod={}",
            humantime::format_duration(backoff),
            container.name,
            pod.metadata.name
        );
        rep.waiting("CrashLoopBackOff", Some(msg));
        let message = format!(
            "Back-off restarting failed container {} in pod {}_{}({})",
            container.name,
            pod.metadata.name,
            pod.namespace(),
            pod.metadata.uid
        );
        event(&shared, &pod, Warning, "BackOff", message);
        if sleep_or_cancel(backoff, &cancel).await {
            return exited(&events, uid);
        }
        backoff = (backoff * 2).min(shared.cfg.backoff_max);
    }
}

/// Keeps the pod's ConfigMap and Secret files current until the pod goes.
async fn refresh_volumes(shared: Arc<Shared>, pod: Pod, cancel: CancellationToken) {
    loop {
        if sleep_or_cancel(shared.cfg.volume_refresh, &cancel).await {
            return;
        }
        crate::volumes::refresh(&shared, &pod).await;
    }
}

/// Queues an event about `pod` for the hub.
fn event(shared: &Shared, pod: &Pod, event_type: EventType, reason: &str, message: String) {
    shared.events.push(pod, event_type, reason, message);
}

/// A duration as Go prints it in Kubernetes' messages: `850µs`, `12ms`, `1.234s`.
fn go_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{}µs", d.as_micros())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn exited(events: &mpsc::UnboundedSender<Event>, uid: String) {
    let _ = events.send(Event::Exited { uid });
}

/// Sleeps unless cancelled first; true when cancelled.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Runs the container once, with its probes, until it exits, a liveness or startup probe
/// fails (then it is stopped and reported as such), or the pod is removed. A wasi:http
/// component is served on its hostPort (or a port the agent picks).
#[allow(clippy::too_many_arguments)]
async fn run_once(
    shared: &Shared,
    artifact: &Artifact,
    pod: &Pod,
    container: &flotilla_proto::api::Container,
    spec: Arc<GuestSpec>,
    rep: &mut Reporter,
    started_at: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<(i32, String)> {
    let stop = cancel.child_token();
    let log = spec.log.clone();
    let (endpoint, run) = match artifact.kind {
        ArtifactKind::HttpComponent => {
            let port = container
                .ports
                .iter()
                .find_map(|p| p.host_port)
                .unwrap_or(0) as u16;
            let addr = std::net::SocketAddr::new(shared.cfg.node_ip, port);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("failed to listen on {addr}: {e}"))?;
            let local = listener.local_addr()?;
            info!(pod = %pod.metadata.name, endpoint = %local, "serving wasi:http pod");
            let run = shared
                .runtime
                .serve_http(artifact, spec.clone(), listener, stop.clone());
            let run = async move { run.await.map(|()| (0, "Completed".to_string())) };
            (Some(local), futures_box(run))
        }
        ArtifactKind::CommandComponent | ArtifactKind::CoreModule => {
            let run = shared.runtime.run_command(artifact, &spec, stop.clone());
            let run = async move { run.await.map(|s| (s.code, s.reason)) };
            (None, futures_box(run))
        }
    };
    rep.status.endpoint = endpoint.map(|e| e.to_string());
    let name = &container.name;
    event(
        shared,
        pod,
        Normal,
        "Created",
        format!("Created container {name}"),
    );
    event(
        shared,
        pod,
        Normal,
        "Started",
        format!("Started container {name}"),
    );
    let mut prober = Prober::new(container, endpoint, tokio::time::Instant::now());
    rep.unready_message = None;
    rep.running(started_at, prober.ready());
    let mut run = run;
    loop {
        tokio::select! {
            r = &mut run => return r.map_err(anyhow::Error::from),
            v = prober.next() => match v {
                Verdict::Ready(ready, why) => {
                    if let Some(why) = &why {
                        log.note(why);
                        event(shared, pod, Warning, "Unhealthy", why.clone());
                    }
                    rep.unready_message = why;
                    rep.running(started_at, ready);
                }
                Verdict::Restart { reason, message } => {
                    warn!(pod = %pod.metadata.name, %message, "container will be restarted");
                    event(shared, pod, Warning, "Unhealthy", message.clone());
                    let probe = match reason {
                        "StartupProbeFailed" => "startup",
                        _ => "liveness",
                    };
                    let killing =
                        format!("Container {name} failed {probe} probe, will be restarted");
                    event(shared, pod, Normal, "Killing", killing);
                    log.note(&format!(
                        "{message}; container {} will be restarted",
                        container.name
                    ));
                    stop.cancel();
                    let _ = run.await;
                    return Ok((137, reason.to_string()));
                }
            },
        }
    }
}

type RunFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(i32, String), WasmError>> + Send + 'a>,
>;

fn futures_box<'a>(
    f: impl std::future::Future<Output = Result<(i32, String), WasmError>> + Send + 'a,
) -> RunFuture<'a> {
    Box::pin(f)
}

fn guest_spec(
    pod: &Pod,
    c: &flotilla_proto::api::Container,
    env: Vec<(String, String)>,
    log: crate::logs::PodLog,
) -> GuestSpec {
    let request_timeout = pod
        .metadata
        .annotations
        .get(REQUEST_TIMEOUT_ANNOTATION)
        .and_then(|v| humantime::parse_duration(v).ok())
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    GuestSpec {
        pod: format!("{}/{}", pod.namespace(), pod.metadata.name),
        args: c.command.iter().chain(c.args.iter()).cloned().collect(),
        env,
        memory_limit_bytes: c
            .resources
            .limits
            .get("memory")
            .and_then(|q| q.bytes().ok()),
        request_timeout,
        log,
        allow_outbound_http: false,
        working_dir: c.working_dir.clone(),
        reuse_instances: pod
            .metadata
            .annotations
            .get(INSTANCE_REUSE_ANNOTATION)
            .map(String::as_str)
            != Some("false"),
        mounts: Vec::new(),
    }
}
