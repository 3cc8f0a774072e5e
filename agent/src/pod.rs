//! One pod's life on this node: fetch its image, run it (under wasmtime, or as a container
//! under runc in its own network namespace) with its restart policy and back-off, serve it if
//! it is a wasi:http component, and report its status.
use crate::Shared;
use crate::images::Loaded;
use crate::logs::PodLog;
use crate::probe::{Prober, Target, Verdict};
use crate::runtime::wasm::{ArtifactKind, GuestSpec};
use crate::supervisor::Event;
use flotilla_proto::api::EventType::{self, Normal, Warning};
use flotilla_proto::api::{
    Condition, Container, ContainerState, ContainerStatus, Pod, PodStatus, StateRunning,
    StateTerminated, StateWaiting, condition,
};
use flotilla_proto::outbound::Grant;
use futures::StreamExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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

/// The pod's status as its containers change it; sent to the supervisor on every change.
struct Reporter {
    uid: String,
    events: mpsc::UnboundedSender<Event>,
    status: PodStatus,
    /// The init containers' statuses, which of them are sidecars, and which finished for
    /// good (a sidecar only when the pod's containers are done).
    init: Vec<ContainerStatus>,
    sidecar: Vec<bool>,
    init_done: Vec<bool>,
    /// Every init container has succeeded and every sidecar has started, once.
    initialized: bool,
    containers: Vec<ContainerStatus>,
    /// Why each container (init containers first) is not ready, for the Ready condition.
    unready: Vec<Option<String>>,
    /// Where each container serves; the pod's endpoint is the first one.
    endpoints: Vec<Option<String>>,
    /// Containers that finished for good (their restart policy does not run them again).
    done: Vec<bool>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn exited_with(c: &ContainerStatus, ok: bool) -> bool {
    c.state
        .terminated
        .as_ref()
        .is_some_and(|t| (t.exit_code == 0) == ok)
}

impl Reporter {
    /// The init containers with whether each is a sidecar and finished for good.
    fn inits(&self) -> impl Iterator<Item = (&ContainerStatus, bool, bool)> {
        let flags = self.sidecar.iter().zip(&self.init_done);
        self.init.iter().zip(flags).map(|(c, (s, d))| (c, *s, *d))
    }

    /// Kubernetes' pod phase from the containers: Failed when an init container failed for
    /// good, Pending until initialized and every container has started, Succeeded or Failed
    /// once all containers finished for good (sidecars do not count), Running otherwise.
    fn phase(&self) -> &'static str {
        if (self.inits()).any(|(c, sidecar, done)| !sidecar && done && exited_with(c, false)) {
            return "Failed";
        }
        if !self.initialized {
            return "Pending";
        }
        if self.done.iter().all(|d| *d) {
            let ok = self.containers.iter().all(|c| exited_with(c, true));
            return if ok { "Succeeded" } else { "Failed" };
        }
        let started = |c: &ContainerStatus| {
            c.state.running.is_some() || c.state.terminated.is_some() || c.restart_count > 0
        };
        if self.containers.iter().all(started) {
            "Running"
        } else {
            "Pending"
        }
    }

    fn send(&mut self) {
        self.status.phase = self.phase().to_string();
        let initialized = self.initialized;
        let sidecars_ready = (self.inits()).all(|(c, sidecar, _)| !sidecar || c.ready);
        let ready = initialized && sidecars_ready && self.containers.iter().all(|c| c.ready);
        let cond = |t: &str, ok: bool| Condition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            ..Default::default()
        };
        let mut conditions = vec![
            cond("PodScheduled", true),
            cond("Initialized", initialized),
            cond("ContainersReady", ready),
            cond("Ready", ready),
        ];
        let why: Vec<&str> = self.unready.iter().flatten().map(String::as_str).collect();
        let incomplete: Vec<&str> = (self.inits())
            .filter(|(c, sidecar, done)| match sidecar {
                true => c.started != Some(true),
                false => !(*done && exited_with(c, true)),
            })
            .map(|(c, ..)| c.name.as_str())
            .collect();
        // A condition's transition time moves only when its status does (minReadySeconds and
        // rollouts count from it).
        for c in &mut conditions {
            c.last_transition_time = match condition(&self.status.conditions, &c.type_) {
                Some(old) if old.status == c.status => old.last_transition_time.clone(),
                _ => Some(now()),
            };
            if c.type_ == "Initialized" && !initialized {
                c.reason = Some("ContainersNotInitialized".into());
                c.message = Some(format!(
                    "containers with incomplete status: [{}]",
                    incomplete.join(" ")
                ));
            }
            if c.type_ == "Ready" && !ready {
                c.reason = Some("ContainersNotReady".into());
                c.message = (!why.is_empty()).then(|| why.join("; "));
            }
        }
        self.status.conditions = conditions;
        self.status.endpoint = self.endpoints.iter().flatten().next().cloned();
        self.status.init_container_statuses = self.init.clone();
        self.status.container_statuses = self.containers.clone();
        let _ = self.events.send(Event::Status {
            uid: self.uid.clone(),
            status: Box::new(self.status.clone()),
        });
    }
}

/// One container's handle on the pod's reporter.
#[derive(Clone)]
struct Slot {
    rep: Arc<Mutex<Reporter>>,
    /// An init container (`i` indexes the init containers), or one of the others.
    init: bool,
    sidecar: bool,
    i: usize,
    /// Its place among all the pod's containers, init containers first.
    at: usize,
    /// Whether it runs past its startup probe now; the init container after a sidecar
    /// waits for this.
    started: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Slot {
    fn with<R>(&self, f: impl FnOnce(&mut Reporter) -> R) -> R {
        let mut rep = self.rep.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rep)
    }

    fn status<'r>(&self, r: &'r mut Reporter) -> &'r mut ContainerStatus {
        match self.init {
            true => &mut r.init[self.i],
            false => &mut r.containers[self.i],
        }
    }

    fn waiting(&self, reason: &str, message: Option<String>) {
        self.started.send_replace(false);
        self.with(|r| {
            let c = self.status(r);
            c.ready = false;
            c.started = Some(false);
            c.state = ContainerState {
                waiting: Some(StateWaiting {
                    reason: Some(reason.into()),
                    message,
                }),
                ..Default::default()
            };
            r.send();
        })
    }

    /// Waiting as before anything went wrong: for its pod's init containers to finish or to
    /// be created.
    fn pending(&self) {
        let inits = self.with(|r| r.init.len());
        self.waiting(pending_reason(inits), None);
    }

    fn running(&self, started_at: &str, ready: bool, started: bool) {
        self.started.send_replace(started);
        self.with(|r| {
            let c = self.status(r);
            // An init container that runs to completion is ready once it has succeeded, as
            // in Kubernetes; a sidecar is ready as the others are.
            c.ready = ready && started && (!self.init || self.sidecar);
            c.started = Some(started);
            c.state = ContainerState {
                running: Some(StateRunning {
                    started_at: started_at.into(),
                }),
                ..Default::default()
            };
            r.status
                .start_time
                .get_or_insert_with(|| started_at.to_string());
            r.send();
        })
    }

    /// The container will not run again: its last state stays.
    fn finished(&self, last: ContainerState) {
        self.started.send_replace(false);
        self.with(|r| {
            let c = self.status(r);
            c.state = last;
            c.started = Some(false);
            c.ready = self.init && !self.sidecar && exited_with(c, true);
            match self.init {
                true => r.init_done[self.i] = true,
                false => r.done[self.i] = true,
            }
            r.send();
        })
    }

    /// The container will run again; `last` becomes its `lastState`.
    fn restarting(&self, last: ContainerState) {
        self.with(|r| {
            let c = self.status(r);
            c.last_state = Some(last);
            c.restart_count += 1;
        })
    }

    fn set_unready(&self, why: Option<String>) {
        self.with(|r| r.unready[self.at] = why)
    }

    /// The pod's endpoint is one of its containers'; init containers have none.
    fn set_endpoint(&self, endpoint: Option<String>) {
        if !self.init {
            self.with(|r| r.endpoints[self.i] = endpoint)
        }
    }

    fn set_image_id(&self, id: String) {
        self.with(|r| self.status(r).image_id = id)
    }

    fn pod_ip(&self) -> Option<std::net::IpAddr> {
        self.with(|r| r.status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()))
    }
}

fn terminated(code: i32, reason: &str, started: &str) -> ContainerState {
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

/// Runs until cancelled (pod removed) or, for pods that do not restart, until done. Every
/// container is pulled, set up and restarted on its own; a container pod's containers share
/// one network namespace (so sidecars talk over localhost) and one set of /etc files. The
/// init containers run first, one after another, each until it succeeds; one that fails for
/// good (restartPolicy Never) fails the pod, and the others never start.
pub async fn run(
    shared: Arc<Shared>,
    pod: Pod,
    events: mpsc::UnboundedSender<Event>,
    cancel: CancellationToken,
) {
    let uid = pod.metadata.uid.clone();
    let n = pod.spec.containers.len();
    let inits = pod.spec.init_containers.len();
    if n == 0 {
        return exited(&events, uid);
    }
    let node_ip = shared.cfg.node_ip.to_string();
    let waiting = |reason: &str| ContainerState {
        waiting: Some(StateWaiting {
            reason: Some(reason.into()),
            message: None,
        }),
        ..Default::default()
    };
    let first = waiting(pending_reason(inits));
    let statuses = |containers: &[Container]| -> Vec<ContainerStatus> {
        containers
            .iter()
            .map(|c| ContainerStatus {
                name: c.name.clone(),
                image: c.image.clone(),
                state: first.clone(),
                ..Default::default()
            })
            .collect()
    };
    let rep = Arc::new(Mutex::new(Reporter {
        uid: uid.clone(),
        events: events.clone(),
        status: PodStatus {
            host_ip: Some(node_ip.clone()),
            pod_ip: Some(node_ip.clone()),
            ..Default::default()
        },
        init: statuses(&pod.spec.init_containers),
        sidecar: pod
            .spec
            .init_containers
            .iter()
            .map(Container::is_sidecar)
            .collect(),
        init_done: vec![false; inits],
        initialized: inits == 0,
        containers: statuses(&pod.spec.containers),
        unready: vec![None; inits + n],
        endpoints: vec![None; n],
        done: vec![false; n],
    }));
    rep.lock().unwrap_or_else(|p| p.into_inner()).send();
    // Init containers first, then the others, in every list below.
    let slots: Vec<Slot> = (pod.spec.all_containers().enumerate())
        .map(|(at, c)| Slot {
            rep: rep.clone(),
            init: at < inits,
            sidecar: at < inits && c.is_sidecar(),
            i: if at < inits { at } else { at - inits },
            at,
            started: Arc::new(tokio::sync::watch::channel(false).0),
        })
        .collect();
    let logs: Vec<PodLog> = pod
        .spec
        .all_containers()
        .map(|c| shared.log_for(&pod, &c.name))
        .collect();
    let note_all = |text: &str| logs.iter().for_each(|l| l.note(text));

    let pulls = pod
        .spec
        .all_containers()
        .enumerate()
        .map(|(i, c)| pull(&shared, &pod, c, &slots[i], &logs[i], &cancel));
    let Some(artifacts) = futures::future::join_all(pulls)
        .await
        .into_iter()
        .collect::<Option<Vec<Loaded>>>()
    else {
        return exited(&events, uid);
    };
    if let Err(e) = runtimes_fit(&pod, &artifacts) {
        note_all(&e);
        event(&shared, &pod, Warning, "Failed", format!("Error: {e}"));
        for s in &slots {
            s.waiting("CreateContainerConfigError", Some(e.clone()));
        }
        cancel.cancelled().await;
        return exited(&events, uid);
    }
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
    // A container pod gets its network namespace and /etc files once; restarts keep them
    // (and its address).
    let mut backoff = shared.cfg.backoff_base;
    let mut etc = Vec::new();
    let mut attach_failed = false;
    let _network = if artifacts
        .iter()
        .any(|a| matches!(a, Loaded::Container { .. }))
    {
        loop {
            match attach_network(&shared, &pod).await {
                Ok((ip, guard)) => {
                    rep.lock().unwrap_or_else(|p| p.into_inner()).status.pod_ip =
                        Some(ip.to_string());
                    match write_etc(&shared, &pod, &ip.to_string()) {
                        Ok(files) => etc = files,
                        Err(e) => {
                            warn!(pod = %pod.metadata.name, error = %e, "cannot write the pod's /etc files")
                        }
                    }
                    if attach_failed {
                        slots.iter().for_each(Slot::pending);
                    }
                    break Some(guard);
                }
                Err(e) => {
                    warn!(pod = %pod.metadata.name, error = %e, "cannot set up the pod network");
                    note_all(&e);
                    event(&shared, &pod, Warning, "FailedCreatePodSandBox", e.clone());
                    for s in &slots {
                        s.waiting("ContainerCreating", Some(e.clone()));
                    }
                    attach_failed = true;
                    if sleep_or_cancel(backoff, &cancel).await {
                        return exited(&events, uid);
                    }
                    backoff = (backoff * 2).min(shared.cfg.backoff_max);
                }
            }
        }
    } else {
        None
    };
    let all: Vec<&Container> = pod.spec.all_containers().collect();
    // Sidecars stop once the containers are done: for good, or stopped because the pod goes
    // (then after them, as in Kubernetes).
    let sidecar_stop = CancellationToken::new();
    let mut sidecars: Sidecars = futures::stream::FuturesUnordered::new();
    let one = |i: usize| One {
        shared: &shared,
        pod: &pod,
        container: all[i],
        artifact: &artifacts[i],
        slot: &slots[i],
        log: &logs[i],
        etc: &etc,
        cancel: &cancel,
    };
    let mut initialized = true;
    for (i, c) in pod.spec.init_containers.iter().enumerate() {
        if c.is_sidecar() {
            let mut started = slots[i].started.subscribe();
            let run = run_container(
                One {
                    cancel: &sidecar_stop,
                    ..one(i)
                },
                &node_ip,
            );
            sidecars.push(Box::pin(async move {
                run.await;
            }));
            // The next init container starts once this one runs past its startup probe.
            let up = async {
                tokio::select! {
                    r = started.wait_for(|s| *s) => r.is_ok(),
                    _ = cancel.cancelled() => false,
                }
            };
            initialized = beside(up, &mut sidecars).await;
        } else {
            initialized = beside(run_container(one(i), &node_ip), &mut sidecars).await;
            if !initialized && !cancel.is_cancelled() {
                info!(pod = %pod.metadata.name, container = %c.name, "init container failed; the pod failed");
            }
        }
        if !initialized {
            break;
        }
    }
    if initialized {
        {
            let mut rep = rep.lock().unwrap_or_else(|p| p.into_inner());
            rep.initialized = true;
            rep.send();
        }
        let runs = (inits..inits + n).map(|i| run_container(one(i), &node_ip));
        beside(futures::future::join_all(runs), &mut sidecars).await;
    }
    sidecar_stop.cancel();
    while sidecars.next().await.is_some() {}
    if !cancel.is_cancelled() {
        info!(pod = %pod.metadata.name, "pod finished");
        // Stay until the pod is removed, so status and logs remain visible.
        cancel.cancelled().await;
    }
    exited(&events, uid)
}

/// The sidecars of a pod, running beside whatever runs after them.
type Sidecars<'a> = futures::stream::FuturesUnordered<
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
>;

/// Drives `f` to its end while the sidecars run on beside it.
async fn beside<T>(f: impl std::future::Future<Output = T>, sidecars: &mut Sidecars<'_>) -> T {
    tokio::pin!(f);
    loop {
        tokio::select! {
            out = &mut f => return out,
            Some(()) = sidecars.next(), if !sidecars.is_empty() => {}
        }
    }
}

/// Why a container of a pod with `inits` init containers waits before it is started.
fn pending_reason(inits: usize) -> &'static str {
    match inits {
        0 => "ContainerCreating",
        _ => "PodInitializing",
    }
}

/// What one container's run needs.
#[derive(Clone, Copy)]
struct One<'a> {
    shared: &'a Arc<Shared>,
    pod: &'a Pod,
    container: &'a Container,
    artifact: &'a Loaded,
    slot: &'a Slot,
    log: &'a PodLog,
    /// The pod's /etc files, bind-mounted into each of its containers.
    etc: &'a [(PathBuf, &'static str)],
    cancel: &'a CancellationToken,
}

/// Pulls the container's image, retried with back-off until it works or the pod is removed
/// (then None).
async fn pull(
    shared: &Arc<Shared>,
    pod: &Pod,
    container: &Container,
    slot: &Slot,
    log: &PodLog,
    cancel: &CancellationToken,
) -> Option<Loaded> {
    let image = &container.image;
    let mut backoff = shared.cfg.backoff_base;
    let mut failed = false;
    loop {
        let pull_started = Instant::now();
        match crate::images::load(shared, pod, container).await {
            Ok((a, said)) => {
                let took = go_duration(pull_started.elapsed());
                let message = if said.is_empty() {
                    format!("Successfully pulled image {image:?} in {took}")
                } else {
                    format!("{said} in {took}")
                };
                event(shared, pod, Normal, "Pulled", message);
                slot.set_image_id(a.digest());
                if failed {
                    slot.pending();
                }
                return Some(a);
            }
            Err(e) => {
                warn!(pod = %pod.metadata.name, error = %e, "image pull failed");
                log.note(&format!("failed to pull {image}: {e}"));
                let message = format!("Failed to pull image {image:?}: {e}");
                event(shared, pod, Warning, "Failed", message);
                event(
                    shared,
                    pod,
                    Warning,
                    "Failed",
                    format!("Error: {}", e.reason),
                );
                slot.waiting(e.reason, Some(e.to_string()));
                failed = true;
                if sleep_or_cancel(backoff, cancel).await {
                    return None;
                }
                let message = format!("Back-off pulling image {image:?}");
                event(shared, pod, Normal, "BackOff", message);
                event(
                    shared,
                    pod,
                    Warning,
                    "Failed",
                    "Error: ImagePullBackOff".into(),
                );
                slot.waiting("ImagePullBackOff", Some(e.to_string()));
                backoff = (backoff * 2).min(shared.cfg.backoff_max);
            }
        }
    }
}

/// One container from its environment to its last run: restarted by the pod's policy with
/// back-off, until it finishes for good or the pod is removed. An init container is run
/// again only after a failure (restartPolicy Always counts as OnFailure); a sidecar always,
/// until stopped. True when the last run succeeded.
async fn run_container(one: One<'_>, node_ip: &str) -> bool {
    let One {
        shared,
        pod,
        container,
        slot,
        log,
        cancel,
        ..
    } = one;
    let mut backoff = shared.cfg.backoff_base;
    // Environment: ConfigMaps and Secrets may be missing for now; retried with back-off.
    let env = loop {
        match crate::envsource::resolve(shared, pod, container, node_ip).await {
            Ok(env) => break env,
            Err(e) => {
                warn!(pod = %pod.metadata.name, error = %e, "cannot build the container's environment");
                log.note(&format!("CreateContainerConfigError: {e}"));
                event(shared, pod, Warning, "Failed", format!("Error: {e}"));
                slot.waiting("CreateContainerConfigError", Some(e));
                if sleep_or_cancel(backoff, cancel).await {
                    return false;
                }
                backoff = (backoff * 2).min(shared.cfg.backoff_max);
            }
        }
    };
    backoff = shared.cfg.backoff_base;
    // Volumes: a missing ConfigMap or host directory may appear later; retried with back-off.
    let mounts = loop {
        match crate::volumes::prepare(shared, pod, container).await {
            Ok(m) => break m,
            Err(e) => {
                warn!(pod = %pod.metadata.name, error = %e, "cannot set up volumes");
                log.note(&e);
                event(shared, pod, Warning, "FailedMount", e.clone());
                slot.waiting("ContainerCreating", Some(e));
                if sleep_or_cancel(backoff, cancel).await {
                    return false;
                }
                backoff = (backoff * 2).min(shared.cfg.backoff_max);
            }
        }
    };
    backoff = shared.cfg.backoff_base;
    let mut spec = guest_spec(shared, pod, container, env, log.clone());
    spec.mounts = mounts;
    let spec = Arc::new(spec);
    let policy = pod.spec.restart_policy().to_string();
    loop {
        let started_at = now();
        let started = Instant::now();
        // Every run writes a fresh log; the one before stays for `fleet logs --previous`.
        log.new_run();
        let outcome = run_once(one, spec.clone(), &started_at).await;
        let stopped = cancel.is_cancelled();
        let (code, reason) = outcome.unwrap_or_else(|e| {
            if !stopped {
                event(shared, pod, Warning, "Failed", format!("Error: {e}"));
            }
            (128, format!("Error: {e}"))
        });
        if stopped {
            // A sidecar stopped because the pod's containers are done keeps its last state.
            if slot.sidecar {
                slot.finished(terminated(code, &reason, &started_at));
            }
            return false;
        }
        log.note(&format!(
            "container {} exited with code {code} ({reason})",
            container.name
        ));
        let last = terminated(code, &reason, &started_at);
        let restart = match policy.as_str() {
            _ if slot.sidecar => true,
            "Always" if !slot.init => true,
            "Always" | "OnFailure" => code != 0,
            _ => false,
        };
        if !restart {
            info!(pod = %pod.metadata.name, container = %container.name, code, "container finished");
            slot.finished(last);
            return code == 0;
        }
        if started.elapsed() >= BACKOFF_RESET {
            backoff = shared.cfg.backoff_base;
        }
        slot.restarting(last.clone());
        let msg = format!(
            "back-off {} restarting failed container={} pod={}",
            humantime::format_duration(backoff),
            container.name,
            pod.metadata.name
        );
        slot.waiting("CrashLoopBackOff", Some(msg));
        let message = format!(
            "Back-off restarting failed container {} in pod {}_{}({})",
            container.name,
            pod.metadata.name,
            pod.namespace(),
            pod.metadata.uid
        );
        event(shared, pod, Warning, "BackOff", message);
        if sleep_or_cancel(backoff, cancel).await {
            // A sidecar stopped while it waited to restart ends in its last run's state.
            if slot.sidecar {
                slot.finished(last);
            }
            return false;
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
async fn run_once(
    one: One<'_>,
    spec: Arc<GuestSpec>,
    started_at: &str,
) -> anyhow::Result<(i32, String)> {
    let One {
        shared,
        pod,
        container,
        artifact,
        slot,
        etc,
        cancel,
        ..
    } = one;
    let stop = cancel.child_token();
    let log = spec.log.clone();
    let (target, run) = match artifact {
        Loaded::Container { image, rootfs } => {
            let ip = slot
                .pod_ip()
                .ok_or_else(|| anyhow::anyhow!("the pod has no address"))?;
            let id = container_id(pod, container);
            create_container(shared, pod, container, image, rootfs, &spec, &id, etc).await?;
            let grace = Duration::from_secs(
                pod.spec
                    .termination_grace_period_seconds
                    .unwrap_or(30)
                    .max(0) as u64,
            );
            let exec_shared = shared.clone();
            let exec_id = id.clone();
            let exec: crate::probe::Exec = Arc::new(move |argv, timeout| {
                let shared = exec_shared.clone();
                let id = exec_id.clone();
                Box::pin(async move {
                    let rt = shared.containers.as_ref().map_err(|e| e.clone())?;
                    rt.exec(&id, &argv, timeout)
                        .await
                        .map(|(code, _)| code)
                        .map_err(|e| e.to_string())
                })
            });
            // The endpoint is the first container port on the pod's address.
            slot.set_endpoint(
                container
                    .ports
                    .first()
                    .map(|p| std::net::SocketAddr::new(ip, p.container_port as u16).to_string()),
            );
            let target = Target::Pod {
                ip,
                ports: container.ports.clone(),
                exec,
            };
            // Running is reported once runc has started the container's process.
            let rt = shared
                .containers
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let running = rt.start(&id, log.clone(), pod.spec.host_pid).await?;
            if let Some(code) = running.failed() {
                // Never Running: runc said why in the container's log.
                rt.finish(running, stop.clone(), grace).await;
                let message = format!(
                    "Error: runc could not start container {} (exit code {code}); see its log",
                    container.name
                );
                event(shared, pod, Warning, "Failed", message);
                return Ok((code, "StartError".to_string()));
            }
            if !pod.spec.host_network {
                // The next pod's namespace, made now that this one has started.
                let spare = shared.clone();
                shared.tracker.spawn(async move {
                    if let Ok(net) = &spare.network {
                        net.keep_spare().await;
                    }
                });
            }
            let shared = shared.clone();
            let stop = stop.clone();
            let run = async move {
                let rt = shared
                    .containers
                    .as_ref()
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let exit = rt.finish(running, stop, grace).await;
                Ok((exit.code, exit.reason))
            };
            (target, futures_box(run))
        }
        Loaded::Wasm(artifact) => match artifact.kind {
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
                let run = async move {
                    run.await
                        .map(|()| (0, "Completed".to_string()))
                        .map_err(anyhow::Error::from)
                };
                slot.set_endpoint(Some(local.to_string()));
                (Target::Endpoint(Some(local)), futures_box(run))
            }
            ArtifactKind::CommandComponent | ArtifactKind::CoreModule => {
                let run = shared.runtime.run_command(artifact, &spec, stop.clone());
                let run = async move {
                    run.await
                        .map(|s| (s.code, s.reason))
                        .map_err(anyhow::Error::from)
                };
                (Target::Endpoint(None), futures_box(run))
            }
        },
    };
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
    let mut prober = Prober::new(container, target, tokio::time::Instant::now());
    slot.set_unready(None);
    slot.running(started_at, prober.ready(), prober.started());
    let mut run = run;
    loop {
        tokio::select! {
            r = &mut run => return r,
            v = prober.next() => match v {
                Verdict::Ready(ready, why) => {
                    if let Some(why) = &why {
                        log.note(why);
                        event(shared, pod, Warning, "Unhealthy", why.clone());
                    }
                    slot.set_unready(why);
                    slot.running(started_at, ready, prober.started());
                }
                Verdict::Started => slot.running(started_at, prober.ready(), true),
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

type RunFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<(i32, String)>> + Send + 'a>>;

fn futures_box<'a>(
    f: impl std::future::Future<Output = anyhow::Result<(i32, String)>> + Send + 'a,
) -> RunFuture<'a> {
    Box::pin(f)
}

fn guest_spec(
    shared: &Shared,
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
    const AT: &str = "metadata.annotations";
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
        outbound: outbound(shared, pod, Grant::http(AT, &pod.metadata.annotations)),
        network: outbound(shared, pod, Grant::network(AT, &pod.metadata.annotations)),
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

/// A pod's `grant`, with what it resolves names by. Grants are validated at apply; a pod
/// cached before that check is refused.
fn outbound(
    shared: &Shared,
    pod: &Pod,
    grant: Result<Option<Grant>, String>,
) -> Option<Arc<crate::outbound::Outbound>> {
    let grant = grant.ok()??;
    Some(Arc::new(crate::outbound::Outbound::new(
        grant,
        pod.namespace(),
        shared.names.subscribe(),
        shared.mesh_table.subscribe(),
        shared.cfg.node_ip,
    )))
}

/// Refuses what the images' runtimes cannot do, before anything starts: a pod's containers
/// share one runtime (a network namespace is a container pod's), exec probes need a
/// container to run in, and an init container must be able to finish.
fn runtimes_fit(pod: &Pod, loaded: &[Loaded]) -> Result<(), String> {
    let kind = |l: &Loaded| match l {
        Loaded::Wasm(_) => "a wasm artifact",
        Loaded::Container { .. } => "a container image",
    };
    for (c, l) in pod.spec.init_containers.iter().zip(loaded) {
        if let Loaded::Wasm(a) = l
            && a.kind == ArtifactKind::HttpComponent
            && !c.is_sidecar()
        {
            return Err(format!(
                "init container {}: image {:?} is a wasi:http component, which serves until stopped; an init container must run to completion (a wasi:cli command or a core module) unless it is a sidecar (restartPolicy: Always)",
                c.name, c.image
            ));
        }
    }
    let containers = pod.spec.all_containers().zip(loaded);
    if let Some(((a, la), (b, lb))) = containers
        .clone()
        .zip(containers.clone().skip(1))
        .find(|((_, la), (_, lb))| kind(la) != kind(lb))
    {
        return Err(format!(
            "pod {}: container {} runs {} and container {} runs {}; a pod's containers must share one runtime",
            pod.metadata.name,
            a.name,
            kind(la),
            b.name,
            kind(lb)
        ));
    }
    for (c, l) in containers {
        let probes = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
        let exec_probe = probes
            .iter()
            .any(|p| p.as_ref().is_some_and(|p| p.exec.is_some()));
        if matches!(l, Loaded::Wasm(_)) && exec_probe {
            return Err(format!(
                "container {}: exec probes run a command in a container, and image {:?} is a wasm artifact (use httpGet or tcpSocket)",
                c.name, c.image
            ));
        }
    }
    Ok(())
}

/// runc's name for a pod's container: unique on the node, stable across restarts.
fn container_id(pod: &Pod, c: &Container) -> String {
    format!("{}-{}", pod.metadata.uid, c.name)
}

/// Detaches the pod's network and removes its files when the pod's task ends.
struct NetworkGuard {
    shared: Arc<Shared>,
    uid: String,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let uid = std::mem::take(&mut self.uid);
        self.shared.tracker.spawn(async move {
            if let Ok(net) = &shared.network {
                net.detach(&uid).await;
            }
            let _ = tokio::fs::remove_dir_all(pod_dir(&shared, &uid).join("etc")).await;
        });
    }
}

fn pod_dir(shared: &Shared, uid: &str) -> std::path::PathBuf {
    shared.cfg.data_dir.join("pods").join(uid)
}

/// Creates the pod's network namespace on the node's bridge, with its hostPorts.
async fn attach_network(
    shared: &Arc<Shared>,
    pod: &Pod,
) -> Result<(std::net::IpAddr, NetworkGuard), String> {
    shared.containers.as_ref().map_err(|e| e.clone())?;
    let net = shared.network.as_ref().map_err(|e| e.clone())?;
    let ports: Vec<crate::network::PortMapping> = pod
        .spec
        .serving_containers()
        .flat_map(|c| &c.ports)
        .filter_map(|p| {
            Some(crate::network::PortMapping {
                host_port: u16::try_from(p.host_port?).ok()?,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                host_ip: None,
            })
        })
        .collect();
    let uid = pod.metadata.uid.clone();
    let attached = net.attach(&uid, &ports).await.map_err(|e| e.to_string())?;
    let guard = NetworkGuard {
        shared: shared.clone(),
        uid,
    };
    Ok((attached.ip, guard))
}

/// `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf` of a container pod, written by the
/// agent and bind-mounted read-only.
fn write_etc(
    shared: &Shared,
    pod: &Pod,
    ip: &str,
) -> std::io::Result<Vec<(std::path::PathBuf, &'static str)>> {
    let dir = pod_dir(shared, &pod.metadata.uid).join("etc");
    std::fs::create_dir_all(&dir)?;
    let hostname = pod
        .spec
        .hostname
        .clone()
        .unwrap_or_else(|| pod.metadata.name.clone());
    let mut names = hostname.clone();
    if let Some(sub) = &pod.spec.subdomain {
        names = format!(
            "{hostname}.{sub}.{}.svc.{} {hostname}",
            pod.namespace(),
            shared.cfg.cluster_domain
        );
    }
    let hosts = format!(
        "# Written by the flotilla agent.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{names}\n"
    );
    let host_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // The node DNS serves pods on their bridge's gateway.
    let cluster_dns = shared
        .network
        .as_ref()
        .ok()
        .and_then(|n| n.subnet())
        .and_then(|s| crate::network::gateway(&s));
    let resolv = crate::dns::resolv_conf(pod, &shared.cfg.cluster_domain, cluster_dns, &host_conf);
    let files = [
        ("hosts", hosts, "/etc/hosts"),
        ("hostname", format!("{hostname}\n"), "/etc/hostname"),
        ("resolv.conf", resolv, "/etc/resolv.conf"),
    ];
    let mut out = Vec::new();
    for (name, text, dest) in files {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        out.push((path, dest));
    }
    Ok(out)
}

/// Writes the container's bundle: rootfs over the image snapshot, and a runtime spec from
/// the image config, the pod spec, its environment and its volumes.
#[allow(clippy::too_many_arguments)]
async fn create_container(
    shared: &Arc<Shared>,
    pod: &Pod,
    container: &flotilla_proto::api::Container,
    image: &Arc<flotilla_oci::store::Image>,
    snapshot: &std::path::Path,
    guest: &GuestSpec,
    id: &str,
    etc: &[(PathBuf, &'static str)],
) -> anyhow::Result<()> {
    let mut mounts: Vec<flotilla_oci::spec::BindMount> = guest
        .mounts
        .iter()
        .map(|m| flotilla_oci::spec::BindMount {
            source: m.host_path.clone(),
            destination: m.guest_path.clone(),
            read_only: m.read_only,
        })
        .collect();
    for (source, dest) in etc {
        mounts.push(flotilla_oci::spec::BindMount {
            source: source.clone(),
            destination: dest.to_string(),
            read_only: true,
        });
    }
    let shared = shared.clone();
    let (pod, container, image) = (pod.clone(), container.clone(), image.clone());
    let (snapshot, env, id) = (snapshot.to_path_buf(), guest.env.clone(), id.to_string());
    tokio::task::spawn_blocking(move || {
        let rt = shared
            .containers
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let netns = crate::network::PodNetwork::netns_path(&pod.metadata.uid);
        let cgroups = crate::runtime::oci::ContainerRuntime::cgroups_path(&id);
        let config = image.config.as_ref().and_then(|c| c.config().as_ref());
        rt.create_bundle(&id, &snapshot, |rootfs| {
            flotilla_oci::spec::build(&flotilla_oci::spec::Input {
                pod: &pod,
                container: &container,
                image: config,
                rootfs,
                env: &env,
                mounts: &mounts,
                netns: (!pod.spec.host_network).then_some(netns.as_path()),
                cgroups_path: &cgroups,
                pids_limit: shared.cfg.pids_limit,
            })
        })?;
        Ok::<_, anyhow::Error>(())
    })
    .await??;
    Ok(())
}
