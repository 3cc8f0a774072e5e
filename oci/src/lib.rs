//! OCI images for the agent's container runtime: registry pulls into a content-addressed
//! store, safe layer unpacking into rootfs snapshots, and OCI runtime specs (`config.json`
//! for runc) built from an image config and a pod spec, hardened by default.
pub mod gc;
pub mod pull;
pub mod seccomp;
pub mod spec;
pub mod store;
pub mod unpack;

pub use oci_spec;
