//! ETagStore status: the conditions (Ready, Progressing, Degraded from the
//! store's health, SidecarsInjected from its pods) computed from what the
//! reconcile saw, keeping `lastTransitionTime` when a condition's status did
//! not change.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{ETagStoreStatus, RedisStatus};
use crate::fleet::{Fleet, SIDECARS_INJECTED};

/// What one reconcile found, from which the conditions follow.
#[derive(Clone, Debug, PartialEq)]
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
        /// The object the problem is about when it is not the store (a
        /// Redis pod, with its uid): the Warning Event names it as
        /// `related`, so each pod's problem is its own Event series.
        about: Option<ObjectReference>,
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

    /// What a Degraded store's problem is about, when not the store.
    pub fn about(&self) -> Option<&ObjectReference> {
        match self {
            Self::Degraded { about, .. } => about.as_ref(),
            _ => None,
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

/// Condition type of a failover store: whether the sentinels name a primary.
pub const PRIMARY_AVAILABLE: &str = "PrimaryAvailable";
/// PrimaryAvailable reason: the sentinels name another primary than before.
pub const FAILED_OVER: &str = "FailedOver";

/// What the sentinels of a failover store said, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrimaryObservation {
    /// The primary pod most sentinels named; `None`: no sentinel answered.
    pub primary: Option<String>,
    /// How many sentinels named it.
    pub agreeing: usize,
    /// How many sentinels were asked.
    pub asked: usize,
    /// The fewest replicas linked and up that a sentinel naming `primary`
    /// reported; `None` when none said.
    pub replicas_up: Option<u32>,
    /// The replicas the store runs (its Redis pods but the primary).
    pub replicas_expected: u32,
}

/// A failover the status records: the primary moved from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failover {
    /// The previous primary pod.
    pub from: String,
    /// The new primary pod.
    pub to: String,
}

/// Add the managed Redis's state to `new`: `status.redis` and, in failover
/// mode (`observed` is `Some`), the PrimaryAvailable condition. A change of
/// primary is a `FailedOver` condition (its lastTransitionTime is the time
/// the operator saw the change, even though the status stays True) and is
/// returned so the caller publishes an Event. While no sentinel answers, the
/// last known primary is kept.
pub fn with_redis(
    previous: Option<&ETagStoreStatus>,
    new: &mut ETagStoreStatus,
    redis: RedisStatus,
    observed: Option<&PrimaryObservation>,
    now: Time,
) -> Option<Failover> {
    let before = previous.and_then(|p| p.redis.as_ref());
    let before_primary = before.and_then(|r| r.primary.clone());
    let mut redis = redis;
    let Some(obs) = observed else {
        new.redis = Some(redis);
        return None;
    };
    let prev_cond = previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == PRIMARY_AVAILABLE))
        .cloned();
    let generation = new.observed_generation;
    let mut failover = None;
    let cond = match &obs.primary {
        None => {
            redis.primary = before_primary;
            let status = "False".to_owned();
            Condition {
                type_: PRIMARY_AVAILABLE.into(),
                last_transition_time: prev_cond
                    .as_ref()
                    .filter(|c| c.status == status)
                    .map(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| now.clone()),
                status,
                reason: "SentinelsUnreachable".into(),
                message: format!(
                    "none of the {} sentinels named a primary (the last known one is kept)",
                    obs.asked
                ),
                observed_generation: generation,
            }
        }
        Some(p) => {
            redis.primary = Some(p.clone());
            match before_primary.filter(|b| b != p) {
                Some(from) => {
                    failover = Some(Failover {
                        from: from.clone(),
                        to: p.clone(),
                    });
                    Condition {
                        type_: PRIMARY_AVAILABLE.into(),
                        status: "True".into(),
                        reason: FAILED_OVER.into(),
                        message: format!("the sentinels promoted {p}; the primary was {from}"),
                        observed_generation: generation,
                        last_transition_time: now.clone(),
                    }
                }
                // Same primary: the condition stays as it was (a failover
                // stays on record until the next change).
                None => match prev_cond.filter(|c| c.status == "True") {
                    Some(mut c) => {
                        c.observed_generation = generation;
                        c
                    }
                    None => Condition {
                        type_: PRIMARY_AVAILABLE.into(),
                        status: "True".into(),
                        reason: "PrimaryElected".into(),
                        message: format!("the sentinels name {p} as the primary"),
                        observed_generation: generation,
                        last_transition_time: now.clone(),
                    },
                },
            }
        }
    };
    redis.sentinels = Some(format!("{}/{}", obs.agreeing, obs.asked));
    redis.replicas = obs
        .replicas_up
        .map(|n| format!("{n}/{}", obs.replicas_expected));
    new.conditions.push(cond);
    new.redis = Some(redis);
    failover
}

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
        // Filled in by `with_redis`.
        redis: None,
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

    fn obs(primary: Option<&str>) -> PrimaryObservation {
        PrimaryObservation {
            primary: primary.map(str::to_owned),
            agreeing: usize::from(primary.is_some()) * 3,
            asked: 3,
            replicas_up: primary.map(|_| 2),
            replicas_expected: 2,
        }
    }

    fn failover_status(
        previous: Option<&ETagStoreStatus>,
        primary: Option<&str>,
        at: i64,
    ) -> (ETagStoreStatus, Option<Failover>) {
        let mut s = desired(previous, Some(1), &ready(), None, &Fleet::default(), t(at));
        let redis = RedisStatus {
            mode: Some(crate::crd::RedisMode::Failover),
            ..RedisStatus::default()
        };
        let f = with_redis(previous, &mut s, redis, Some(&obs(primary)), t(at));
        (s, f)
    }

    fn primary_cond(s: &ETagStoreStatus) -> Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == PRIMARY_AVAILABLE)
            .unwrap()
            .clone()
    }

    #[test]
    fn a_changed_primary_is_a_failover_and_stays_on_record() {
        let (first, f) = failover_status(None, Some("cache-redis-0"), 100);
        assert_eq!(f, None);
        assert_eq!(primary_cond(&first).reason, "PrimaryElected");
        assert_eq!(
            first.redis.as_ref().unwrap().primary.as_deref(),
            Some("cache-redis-0")
        );
        assert_eq!(
            first.redis.as_ref().unwrap().sentinels.as_deref(),
            Some("3/3")
        );
        let (same, f) = failover_status(Some(&first), Some("cache-redis-0"), 200);
        assert_eq!(f, None);
        assert_eq!(same, first, "nothing changed: no status write");

        let (moved, f) = failover_status(Some(&first), Some("cache-redis-2"), 300);
        assert_eq!(
            f,
            Some(Failover {
                from: "cache-redis-0".into(),
                to: "cache-redis-2".into()
            })
        );
        let c = primary_cond(&moved);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", FAILED_OVER)
        );
        assert!(c.message.contains("cache-redis-2") && c.message.contains("cache-redis-0"));
        assert_eq!(c.last_transition_time, t(300));
        let (later, f) = failover_status(Some(&moved), Some("cache-redis-2"), 400);
        assert_eq!(f, None);
        assert_eq!(later, moved, "the failover stays on record, unchanged");
    }

    #[test]
    fn unreachable_sentinels_keep_the_last_primary() {
        let (first, _) = failover_status(None, Some("cache-redis-1"), 100);
        let (lost, f) = failover_status(Some(&first), None, 200);
        assert_eq!(f, None);
        let c = primary_cond(&lost);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SentinelsUnreachable")
        );
        assert_eq!(
            lost.redis.as_ref().unwrap().primary.as_deref(),
            Some("cache-redis-1")
        );
        assert_eq!(
            lost.redis.as_ref().unwrap().sentinels.as_deref(),
            Some("0/3")
        );
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
            about: None,
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
