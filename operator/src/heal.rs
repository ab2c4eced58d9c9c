//! Why a store's Redis pods are not ready, and which stuck pod to replace so
//! that a fixed spec reaches them: pure functions of the StatefulSet and its
//! pods; `reconcile.rs` acts on the answer.
//!
//! A StatefulSet (OrderedReady, RollingUpdate) never replaces a pod that is
//! not Running and Ready: a pod created from a broken template (an image that
//! cannot be pulled, a crash loop) blocks every later revision until someone
//! deletes it by hand (kubernetes#67250). The operator does that for the
//! user, narrowly: only the pod the StatefulSet controller is waiting for
//! (the lowest ordinal that is not Ready), only when it belongs to an
//! outdated revision and is stuck, and only when no pod is terminating, so
//! at most one pod is replaced at a time and never a Ready one or one of the
//! revision the user asked for.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::children::OWNER_LABEL;
use crate::crd::ETagStore;

/// Label the StatefulSet controller puts on each pod: its revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";
/// An outdated pod that has not been Ready for this long is stuck even
/// without a telling container state (e.g. unschedulable, volume pending).
pub const STUCK_AFTER: Duration = Duration::from_secs(120);
/// Event reason (and log message) of a replaced pod.
pub const REPLACED_STUCK_POD: &str = "ReplacedStuckPod";

/// Container waiting reasons that do not resolve without a spec change, each
/// with how the condition message describes it.
const STUCK_WAITING: &[(&str, &str)] = &[
    ("ImagePullBackOff", "cannot be pulled"),
    ("ErrImagePull", "cannot be pulled"),
    (
        "ErrImageNeverPull",
        "is not on the node and imagePullPolicy is Never",
    ),
    ("InvalidImageName", "is not a valid image reference"),
    ("CrashLoopBackOff", "keeps crashing"),
    ("CreateContainerConfigError", "cannot be configured"),
    ("CreateContainerError", "cannot be created"),
    ("RunContainerError", "cannot be started"),
];

/// Why a Redis pod is not ready, in the pod's own terms: the store's
/// Degraded condition carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodProblem {
    /// The pod's name.
    pub pod: String,
    /// The pod's uid (this incarnation of the name).
    pub uid: Option<String>,
    /// The kubelet's or scheduler's reason (`ErrImagePull` is reported as
    /// `ImagePullBackOff`: the kubelet alternates between the two, and a
    /// condition that flips would publish an Event each time).
    pub reason: &'static str,
    /// One line naming the pod and what is wrong.
    pub message: String,
}

/// A pod to delete so the StatefulSet controller recreates it at its update
/// revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replacement {
    /// The pod's name.
    pub pod: String,
    /// Its uid: the delete's precondition, so a pod recreated under the same
    /// name in the meantime is never deleted.
    pub uid: String,
    /// The pod's (outdated) revision.
    pub from_revision: String,
    /// The StatefulSet's update revision, the one its replacement gets.
    pub to_revision: String,
    /// Why it counts as stuck.
    pub why: String,
}

/// What the operator found about a StatefulSet's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// The first pod (by ordinal) with a problem, if any.
    pub problem: Option<PodProblem>,
    /// The pod to replace now, if any.
    pub replace: Option<Replacement>,
}

/// Diagnose the pods of `sts` (pods it does not control are ignored) at
/// `now`.
pub fn diagnose(sts: &StatefulSet, pods: &[Pod], now: jiff::Timestamp) -> Diagnosis {
    let sts_name = sts.name_any();
    let uid = sts.metadata.uid.as_deref().unwrap_or_default();
    let mut mine: Vec<(u32, &Pod)> = pods
        .iter()
        .filter(|p| controlled_by(&p.metadata, uid))
        .filter_map(|p| Some((ordinal(&sts_name, p)?, p)))
        .collect();
    mine.sort_by_key(|(i, _)| *i);

    let problem = mine
        .iter()
        .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
        .find_map(|(_, p)| problem(p));
    let replace = replacement(sts, &mine, now);
    Diagnosis { problem, replace }
}

fn replacement(
    sts: &StatefulSet,
    mine: &[(u32, &Pod)],
    now: jiff::Timestamp,
) -> Option<Replacement> {
    let status = sts.status.as_ref()?;
    // Until the controller has seen the latest spec, its update revision is
    // the previous one: wait for it.
    if status.observed_generation < sts.metadata.generation {
        return None;
    }
    let update = status
        .update_revision
        .as_deref()
        .filter(|r| !r.is_empty())?;
    // One at a time: a terminating pod is a replacement in flight.
    if mine
        .iter()
        .any(|(_, p)| p.metadata.deletion_timestamp.is_some())
    {
        return None;
    }
    // The pod the controller waits for: the lowest ordinal not Ready.
    let (_, pod) = mine.iter().find(|(_, p)| !is_ready(p))?;
    let revision = pod.labels().get(REVISION_LABEL)?;
    if revision == update {
        return None;
    }
    let why = match problem(pod) {
        Some(p) => p.reason.to_owned(),
        None => {
            let since = not_ready_since(pod)?;
            let waited = now.duration_since(since).unsigned_abs();
            if waited < STUCK_AFTER {
                return None;
            }
            format!("not Ready for {}s", waited.as_secs())
        }
    };
    Some(Replacement {
        pod: pod.name_any(),
        uid: pod.metadata.uid.clone()?,
        from_revision: revision.clone(),
        to_revision: update.to_owned(),
        why,
    })
}

/// The problem of one pod that is not Ready, from its container states, or
/// the scheduler's reason when it has no node.
pub fn problem(pod: &Pod) -> Option<PodProblem> {
    if is_ready(pod) {
        return None;
    }
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        if let Some(p) = container_problem(pod, &name, c) {
            return Some(p);
        }
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })?;
    Some(PodProblem {
        pod: name.clone(),
        uid: pod.metadata.uid.clone(),
        reason: "Unschedulable",
        message: format!(
            "pod {name} cannot be scheduled: {}",
            unschedulable.message.as_deref().unwrap_or("no node fits")
        ),
    })
}

fn container_problem(pod: &Pod, name: &str, c: &ContainerStatus) -> Option<PodProblem> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let kubelet_reason = waiting.reason.as_deref()?;
    let (reason, what) = STUCK_WAITING
        .iter()
        .find(|(r, _)| *r == kubelet_reason)
        .map(|(r, what)| {
            (
                if *r == "ErrImagePull" {
                    "ImagePullBackOff"
                } else {
                    *r
                },
                *what,
            )
        })?;
    let message = match reason {
        "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName" => format!(
            "pod {name}: image {:?} {what} ({reason})",
            spec_image(pod, &c.name).unwrap_or(&c.image)
        ),
        "CrashLoopBackOff" => {
            let last = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .map(|t| {
                    format!(
                        "; last exit: {}, code {}",
                        t.reason.as_deref().unwrap_or("unknown"),
                        t.exit_code
                    )
                })
                .unwrap_or_default();
            format!(
                "pod {name}: container {} {what} ({reason}{last}, {} restarts)",
                c.name, c.restart_count
            )
        }
        _ => format!(
            "pod {name}: container {} {what} ({reason}): {}",
            c.name,
            waiting.message.as_deref().unwrap_or("no detail")
        ),
    };
    Some(PodProblem {
        pod: name.to_owned(),
        uid: pod.metadata.uid.clone(),
        reason,
        message,
    })
}

/// The image the pod spec asks for (a waiting container's status may name
/// it differently, e.g. normalised with `docker.io/library/`).
fn spec_image<'a>(pod: &'a Pod, container: &str) -> Option<&'a String> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)?
        .image
        .as_ref()
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

// When the pod last turned not Ready (or was created, before it has the
// condition).
fn not_ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// The store a Redis pod belongs to (its `sametag.dev/etagstore` label), for
/// the pod watch.
pub fn store_of_pod(meta: &ObjectMeta) -> Vec<ObjectRef<ETagStore>> {
    match (
        meta.labels.as_ref().and_then(|l| l.get(OWNER_LABEL)),
        &meta.namespace,
    ) {
        (Some(store), Some(ns)) => vec![ObjectRef::new(store).within(ns)],
        _ => Vec::new(),
    }
}

fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    !uid.is_empty()
        && meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == uid && r.controller == Some(true))
}

// `<sts>-<ordinal>`, as the StatefulSet controller names its pods.
fn ordinal(sts: &str, pod: &Pod) -> Option<u32> {
    pod.name_any()
        .strip_prefix(sts)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

#[cfg(test)]
#[path = "heal_tests.rs"]
mod tests;
