//! Smoke test of the store-at-scale benchmark (`bench/store-scale.sh`,
//! `examples/store_scale`): the same simulation with tiny numbers on a real
//! server of each engine. Every write reaches every tracking client as
//! pushes, more clients cost more memory, resources cost memory, and the
//! report renders.

mod support;

#[path = "../examples/store_scale/sim.rs"]
mod sim;

use support::StoreKind;
use support::redis_server::RedisServer;

async fn the_simulation_measures_what_it_claims(kind: StoreKind) {
    let redis = RedisServer::start_on(kind.engine().expect("a server engine"));
    let p = sim::Params::tiny();
    let mut lines = Vec::new();
    let report = sim::run(&redis.url(), &p, |l| lines.push(l))
        .await
        .expect("the simulation runs");
    assert_eq!(lines.len(), 1 + p.resources.len() * (1 + p.clients.len()));
    let expected_server = match kind {
        StoreKind::Valkey => "valkey ",
        _ => "redis ",
    };
    assert!(
        report.server.starts_with(expected_server),
        "{}",
        report.server
    );
    assert_eq!(report.cells.len(), p.clients.len() * p.resources.len());
    for f in &report.fills {
        // A resource read through Trust and written once: its hash and its
        // path hash.
        assert!(f.keys >= 2 * f.resources as u64, "{f:?}");
        assert!(f.bytes_per_resource > 50.0, "{f:?}");
    }
    for c in &report.cells {
        assert_eq!(c.write_errors, 0, "{c:?}");
        assert!(
            c.writes as f64 >= 0.9 * p.write_rate * p.write_secs,
            "{c:?}"
        );
        assert!(c.write_p50_ms > 0.0 && c.write_p99_ms >= c.write_p50_ms);
        // Each write changes tracked keys (the path generation, the
        // resource's tag): every tracking client hears of it.
        assert!(c.push_keys_per_write_per_client >= 1.0, "{c:?}");
        assert!(c.push_msgs_per_write_per_client > 0.0, "{c:?}");
        assert!(
            c.push_msgs_per_write_total >= c.push_msgs_per_write_per_client * c.clients as f64,
            "{c:?}"
        );
        assert!(c.connected_clients > c.clients as u64, "{c:?}");
        assert!(c.bytes_per_client > 0.0, "{c:?}");
        assert!(c.saturated_writes_per_sec > 0.0, "{c:?}");
    }
    // More clients connected: more client memory on the server.
    let first = &report.cells[0];
    let more = &report.cells[1];
    assert!(more.clients > first.clients);
    assert!(
        more.mem_clients_normal > first.mem_clients_normal,
        "{report:#?}"
    );
    let projection = report.project(1000, 10_000_000);
    assert!(projection.resources_gib > 0.0);
    assert!(
        (projection.push_msgs_per_write_fleet - 1000.0 * projection.push_msgs_per_write_per_client)
            .abs()
            < 1e-6
    );
    let md = report.markdown(&projection);
    assert!(md.contains("| clients | resources |"), "{md}");
    assert!(
        md.contains("Projection: 1000 pods, 10000000 resources"),
        "{md}"
    );
    let json = serde_json::to_value(&report).expect("serializes");
    assert_eq!(
        json["cells"].as_array().map(Vec::len),
        Some(report.cells.len())
    );
}

support::over_engines! {
    the_simulation_measures_what_it_claims,
}
