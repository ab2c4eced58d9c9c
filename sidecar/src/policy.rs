//! The policy file and its hot reload. The format, its validation and route
//! matching live in `sametag-policy` (shared with the operator, which must
//! refuse what the sidecar would refuse) and are re-exported here; this
//! module adds the [`PolicyHandle`] that polls the file and swaps policies.

mod reload;

pub use reload::PolicyHandle;
pub use sametag_policy::*;

#[cfg(test)]
mod tests;
