//! Workload runtimes. Only `runtime::wasm` touches wasmtime; only `runtime::oci` runs runc
//! (`runc_cves` only reads what `runc --version` printed).
pub mod oci;
pub mod runc_cves;
pub mod wasm;
