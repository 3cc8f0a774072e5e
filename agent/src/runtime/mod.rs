//! Workload runtimes. Only `runtime::wasm` touches wasmtime.
pub mod wasm;
