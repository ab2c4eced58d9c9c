//! sametag operator: provisions a shared Redis ETag store per app from an
//! `ETagStore` resource and injects the sametag sidecar into opted-in pods.
#![forbid(unsafe_code)]

pub mod crd;
pub mod config;
pub mod children;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod webhook;
pub mod run;
