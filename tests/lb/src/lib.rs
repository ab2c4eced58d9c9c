//! End-to-end suite; see tests/ in this crate.
