//! WASI runtime: compiles and caches wasm artifacts, runs wasi:cli commands and core modules, serves wasi:http components.
//!
//! This is the only module that touches wasmtime. Everything a guest can reach
//! is denied unless the pod spec grants it: no inherited environment, no
//! preopened directories, no stdin, outgoing HTTP only to the hosts the pod's grant
//! names (`GuestSpec::outbound`), and sockets only to those of its network grant
//! (`GuestSpec::network`, [`sockets`]). Guest stdout/stderr go to the pod log.

mod sockets;

use crate::logs::{LogStream, PodLog};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wasmtime::component::{self, Component, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel,
    PoolingAllocationConfig, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// How often the engine epoch advances. Busy guests yield to the executor once
/// per tick and deadlines are measured in ticks, so this is the scheduling and
/// timeout granularity.
const EPOCH_TICK: Duration = Duration::from_millis(10);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const WASM_PAGE: u64 = 64 * KIB;

/// Upper bound for one linear memory, whatever the node size.
const MAX_MEMORY_CEILING: u64 = 256 * MIB;
/// Lower bound for one linear memory, so tiny nodes can still run a Rust guest.
const MAX_MEMORY_FLOOR: u64 = 16 * MIB;
/// Guard pages after each pooled memory. The per-memory reservation is far
/// below 4 GiB, so compiled code bounds-checks every access anyway; the guard
/// only lets small constant offsets share a check, and 64 KiB covers those.
const MEMORY_GUARD: u64 = 64 * KIB;
/// Total address space the memory pool may reserve. It is reserved, not
/// committed, but arm64 boards often run kernels with a 39-bit (512 GiB) user
/// address space, so the pool must stay well inside that.
#[cfg(target_pointer_width = "64")]
const MEMORY_POOL_VA_BUDGET: u64 = 128 * GIB;
#[cfg(not(target_pointer_width = "64"))]
const MEMORY_POOL_VA_BUDGET: u64 = GIB;
/// A Rust `wasm32-wasip2` component has two linear memories (the program and
/// the preview1 adapter); a core module has one.
const MEMORIES_PER_INSTANCE: u32 = 2;
/// Components built by `wasm-component-ld` hold the program, the adapter and
/// small shim/fixup modules.
const CORE_INSTANCES_PER_INSTANCE: u32 = 8;
/// The program's function table plus the adapter shim's table.
const TABLES_PER_INSTANCE: u32 = 2;
/// Maximum elements per table (wasmtime's default); also enforced per store so
/// growth past it traps with a recognisable error.
const TABLE_ELEMENTS: usize = 20_000;

/// Exit code reported when a guest is stopped by the agent, like SIGKILL.
pub const EXIT_CODE_KILLED: i32 = 137;
/// Exit code reported for a guest that hit its memory limit, like an
/// OOM-killed container.
pub const EXIT_CODE_MEMORY_LIMIT: i32 = 137;
/// Exit code reported for a trap, like a native process that aborted.
pub const EXIT_CODE_TRAP: i32 = 134;
/// Exit code reported for a guest interrupted by a deadline, like `timeout(1)`.
pub const EXIT_CODE_INTERRUPTED: i32 = 124;
/// The default for [`RuntimeConfig::max_instances`].
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// How long in-flight HTTP requests may run after `serve_http` is cancelled.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Closes connections that do not send a complete request head in time, so
/// idle or slow clients cannot hold sockets forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest trap message kept in an exit reason or log line.
const MAX_REASON_LEN: usize = 300;
/// Marks a compiled-code cache file; bump when the file layout changes.
const CACHE_MAGIC: &[u8; 8] = b"FLTCWM01";

#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    #[error("failed to configure the wasm engine: {0}")]
    Engine(String),
    #[error("artifact {digest} is not a wasm module or component (bad header)")]
    UnknownFormat { digest: String },
    #[error("failed to compile artifact {digest}: {reason}")]
    Compile { digest: String, reason: String },
    #[error(
        "artifact {digest} is a component that exports neither wasi:cli/run nor wasi:http/incoming-handler"
    )]
    UnsupportedComponent { digest: String },
    #[error("artifact {digest} is a core module without a `_start` function")]
    MissingStart { digest: String },
    #[error("artifact {digest} cannot be linked against the host: {reason}")]
    Link { digest: String, reason: String },
    #[error("artifact {digest} is a {actual}, but pod {pod} needs a {expected}")]
    WrongKind {
        digest: String,
        pod: String,
        expected: &'static str,
        actual: ArtifactKind,
    },
    #[error("failed to instantiate pod {pod}: {reason}")]
    Instantiate { pod: String, reason: String },
}

pub struct RuntimeConfig {
    /// Compiled-code cache (serialized Component/Module by content hash +
    /// engine compatibility hash).
    pub cache_dir: PathBuf,
    /// Physical memory of the node; sizes the per-instance memory cap.
    pub node_memory_bytes: u64,
    /// Concurrent instances in the pool; see [`DEFAULT_MAX_INSTANCES`].
    pub max_instances: u32,
}

/// The pooling allocator limits derived from a [`RuntimeConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PoolPlan {
    max_memory_bytes: u64,
    total_memories: u32,
    total_tables: u32,
    total_core_instances: u32,
    total_component_instances: u32,
    total_stacks: u32,
}

impl PoolPlan {
    fn for_config(cfg: &RuntimeConfig) -> PoolPlan {
        // A quarter of the node per memory lets a few large guests coexist
        // with the agent and OS; the ceiling stops one guest from claiming a
        // big share of a larger node, and rounding to pages keeps the pool
        // layout exact.
        let max_memory_bytes =
            (cfg.node_memory_bytes / 4).clamp(MAX_MEMORY_FLOOR, MAX_MEMORY_CEILING) / WASM_PAGE
                * WASM_PAGE;
        let instances = cfg.max_instances.max(1);
        // Every memory slot reserves its full maximum plus guard, so the
        // address-space budget, not RAM, bounds how many slots exist. When
        // the budget is smaller than `instances * 2` slots, fewer guests can
        // be resident at once and instantiation beyond that fails with a
        // pool-exhausted error. On a 1 GiB board (256 MiB per memory) that
        // still leaves room for about 255 concurrent components, roughly as
        // many as its RAM could back.
        let slot = max_memory_bytes + MEMORY_GUARD;
        let fits = u32::try_from(MEMORY_POOL_VA_BUDGET / slot).unwrap_or(u32::MAX);
        let total_memories = instances
            .saturating_mul(MEMORIES_PER_INSTANCE)
            .min(fits)
            .max(MEMORIES_PER_INSTANCE);
        PoolPlan {
            max_memory_bytes,
            total_memories,
            total_tables: instances.saturating_mul(TABLES_PER_INSTANCE),
            total_core_instances: instances.saturating_mul(CORE_INSTANCES_PER_INSTANCE),
            total_component_instances: instances,
            total_stacks: instances,
        }
    }

    fn reserved_memory_bytes(&self) -> u64 {
        u64::from(self.total_memories) * (self.max_memory_bytes + MEMORY_GUARD)
    }
}

pub struct WasmRuntime {
    engine: Engine,
    component_linker: component::Linker<ComponentState>,
    module_linker: Linker<ModuleState>,
    cache_dir: PathBuf,
    /// Engine compatibility hash, part of every cache file name so a new
    /// wasmtime version or config never loads stale machine code.
    compat: String,
    max_memory_bytes: u64,
    /// The wasi:http pods being served, by the port they listen on: the ingress hands them
    /// requests in process instead of over a socket.
    serving: std::sync::Mutex<HashMap<u16, Arc<HttpService>>>,
    _ticker: EpochTicker,
}

/// A wasi:http pod that takes requests in process ([`WasmRuntime::in_process`]).
#[derive(Clone)]
pub struct HttpHandler(Arc<HttpService>);

impl HttpHandler {
    /// Answers `request` as the pod's own listener would.
    pub async fn handle<B>(&self, request: hyper::Request<B>) -> hyper::Response<HyperOutgoingBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.0.clone().handle(request).await
    }
}

/// Takes a served pod out of [`WasmRuntime::serving`] however `serve_http` ends.
struct Serving<'a> {
    runtime: &'a WasmRuntime,
    port: u16,
    service: Arc<HttpService>,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let mut serving = self
            .runtime
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if serving
            .get(&self.port)
            .is_some_and(|s| Arc::ptr_eq(s, &self.service))
        {
            serving.remove(&self.port);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    HttpComponent,
    CommandComponent,
    CoreModule,
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::HttpComponent => "wasi:http component",
            ArtifactKind::CommandComponent => "wasi:cli command component",
            ArtifactKind::CoreModule => "core wasm module",
        })
    }
}

/// The binary format named by the 8-byte wasm header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryFormat {
    CoreModule,
    Component,
}

/// Tells a core module from a component by the header: `\0asm` followed by
/// version `01 00 00 00` (module) or `0d 00 01 00` (component, layer 1).
pub fn detect_kind_from_header(bytes: &[u8]) -> Option<BinaryFormat> {
    let header: &[u8; 8] = bytes.get(..8)?.try_into().ok()?;
    if &header[..4] != b"\0asm" {
        return None;
    }
    match header[4..] {
        [0x01, 0x00, 0x00, 0x00] => Some(BinaryFormat::CoreModule),
        [0x0d, 0x00, 0x01, 0x00] => Some(BinaryFormat::Component),
        _ => None,
    }
}

/// A compiled, linked and pre-instantiated artifact. Cloning is cheap.
#[derive(Clone)]
pub struct Artifact {
    pub kind: ArtifactKind,
    pub digest: String,
    loaded: Loaded,
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("kind", &self.kind)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Loaded {
    Http(ProxyPre<ComponentState>),
    Command(CommandPre<ComponentState>),
    Core(InstancePre<ModuleState>),
}

pub struct GuestSpec {
    /// "namespace/name", for logs and errors.
    pub pod: String,
    /// argv[1..]; argv[0] is the pod name.
    pub args: Vec<String>,
    /// ONLY these env vars; nothing inherited.
    pub env: Vec<(String, String)>,
    /// Max linear memory (and table elements) per instance.
    pub memory_limit_bytes: Option<u64>,
    /// wasi:http: a request running longer is interrupted -> 504.
    pub request_timeout: Duration,
    /// Guest stdout/stderr go here.
    pub log: PodLog,
    /// The hosts outgoing wasi:http requests may reach, and how their names resolve; None:
    /// every request is refused.
    pub outbound: Option<Arc<crate::outbound::Outbound>>,
    /// What wasi:sockets may reach and how their name lookups resolve; None: no sockets and
    /// no lookups.
    pub network: Option<Arc<crate::outbound::Outbound>>,
    /// The pod's `workingDir`, reported to the guest as wasi:cli's initial-cwd (no files are
    /// granted by it: preopened directories come with volumes).
    pub working_dir: Option<String>,
    /// wasi:http: keep an instance that answered cleanly for the next request (like a server
    /// process) instead of instantiating per request. A trapped instance is never reused.
    pub reuse_instances: bool,
    /// Directories granted to the guest (the pod's volume mounts), and nothing else.
    pub mounts: Vec<Mount>,
}

/// A host directory preopened for the guest at `guest_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: i32,
    /// "Completed", "Error", "Killed", "MemoryLimit", "Interrupted" or
    /// "Trap: <message>".
    pub reason: String,
}

impl ExitStatus {
    fn exited(code: i32) -> ExitStatus {
        let reason = if code == 0 { "Completed" } else { "Error" };
        ExitStatus {
            code,
            reason: reason.to_owned(),
        }
    }

    fn killed() -> ExitStatus {
        ExitStatus {
            code: EXIT_CODE_KILLED,
            reason: "Killed".to_owned(),
        }
    }
}

impl WasmRuntime {
    pub fn new(cfg: RuntimeConfig) -> Result<Self, WasmError> {
        let plan = PoolPlan::for_config(&cfg);
        let mut pool = PoolingAllocationConfig::new();
        pool.max_memory_size(to_usize(plan.max_memory_bytes))
            .total_memories(plan.total_memories)
            .total_tables(plan.total_tables)
            .table_elements(TABLE_ELEMENTS)
            .total_core_instances(plan.total_core_instances)
            .total_component_instances(plan.total_component_instances)
            .total_stacks(plan.total_stacks);

        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .parallel_compilation(true)
            .wasm_component_model(true)
            // Pooled memories never move, so each slot only needs room for
            // the largest memory allowed, not the default 4 GiB.
            .memory_reservation(plan.max_memory_bytes)
            .memory_guard_size(MEMORY_GUARD)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| WasmError::Engine(error_text(&e)))?;

        let mut component_linker = component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)
            .map_err(|e| WasmError::Engine(error_text(&e)))?;
        // Components built with Rust std or wstd import wasi:cli next to
        // wasi:http, so the full WASI set is linked and only the HTTP
        // interfaces are added on top.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)
            .map_err(|e| WasmError::Engine(error_text(&e)))?;
        sockets::add_name_lookup(&mut component_linker)
            .map_err(|e| WasmError::Engine(error_text(&e)))?;

        let mut module_linker = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s: &mut ModuleState| {
            &mut s.wasi
        })
        .map_err(|e| WasmError::Engine(error_text(&e)))?;

        let compat = {
            let mut hasher = Sha256Hasher(Sha256::new());
            std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
            hex::encode(&hasher.0.finalize()[..8])
        };
        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| WasmError::Engine(format!("cannot start the epoch thread: {e}")))?;
        info!(
            max_memory_bytes = plan.max_memory_bytes,
            total_memories = plan.total_memories,
            total_component_instances = plan.total_component_instances,
            reserved_memory_bytes = plan.reserved_memory_bytes(),
            "wasm runtime ready"
        );
        Ok(WasmRuntime {
            engine,
            component_linker,
            module_linker,
            cache_dir: cfg.cache_dir,
            compat,
            max_memory_bytes: plan.max_memory_bytes,
            serving: Default::default(),
            _ticker: ticker,
        })
    }

    /// The largest linear memory one instance may have on this node; a pod's
    /// `memory_limit_bytes` above this is capped to it.
    pub fn max_memory_bytes(&self) -> u64 {
        self.max_memory_bytes
    }

    /// Detects kind (component vs core module by header bytes; a component
    /// exporting wasi:http/incoming-handler is HttpComponent), compiles or
    /// loads the compiled form from cache_dir, and pre-instantiates against
    /// the linker. Blocking CPU work: run it in spawn_blocking.
    pub fn load(&self, digest: &str, bytes: &[u8]) -> Result<Artifact, WasmError> {
        let format = detect_kind_from_header(bytes).ok_or_else(|| WasmError::UnknownFormat {
            digest: digest.to_owned(),
        })?;
        let link_error = |e: wasmtime::Error| WasmError::Link {
            digest: digest.to_owned(),
            reason: error_text(&e),
        };
        let (kind, loaded) = match self.compile_cached(digest, bytes, format)? {
            Compiled::Component(component) => {
                let kind = component_kind(&self.engine, &component).ok_or_else(|| {
                    WasmError::UnsupportedComponent {
                        digest: digest.to_owned(),
                    }
                })?;
                let pre = self
                    .component_linker
                    .instantiate_pre(&component)
                    .map_err(link_error)?;
                match kind {
                    ArtifactKind::HttpComponent => {
                        (kind, Loaded::Http(ProxyPre::new(pre).map_err(link_error)?))
                    }
                    _ => (
                        kind,
                        Loaded::Command(CommandPre::new(pre).map_err(link_error)?),
                    ),
                }
            }
            Compiled::Module(module) => {
                if !matches!(
                    module.get_export("_start"),
                    Some(wasmtime::ExternType::Func(_))
                ) {
                    return Err(WasmError::MissingStart {
                        digest: digest.to_owned(),
                    });
                }
                let pre = self
                    .module_linker
                    .instantiate_pre(&module)
                    .map_err(link_error)?;
                (ArtifactKind::CoreModule, Loaded::Core(pre))
            }
        };
        Ok(Artifact {
            kind,
            digest: digest.to_owned(),
            loaded,
        })
    }

    /// Runs a CommandComponent (wasi:cli/run) or CoreModule (WASI preview1
    /// `_start`) to completion in a fresh Store. Cancellation stops the guest
    /// within an epoch tick and returns `ExitStatus{code: 137, reason:
    /// "Killed"}`. Traps are also noted in the pod log; exits and kills are
    /// left to the caller to report.
    pub async fn run_command(
        &self,
        artifact: &Artifact,
        spec: &GuestSpec,
        cancel: CancellationToken,
    ) -> Result<ExitStatus, WasmError> {
        let run = async {
            match &artifact.loaded {
                Loaded::Command(pre) => self.run_component(pre, spec).await,
                Loaded::Core(pre) => self.run_module(pre, spec).await,
                Loaded::Http(_) => Err(WasmError::WrongKind {
                    digest: artifact.digest.clone(),
                    pod: spec.pod.clone(),
                    expected: "command or core module",
                    actual: artifact.kind,
                }),
            }
        };
        // The guest yields to the executor on every epoch tick, so this select
        // is polled at least every tick even while the guest is busy, and
        // dropping `run` tears the guest down.
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(ExitStatus::killed()),
            status = run => status,
        }
    }

    /// The wasi:http pod listening on `port` of this node, if one is being served.
    pub fn in_process(&self, port: u16) -> Option<HttpHandler> {
        let serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        serving.get(&port).cloned().map(HttpHandler)
    }

    /// Serves an HttpComponent on `listener` with hyper (HTTP/1.1) until
    /// `cancel`; every request gets a fresh Store from the ProxyPre, with the
    /// spec's env/limits and a deadline of request_timeout. A trap becomes an
    /// HTTP 500 (504 on timeout) and a line in the pod log; other requests
    /// keep being served. On cancel it stops accepting and lets in-flight
    /// requests finish for up to 5 s.
    pub async fn serve_http(
        &self,
        artifact: &Artifact,
        spec: Arc<GuestSpec>,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), WasmError> {
        let Loaded::Http(pre) = &artifact.loaded else {
            return Err(WasmError::WrongKind {
                digest: artifact.digest.clone(),
                pod: spec.pod.clone(),
                expected: "wasi:http component",
                actual: artifact.kind,
            });
        };
        let hard_stop = CancellationToken::new();
        let service = Arc::new(HttpService {
            pre: pre.clone(),
            spec: spec.clone(),
            max_memory_bytes: self.max_memory_bytes,
            hard_stop: hard_stop.clone(),
            warm: std::sync::Mutex::new(Vec::new()),
        });
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port, service.clone());
        let serving = Serving {
            runtime: self,
            port,
            service: service.clone(),
        };
        let mut connections = JoinSet::new();
        let mut expiry = tokio::time::interval(WARM_TTL);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = expiry.tick() => service.expire_warm(),
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = joined {
                        warn!(pod = %spec.pod, error = %e, "http connection task failed");
                    }
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        debug!(pod = %spec.pod, peer = %peer, "http connection accepted");
                        connections.spawn(serve_connection(service.clone(), stream, cancel.clone()));
                    }
                    Err(e) => {
                        // Accept errors are usually transient (e.g. out of
                        // file descriptors); pausing avoids a hot loop.
                        warn!(pod = %spec.pod, error = %e, "http accept failed");
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                },
            }
        }
        // Closing the socket first makes new clients fail fast instead of
        // queueing behind a server that is going away.
        drop(listener);
        drop(serving);
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            warn!(pod = %spec.pod, "http requests still running after the grace period; aborting them");
        }
        hard_stop.cancel();
        connections.shutdown().await;
        Ok(())
    }

    async fn run_component(
        &self,
        pre: &CommandPre<ComponentState>,
        spec: &GuestSpec,
    ) -> Result<ExitStatus, WasmError> {
        let mut store = component_store(pre.engine(), spec, self.max_memory_bytes)?;
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let result = async {
            let command = pre
                .instantiate_async(&mut store)
                .await
                .map_err(Stage::Instantiate)?;
            command
                .wasi_cli_run()
                .call_run(&mut store)
                .await
                .map_err(Stage::Run)
        }
        .await;
        let memory_limit_hit = store.data().limits.hit;
        match result {
            Ok(Ok(())) => Ok(ExitStatus::exited(0)),
            Ok(Err(())) => Ok(ExitStatus::exited(1)),
            Err(stage) => self.exit_from_error(stage, memory_limit_hit, spec),
        }
    }

    async fn run_module(
        &self,
        pre: &InstancePre<ModuleState>,
        spec: &GuestSpec,
    ) -> Result<ExitStatus, WasmError> {
        let wasi = wasi_builder(spec)?.build_p1();
        let limits = GuestLimiter::new(spec.memory_limit_bytes, self.max_memory_bytes);
        let mut store = Store::new(pre.module().engine(), ModuleState { wasi, limits });
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        let result = async {
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(Stage::Instantiate)?;
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .map_err(Stage::Instantiate)?;
            start.call_async(&mut store, ()).await.map_err(Stage::Run)
        }
        .await;
        let memory_limit_hit = store.data().limits.hit;
        match result {
            Ok(()) => Ok(ExitStatus::exited(0)),
            Err(stage) => self.exit_from_error(stage, memory_limit_hit, spec),
        }
    }

    fn exit_from_error(
        &self,
        stage: Stage,
        memory_limit_hit: bool,
        spec: &GuestSpec,
    ) -> Result<ExitStatus, WasmError> {
        let (error, instantiating) = match stage {
            Stage::Instantiate(e) => (e, true),
            Stage::Run(e) => (e, false),
        };
        let failure = classify(&error, memory_limit_hit);
        // An instantiation failure that is not the guest's own doing (pool
        // exhausted, missing export) is the caller's problem, not an exit.
        if instantiating && matches!(failure, Failure::Trap(_)) {
            return Err(WasmError::Instantiate {
                pod: spec.pod.clone(),
                reason: error_text(&error),
            });
        }
        let limit = effective_memory_limit(spec.memory_limit_bytes, self.max_memory_bytes);
        let status = match failure {
            Failure::Exit(code) => return Ok(ExitStatus::exited(code)),
            Failure::MemoryLimit => ExitStatus {
                code: EXIT_CODE_MEMORY_LIMIT,
                reason: "MemoryLimit".to_owned(),
            },
            Failure::Interrupted => ExitStatus {
                code: EXIT_CODE_INTERRUPTED,
                reason: "Interrupted".to_owned(),
            },
            Failure::Trap(message) => ExitStatus {
                code: EXIT_CODE_TRAP,
                reason: format!("Trap: {message}"),
            },
        };
        let why = failure_description(&status.reason, limit);
        warn!(pod = %spec.pod, reason = %status.reason, "guest trapped");
        spec.log.note(&format!("guest trapped: {why}"));
        Ok(status)
    }

    fn compile_cached(
        &self,
        digest: &str,
        bytes: &[u8],
        format: BinaryFormat,
    ) -> Result<Compiled, WasmError> {
        // The file is named by the hash of the bytes actually compiled, so a
        // mislabelled digest can never pull in someone else's machine code.
        let content = hex::encode(Sha256::digest(bytes));
        let suffix = match format {
            BinaryFormat::Component => "component",
            BinaryFormat::CoreModule => "module",
        };
        let path = self
            .cache_dir
            .join(format!("{content}-{}.{suffix}.cwasm", self.compat));
        if let Some(compiled) = self.read_cache(&path, format) {
            debug!(digest = %digest, path = %path.display(), "loaded compiled artifact from cache");
            return Ok(compiled);
        }
        let compiled = match format {
            BinaryFormat::Component => {
                Component::from_binary(&self.engine, bytes).map(Compiled::Component)
            }
            BinaryFormat::CoreModule => {
                Module::from_binary(&self.engine, bytes).map(Compiled::Module)
            }
        }
        .map_err(|e| WasmError::Compile {
            digest: digest.to_owned(),
            reason: error_text(&e),
        })?;
        let serialized = match &compiled {
            Compiled::Component(c) => c.serialize(),
            Compiled::Module(m) => m.serialize(),
        };
        match serialized {
            Ok(payload) => {
                if let Err(e) = write_cache_file(&path, &payload) {
                    warn!(digest = %digest, path = %path.display(), error = %e, "failed to write compiled-code cache");
                }
            }
            Err(e) => {
                warn!(digest = %digest, error = %error_text(&e), "failed to serialize compiled artifact")
            }
        }
        release_compiler_heap();
        Ok(compiled)
    }

    /// Returns the cached compiled form, or `None` when absent or unusable; an
    /// unusable file is deleted so the fresh compile can replace it.
    fn read_cache(&self, path: &Path, format: BinaryFormat) -> Option<Compiled> {
        let data = match fs::read(path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "failed to read compiled-code cache");
                return None;
            }
        };
        let result = match verified_payload(&data) {
            Some(payload) => {
                deserialize_verified(&self.engine, format, payload).map_err(|e| error_text(&e))
            }
            None => Err("bad header or checksum".to_owned()),
        };
        match result {
            Ok(compiled) => Some(compiled),
            Err(reason) => {
                warn!(path = %path.display(), reason = %reason, "discarding corrupt compiled-code cache entry");
                if let Err(e) = fs::remove_file(path) {
                    warn!(path = %path.display(), error = %e, "failed to delete corrupt cache entry");
                }
                None
            }
        }
    }
}

enum Compiled {
    Component(Component),
    Module(Module),
}

/// The cache file layout: magic, SHA-256 of the payload, payload. Returns the
/// payload only when the checksum matches.
fn verified_payload(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(CACHE_MAGIC.as_slice())?;
    if rest.len() < 32 {
        return None;
    }
    let (checksum, payload) = rest.split_at(32);
    (Sha256::digest(payload).as_slice() == checksum).then_some(payload)
}

#[allow(
    unsafe_code,
    reason = "loading precompiled machine code is inherently unsafe in wasmtime"
)]
fn deserialize_verified(
    engine: &Engine,
    format: BinaryFormat,
    payload: &[u8],
) -> wasmtime::Result<Compiled> {
    // SAFETY: wasmtime requires that the bytes come from its own `serialize`.
    // The payload sits in the agent's private cache directory, under a name
    // that includes this engine's compatibility hash, and its SHA-256 was just
    // checked against the one written next to it by `write_cache_file`, so it
    // is byte-for-byte what an engine with this exact configuration produced.
    // wasmtime additionally validates the header and version before use.
    unsafe {
        match format {
            BinaryFormat::Component => {
                Component::deserialize(engine, payload).map(Compiled::Component)
            }
            BinaryFormat::CoreModule => Module::deserialize(engine, payload).map(Compiled::Module),
        }
    }
}

/// Hands the heap Cranelift used for a compile back to the OS. glibc keeps freed memory in its
/// arenas, so without this one compile leaves the agent ~30 MB larger for good (measured: 49.6 MB
/// right after compiling hello vs 20.9 MB when the same pod starts from the compiled cache).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(
    unsafe_code,
    reason = "malloc_trim has no safe wrapper; it only releases free memory"
)]
fn release_compiler_heap() {
    // SAFETY: malloc_trim takes no pointers and only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_compiler_heap() {}

/// Writes a cache file atomically: a reader sees either nothing or the whole
/// file, even if the agent dies mid-write or two loads race.
fn write_cache_file(path: &Path, payload: &[u8]) -> io::Result<()> {
    let digest = Sha256::digest(payload);
    crate::files::write_atomic(path, &[CACHE_MAGIC, &digest, payload], 0o600)
}

fn component_kind(engine: &Engine, component: &Component) -> Option<ArtifactKind> {
    let ty = component.component_type();
    let names: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
    let exports = |interface: &str| names.iter().any(|n| n.split('@').next() == Some(interface));
    if exports("wasi:http/incoming-handler") {
        Some(ArtifactKind::HttpComponent)
    } else if exports("wasi:cli/run") {
        Some(ArtifactKind::CommandComponent)
    } else {
        None
    }
}

/// Feeds `Hash` output into SHA-256, giving a stable string for the engine
/// compatibility hash (std's `DefaultHasher` may change between Rust versions).
struct Sha256Hasher(Sha256);

impl std::hash::Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().unwrap_or_default())
    }
}

/// Advances the engine epoch every [`EPOCH_TICK`] on a dedicated thread, so
/// ticking keeps going even when every tokio worker is busy running guests.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> io::Result<EpochTicker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn(move || {
                // Both a stop message and the sender being dropped end the loop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("epoch thread panicked");
        }
    }
}

/// Store data for components (commands and HTTP handlers).
struct ComponentState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    outbound: OutboundPolicy,
    /// The pod's wasi:sockets grant (name lookups use it; the socket check has its own).
    network: Option<Arc<crate::outbound::Outbound>>,
    limits: GuestLimiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// Store data for WASI preview1 core modules.
struct ModuleState {
    wasi: WasiP1Ctx,
    limits: GuestLimiter,
}

fn wasi_builder(spec: &GuestSpec) -> Result<WasiCtxBuilder, WasmError> {
    let mut builder = WasiCtxBuilder::new();
    // Stdin stays closed and nothing is inherited: the builder starts empty and only the
    // pod's own settings are added; the only directories are its volume mounts.
    builder
        .arg(&spec.pod)
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(GuestOutput {
            log: spec.log.clone(),
            stream: LogStream::Stdout,
        })
        .stderr(GuestOutput {
            log: spec.log.clone(),
            stream: LogStream::Stderr,
        })
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(network) = &spec.network {
        builder
            .allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(true)
            .socket_addr_check(sockets::check(network.clone(), spec.log.clone()));
    }
    if let Some(dir) = &spec.working_dir {
        builder.initial_cwd(dir);
    }
    for m in &spec.mounts {
        let perms = if m.read_only {
            wasmtime_wasi::FsPerms::ReadOnly
        } else {
            wasmtime_wasi::FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&m.host_path, &m.guest_path, perms)
            .map_err(|e| WasmError::Instantiate {
                pod: spec.pod.clone(),
                reason: format!(
                    "failed to open volume directory {} for {}: {e}",
                    m.host_path.display(),
                    m.guest_path
                ),
            })?;
    }
    Ok(builder)
}

fn component_store(
    engine: &Engine,
    spec: &GuestSpec,
    max_memory_bytes: u64,
) -> Result<Store<ComponentState>, WasmError> {
    let state = ComponentState {
        wasi: wasi_builder(spec)?.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        outbound: OutboundPolicy {
            grant: spec.outbound.clone(),
            pod: spec.pod.clone(),
            log: spec.log.clone(),
        },
        network: spec.network.clone(),
        limits: GuestLimiter::new(spec.memory_limit_bytes, max_memory_bytes),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limits);
    Ok(store)
}

fn effective_memory_limit(requested: Option<u64>, max_memory_bytes: u64) -> u64 {
    requested.unwrap_or(max_memory_bytes).min(max_memory_bytes)
}

/// Wraps `StoreLimits` to remember that a limit was hit, so the resulting
/// trap can be reported as "MemoryLimit" rather than a generic trap.
struct GuestLimiter {
    inner: StoreLimits,
    hit: bool,
}

impl GuestLimiter {
    fn new(requested: Option<u64>, max_memory_bytes: u64) -> GuestLimiter {
        // The pool cap is applied here too, so growing past it fails through
        // the same path (and the same trap) as a pod-specific limit.
        let limit = effective_memory_limit(requested, max_memory_bytes);
        GuestLimiter {
            inner: StoreLimitsBuilder::new()
                .memory_size(to_usize(limit))
                .table_elements(TABLE_ELEMENTS)
                .trap_on_grow_failure(true)
                .build(),
            hit: false,
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let verdict = self.inner.memory_growing(current, desired, maximum);
        if !matches!(verdict, Ok(true)) {
            self.hit = true;
        }
        verdict
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = true;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let verdict = self.inner.table_growing(current, desired, maximum);
        if !matches!(verdict, Ok(true)) {
            self.hit = true;
        }
        verdict
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.hit = true;
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

/// Decides what happens to outgoing wasi:http requests: denied unless the pod's grant
/// names the host ([`crate::outbound`]).
struct OutboundPolicy {
    grant: Option<Arc<crate::outbound::Outbound>>,
    pod: String,
    log: PodLog,
}

type SendRequestFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _response_done: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendRequestFuture {
        let Some(grant) = &self.grant else {
            warn!(pod = %self.pod, uri = %request.uri(), "outgoing http request denied");
            self.log.note(&format!(
                "outgoing http request to {} denied: the pod has no {} annotation",
                request.uri(),
                flotilla_proto::outbound::OUTBOUND_HTTP_ANNOTATION
            ));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        };
        match grant.target(request.uri()) {
            Ok(None) => {}
            Ok(Some(uri)) => *request.uri_mut() = uri,
            Err(refusal) => {
                warn!(pod = %self.pod, uri = %request.uri(), %refusal, "outgoing http request refused");
                self.log.note(&format!(
                    "outgoing http request to {} refused: {refusal}",
                    request.uri()
                ));
                let error = match refusal {
                    crate::outbound::Refusal::NotFound(_) => wasmtime_wasi_http::Error::DnsError {
                        rcode: Some("NXDOMAIN".to_owned()),
                        info_code: None,
                    },
                    _ => wasmtime_wasi_http::Error::HttpRequestDenied,
                };
                return Box::new(async { Err(error) });
            }
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> = Box::new(io);
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

/// Guest stdout or stderr, appended to the pod log.
#[derive(Clone)]
struct GuestOutput {
    log: PodLog,
    stream: LogStream,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    // Appends never block for long (a local file write), so the stream is
    // always ready.
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.append(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.log.append(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where a guest error came from: instantiation failures may be the host's
/// (pool exhausted), run failures are always the guest's.
enum Stage {
    Instantiate(wasmtime::Error),
    Run(wasmtime::Error),
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Exit(i32),
    MemoryLimit,
    Interrupted,
    Trap(String),
}

fn classify(error: &wasmtime::Error, memory_limit_hit: bool) -> Failure {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return Failure::Exit(exit.0);
    }
    if memory_limit_hit {
        return Failure::MemoryLimit;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Interrupted,
        Some(trap) => {
            let text = trap.to_string();
            let text = text.strip_prefix("wasm trap: ").unwrap_or(&text);
            Failure::Trap(truncate(text))
        }
        None => Failure::Trap(truncate(&error.root_cause().to_string())),
    }
}

/// A human sentence for the pod log, from an exit reason.
fn failure_description(reason: &str, memory_limit: u64) -> String {
    match reason {
        "MemoryLimit" => format!("memory limit of {} MiB exceeded", memory_limit / MIB),
        "Interrupted" => "interrupted".to_owned(),
        other => other.strip_prefix("Trap: ").unwrap_or(other).to_owned(),
    }
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_REASON_LEN) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The full error chain on one line, for compile/link/instantiate errors.
fn error_text(error: &wasmtime::Error) -> String {
    format!("{error:#}")
}

fn to_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Per-server state shared by all connections of one `serve_http` call.
struct HttpService {
    pre: ProxyPre<ComponentState>,
    spec: Arc<GuestSpec>,
    max_memory_bytes: u64,
    /// Cancelled when the shutdown grace period is over; stops guests still
    /// streaming responses.
    hard_stop: CancellationToken,
    /// Instances that answered cleanly, most recently used last.
    warm: std::sync::Mutex<Vec<WarmInstance>>,
}

/// How many answered instances a pod keeps for reuse, and for how long without traffic. An idle
/// pod holds none after `WARM_TTL`, so its pool slots (and their memory) go back to the node.
const MAX_WARM: usize = 4;
const WARM_TTL: Duration = Duration::from_secs(10);

struct WarmInstance {
    store: Store<ComponentState>,
    proxy: Proxy,
    idle_since: Instant,
}

/// What became of one request's guest, for the response status and logs.
#[derive(Debug)]
enum RequestOutcome {
    Finished,
    Failed(Failure),
    TimedOut,
    NoCapacity(String),
    Stopped,
}

async fn serve_connection(service: Arc<HttpService>, stream: TcpStream, cancel: CancellationToken) {
    // Responses are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let pod = service.spec.pod.clone();
    let handler = hyper::service::service_fn(move |request| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(service.handle(request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), handler);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = cancel.cancelled() => {
            // Finishes the request in flight (if any), then closes.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        debug!(pod = %pod, error = %e, "http connection closed with an error");
    }
}

impl HttpService {
    async fn handle<B>(
        self: Arc<Self>,
        request: hyper::Request<B>,
    ) -> hyper::Response<HyperOutgoingBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let target = format!("{} {}", request.method(), request.uri().path());
        let (mut store, proxy) = match self.take_warm() {
            Some(w) => (w.store, Some(w.proxy)),
            None => match component_store(self.pre.engine(), &self.spec, self.max_memory_bytes) {
                Ok(store) => (store, None),
                Err(e) => {
                    warn!(pod = %self.spec.pod, error = %e, "cannot instantiate for a request");
                    self.spec.log.note(&e.to_string());
                    return text_response(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error\n",
                    );
                }
            },
        };
        store.data_mut().limits.hit = false;
        // Yielding every tick keeps one busy request from starving the others
        // on the same worker; the deadline turns a runaway loop into a trap.
        let deadline = Instant::now() + self.spec.request_timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        let (sender, receiver) = oneshot::channel();
        let incoming = match store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
        {
            Ok(incoming) => incoming,
            Err(e) => {
                debug!(pod = %self.spec.pod, error = %error_text(&e), "rejected malformed http request");
                return text_response(http::StatusCode::BAD_REQUEST, "bad request\n");
            }
        };
        let outparam = match store.data_mut().http().new_response_outparam(sender) {
            Ok(outparam) => outparam,
            Err(e) => {
                warn!(pod = %self.spec.pod, error = %error_text(&e), "failed to set up http response");
                return text_response(http::StatusCode::INTERNAL_SERVER_ERROR, "internal error\n");
            }
        };
        // The guest runs in its own task, like `wasmtime serve`, so it can keep
        // streaming the body after hyper has taken the response head.
        let guest = tokio::spawn(
            self.clone()
                .run_guest(store, proxy, incoming, outparam, target),
        );
        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                debug!(pod = %self.spec.pod, code = ?code, "guest answered with an error code");
                text_response(http::StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
            // The guest dropped the response slot without answering: its
            // outcome says why.
            Err(_) => match guest.await {
                Ok(outcome) => outcome_response(&outcome),
                Err(e) => {
                    warn!(pod = %self.spec.pod, error = %e, "http guest task failed");
                    text_response(http::StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
                }
            },
        }
    }

    fn take_warm(&self) -> Option<WarmInstance> {
        if !self.spec.reuse_instances {
            return None;
        }
        self.warm.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn put_warm(&self, store: Store<ComponentState>, proxy: Proxy) {
        let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
        if warm.len() < MAX_WARM {
            warm.push(WarmInstance {
                store,
                proxy,
                idle_since: Instant::now(),
            });
        }
    }

    /// Drops instances that have been idle for `WARM_TTL`.
    fn expire_warm(&self) {
        let expired: Vec<WarmInstance> = {
            let mut warm = self.warm.lock().unwrap_or_else(|p| p.into_inner());
            let (old, keep) = warm
                .drain(..)
                .partition(|w| w.idle_since.elapsed() >= WARM_TTL);
            *warm = keep;
            old
        };
        // Dropped outside the lock: returning pool slots is not free.
        drop(expired);
    }

    async fn run_guest(
        self: Arc<Self>,
        mut store: Store<ComponentState>,
        warm: Option<Proxy>,
        incoming: component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
        outparam: component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
        target: String,
    ) -> RequestOutcome {
        let result = {
            let run = async {
                let proxy = match warm {
                    Some(p) => p,
                    None => self
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(Stage::Instantiate)?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
                    .map_err(Stage::Run)?;
                Ok(proxy)
            };
            // The epoch deadline only fires while wasm code runs; this
            // timeout also covers a guest parked in a host call.
            tokio::select! {
                biased;
                _ = self.hard_stop.cancelled() => None,
                result = tokio::time::timeout(self.spec.request_timeout, run) => Some(result),
            }
        };
        let memory_limit_hit = store.data().limits.hit;
        let outcome = match result {
            None => RequestOutcome::Stopped,
            Some(Err(_elapsed)) => RequestOutcome::TimedOut,
            Some(Ok(Ok(proxy))) => {
                // Only an instance that returned cleanly is trusted with another request.
                if self.spec.reuse_instances && !self.hard_stop.is_cancelled() {
                    self.put_warm(store, proxy);
                }
                RequestOutcome::Finished
            }
            Some(Ok(Err(Stage::Instantiate(e)))) => match classify(&e, memory_limit_hit) {
                Failure::Trap(_) => RequestOutcome::NoCapacity(error_text(&e)),
                failure => RequestOutcome::Failed(failure),
            },
            Some(Ok(Err(Stage::Run(e)))) => match classify(&e, memory_limit_hit) {
                Failure::Exit(0) => RequestOutcome::Finished,
                Failure::Interrupted => RequestOutcome::TimedOut,
                failure => RequestOutcome::Failed(failure),
            },
        };
        self.record(&outcome, &target);
        outcome
    }

    /// Notes a failed request in the pod log and tracing.
    fn record(&self, outcome: &RequestOutcome, target: &str) {
        let pod = &self.spec.pod;
        let why = match outcome {
            RequestOutcome::Finished | RequestOutcome::Stopped => return,
            RequestOutcome::TimedOut => format!(
                "interrupted after the {:?} request timeout",
                self.spec.request_timeout
            ),
            RequestOutcome::Failed(Failure::MemoryLimit) => {
                let limit =
                    effective_memory_limit(self.spec.memory_limit_bytes, self.max_memory_bytes);
                format!("memory limit of {} MiB exceeded", limit / MIB)
            }
            RequestOutcome::Failed(Failure::Interrupted) => "interrupted".to_owned(),
            RequestOutcome::Failed(Failure::Exit(code)) => format!("guest exited with code {code}"),
            RequestOutcome::Failed(Failure::Trap(message)) => format!("trapped: {message}"),
            RequestOutcome::NoCapacity(reason) => {
                warn!(pod = %pod, error = %reason, "failed to instantiate http guest");
                format!("could not start an instance: {reason}")
            }
        };
        warn!(pod = %pod, request = %target, reason = %why, "http request failed");
        self.spec.log.note(&format!("http {target}: {why}"));
    }
}

fn outcome_response(outcome: &RequestOutcome) -> hyper::Response<HyperOutgoingBody> {
    use http::StatusCode;
    match outcome {
        RequestOutcome::Finished => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the guest sent no response\n",
        ),
        RequestOutcome::TimedOut | RequestOutcome::Failed(Failure::Interrupted) => {
            text_response(StatusCode::GATEWAY_TIMEOUT, "request timed out\n")
        }
        RequestOutcome::Failed(Failure::MemoryLimit) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: memory limit exceeded\n",
        ),
        RequestOutcome::Failed(_) => text_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error: the guest crashed\n",
        ),
        RequestOutcome::NoCapacity(_) | RequestOutcome::Stopped => {
            text_response(StatusCode::SERVICE_UNAVAILABLE, "service unavailable\n")
        }
    }
}

fn text_response(
    status: http::StatusCode,
    body: &'static str,
) -> hyper::Response<HyperOutgoingBody> {
    let mut response = hyper::Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HELLO_EXIT_3: &str = r#"
        (module
          (import "wasi_snapshot_preview1" "fd_write"
            (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 16) "hello from wat\n")
          (func (export "_start")
            ;; One iovec at offset 0 pointing at the 15-byte greeting.
            (i32.store (i32.const 0) (i32.const 16))
            (i32.store (i32.const 4) (i32.const 15))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
            (call $proc_exit (i32.const 3))))
    "#;

    const SPIN: &str = r#"(module (func (export "_start") (loop $l (br $l))))"#;

    const GROW_128_MIB: &str = r#"
        (module
          (memory (export "memory") 1)
          (func (export "_start") (drop (memory.grow (i32.const 2048)))))
    "#;

    const UNREACHABLE: &str = r#"(module (func (export "_start") unreachable))"#;

    struct Fixture {
        dir: tempfile::TempDir,
        runtime: WasmRuntime,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let runtime = runtime_at(dir.path());
            Fixture { dir, runtime }
        }

        fn spec(&self, memory_limit_bytes: Option<u64>) -> GuestSpec {
            GuestSpec {
                pod: "default/test".to_owned(),
                args: vec!["one".to_owned(), "two".to_owned()],
                env: vec![("COUNT".to_owned(), "3".to_owned())],
                memory_limit_bytes,
                request_timeout: Duration::from_secs(2),
                log: PodLog::open(&self.dir.path().join("logs/default/test.log"), 1 << 20).unwrap(),
                outbound: None,
                network: None,
                reuse_instances: true,
                working_dir: None,
                mounts: vec![],
            }
        }

        fn load_wat(&self, wat: &str) -> Artifact {
            let bytes = wat::parse_str(wat).unwrap();
            self.runtime.load("sha256:test", &bytes).unwrap()
        }
    }

    fn runtime_at(dir: &Path) -> WasmRuntime {
        WasmRuntime::new(RuntimeConfig {
            cache_dir: dir.join("cache"),
            node_memory_bytes: GIB,
            max_instances: 16,
        })
        .unwrap()
    }

    fn log_text(spec: &GuestSpec) -> String {
        String::from_utf8(spec.log.tail(None).unwrap()).unwrap()
    }

    #[test]
    fn detects_modules_and_components_from_the_header() {
        let module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01];
        let component = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];
        assert_eq!(
            detect_kind_from_header(&module),
            Some(BinaryFormat::CoreModule)
        );
        assert_eq!(
            detect_kind_from_header(&component),
            Some(BinaryFormat::Component)
        );
        // Unknown version, wrong magic, truncated header, WAT text.
        assert_eq!(
            detect_kind_from_header(&[0, 0x61, 0x73, 0x6d, 2, 0, 0, 0]),
            None
        );
        assert_eq!(detect_kind_from_header(b"\x7fELF\x02\x01\x01\x00"), None);
        assert_eq!(detect_kind_from_header(&module[..7]), None);
        assert_eq!(detect_kind_from_header(b"(module)"), None);
    }

    #[test]
    fn pool_fits_a_small_board() {
        let plan = PoolPlan::for_config(&RuntimeConfig {
            cache_dir: PathBuf::new(),
            node_memory_bytes: GIB,
            max_instances: DEFAULT_MAX_INSTANCES,
        });
        assert_eq!(plan.max_memory_bytes, 256 * MIB);
        assert!(plan.reserved_memory_bytes() <= MEMORY_POOL_VA_BUDGET);
        assert!(plan.total_memories >= 2 * 200, "{plan:?}");

        let tiny = PoolPlan::for_config(&RuntimeConfig {
            cache_dir: PathBuf::new(),
            node_memory_bytes: 128 * MIB,
            max_instances: 10,
        });
        assert_eq!(tiny.max_memory_bytes, 32 * MIB);
        assert_eq!(tiny.total_memories, 20);
        assert_eq!(tiny.max_memory_bytes % WASM_PAGE, 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn core_module_output_and_exit_code() {
        let fx = Fixture::new();
        let artifact = fx.load_wat(HELLO_EXIT_3);
        assert_eq!(artifact.kind, ArtifactKind::CoreModule);
        let spec = fx.spec(None);
        let status = fx
            .runtime
            .run_command(&artifact, &spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            status,
            ExitStatus {
                code: 3,
                reason: "Error".to_owned()
            }
        );
        assert_eq!(log_text(&spec), "hello from wat\n");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cancelling_a_busy_guest_kills_it() {
        let fx = Fixture::new();
        let artifact = fx.load_wat(SPIN);
        let spec = fx.spec(None);
        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            stopper.cancel();
        });
        let started = Instant::now();
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            fx.runtime.run_command(&artifact, &spec, cancel),
        )
        .await
        .expect("a spinning guest must stop when cancelled")
        .unwrap();
        assert_eq!(
            status,
            ExitStatus {
                code: 137,
                reason: "Killed".to_owned()
            }
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn memory_limit_and_traps_are_named() {
        let fx = Fixture::new();
        let spec = fx.spec(Some(64 * MIB));
        let grow = fx.load_wat(GROW_128_MIB);
        let status = fx
            .runtime
            .run_command(&grow, &spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            status,
            ExitStatus {
                code: 137,
                reason: "MemoryLimit".to_owned()
            }
        );
        assert!(
            log_text(&spec).contains("memory limit of 64 MiB exceeded"),
            "{}",
            log_text(&spec)
        );

        let crash = fx.load_wat(UNREACHABLE);
        let status = fx
            .runtime
            .run_command(&crash, &spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(status.code, EXIT_CODE_TRAP);
        assert_eq!(
            status.reason,
            "Trap: wasm `unreachable` instruction executed"
        );

        // Without a pod limit the same module fits under the node's cap.
        let roomy = fx.spec(None);
        let status = fx
            .runtime
            .run_command(&grow, &roomy, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            status,
            ExitStatus {
                code: 0,
                reason: "Completed".to_owned()
            }
        );
    }

    #[test]
    fn compiled_code_is_cached_and_corruption_is_recovered() {
        let fx = Fixture::new();
        let bytes = wat::parse_str(HELLO_EXIT_3).unwrap();
        fx.runtime.load("sha256:a", &bytes).unwrap();
        let cache_dir = fx.dir.path().join("cache");
        let entries = || -> Vec<PathBuf> {
            fs::read_dir(&cache_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect()
        };
        let files = entries();
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(verified_payload(&fs::read(&files[0]).unwrap()).is_some());

        // A second runtime loads from the cache.
        let again = runtime_at(fx.dir.path());
        assert_eq!(
            again.load("sha256:a", &bytes).unwrap().kind,
            ArtifactKind::CoreModule
        );

        // Flip a byte in the payload: the entry is rejected and rewritten.
        let mut data = fs::read(&files[0]).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        fs::write(&files[0], &data).unwrap();
        assert!(verified_payload(&data).is_none());
        again.load("sha256:a", &bytes).unwrap();
        assert_eq!(entries(), files);
        assert!(verified_payload(&fs::read(&files[0]).unwrap()).is_some());
    }

    #[test]
    fn load_rejects_bad_input() {
        let fx = Fixture::new();
        assert!(matches!(
            fx.runtime.load("sha256:x", b"not wasm at all"),
            Err(WasmError::UnknownFormat { .. })
        ));
        let no_start = wat::parse_str("(module)").unwrap();
        assert!(matches!(
            fx.runtime.load("sha256:y", &no_start),
            Err(WasmError::MissingStart { .. })
        ));
        let bad_import =
            wat::parse_str(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#)
                .unwrap();
        let err = fx.runtime.load("sha256:z", &bad_import).unwrap_err();
        assert!(matches!(err, WasmError::Link { .. }), "{err}");
        assert!(err.to_string().contains("sha256:z"));
    }

    fn example(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/target/wasm32-wasip2/release")
            .join(format!("{name}.wasm"));
        fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; run scripts/build-examples first",
                path.display()
            )
        })
    }

    /// Sends one HTTP/1.1 request over a raw socket; returns status and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad response: {text:?}"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    }

    /// Decodes a chunked HTTP/1.1 body (chunk extensions and trailers unused).
    fn dechunk(mut rest: &str) -> String {
        let mut body = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        body
    }

    /// Starts `serve_http` for an example component; returns its address, the
    /// cancel token and the server task.
    async fn serve(
        fx: &Arc<Fixture>,
        name: &str,
        spec: GuestSpec,
    ) -> (
        SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), WasmError>>,
    ) {
        let artifact = fx
            .runtime
            .load(&format!("example:{name}"), &example(name))
            .unwrap();
        assert_eq!(artifact.kind, ArtifactKind::HttpComponent);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = {
            let fx = fx.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                fx.runtime
                    .serve_http(&artifact, Arc::new(spec), listener, cancel)
                    .await
            })
        };
        (addr, cancel, server)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn serves_hello_component() {
        let fx = Arc::new(Fixture::new());
        let mut spec = fx.spec(None);
        spec.env = vec![
            ("FLOTILLA_POD_NAME".to_owned(), "default/hello".to_owned()),
            ("FLOTILLA_NODE_NAME".to_owned(), "node-1".to_owned()),
        ];
        let (addr, cancel, server) = serve(&fx, "hello", spec).await;
        for _ in 0..3 {
            let (status, body) = get(addr, "/greet").await;
            assert_eq!(status, 200, "{body}");
            assert!(
                body.contains("hello from default/hello on node-1"),
                "{body}"
            );
            assert!(body.contains("path: /greet"), "{body}");
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve_http must return after cancel")
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener must be closed"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn chaos_failures_stay_inside_one_request() {
        let fx = Arc::new(Fixture::new());
        let mut spec = fx.spec(Some(64 * MIB));
        spec.request_timeout = Duration::from_secs(1);
        let log = spec.log.clone();
        let (addr, cancel, server) = serve(&fx, "chaos", spec).await;

        let (status, body) = get(addr, "/grow?mb=256").await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(get(addr, "/").await, (200, "chaos ok\n".to_owned()));
        let text = String::from_utf8(log.tail(None).unwrap()).unwrap();
        assert!(
            text.contains("http GET /grow: memory limit of 64 MiB exceeded"),
            "{text}"
        );

        // Growing within the limit works.
        let (status, body) = get(addr, "/grow?mb=16").await;
        assert_eq!((status, body.as_str()), (200, "grew 16 MiB\n"));

        let (status, _) = get(addr, "/panic").await;
        assert_eq!(status, 500);
        let started = Instant::now();
        let (status, _) = get(addr, "/loop").await;
        assert_eq!(status, 504);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(get(addr, "/").await.0, 200);
        let text = String::from_utf8(log.tail(None).unwrap()).unwrap();
        assert!(text.contains("chaos: /panic requested"), "{text}");
        assert!(text.contains("http GET /loop: interrupted"), "{text}");

        cancel.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn runs_example_commands() {
        let fx = Fixture::new();
        let spec = fx.spec(None);
        let batch = fx.runtime.load("example:batch", &example("batch")).unwrap();
        assert_eq!(batch.kind, ArtifactKind::CommandComponent);
        let status = fx
            .runtime
            .run_command(&batch, &spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(
            status,
            ExitStatus {
                code: 0,
                reason: "Completed".to_owned()
            }
        );
        let text = log_text(&spec);
        assert!(text.contains("tick 3/3\n"), "{text}");
        assert!(text.contains(r#"args: ["one", "two"]"#), "{text}");

        let crash = fx.runtime.load("example:crash", &example("crash")).unwrap();
        let status = fx
            .runtime
            .run_command(&crash, &spec, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(status.reason, "Error");
        assert_ne!(status.code, 0);
        assert!(log_text(&spec).contains("crashing\n"));

        // An HTTP component is not a command.
        let hello = fx.runtime.load("example:hello", &example("hello")).unwrap();
        let err = fx
            .runtime
            .run_command(&hello, &spec, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, WasmError::WrongKind { .. }), "{err}");
    }
}
