//! Scenario 9: on SIGTERM the leader gives its Lease back (holderIdentity
//! cleared) before it exits, so in a rolling restart the next replica leads
//! at once instead of after --lease-duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use sametag_k8s_e2e::{Error, Result, wait};

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
