//! Scenarios 9 and 9b: on SIGTERM the leader gives its Lease back
//! (holderIdentity cleared) before it exits; and a second replica really
//! does take it over and reconcile. It does so within --lease-duration, not
//! at once: kube-lease-manager's follower sleeps until the holder's lease
//! would expire before it looks again, released or not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use sametag_k8s_e2e::ets::{create_namespace, etagstore, etagstores, wait_condition};
use sametag_k8s_e2e::operator::{Operator, http_get_status};
use sametag_k8s_e2e::{Error, Result, wait};
use serde_json::json;

use crate::ctx::{Ctx, NAMESPACE};

/// The identity the suite gives the operator (`OperatorConfig::args`).
const IDENTITY: &str = "e2e-operator";

/// The Lease's current holder, if any.
async fn holder(leases: &Api<Lease>, name: &str) -> Result<Option<String>> {
    let lease = leases.get(name).await?;
    Ok(lease.spec.and_then(|s| s.holder_identity))
}

/// Wait until the operator leads, SIGTERM it, and check the Lease it left.
/// The operator is started again afterwards, whatever happened.
pub async fn released_on_sigterm(ctx: &mut Ctx) -> Result<()> {
    ctx.require_operator()?;
    let result = check_release(ctx).await;
    ctx.start_operator().await?;
    result
}

async fn check_release(ctx: &mut Ctx) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let name = ctx.op_config.lease_name();
    wait::until(
        "the operator to hold the Lease",
        Duration::from_secs(20),
        || {
            let (leases, name) = (leases.clone(), name.clone());
            async move {
                let h = holder(&leases, &name).await?;
                if h.as_deref() == Some(IDENTITY) {
                    Ok(Some(()))
                } else {
                    Err(Error::Other(format!("Lease holder {h:?}")))
                }
            }
        },
    )
    .await?;

    let t = Instant::now();
    let status = ctx.terminate_operator(Duration::from_secs(10)).await?;
    eprintln!(
        "operator exited {:.1}s after SIGTERM: {status}",
        t.elapsed().as_secs_f64()
    );
    if !status.success() {
        return Err(Error::Other(format!(
            "the operator exited with {status} after SIGTERM"
        )));
    }
    // Read once, no waiting: the release must be done before the process
    // exits. A soft release (kube-lease-manager) sets holderIdentity to null.
    match holder(&leases, &name).await? {
        None => Ok(()),
        Some(h) if h.is_empty() => Ok(()),
        Some(h) => Err(Error::Other(format!(
            "after the operator exited, the Lease is still held by {h:?} \
             (the next replica would wait for it to expire)"
        ))),
    }
}

/// Identity of the second replica in [`handover_on_sigterm`].
const SECOND: &str = "e2e-operator-2";

/// Scenario 9b: with a second replica running (serving its webhook,
/// following), the leader's SIGTERM hands the Lease over: the second replica
/// holds it within the lease duration and reconciles a store created
/// afterwards. The
/// suite's operator is running again afterwards, whatever happened.
pub async fn handover_on_sigterm(ctx: &mut Ctx) -> Result<()> {
    ctx.require_operator()?;
    let config = ctx.op_config.replica(SECOND, ctx.cp.dir.path())?;
    let second = Operator::start(config).await;
    let result = match second {
        Ok(second) => {
            let r = check_handover(ctx, &second).await;
            let log = second.log_tail(15);
            // SIGTERM: it releases the Lease, so the restarted first
            // replica leads at once.
            let _ = second.terminate_within(Duration::from_secs(10)).await;
            r.map_err(|e| Error::Other(format!("{e}\n    second replica's log tail:\n{log}")))
        }
        Err(e) => Err(e),
    };
    ctx.start_operator().await?;
    wait_holder(ctx, IDENTITY, Duration::from_secs(30)).await?;
    result
}

async fn wait_holder(ctx: &Ctx, identity: &str, timeout: Duration) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let name = ctx.op_config.lease_name();
    wait::until(&format!("{identity} to hold the Lease"), timeout, || {
        let (leases, name) = (leases.clone(), name.clone());
        async move {
            let h = holder(&leases, &name).await?;
            if h.as_deref() == Some(identity) {
                Ok(Some(()))
            } else {
                Err(Error::Other(format!("Lease holder {h:?}")))
            }
        }
    })
    .await
}

async fn check_handover(ctx: &mut Ctx, second: &Operator) -> Result<()> {
    wait_holder(ctx, IDENTITY, Duration::from_secs(20)).await?;
    // The second replica is ready (its webhook serves) but follows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leases: Api<Lease> = Api::namespaced(ctx.admin.clone(), NAMESPACE);
    let h = holder(&leases, &ctx.op_config.lease_name()).await?;
    if h.as_deref() != Some(IDENTITY) {
        return Err(Error::Other(format!(
            "a second replica took the Lease from a live leader: holder {h:?}"
        )));
    }
    if http_get_status(second.config.metrics_port, "/readyz").await? != 200 {
        return Err(Error::Other("the following replica is not ready".into()));
    }

    let t = Instant::now();
    let status = ctx.terminate_operator(Duration::from_secs(10)).await?;
    if !status.success() {
        return Err(Error::Other(format!(
            "the leader exited with {status} after SIGTERM"
        )));
    }
    // A follower (kube-lease-manager) sleeps until the holder's lease would
    // expire before it looks again, released or not: it leads within
    // --lease-duration (15 s) of the last renewal, not at once.
    wait_holder(ctx, SECOND, Duration::from_secs(20)).await?;
    eprintln!(
        "the second replica led {:.1}s after the leader's SIGTERM",
        t.elapsed().as_secs_f64()
    );

    // It reconciles: a store created now gets its status from it alone.
    let ns = "e2e-handover";
    create_namespace(&ctx.admin, ns, &[]).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("redis-pass".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(b"pw".to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;
    let api = etagstores(&ctx.admin, ns);
    let obj = etagstore(
        "after-handover",
        json!({ "redis": { "external": { "url": ctx.redis_url(), "secretRef": { "name": "redis-pass" } } } }),
    )?;
    api.create(&PostParams::default(), &obj).await?;
    wait_condition(
        &api,
        "after-handover",
        "Ready",
        "True",
        Duration::from_secs(30),
    )
    .await?;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.admin.clone(), ns);
    if cms.get_opt("after-handover-policy").await?.is_none() {
        return Err(Error::Other(
            "the new leader did not create the store's policy ConfigMap".into(),
        ));
    }
    Ok(())
}
