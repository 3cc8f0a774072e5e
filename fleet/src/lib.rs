//! The client side of the hub API, shared by the `fleet` CLI and the test harness, plus the
//! CLI's output formatting.
pub mod client;
pub mod node;
pub mod output;
pub mod rollout;
pub mod terminal;
pub mod up;

pub use client::Client;
