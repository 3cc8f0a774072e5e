//! Workload runtimes. Only `runtime::wasm` touches wasmtime; only `runtime::oci` runs runc.
pub mod oci;
pub mod wasm;
