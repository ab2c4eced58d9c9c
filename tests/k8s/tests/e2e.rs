//! End-to-end: the chart, the operator and its webhook against a real
//! kube-apiserver + etcd + kube-controller-manager (tests/harness), with a
//! real helm and kubectl. The operator runs as a local process with the
//! chart's ServiceAccount token, so the chart's RBAC is what it gets.
//!
//! One control plane for the whole file (it takes ~10-20 s to start); the
//! scenarios run in order in one test, each in its own namespace, and every
//! failing scenario is reported (not only the first).
//!
//! There is no kubelet: Pods stay Pending, which is enough to see what
//! admission did to them; the Redis StatefulSet's readiness is set through the
//! status subresource, as the StatefulSet controller would after the kubelet
//! reported ready pods.

#[path = "e2e/certs.rs"]
mod certs;
#[path = "e2e/chart.rs"]
mod chart;
#[path = "e2e/check.rs"]
mod check;
#[path = "e2e/ctx.rs"]
mod ctx;
#[path = "e2e/fleet.rs"]
mod fleet;
#[path = "e2e/injection.rs"]
mod injection;
#[path = "e2e/leader.rs"]
mod leader;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/owned.rs"]
mod owned;
#[path = "e2e/stores.rs"]
mod stores;
#[path = "e2e/tuning.rs"]
mod tuning;
#[path = "e2e/validation.rs"]
mod validation;

use ctx::Ctx;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_operator_and_webhook_against_a_real_control_plane() {
    let started = std::time::Instant::now();
    let mut ctx = Ctx::start().await.unwrap_or_else(|e| panic!("setup: {e}"));
    let mut failures: Vec<String> = Vec::new();

    // SAMETAG_E2E_SCENARIOS=4,10 runs only the scenarios whose number (the
    // name up to the first space) is listed, after the install and the
    // operator start every scenario needs. Unset: all of them.
    let only: Option<Vec<String>> = std::env::var("SAMETAG_E2E_SCENARIOS")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let selected = |name: &str| {
        let id = name.split(' ').next().unwrap_or_default();
        only.as_ref()
            .is_none_or(|ids| id == "1a" || ids.iter().any(|i| i == id))
    };

    macro_rules! scenario {
        ($name:expr, $fut:expr) => {{
            let t = std::time::Instant::now();
            if !selected($name) {
                eprintln!("--- {}: skipped (SAMETAG_E2E_SCENARIOS)", $name);
            } else {
                eprintln!("--- {} ...", $name);
                match $fut.await {
                    Ok(()) => eprintln!("--- {}: ok ({:.1}s)", $name, t.elapsed().as_secs_f64()),
                    Err(e) => {
                        eprintln!("--- {}: FAILED: {e}", $name);
                        failures.push(format!(
                            "{}: {e}\n    operator log tail:\n{}",
                            $name,
                            ctx.operator_log_tail(15)
                        ));
                    }
                }
            }
        }};
    }

    scenario!(
        "1a helm install: CRD established, operator objects present",
        chart::install(&ctx)
    );
    let op_started = ctx.start_operator().await;
    if let Err(e) = op_started {
        panic!(
            "cannot start the operator: {e}\ncontrol plane log: {}",
            ctx.cp.log_path().display()
        );
    }
    scenario!(
        "7a certificate: Secret created, caBundle patched",
        certs::issued(&mut ctx)
    );
    scenario!(
        "8a ownership: certificate Secret and Lease owned by the webhook configuration",
        owned::owned(&ctx)
    );
    scenario!(
        "4 invalid ETagStores rejected with the CEL messages",
        validation::rejected(&ctx)
    );
    scenario!(
        "2 managed ETagStore: children, status, printer columns, repair, GC",
        stores::managed(&ctx)
    );
    scenario!(
        "3 external ETagStore: Degraded without its Secret, follows its changes within seconds",
        stores::external(&ctx)
    );
    scenario!(
        "18 external store over rediss:// with a private CA and an ACL user: Ready only once pinged, a wrong password named",
        stores::external_tls_acl(&ctx)
    );
    scenario!(
        "10 invalid policy: Degraded/InvalidPolicy, the policy ConfigMap keeps the last valid one",
        stores::invalid_policy(&ctx)
    );
    scenario!(
        "5 injection: annotated Deployment, opt-out, namespace label, idempotent",
        injection::injects(&ctx)
    );
    scenario!(
        "16 metrics: the operator's /metrics has every README metric and passes promtool",
        metrics::documented(&ctx)
    );
    scenario!(
        "6 webhook down: pods still created, uninjected",
        injection::webhook_down(&mut ctx)
    );
    scenario!(
        "11 mixed fleet: pods without the sidecar or with an outdated one in the status, kubectl get ets, Events and metrics; numeric targetPort warned",
        fleet::mixed_fleet(&mut ctx)
    );
    scenario!(
        "12 a foreign <store>-redis Secret is left alone and reported",
        fleet::foreign_child(&ctx)
    );
    scenario!(
        "13 watchNamespaces: Roles only, kubectl auth can-i denies the rest, a namespaced operator reconciles",
        fleet::namespaced_install(&mut ctx)
    );
    scenario!(
        "14 tuning annotations: env, resources, grace period; invalid ones warned and defaulted",
        tuning::annotations(&ctx)
    );
    scenario!(
        "15 check: a healthy namespace passes; uninjected pod, unready store, numeric targetPort, wrong caBundle reported",
        check::diagnoses(&ctx)
    );
    scenario!(
        "7b certificate: a restarted operator reuses it",
        certs::reused_after_restart(&mut ctx)
    );
    scenario!(
        "9 leader election: the Lease is released on SIGTERM",
        leader::released_on_sigterm(&mut ctx)
    );
    scenario!(
        "9b leader election: a second replica takes the Lease after the leader's SIGTERM and reconciles",
        leader::handover_on_sigterm(&mut ctx)
    );
    scenario!(
        "7c certificate rotation: 30 s certificates reissued while pods keep being injected",
        certs::rotates_while_injecting(&mut ctx)
    );
    scenario!(
        "8b ownership: a restarted operator adopts an unowned Secret and Lease",
        owned::adopted_after_restart(&mut ctx)
    );
    scenario!("1b helm upgrade", chart::upgrade(&ctx));
    scenario!("1c helm uninstall", chart::uninstall(&mut ctx));
    scenario!(
        "17 helm upgrade from the previous chart version: CRD adopted and upgraded, a store made before reconciles",
        chart::upgrade_from_previous(&mut ctx)
    );

    eprintln!("e2e wall time: {:.1}s", started.elapsed().as_secs_f64());
    if !failures.is_empty() {
        let logs = ctx.keep_logs();
        panic!(
            "{} scenario(s) failed (logs kept in {logs}):\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}
