//! ETagStore status: the conditions (Ready, Progressing, Degraded from the
//! store's health, SidecarsInjected from its pods) computed from what the
//! reconcile saw, keeping `lastTransitionTime` when a condition's status did
//! not change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::ETagStoreStatus;
use crate::fleet::{Fleet, SIDECARS_INJECTED};

/// What one reconcile found, from which the conditions follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Redis is serving: managed pods ready, or external Secret present.
    Ready {
        /// Condition reason, e.g. `RedisReady`.
        reason: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// Applied, waiting for Redis pods to become ready.
    Progressing {
        /// Condition reason, e.g. `WaitingForRedis`.
        reason: &'static str,
        /// Human-readable detail.
        message: String,
    },
    /// Something the user must fix (or an apply failed).
    Degraded {
        /// Condition reason, e.g. `SecretMissing`.
        reason: &'static str,
        /// Human-readable detail.
        message: String,
    },
}

impl Health {
    /// The reason of the governing condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Ready { reason, .. }
            | Self::Progressing { reason, .. }
            | Self::Degraded { reason, .. } => reason,
        }
    }

    /// The message of the governing condition.
    pub fn message(&self) -> &str {
        match self {
            Self::Ready { message, .. }
            | Self::Progressing { message, .. }
            | Self::Degraded { message, .. } => message,
        }
    }
}

/// Condition type names.
pub const READY: &str = "Ready";
/// Condition type names.
pub const PROGRESSING: &str = "Progressing";
/// Condition type names.
pub const DEGRADED: &str = "Degraded";
/// Degraded reason: a child's name is taken by an object the store does not
/// own; it is left alone and nothing else is applied.
pub const CHILD_NOT_OWNED: &str = "ChildNotOwned";
/// Degraded reason: `spec.policy` passed the CRD's rules but the sidecar's
/// parser refuses it, so it was not written to the policy ConfigMap.
pub const INVALID_POLICY: &str = "InvalidPolicy";

/// The new status given `health`, the previous status and `now`.
pub fn desired(
    previous: Option<&ETagStoreStatus>,
    generation: Option<i64>,
    health: &Health,
    endpoint: Option<String>,
    fleet: &Fleet,
    now: Time,
) -> ETagStoreStatus {
    let (ready, progressing, degraded) = match health {
        Health::Ready { .. } => (true, false, false),
        Health::Progressing { .. } => (false, true, false),
        Health::Degraded { .. } => (false, false, true),
    };
    let condition = |type_: &str, on: bool, reason: &str, message: &str| {
        let status = if on { "True" } else { "False" }.to_owned();
        let last = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation: generation,
            last_transition_time: last,
        }
    };
    let cond = |type_: &str, on: bool, off_reason: &str, off_message: &str| {
        if on {
            condition(type_, on, health.reason(), health.message())
        } else {
            condition(type_, on, off_reason, off_message)
        }
    };
    let (all_injected, fleet_reason, fleet_message) = fleet.condition();
    let not_ready_reason = health.reason();
    let not_ready_message = health.message();
    ETagStoreStatus {
        conditions: vec![
            cond(READY, ready, not_ready_reason, not_ready_message),
            cond(
                PROGRESSING,
                progressing,
                "Reconciled",
                "all children applied",
            ),
            cond(DEGRADED, degraded, "AsExpected", ""),
            condition(
                SIDECARS_INJECTED,
                all_injected,
                fleet_reason,
                &fleet_message,
            ),
        ],
        observed_generation: generation,
        endpoint,
        injected_pods: fleet.injected,
        opted_in_pods: fleet.opted_in,
        outdated_pods: i32::try_from(fleet.outdated.len()).unwrap_or(i32::MAX),
        injected: Some(fleet.summary()),
    }
}

/// Status of condition `type_` in `status`, if present.
pub fn condition_status<'a>(status: Option<&'a ETagStoreStatus>, type_: &str) -> Option<&'a str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn ready() -> Health {
        Health::Ready {
            reason: "RedisReady",
            message: "1/1 Redis pods ready".into(),
        }
    }

    #[test]
    fn ready_sets_one_true_condition() {
        let fleet = Fleet {
            opted_in: 3,
            injected: 2,
            without_sidecar: vec!["p".into()],
            ..Fleet::default()
        };
        let s = desired(
            None,
            Some(3),
            &ready(),
            Some("redis://x".into()),
            &fleet,
            t(100),
        );
        let get = |ty| s.conditions.iter().find(|c| c.type_ == ty).unwrap();
        assert_eq!(get(READY).status, "True");
        assert_eq!(get(READY).reason, "RedisReady");
        assert_eq!(get(PROGRESSING).status, "False");
        assert_eq!(get(DEGRADED).status, "False");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.injected_pods, 2);
        assert_eq!(s.opted_in_pods, 3);
        assert_eq!(s.injected.as_deref(), Some("2/3"));
        assert_eq!(get(SIDECARS_INJECTED).status, "False");
        assert_eq!(get(SIDECARS_INJECTED).reason, "PodsWithoutSidecar");
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = desired(None, Some(1), &ready(), None, &Fleet::default(), t(100));
        let again = desired(
            Some(&first),
            Some(1),
            &ready(),
            None,
            &Fleet::default(),
            t(200),
        );
        assert_eq!(
            first, again,
            "an unchanged status must compare equal (no patch, no hot loop)"
        );
        let degraded = Health::Degraded {
            reason: "SecretMissing",
            message: "no Secret".into(),
        };
        let third = desired(
            Some(&again),
            Some(1),
            &degraded,
            None,
            &Fleet::default(),
            t(300),
        );
        let get = |s: &ETagStoreStatus, ty: &str| {
            s.conditions.iter().find(|c| c.type_ == ty).unwrap().clone()
        };
        assert_eq!(get(&third, READY).last_transition_time, t(300));
        assert_eq!(get(&third, READY).reason, "SecretMissing");
        assert_eq!(get(&third, DEGRADED).status, "True");
        // Progressing stayed False: its time is kept.
        assert_eq!(get(&third, PROGRESSING).last_transition_time, t(100));
        assert_eq!(condition_status(Some(&third), DEGRADED), Some("True"));
    }
}
