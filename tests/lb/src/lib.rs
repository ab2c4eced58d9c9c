//! Harness for sametag's load-balancer tier: real nginx, HAProxy,
//! redis-server and the real `sametag-sidecar` binary, started on free
//! loopback ports in a temp dir, plus a small dynamic JSON app, a browser
//! that revalidates, and headless Chromium for the real-browser test. The end-to-end tests (`tests/`) and the benchmark
//! (`sametag-bench`) are both built on it.
#![forbid(unsafe_code)]

pub mod app;
pub mod chromium;
pub mod client;
pub mod cluster;
pub mod error;
pub mod haproxy;
pub mod history;
pub mod link;
pub mod net;
pub mod nginx;
pub mod oha;
pub mod proc;
pub mod redis;
pub mod results;
pub mod scenario;
pub mod sidecar;
pub mod site;
pub mod tools;
pub mod workload;
pub mod wrk;

pub use error::{HarnessError, Result};
