//! Shared by the operator's process-level tests.

/// A loopback port free right now (never a fixed port: several test
/// processes run side by side).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
