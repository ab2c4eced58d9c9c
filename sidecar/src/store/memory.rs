//! The embedded in-memory store.
