//! Leader election: only the Lease holder runs the controller; on shutdown
//! the controller stops and the Lease is released so the next replica leads
//! at once.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::children::FIELD_MANAGER;
use crate::config::RunArgs;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::owner;
use crate::reconcile::{self, Context};

/// How long it waits for the lease manager to release the Lease.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run the controller while this replica leads (always, without election),
/// until `shutdown` turns true; then, with election, release the Lease.
pub(super) async fn lead(
    client: Client,
    args: RunArgs,
    identity: String,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    owner: Option<OwnerReference>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let ns = args.watch_namespaces.clone();
    if !args.leader_elect {
        metrics.leader.set(1);
        reconcile::run(ctx, ns, became(shutdown, true)).await;
        return Ok(());
    }
    // Create the Lease owned by the webhook configuration before the lease
    // manager would create it unowned; without a configuration yet, the
    // rotation loop adopts the manager's Lease later.
    if let Some(owner) = &owner
        && let Err(e) = owner::ensure_lease(&client, &args.namespace, &args.lease_name, owner).await
    {
        tracing::warn!(error = %e, lease = %args.lease_name, "cannot create the owned Lease; the rotation loop retries");
    }
    let duration = args.lease_duration.as_secs().max(3);
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .with_field_manager(format!("{FIELD_MANAGER}-lease-{identity}"))
        .build()
        .await?;
    let (leader, lease_task) = manager.watch().await;
    // `follow` owns the only receiver: when it returns, the manager's task
    // sees the channel closed, releases the Lease and ends.
    let result = follow(leader, shutdown, &identity, ctx, ns, &metrics).await;
    match tokio::time::timeout(RELEASE_TIMEOUT, lease_task).await {
        Ok(Ok(Ok(_))) => {
            tracing::info!(%identity, lease = %args.lease_name, "released the leader Lease")
        }
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, lease = %args.lease_name, "cannot release the leader Lease; it expires instead")
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, lease = %args.lease_name, "the lease manager task failed; the Lease expires instead")
        }
        Err(_) => {
            tracing::warn!(timeout = ?RELEASE_TIMEOUT, lease = %args.lease_name, "releasing the leader Lease timed out; it expires instead")
        }
    }
    result
}

/// Run the controller whenever `leader` is true, stopping it when the lease
/// is lost; return once `shutdown` turns true (the controller stopped).
async fn follow(
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
    identity: &str,
    ctx: Arc<Context>,
    ns: Vec<String>,
    metrics: &Metrics,
) -> Result<()> {
    loop {
        tokio::select! {
            led = leader.wait_for(|&l| l) => {
                led.map_err(|_| Error::Stopped("leader election"))?;
            }
            _ = shutdown.wait_for(|&s| s) => return Ok(()),
        }
        tracing::info!(%identity, "leading: starting the controller");
        metrics.leader.set(1);
        let stop = either(
            became(leader.clone(), false),
            became(shutdown.clone(), true),
        );
        reconcile::run(ctx.clone(), ns.clone(), stop).await;
        metrics.leader.set(0);
        if *shutdown.borrow() {
            tracing::info!(%identity, "controller stopped");
            return Ok(());
        }
        if leader.is_closed() {
            // The lease manager's task is gone: nobody renews the Lease.
            return Err(Error::Stopped("leader election"));
        }
        if *leader.borrow() {
            tracing::warn!(%identity, "the controller ended by itself; restarting it");
        } else {
            tracing::warn!(%identity, "lost the lease: controller stopped");
        }
    }
}

/// Resolves once `rx` holds `value`, or its sender is gone (nothing will
/// change it any more, so waiting longer would hang a shutdown).
async fn became(mut rx: watch::Receiver<bool>, value: bool) {
    let _ = rx.wait_for(|&v| v == value).await;
}

/// Resolves when either future does.
async fn either(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    tokio::select! {
        () = a => {}
        () = b => {}
    }
}
