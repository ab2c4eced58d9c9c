//! Decision tests: which pod is replaced, which never is, and what the
//! condition says.

use serde_json::{Value, json};

use super::*;

const STS_UID: &str = "sts-uid";

fn at(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(secs).unwrap()
}

fn time(secs: i64) -> String {
    at(secs).to_string()
}

/// The StatefulSet `demo-redis`, update revision `new`, having observed
/// generation `observed` of `generation`.
fn sts(generation: i64, observed: i64) -> StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": "demo-redis", "namespace": "shop", "uid": STS_UID, "generation": generation},
        "spec": {"selector": {}, "serviceName": "demo-redis-headless", "template": {}},
        "status": {"replicas": 1, "observedGeneration": observed,
                   "currentRevision": "demo-redis-old", "updateRevision": "demo-redis-new"},
    }))
    .unwrap()
}

/// Pod `demo-redis-<i>` of revision `rev`, Ready or not since t=1000, with
/// the redis container in `state`.
fn pod(i: u32, rev: &str, ready: bool, state: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": format!("demo-redis-{i}"), "namespace": "shop", "uid": format!("pod-uid-{i}"),
            "creationTimestamp": time(900),
            "labels": {REVISION_LABEL: format!("demo-redis-{rev}")},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "demo-redis",
                                 "uid": STS_UID, "controller": true}]},
        "spec": {"containers": [{"name": "redis", "image": format!("sametag.local/redis:{rev}")}]},
        "status": {
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                            "lastTransitionTime": time(1000)}],
            "containerStatuses": [{"name": "redis", "image": format!("sametag.local/redis:{rev}"),
                "imageID": "", "ready": ready, "restartCount": 0, "state": state}],
        },
    }))
    .unwrap()
}

fn waiting(reason: &str) -> Value {
    json!({"waiting": {"reason": reason, "message": "Back-off pulling image"}})
}

fn running() -> Value {
    json!({"running": {"startedAt": time(1000)}})
}

const NOW: i64 = 1010;

#[test]
fn an_outdated_pod_in_image_pull_backoff_is_replaced_and_reported() {
    let pods = [pod(0, "old", false, waiting("ImagePullBackOff"))];
    let d = diagnose(&sts(2, 2), &pods, at(NOW));
    assert_eq!(
        d.replace,
        Some(Replacement {
            pod: "demo-redis-0".into(),
            uid: "pod-uid-0".into(),
            from_revision: "demo-redis-old".into(),
            to_revision: "demo-redis-new".into(),
            why: "ImagePullBackOff".into(),
        })
    );
    let p = d.problem.unwrap();
    assert_eq!(p.reason, "ImagePullBackOff");
    assert_eq!(
        p.message,
        r#"pod demo-redis-0: image "sametag.local/redis:old" cannot be pulled (ImagePullBackOff)"#
    );
}

#[test]
fn err_image_pull_reads_as_image_pull_backoff_so_the_condition_does_not_flip() {
    let a = problem(&pod(0, "x", false, waiting("ErrImagePull"))).unwrap();
    let b = problem(&pod(0, "x", false, waiting("ImagePullBackOff"))).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_pod_of_the_update_revision_is_never_replaced() {
    // The user's new spec is itself broken: say so, delete nothing (no loop).
    let pods = [pod(0, "new", false, waiting("ImagePullBackOff"))];
    let d = diagnose(&sts(2, 2), &pods, at(NOW + 3600));
    assert_eq!(d.replace, None);
    assert_eq!(d.problem.unwrap().reason, "ImagePullBackOff");
}

#[test]
fn a_ready_pod_is_never_replaced() {
    let pods = [pod(0, "old", true, running())];
    let d = diagnose(&sts(2, 2), &pods, at(NOW + 3600));
    assert_eq!(d, Diagnosis::default());
}

#[test]
fn nothing_before_the_controller_observed_the_new_spec() {
    let pods = [pod(0, "old", false, waiting("ImagePullBackOff"))];
    let d = diagnose(&sts(3, 2), &pods, at(NOW));
    assert_eq!(d.replace, None);
    assert!(d.problem.is_some());
}

#[test]
fn one_at_a_time_while_a_pod_terminates() {
    let mut terminating = pod(1, "old", false, waiting("ImagePullBackOff"));
    terminating.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(NOW)),
    );
    let pods = [
        pod(0, "old", false, waiting("CrashLoopBackOff")),
        terminating,
    ];
    assert_eq!(diagnose(&sts(2, 2), &pods, at(NOW)).replace, None);
}

#[test]
fn only_the_pod_the_controller_waits_for_lowest_not_ready_ordinal() {
    // Pods 0 and 1 Ready at the old revision (the controller rolls them
    // itself); pod 2 stuck at the old one: it is the one.
    let pods = [
        pod(2, "old", false, waiting("CrashLoopBackOff")),
        pod(0, "old", true, running()),
        pod(1, "old", true, running()),
    ];
    let d = diagnose(&sts(2, 2), &pods, at(NOW));
    assert_eq!(d.replace.unwrap().pod, "demo-redis-2");

    // Pod 0 just recreated at the new revision and still starting: the
    // controller waits for it; pod 1, stuck and outdated, waits its turn.
    let pods = [
        pod(
            0,
            "new",
            false,
            json!({"waiting": {"reason": "ContainerCreating"}}),
        ),
        pod(1, "old", false, waiting("ImagePullBackOff")),
    ];
    let d = diagnose(&sts(2, 2), &pods, at(NOW));
    assert_eq!(d.replace, None);
    assert_eq!(d.problem.unwrap().pod, "demo-redis-1");
}

#[test]
fn an_outdated_pod_not_ready_past_the_grace_period_is_replaced() {
    let pending = json!({"waiting": {"reason": "ContainerCreating"}});
    let pods = [pod(0, "old", false, pending.clone())];
    let grace = i64::try_from(STUCK_AFTER.as_secs()).unwrap();
    assert_eq!(
        diagnose(&sts(2, 2), &pods, at(1000 + grace - 1)).replace,
        None,
        "within the grace period"
    );
    let r = diagnose(&sts(2, 2), &pods, at(1000 + grace + 5))
        .replace
        .unwrap();
    assert_eq!(r.why, format!("not Ready for {}s", grace + 5));
}

#[test]
fn pods_of_other_owners_are_ignored() {
    let mut foreign = pod(0, "old", false, waiting("ImagePullBackOff"));
    foreign.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
    assert_eq!(
        diagnose(&sts(2, 2), &[foreign], at(NOW)),
        Diagnosis::default()
    );
}

#[test]
fn crash_loop_names_the_last_termination() {
    let mut p = pod(0, "new", false, waiting("CrashLoopBackOff"));
    let c = &mut p
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap()[0];
    c.restart_count = 4;
    c.last_state = Some(
        serde_json::from_value(json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}))
            .unwrap(),
    );
    let got = problem(&p).unwrap();
    assert_eq!(got.reason, "CrashLoopBackOff");
    assert_eq!(
        got.message,
        "pod demo-redis-0: container redis keeps crashing (CrashLoopBackOff; last exit: OOMKilled, code 137, 4 restarts)"
    );
}

#[test]
fn config_errors_carry_the_kubelet_message_and_unschedulable_the_schedulers() {
    let p = pod(
        0,
        "new",
        false,
        json!({"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"x\" not found"}}),
    );
    assert_eq!(
        problem(&p).unwrap().message,
        "pod demo-redis-0: container redis cannot be configured (CreateContainerConfigError): secret \"x\" not found"
    );

    let mut p = pod(0, "new", false, json!({}));
    p.status.as_mut().unwrap().container_statuses = None;
    p.status.as_mut().unwrap().conditions = Some(vec![
        serde_json::from_value(
            json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory."}),
        )
        .unwrap(),
    ]);
    let got = problem(&p).unwrap();
    assert_eq!(got.reason, "Unschedulable");
    assert_eq!(
        got.message,
        "pod demo-redis-0 cannot be scheduled: 0/1 nodes are available: 1 Insufficient memory."
    );
}

#[test]
fn a_starting_pod_is_not_a_problem() {
    let p = pod(
        0,
        "new",
        false,
        json!({"waiting": {"reason": "ContainerCreating"}}),
    );
    assert_eq!(problem(&p), None);
    assert_eq!(problem(&pod(0, "new", false, running())), None);
}
