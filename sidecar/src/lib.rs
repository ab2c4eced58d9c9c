//! sametag sidecar: a reverse proxy that gives every replica of an app the
//! same entity tags and answers conditional requests (RFC 9110 §13).
#![forbid(unsafe_code)]

pub mod date;
pub mod key;
pub mod policy;
pub mod precondition;
pub mod store;
pub mod tag;
