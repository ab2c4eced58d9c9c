//! sametag sidecar: a reverse proxy that gives every replica of an app the
//! same entity tags and answers conditional requests (RFC 9110 §13).
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod date;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod precondition;
pub mod proxy;
pub mod store;
pub mod tag;

pub use proxy::{Server, ServerConfig};
