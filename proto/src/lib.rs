//! Flotilla's API objects (Kubernetes-shaped) and hub<->agent/CLI wire messages. Serde only, no I/O.
pub mod api;
pub mod cron;
pub mod disconnect;
pub mod ingress;
pub mod labels;
pub mod manifest;
pub mod outbound;
pub mod pod_security;
pub mod quantity;
pub mod scheduling;
pub mod service;
pub mod token;
pub mod wire;

pub use api::{Kind, Object, ObjectKey};

/// The version every binary reports; also sent in the connection handshake.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
