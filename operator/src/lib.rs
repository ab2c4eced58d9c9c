//! sametag operator: provisions a shared Redis ETag store per app from an
//! `ETagStore` resource and injects the sametag sidecar into opted-in pods.
#![forbid(unsafe_code)]

pub mod check;
pub mod children;
pub mod config;
pub mod crd;
pub mod error;
pub mod fleet;
pub mod heal;
pub mod invalidate;
pub mod metrics;
pub mod owner;
pub mod primary;
pub mod reachability;
pub mod reconcile;
pub mod run;
pub mod secret_watch;
pub mod status;
pub mod webhook;

pub use error::{Error, Result};
