//! Scenario 12: the running operator's `/metrics` has every metric the
//! README's operator table names, passes `promtool check metrics`, and the
//! admission histogram and certificate expiry gauge hold real values after
//! the injection scenario.

#[path = "../../../common/prom.rs"]
mod prom;

use sametag_k8s_e2e::operator::http_get;
use sametag_k8s_e2e::{Error, Result};

use crate::ctx::Ctx;

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// A sample's value (the series must match up to the value).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub async fn documented(ctx: &Ctx) -> Result<()> {
    let op = ctx
        .operator
        .as_ref()
        .ok_or_else(|| err("the operator is not running"))?;
    let (status, scrape) = http_get(op.config.metrics_port, "/metrics").await?;
    if status != 200 {
        return Err(err(format!("/metrics answered {status}")));
    }
    let documented = prom::readme_metrics(&prom::readme(), "### Operator metrics");
    let mut missing = prom::missing(&documented, &scrape);
    // A series per store, set by the watch of opted-in pods; until that
    // sets one the family has no sample to show (its registration is
    // unit-tested in operator/src/metrics.rs).
    missing.retain(|name| name != "sametag_pods_without_sidecar");
    if !missing.is_empty() {
        return Err(err(format!(
            "documented in the README but not on the operator's /metrics: {missing:?}\n{scrape}"
        )));
    }
    prom::check_metrics(&scrape).map_err(err)?;
    let admissions =
        sample(&scrape, "sametag_operator_admission_duration_seconds_count").unwrap_or(0.0);
    if admissions < 1.0 {
        return Err(err(format!(
            "no admission timed after injection:\n{scrape}"
        )));
    }
    let expiry = sample(
        &scrape,
        "sametag_webhook_certificate_expiry_timestamp_seconds",
    )
    .unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| err(e.to_string()))?
        .as_secs_f64();
    // The chart's default validity is 90 days; the test harness may use less.
    if expiry <= now || expiry > now + 400.0 * 86400.0 {
        return Err(err(format!(
            "certificate expiry {expiry} is not a time after now ({now})"
        )));
    }
    if sample(&scrape, "sametag_operator_leader") != Some(1.0) {
        return Err(err(format!("the only replica is not leader:\n{scrape}")));
    }
    eprintln!(
        "    {} documented operator metrics present (sametag_pods_without_sidecar exempt); {admissions} admissions timed; certificate valid for {:.1} more days",
        documented.len() - 1,
        (expiry - now) / 86400.0
    );
    Ok(())
}
