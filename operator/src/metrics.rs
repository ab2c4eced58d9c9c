//! Prometheus metric families of the operator (reconciles and admissions)
//! and a timer that records a reconcile's duration when dropped.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set naming an error kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `Error::metric_label()`.
    pub error: String,
}

/// Label set naming an admission outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `injected`, `skipped`, `already_injected`, `warning` or `error`.
    pub outcome: String,
}

/// Label set naming a store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The store's namespace.
    pub namespace: String,
    /// The store's name.
    pub store: String,
}

/// Every metric the operator exports.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Failed reconciles by error kind.
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds.
    pub reconcile_duration: Histogram,
    /// Admission reviews by outcome.
    pub admissions: Family<OutcomeLabels, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Opted-in pods running without the sidecar, per store.
    pub pods_without_sidecar: Family<StoreLabels, Gauge>,
    /// Injected pods running an outdated sidecar image, per store.
    pub pods_outdated_sidecar: Family<StoreLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            admissions: Family::default(),
            leader: Gauge::default(),
            pods_without_sidecar: Family::default(),
            pods_outdated_sidecar: Family::default(),
        }
    }
}

impl Metrics {
    /// Register every family: the operator's own under the
    /// `sametag_operator` prefix, the fleet gauges (about the cluster, not
    /// the operator) as `sametag_pods_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sametag_pods_without_sidecar",
            "Pods that opted in for the store but run without the sametag sidecar",
            self.pods_without_sidecar.clone(),
        );
        registry.register(
            "sametag_pods_outdated_sidecar",
            "Injected pods whose sidecar image is not the one injected now",
            self.pods_outdated_sidecar.clone(),
        );
        let r = registry.sub_registry_with_prefix("sametag_operator");
        r.register("reconciles", "Reconciles started", self.reconciles.clone());
        r.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Reconcile duration",
            self.reconcile_duration.clone(),
        );
        r.register(
            "admissions",
            "Admission reviews by outcome",
            self.admissions.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
    }

    /// Count a reconcile and time it until the returned guard is dropped.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: &self.reconcile_duration,
        }
    }

    /// Count a failed reconcile.
    pub fn reconcile_failed(&self, label: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                error: label.to_owned(),
            })
            .inc();
    }

    /// Set the fleet gauges of the store `store` in `namespace`.
    pub fn set_fleet(&self, namespace: &str, store: &str, fleet: &crate::fleet::Fleet) {
        let labels = StoreLabels {
            namespace: namespace.to_owned(),
            store: store.to_owned(),
        };
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.pods_without_sidecar
            .get_or_create(&labels)
            .set(n(fleet.without_sidecar.len()));
        self.pods_outdated_sidecar
            .get_or_create(&labels)
            .set(n(fleet.outdated.len()));
    }

    /// Drop the gauges of a deleted store.
    pub fn forget_store(&self, namespace: &str, store: &str) {
        let labels = StoreLabels {
            namespace: namespace.to_owned(),
            store: store.to_owned(),
        };
        self.pods_without_sidecar.remove(&labels);
        self.pods_outdated_sidecar.remove(&labels);
    }

    /// Count an admission review.
    pub fn admitted(&self, outcome: &str) {
        self.admissions
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// Records the elapsed time into the reconcile histogram when dropped.
pub struct ReconcileTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_encode() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        drop(m.reconcile_started());
        m.reconcile_failed("kube");
        m.admitted("injected");
        let fleet = crate::fleet::Fleet {
            without_sidecar: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        m.set_fleet("shop", "web", &fleet);
        m.set_fleet("shop", "gone", &fleet);
        m.forget_store("shop", "gone");
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("sametag_operator_reconciles_total 1"), "{out}");
        assert!(
            out.contains("sametag_operator_reconcile_errors_total{error=\"kube\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("sametag_operator_admissions_total{outcome=\"injected\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("sametag_operator_reconcile_duration_seconds_count 1"),
            "{out}"
        );
        assert!(
            out.contains("sametag_pods_without_sidecar{namespace=\"shop\",store=\"web\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("sametag_pods_outdated_sidecar{namespace=\"shop\",store=\"web\"} 0"),
            "{out}"
        );
        assert!(!out.contains("gone"), "{out}");
    }
}
