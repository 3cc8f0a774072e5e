//! OCI images for the agent's container runtime: safe layer unpacking into rootfs snapshots
//! and OCI runtime specs (`config.json` for runc) built from an image config and a pod spec.
pub mod seccomp;
pub mod spec;
pub mod unpack;
