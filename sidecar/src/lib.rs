//! sametag sidecar: a reverse proxy that gives every replica of an app the
//! same entity tags and answers conditional requests (RFC 9110 §13).
//!
//! Run one in-process (the binary, the demo and the tests do the same):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use sametag_sidecar::policy::{Policy, PolicyHandle};
//! use sametag_sidecar::store::memory::MemoryStore;
//! use sametag_sidecar::{Server, ServerConfig};
//!
//! let mut config = ServerConfig::new("127.0.0.1:0".parse()?, "127.0.0.1:8081".parse()?);
//! config.policy = PolicyHandle::new(Policy::from_yaml("mode: Trust\nmaxAge: 30s\n")?);
//! let store = Arc::new(MemoryStore::new()); // share one Arc between sidecars
//! let server = Server::bind(config, store).await?;
//! println!("listening on {}", server.local_addr());
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(server.run(async { let _ = stopped.await; }));
//! // ... send requests ...
//! let _ = stop.send(()); // stop accepting, drain in-flight requests
//! running.await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod accept;
pub mod access_log;
pub mod admin;
pub mod backoff;
pub mod config;
pub mod date;
pub mod encoding;
pub mod key;
pub mod metrics;
pub mod policy;
pub mod precondition;
pub mod proxy;
pub mod store;
pub mod surrogate;
pub mod tag;

pub use proxy::{Server, ServerConfig};
