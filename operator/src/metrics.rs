//! Prometheus metric families of the operator (reconciles, admissions, the
//! webhook certificate, injection coverage) and timers that record a
//! reconcile's or an admission's duration when dropped.

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

/// Every `Error::metric_label()` (keep beside it).
pub const ERROR_LABELS: [&str; 8] = [
    "kube",
    "build",
    "serialize",
    "tls",
    "io",
    "lease",
    "conflict",
    "stopped",
];

/// Every admission `Outcome::label()` (a test below checks the list).
pub const OUTCOME_LABELS: [&str; 5] = [
    "injected",
    "skipped",
    "already_injected",
    "warning",
    "invalid",
];

/// Label set naming a store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// The ETagStore's namespace.
    pub namespace: String,
    /// The ETagStore's name.
    pub store: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    component: &'static str,
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
    /// Admission review durations in seconds.
    pub admission_duration: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Opted-in pods running without the sidecar, per store.
    pub pods_without_sidecar: Family<StoreLabels, Gauge>,
    /// Injected pods running an outdated sidecar image, per store.
    pub pods_outdated_sidecar: Family<StoreLabels, Gauge>,
    /// When the webhook's serving certificate expires (Unix seconds).
    pub cert_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            admissions: Family::default(),
            // The apiserver gives the webhook at most 5 s (timeoutSeconds).
            admission_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            leader: Gauge::default(),
            pods_without_sidecar: Family::default(),
            pods_outdated_sidecar: Family::default(),
            cert_expiry: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Register every family: the operator's own under the
    /// `sametag_operator` prefix, the ones named for what they describe
    /// (the webhook certificate, pods, the build) at the root.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sametag_webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's serving certificate expires, in seconds since the Unix epoch (0 until one is loaded)",
            self.cert_expiry.clone(),
        );
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
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                component: "operator",
            })
            .set(1);
        registry.register(
            "sametag_build_info",
            "Always 1; the labels name the running version",
            build_info,
        );
        // Known label values start at zero (every documented series is on
        // the first scrape, and rate() sees the first increment).
        for error in ERROR_LABELS {
            let _ = self.reconcile_errors.get_or_create(&ErrorLabels {
                error: error.to_owned(),
            });
        }
        for outcome in OUTCOME_LABELS {
            let _ = self.admissions.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            });
        }
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
            "admission_duration_seconds",
            "Time to answer an admission review (read, decide, encode)",
            self.admission_duration.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
    }

    /// Count a reconcile and time it until the returned guard is dropped.
    pub fn reconcile_started(&self) -> DurationTimer<'_> {
        self.reconciles.inc();
        DurationTimer {
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

    /// Time an admission review until the returned guard is dropped.
    pub fn admission_started(&self) -> DurationTimer<'_> {
        DurationTimer {
            start: Instant::now(),
            histogram: &self.admission_duration,
        }
    }

    /// The serving certificate now served expires at `not_after`.
    pub fn certificate_loaded(&self, not_after: jiff::Timestamp) {
        self.cert_expiry.set(not_after.as_second());
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

/// Records the elapsed time into a duration histogram (a reconcile's or an
/// admission's) when dropped.
pub struct DurationTimer<'a> {
    start: Instant,
    histogram: &'a Histogram,
}

impl Drop for DurationTimer<'_> {
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
        drop(m.admission_started());
        m.certificate_loaded(jiff::Timestamp::from_second(1_900_000_000).unwrap());
        m.pods_without_sidecar
            .get_or_create(&StoreLabels {
                namespace: "shop".into(),
                store: "web".into(),
            })
            .set(2);
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
        for line in [
            "sametag_operator_reconcile_duration_seconds_count 1",
            "sametag_operator_admission_duration_seconds_count 1",
            "sametag_webhook_certificate_expiry_timestamp_seconds 1900000000",
            "sametag_build_info{version=\"",
            "sametag_operator_reconcile_errors_total{error=\"stopped\"} 0",
            "sametag_operator_admissions_total{outcome=\"invalid\"} 0",
        ] {
            assert!(out.contains(line), "{line} missing:\n{out}");
        }
    }

    #[test]
    fn outcome_labels_are_every_outcome() {
        use crate::webhook::Outcome;
        let all = [
            Outcome::Injected,
            Outcome::Skipped,
            Outcome::AlreadyInjected,
            Outcome::Warning,
            Outcome::Invalid,
        ];
        // A new variant fails to compile here until it is listed.
        for o in all {
            match o {
                Outcome::Injected
                | Outcome::Skipped
                | Outcome::AlreadyInjected
                | Outcome::Warning
                | Outcome::Invalid => assert!(OUTCOME_LABELS.contains(&o.label())),
            }
        }
        assert_eq!(all.len(), OUTCOME_LABELS.len());
    }
}
