//! The ETagStore controller: `Context`, `reconcile()` and `error_policy()`
//! side by side, and the one server-side-apply helper.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ObjectReference, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::children::{self, BuildError, FIELD_MANAGER, OWNER_LABEL, STORE_LABEL, names};
use crate::crd::{ETagStore, ETagStoreStatus, ExternalRedis, ManagedRedis, RedisMode, RedisStatus};
use crate::error::{Error, Result};
use crate::fleet::{self, Fleet, SIDECARS_INJECTED};
use crate::heal;
use crate::metrics::Metrics;
use crate::reachability;
use crate::secret_watch;
use crate::status::{
    self, CHILD_NOT_OWNED, DEGRADED, Health, INVALID_POLICY, PrimaryObservation, READY,
};
use crate::webhook::inject::{INJECT, NAMESPACE_ENABLED};

/// Asks the sentinels at these addresses which primary the master name
/// (second argument) has and how many replicas they see up; one answer per
/// address, `None` for no answer. Swapped for a fake in tests.
pub type PrimaryProbe = Arc<
    dyn Fn(
            Vec<String>,
            String,
        )
            -> futures::future::BoxFuture<'static, Vec<Option<crate::primary::SentinelAnswer>>>
        + Send
        + Sync,
>;

/// A managed store's Redis as one reconcile saw it, for the status.
#[derive(Clone, Debug)]
pub struct RedisState {
    /// `status.redis` before the failover fields are filled in.
    pub status: RedisStatus,
    /// Failover mode: what the sentinels said.
    pub observed: Option<PrimaryObservation>,
}

/// Shared state of the controller.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events on ETagStores.
    pub recorder: Recorder,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Namespace the operator runs in (the NetworkPolicy admits it).
    pub operator_namespace: String,
    /// Requeue interval of a healthy store.
    pub resync: Duration,
    /// The sidecar image the webhook injects for stores that name none
    /// (`--sidecar-image`): pods running another one are outdated.
    pub sidecar_image: String,
    /// Leave UIDs to the platform in the Redis pods (`--omit-uids`).
    pub omit_uids: bool,
    /// Asks a failover store's sentinels for its primary.
    pub primary_probe: PrimaryProbe,
    /// Consecutive failures per store, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<ETagStore>, u32>>,
    /// Services already warned about (one Event per bypassing port).
    warned: Mutex<BTreeSet<String>>,
    /// Stores whose fleet gauges are set, to drop those of deleted stores.
    gauged: Mutex<BTreeSet<(String, String)>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        operator_namespace: String,
        resync: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("SAMETAG_POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            operator_namespace,
            resync,
            sidecar_image: crate::config::DEFAULT_SIDECAR_IMAGE.to_owned(),
            omit_uids: false,
            primary_probe: Arc::new(|addrs, master| {
                crate::primary::ask_sentinels(addrs, master).boxed()
            }),
            failures: Mutex::new(HashMap::new()),
            warned: Mutex::new(BTreeSet::new()),
            gauged: Mutex::new(BTreeSet::new()),
        }
    }

    /// The same context with the operator's default sidecar image.
    pub fn with_sidecar_image(mut self, image: String) -> Self {
        self.sidecar_image = image;
        self
    }

    /// The same context asking sentinels through `probe`.
    pub fn with_primary_probe(mut self, probe: PrimaryProbe) -> Self {
        self.primary_probe = probe;
        self
    }

    /// The same context leaving UIDs to the platform.
    pub fn with_omit_uids(mut self, omit: bool) -> Self {
        self.omit_uids = omit;
        self
    }

    fn record_failure(&self, store: &ObjectRef<ETagStore>) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(store.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    fn record_success(&self, store: &ObjectRef<ETagStore>) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(store);
    }

    async fn event(&self, store: &ETagStore, type_: EventType, reason: &str, note: String) {
        self.event_on(&store.object_ref(&()), None, type_, reason, note)
            .await;
    }

    /// An Event on `regarding`. Events of one reason on one object form a
    /// series (client-go's and kube's recorders key them without the note,
    /// and a repeat only counts up the first note), so an Event about
    /// another object names it as `related`: each pod replaced, each
    /// Service, each new primary gets its own Event and note.
    async fn event_on(
        &self,
        regarding: &ObjectReference,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: related,
        };
        // Events are best effort: a failure to publish must not fail the reconcile.
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            tracing::warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// A reference to a pod by name (and uid, when known) in `ns`.
fn pod_ref(ns: &str, name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: uid.map(Into::into),
        ..ObjectReference::default()
    }
}

/// Backoff after `failures` consecutive failures: 5s doubling up to 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5u64 << exp).min(Duration::from_secs(300))
}

/// Bring the children of `store` to their desired state and write its status.
pub async fn reconcile(store: Arc<ETagStore>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let ns = store
        .namespace()
        .ok_or_else(|| BuildError::NoNamespace(store.name_any()))?;
    tracing::debug!(store = %store.name_any(), namespace = %ns, "reconciling");

    let outcome = apply_children(&store, &ctx, &ns).await;
    let (health, endpoint, redis) = match outcome {
        Ok(v) => v,
        Err(e) => {
            // Say why in the status before backing off, so `kubectl get ets` shows it.
            let health = degraded("ApplyFailed", e.to_string());
            let _ = write_status(&store, &ctx, &ns, &health, None, None).await;
            return Err(e);
        }
    };
    let degraded = matches!(health, Health::Degraded { .. });
    let progressing = matches!(health, Health::Progressing { .. });
    let observed = redis.as_ref().and_then(|r| r.observed.as_ref());
    let failover = observed.is_some();
    // A replica the sentinels have not linked yet (a pod back with a new
    // IP) links without any change the controller watches: look again soon.
    let replicas_short =
        observed.is_some_and(|o| o.replicas_up.is_some_and(|n| n < o.replicas_expected));
    write_status(&store, &ctx, &ns, &health, endpoint, redis).await?;
    ctx.record_success(&ObjectRef::from_obj(&*store));
    Ok(if degraded {
        // Secret changes wake the store at once (secret_watch); this
        // requeue only backs up a missed watch event.
        Action::requeue(Duration::from_secs(30))
    } else if progressing {
        Action::requeue(Duration::from_secs(10))
    } else if replicas_short {
        Action::requeue(ctx.resync.min(Duration::from_secs(5)))
    } else if failover {
        // A failover changes no Kubernetes object the controller watches
        // when no pod restarts (a hung primary): ask the sentinels often.
        Action::requeue(ctx.resync.min(Duration::from_secs(30)))
    } else {
        Action::requeue(ctx.resync)
    })
}

/// Log, count and back off exponentially per store.
pub fn error_policy(store: Arc<ETagStore>, error: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.record_failure(&ObjectRef::from_obj(&*store));
    let wait = backoff(n);
    tracing::warn!(store = %store.name_any(), namespace = ?store.namespace(), %error, failures = n, retry_in = ?wait, "reconcile failed");
    ctx.metrics.reconcile_failed(error.metric_label());
    let recorder_ctx = ctx.clone();
    let note = error.to_string();
    // error_policy is synchronous; publish the Event in the background.
    tokio::spawn(async move {
        recorder_ctx
            .event(&store, EventType::Warning, "ReconcileFailed", note)
            .await;
    });
    Action::requeue(wait)
}

/// The store's health, its endpoint, and (managed) what its Redis looks like.
type Applied = (Health, Option<String>, Option<RedisState>);

async fn apply_children(store: &ETagStore, ctx: &Context, ns: &str) -> Result<Applied> {
    let client = &ctx.client;
    // Never overwrite (or later delete) an object the store does not own:
    // a name already taken is reported and nothing is applied.
    let foreign = foreign_children(store, client, ns).await?;
    if !foreign.is_empty() {
        return Ok((
            degraded(
                CHILD_NOT_OWNED,
                format!(
                    "{} already exist{} and {} not owned by this ETagStore: left alone, nothing applied; delete or rename {}, or give the store another name",
                    foreign.join(", "),
                    if foreign.len() == 1 { "s" } else { "" },
                    if foreign.len() == 1 { "is" } else { "are" },
                    if foreign.len() == 1 { "it" } else { "them" },
                ),
            ),
            None,
            None,
        ));
    }
    // The purge token exists for every store, managed or external.
    let token = generated_once(
        store,
        ctx,
        ns,
        names::purge(&store.name_any()),
        children::secret::existing_purge_token,
        "PurgeTokenCreated",
        "the purge token",
    )
    .await?;
    apply(client, ns, &children::secret::purge_token(store, &token)?).await?;
    let result = match (store.managed(), store.spec.redis.external.as_ref()) {
        (Some(redis), _) => apply_managed(store, ctx, ns, redis).await?,
        (None, Some(external)) => {
            if was_managed(store) {
                delete_managed(client, ns, store).await?;
            }
            let (h, e) = check_external(ctx, ns, external).await?;
            (h, e, None)
        }
        // CEL forbids this; say so rather than guess.
        (None, None) => (
            degraded(
                "NoRedis",
                "spec.redis sets neither managed nor external".into(),
            ),
            None,
            None,
        ),
    };
    let health = match children::policy_config_map::desired(store) {
        Ok(cm) => {
            apply(client, ns, &cm).await?;
            result.0
        }
        // The CRD's CEL rules let it through but the sidecar would refuse it:
        // injected sidecars would exit 2 and crash-loop. Keep what they run.
        Err(e @ BuildError::InvalidPolicy(_)) => {
            let kept = keep_policy_config_map(store, client, ns).await?;
            degraded(
                INVALID_POLICY,
                format!("{e}; not applied, sidecars keep {kept}"),
            )
        }
        Err(e) => return Err(e.into()),
    };
    Ok((health, result.1, result.2))
}

/// Leave the policy ConfigMap as it is, or create the fallback (Validate
/// everywhere) when there is none; says which, for the condition message.
async fn keep_policy_config_map(
    store: &ETagStore,
    client: &Client,
    ns: &str,
) -> Result<&'static str> {
    let name = names::policy(&store.name_any());
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    if api.get_opt(&name).await?.is_some() {
        return Ok("the last valid policy");
    }
    apply(client, ns, &children::policy_config_map::fallback(store)?).await?;
    Ok("the default policy (Validate for every path)")
}

async fn apply_managed(
    store: &ETagStore,
    ctx: &Context,
    ns: &str,
    redis: &ManagedRedis,
) -> Result<Applied> {
    let client = &ctx.client;
    let name = store.name_any();
    let password = generated_once(
        store,
        ctx,
        ns,
        names::secret(&name),
        children::secret::existing_password,
        "PasswordCreated",
        "the Redis password",
    )
    .await?;
    let sidecar_password = generated_once(
        store,
        ctx,
        ns,
        names::secret(&name),
        children::secret::existing_sidecar_password,
        "SidecarPasswordCreated",
        "the sidecars' Redis password (ACL user sametag)",
    )
    .await?;
    apply(
        client,
        ns,
        &children::secret::desired(store, &password, &sidecar_password)?,
    )
    .await?;
    apply(client, ns, &children::redis_config::desired(store, redis)?).await?;
    let sts = apply(
        client,
        ns,
        &children::redis::desired(store, redis, ctx.omit_uids)?,
    )
    .await?;
    let ready_of = |sts: &StatefulSet| {
        sts.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    };
    let previous = store.status.as_ref().and_then(|s| s.redis.as_ref());
    let (primary, observed, sentinels_ready) = if redis.failover() {
        let sentinels = apply_sentinels(store, ctx, ns, redis).await?;
        let observed = ask_primary(store, ctx, ns).await?;
        // The client Service follows the primary; the last known one while
        // no sentinel answers.
        let primary = observed
            .primary
            .clone()
            .or_else(|| previous.and_then(|r| r.primary.clone()));
        (primary, Some(observed), Some(ready_of(&sentinels)))
    } else {
        if previous.and_then(|r| r.mode) == Some(RedisMode::Failover) {
            delete_sentinels(client, ns, store).await?;
        }
        (None, None, None)
    };
    apply(
        client,
        ns,
        &children::service::desired(store, primary.as_deref())?,
    )
    .await?;
    apply(client, ns, &children::service::headless(store)?).await?;
    apply(
        client,
        ns,
        &children::network_policy::desired(store, &ctx.operator_namespace)?,
    )
    .await?;

    let sentinels = sentinels_ready.zip(observed.as_ref().map(|o| o.primary.as_deref()));
    let health = redis_health(store, ctx, ns, &sts, redis.replicas, sentinels).await?;
    let state = RedisState {
        status: RedisStatus {
            mode: Some(redis.effective_mode()),
            primary: Some(primary.unwrap_or_else(|| format!("{}-0", names::redis(&name)))),
            sentinels: None,
            replicas: None,
        },
        observed,
    };
    Ok((health, Some(managed_endpoint(store, redis)), Some(state)))
}

/// The health of a StatefulSet of `replicas` Redis pods: a stuck pod's own
/// reason before the ready count, after replacing the pod that blocks a
/// rollout to the spec (see `heal`). In failover mode `sentinels` is how many
/// sentinels are ready and the primary they named: Ready needs all of them
/// and a primary.
async fn redis_health(
    store: &ETagStore,
    ctx: &Context,
    ns: &str,
    sts: &StatefulSet,
    replicas: i32,
    sentinels: Option<(i32, Option<&str>)>,
) -> Result<Health> {
    let selector = children::selector_labels(store)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?
        .items;
    let diagnosis = heal::diagnose(sts, &pods, jiff::Timestamp::now());
    if let Some(r) = &diagnosis.replace
        && let Some(message) = replace_pod(store, ctx, ns, r).await?
    {
        return Ok(Health::Progressing {
            reason: heal::REPLACED_STUCK_POD,
            message,
        });
    }
    if let Some(p) = diagnosis.problem {
        return Ok(Health::Degraded {
            about: Some(pod_ref(ns, &p.pod, p.uid.as_deref())),
            reason: p.reason,
            message: p.message,
        });
    }
    let ready = sts
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let mut message = format!("{ready}/{replicas} Redis pods ready");
    let mut all_ready = ready >= replicas;
    if let Some((s, primary)) = sentinels {
        message.push_str(&format!(
            ", {s}/{} sentinels ready, primary {}",
            children::sentinel::SENTINELS,
            primary.unwrap_or("unknown")
        ));
        all_ready &= s >= children::sentinel::SENTINELS && primary.is_some();
    }
    Ok(if all_ready {
        Health::Ready {
            reason: "RedisReady",
            message,
        }
    } else {
        Health::Progressing {
            reason: "WaitingForRedis",
            message,
        }
    })
}

/// Delete a stuck pod (uid precondition) so its StatefulSet recreates it at
/// the update revision; one log line and one Event. `None` when it was gone
/// or replaced already.
async fn replace_pod(
    store: &ETagStore,
    ctx: &Context,
    ns: &str,
    r: &heal::Replacement,
) -> Result<Option<String>> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut params = DeleteParams::background();
    params.preconditions = Some(Preconditions {
        uid: Some(r.uid.clone()),
        resource_version: None,
    });
    match api.delete(&r.pod, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let message = format!(
        "deleted pod {} ({}, revision {}) so that the StatefulSet recreates it at revision {}",
        r.pod, r.why, r.from_revision, r.to_revision
    );
    tracing::info!(store = %store.name_any(), namespace = %ns, pod = %r.pod, why = %r.why,
        from = %r.from_revision, to = %r.to_revision, "replaced a stuck Redis pod of an outdated revision");
    ctx.event_on(
        &store.object_ref(&()),
        Some(pod_ref(ns, &r.pod, Some(&r.uid))),
        EventType::Normal,
        heal::REPLACED_STUCK_POD,
        message.clone(),
    )
    .await;
    Ok(Some(message))
}

/// The endpoint sidecars of a managed store use.
fn managed_endpoint(store: &ETagStore, redis: &ManagedRedis) -> String {
    if redis.failover() {
        children::sentinel::endpoint(store)
    } else {
        children::service::endpoint(store)
    }
}

/// The sentinels of a failover store and the disruption budgets; returns the
/// sentinel StatefulSet as applied.
async fn apply_sentinels(
    store: &ETagStore,
    ctx: &Context,
    ns: &str,
    redis: &ManagedRedis,
) -> Result<StatefulSet> {
    use children::sentinel;
    let client = &ctx.client;
    let sts = apply(client, ns, &sentinel::desired(store, redis, ctx.omit_uids)?).await?;
    apply(client, ns, &sentinel::headless(store)?).await?;
    apply(client, ns, &sentinel::redis_pdb(store)?).await?;
    apply(client, ns, &sentinel::sentinel_pdb(store)?).await?;
    apply(
        client,
        ns,
        &sentinel::network_policy(store, &ctx.operator_namespace)?,
    )
    .await?;
    Ok(sts)
}

/// Ask every running sentinel pod (by pod IP: the operator may not resolve
/// cluster DNS names) which pod is the primary.
async fn ask_primary(store: &ETagStore, ctx: &Context, ns: &str) -> Result<PrimaryObservation> {
    let selector = children::sentinel::sentinel_selector(store)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let addrs: Vec<String> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    let asked = usize::try_from(children::sentinel::SENTINELS).unwrap_or(3);
    let answers = (ctx.primary_probe)(addrs, children::sentinel::master_name(store)).await;
    let hosts: Vec<Option<String>> = answers
        .iter()
        .map(|a| a.as_ref().map(|a| a.primary.clone()))
        .collect();
    let found = children::sentinel::primary_from_answers(&hosts);
    // The weakest view among the sentinels that agree: any of them may
    // lead the next failover.
    let replicas_up = found.as_ref().and_then(|(primary, _)| {
        answers
            .iter()
            .flatten()
            .filter(|a| children::sentinel::pod_of(&a.primary) == primary)
            .filter_map(|a| a.replicas_up)
            .min()
    });
    let pods = store.managed().map_or(1, |m| m.replicas);
    Ok(PrimaryObservation {
        agreeing: found.as_ref().map_or(0, |(_, n)| *n),
        primary: found.map(|(p, _)| p),
        asked,
        replicas_up,
        replicas_expected: u32::try_from(pods.saturating_sub(1)).unwrap_or(0),
    })
}

async fn delete_sentinels(client: &Client, ns: &str, store: &ETagStore) -> Result<()> {
    let name = store.name_any();
    let uid = store.uid().unwrap_or_default();
    let sentinel = names::sentinel(&name);
    delete::<StatefulSet>(client, ns, &sentinel, &uid).await?;
    delete::<Service>(client, ns, &sentinel, &uid).await?;
    delete::<PodDisruptionBudget>(client, ns, &sentinel, &uid).await?;
    delete::<PodDisruptionBudget>(client, ns, &names::redis_pdb(&name), &uid).await?;
    delete::<NetworkPolicy>(client, ns, &sentinel, &uid).await?;
    Ok(())
}

/// The value a generated Secret already holds (read by `existing`), or a
/// fresh one, announced with an Event: generated once, then carried into
/// every later apply so it never changes.
async fn generated_once(
    store: &ETagStore,
    ctx: &Context,
    ns: &str,
    secret: String,
    existing: fn(&Secret) -> Option<String>,
    reason: &str,
    what: &str,
) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(value) = secrets.get_opt(&secret).await?.as_ref().and_then(existing) {
        return Ok(value);
    }
    ctx.event(
        store,
        EventType::Normal,
        reason,
        format!("generated {what} in Secret {secret}"),
    )
    .await;
    Ok(children::secret::generate_password())
}

async fn check_external(
    ctx: &Context,
    ns: &str,
    external: &ExternalRedis,
) -> Result<(Health, Option<String>)> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let r = &external.secret_ref;
    let endpoint = Some(external.url.clone());
    let password = match secrets.get_opt(&r.name).await? {
        None => {
            let message = format!(
                "Secret {ns}/{} (spec.redis.external.secretRef) does not exist; create it with the Redis password under key {:?}",
                r.name, r.key
            );
            return Ok((degraded("SecretMissing", message), endpoint));
        }
        Some(s) => match secret_value(&s, &r.key) {
            Some(v) => v,
            None => {
                let message = format!(
                    "Secret {ns}/{} has no key {:?} (spec.redis.external.secretRef.key)",
                    r.name, r.key
                );
                return Ok((degraded("SecretKeyMissing", message), endpoint));
            }
        },
    };
    let ca = match &external.ca_secret_ref {
        None => None,
        Some(c) => match secrets
            .get_opt(&c.name)
            .await?
            .and_then(|s| secret_value(&s, &c.key))
        {
            Some(pem) => Some(pem),
            None => {
                let message = format!(
                    "Secret {ns}/{} (spec.redis.external.caSecretRef) does not exist or has no key {:?}; create it with the PEM CA bundle",
                    c.name, c.key
                );
                return Ok((degraded("CASecretMissing", message), endpoint));
            }
        },
    };
    let password = String::from_utf8_lossy(&password).into_owned();
    let target = reachability::Target {
        url: &external.url,
        username: external.username.as_deref(),
        password: Some(password.as_str()).filter(|p| !p.is_empty()),
        ca,
    };
    let health = match reachability::check(&target).await {
        Ok(()) => Health::Ready {
            reason: "ExternalRedis",
            message: format!(
                "the operator connected to the external Redis as user {:?}, authenticated and pinged it",
                external.username.as_deref().unwrap_or("default")
            ),
        },
        Err(e) => degraded(e.reason(), e.to_string()),
    };
    Ok((health, endpoint))
}

fn degraded(reason: &'static str, message: String) -> Health {
    Health::Degraded {
        reason,
        message,
        about: None,
    }
}

/// The value of `key` in `secret` (`data`, or `stringData` as written).
fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
}

// The status endpoint says whether the last successful reconcile ran Redis.
fn was_managed(store: &ETagStore) -> bool {
    let endpoint = store.status.as_ref().and_then(|s| s.endpoint.as_deref());
    endpoint == Some(children::service::endpoint(store).as_str())
        || endpoint == Some(children::sentinel::endpoint(store).as_str())
}

/// The children of `store` whose names are taken by objects it does not
/// own, as `Kind ns/name`.
async fn foreign_children(store: &ETagStore, client: &Client, ns: &str) -> Result<Vec<String>> {
    let name = store.name_any();
    let uid = store.uid().unwrap_or_default();
    let (purge, policy) = (names::purge(&name), names::policy(&name));
    let mut found = vec![
        ("Secret", meta::<Secret>(client, ns, &purge).await?, purge),
        (
            "ConfigMap",
            meta::<ConfigMap>(client, ns, &policy).await?,
            policy,
        ),
    ];
    if store.managed().is_some() {
        let (secret, config) = (names::secret(&name), names::redis_config(&name));
        let (redis, headless) = (names::redis(&name), names::headless(&name));
        let netpol = names::network_policy(&name);
        found.extend([
            ("Secret", meta::<Secret>(client, ns, &secret).await?, secret),
            (
                "ConfigMap",
                meta::<ConfigMap>(client, ns, &config).await?,
                config,
            ),
            (
                "StatefulSet",
                meta::<StatefulSet>(client, ns, &redis).await?,
                redis.clone(),
            ),
            ("Service", meta::<Service>(client, ns, &redis).await?, redis),
            (
                "Service",
                meta::<Service>(client, ns, &headless).await?,
                headless,
            ),
            (
                "NetworkPolicy",
                meta::<NetworkPolicy>(client, ns, &netpol).await?,
                netpol,
            ),
        ]);
    }
    if store.managed().is_some_and(ManagedRedis::failover) {
        let (sentinel, pdb) = (names::sentinel(&name), names::redis_pdb(&name));
        found.extend([
            (
                "StatefulSet",
                meta::<StatefulSet>(client, ns, &sentinel).await?,
                sentinel.clone(),
            ),
            (
                "Service",
                meta::<Service>(client, ns, &sentinel).await?,
                sentinel.clone(),
            ),
            (
                "PodDisruptionBudget",
                meta::<PodDisruptionBudget>(client, ns, &pdb).await?,
                pdb,
            ),
            (
                "PodDisruptionBudget",
                meta::<PodDisruptionBudget>(client, ns, &sentinel).await?,
                sentinel.clone(),
            ),
            (
                "NetworkPolicy",
                meta::<NetworkPolicy>(client, ns, &sentinel).await?,
                sentinel,
            ),
        ]);
    }
    let foreign = found
        .into_iter()
        .filter(|(_, m, _)| m.as_ref().is_some_and(|m| !owned_by(m, &uid)))
        .map(|(kind, _, child)| format!("{kind} {ns}/{child}"))
        .collect();
    Ok(foreign)
}

/// Whether `meta` names the store with `uid` as its controller.
pub fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == uid && r.controller == Some(true))
}

async fn meta<K>(client: &Client, ns: &str, name: &str) -> Result<Option<ObjectMeta>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api.get_metadata_opt(name).await?.map(|m| m.metadata))
}

async fn delete_managed(client: &Client, ns: &str, store: &ETagStore) -> Result<()> {
    let name = store.name_any();
    let uid = store.uid().unwrap_or_default();
    delete::<StatefulSet>(client, ns, &names::redis(&name), &uid).await?;
    delete::<Service>(client, ns, &names::redis(&name), &uid).await?;
    delete::<Service>(client, ns, &names::headless(&name), &uid).await?;
    delete::<ConfigMap>(client, ns, &names::redis_config(&name), &uid).await?;
    delete::<NetworkPolicy>(client, ns, &names::network_policy(&name), &uid).await?;
    delete::<Secret>(client, ns, &names::secret(&name), &uid).await?;
    delete_sentinels(client, ns, store).await
}

/// Delete `name` if the store with `uid` owns it (checked again by the
/// apiserver through a uid precondition); anything else is left alone.
async fn delete<K>(client: &Client, ns: &str, name: &str, uid: &str) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let Some(found) = meta::<K>(client, ns, name).await? else {
        return Ok(());
    };
    if !owned_by(&found, uid) {
        tracing::info!(%ns, %name, "not owned by the store: not deleted");
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut params = DeleteParams::background();
    params.preconditions = Some(Preconditions {
        uid: found.uid,
        resource_version: None,
    });
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Server-side apply `obj` (field manager `sametag-operator`, forced).
pub async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.meta().name.clone().unwrap_or_default();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

async fn write_status(
    store: &ETagStore,
    ctx: &Context,
    ns: &str,
    health: &Health,
    endpoint: Option<String>,
    redis: Option<RedisState>,
) -> Result<()> {
    let name = store.name_any();
    let fleet = survey(store, ctx, ns).await?;
    let previous = store.status.as_ref();
    let endpoint = endpoint.or_else(|| previous.and_then(|p| p.endpoint.clone()));
    let now = Time(jiff::Timestamp::now());
    let mut new = status::desired(
        previous,
        store.metadata.generation,
        health,
        endpoint,
        &fleet,
        now.clone(),
    );
    set_reachability(store, previous, &mut new, health, now.clone());
    let failover = match redis {
        Some(r) => status::with_redis(previous, &mut new, r.status, r.observed.as_ref(), now),
        // An apply failure or an external store: keep what was known.
        None => {
            new.redis = previous.and_then(|p| p.redis.clone());
            if let Some(c) = previous.and_then(|p| {
                p.conditions
                    .iter()
                    .find(|c| c.type_ == status::PRIMARY_AVAILABLE)
            }) && store.managed().is_some()
            {
                new.conditions.push(c.clone());
            }
            None
        }
    };
    // Writing an unchanged status would trigger another reconcile: compare first.
    if previous == Some(&new) {
        return Ok(());
    }
    announce(store, ctx, previous, &new, health).await;
    if let Some(f) = failover {
        tracing::warn!(store = %name, namespace = %ns, from = %f.from, to = %f.to, "failover");
        ctx.event_on(
            &store.object_ref(&()),
            Some(pod_ref(ns, &f.to, None)),
            EventType::Warning,
            status::FAILED_OVER,
            format!(
                "the sentinels promoted {} to primary; the primary was {}",
                f.to, f.from
            ),
        )
        .await;
    }
    announce_fleet(store, ctx, previous, &new).await;
    let api: Api<ETagStore> = Api::namespaced(ctx.client.clone(), ns);
    let body = serde_json::json!({ "status": new });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await?;
    Ok(())
}

/// The `StoreReachable` condition of an external store: True once the
/// operator connected, authenticated and pinged it (`check_external`),
/// False with the failure's reason, or `NotChecked` while its Secrets are
/// missing. Managed stores have none (their pods' readiness says it).
fn set_reachability(
    store: &ETagStore,
    previous: Option<&ETagStoreStatus>,
    new: &mut ETagStoreStatus,
    health: &Health,
    now: Time,
) {
    new.conditions
        .retain(|c| c.type_ != reachability::STORE_REACHABLE);
    if store.spec.redis.external.is_none() || store.managed().is_some() {
        return;
    }
    let (on, reason, message) = match health.reason() {
        "ExternalRedis" => (true, reachability::REACHABLE, health.message().to_owned()),
        r @ ("InvalidURL"
        | "AuthenticationFailed"
        | "TLSFailed"
        | "StoreTimeout"
        | "StoreUnreachable") => (false, r, health.message().to_owned()),
        _ => (
            false,
            "NotChecked",
            format!("not checked: {}", health.message()),
        ),
    };
    let status = if on { "True" } else { "False" };
    let last = previous
        .and_then(|p| {
            p.conditions
                .iter()
                .find(|c| c.type_ == reachability::STORE_REACHABLE)
        })
        .filter(|c| c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    new.conditions
        .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: reachability::STORE_REACHABLE.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: store.metadata.generation,
            last_transition_time: last,
        });
}

// Events for what a person would want to see in `kubectl describe ets`.
async fn announce(
    store: &ETagStore,
    ctx: &Context,
    previous: Option<&ETagStoreStatus>,
    new: &ETagStoreStatus,
    health: &Health,
) {
    let was = |t| status::condition_status(previous, t);
    let is = |t| status::condition_status(Some(new), t);
    if previous.is_none() {
        ctx.event(
            store,
            EventType::Normal,
            "Created",
            "children created".into(),
        )
        .await;
    } else if previous.and_then(|p| p.observed_generation) != new.observed_generation
        // An invalid spec was not applied; its Degraded event says so.
        && health.reason() != INVALID_POLICY
    {
        ctx.event(
            store,
            EventType::Normal,
            "Updated",
            "spec change applied".into(),
        )
        .await;
    }
    if is(READY) == Some("True") && was(READY) != Some("True") {
        ctx.event(
            store,
            EventType::Normal,
            "Ready",
            health.message().to_owned(),
        )
        .await;
    }
    if is(DEGRADED) == Some("True")
        && (was(DEGRADED) != Some("True") || health_changed(previous, health))
    {
        ctx.event_on(
            &store.object_ref(&()),
            health.about().cloned(),
            EventType::Warning,
            health.reason(),
            health.message().to_owned(),
        )
        .await;
    }
}

fn health_changed(previous: Option<&ETagStoreStatus>, health: &Health) -> bool {
    previous
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == DEGRADED))
        .is_none_or(|c| c.reason != health.reason() || c.message != health.message())
}

/// The store's pods: counted for the status and the metric, and the
/// Services that bypass their sidecars warned about.
async fn survey(store: &ETagStore, ctx: &Context, ns: &str) -> Result<Fleet> {
    let name = store.name_any();
    let client = &ctx.client;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    let stores: Vec<String> = Api::<ETagStore>::namespaced(client.clone(), ns)
        .list_metadata(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    let enabled = Api::<Namespace>::all(client.clone())
        .get_metadata_opt(ns)
        .await?
        .is_some_and(|n| {
            n.labels()
                .get(INJECT)
                .is_some_and(|v| v == NAMESPACE_ENABLED)
        });
    let image = store
        .spec
        .sidecar
        .image
        .clone()
        .unwrap_or_else(|| ctx.sidecar_image.clone());
    let fleet = fleet::survey(&name, &stores, enabled, &pods, &image);
    ctx.gauge_fleet(ns, &name, &fleet, &stores);

    let mine: Vec<Pod> = pods
        .into_iter()
        .filter(|p| p.labels().get(STORE_LABEL) == Some(&name))
        .collect();
    if !mine.is_empty() {
        let services = Api::<Service>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await?
            .items;
        warn_bypasses(store, ctx, ns, &services, &mine).await;
    }
    Ok(fleet)
}

/// One Warning Event per Service port that reaches the app past the sidecar,
/// on the Service and on the store; again only after it was fixed and broke.
async fn warn_bypasses(
    store: &ETagStore,
    ctx: &Context,
    ns: &str,
    services: &[Service],
    pods: &[Pod],
) {
    let prefix = format!("{ns}/{}/", store.name_any());
    let found = fleet::bypasses(services, pods);
    let keys: BTreeSet<String> = found
        .iter()
        .map(|b| format!("{prefix}{}/{}", b.service, b.port))
        .collect();
    let new: Vec<&fleet::Bypass> = {
        let mut warned = ctx.warned.lock().unwrap_or_else(|p| p.into_inner());
        warned.retain(|k| !k.starts_with(&prefix) || keys.contains(k));
        found
            .iter()
            .filter(|b| warned.insert(format!("{prefix}{}/{}", b.service, b.port)))
            .collect()
    };
    for b in new {
        let note = b.message(ns);
        tracing::warn!(service = %b.service, namespace = %ns, "{note}");
        let svc = services.iter().find(|s| s.name_any() == b.service);
        if let Some(svc) = svc {
            ctx.event_on(
                &svc.object_ref(&()),
                None,
                EventType::Warning,
                fleet::SERVICE_BYPASSES_SIDECAR,
                note.clone(),
            )
            .await;
        }
        ctx.event_on(
            &store.object_ref(&()),
            svc.map(|s| s.object_ref(&())),
            EventType::Warning,
            fleet::SERVICE_BYPASSES_SIDECAR,
            note,
        )
        .await;
    }
}

impl Context {
    /// Set the fleet gauges of a store, and drop those of stores of `ns`
    /// that no longer exist.
    fn gauge_fleet(&self, ns: &str, name: &str, fleet: &Fleet, stores: &[String]) {
        let mut gauged = self.gauged.lock().unwrap_or_else(|p| p.into_inner());
        gauged.retain(|(n, s)| {
            let keep = n != ns || stores.contains(s);
            if !keep {
                self.metrics.forget_store(n, s);
            }
            keep
        });
        gauged.insert((ns.to_owned(), name.to_owned()));
        self.metrics.set_fleet(ns, name, fleet);
    }
}

/// A Warning Event when SidecarsInjected turns False or names other pods.
async fn announce_fleet(
    store: &ETagStore,
    ctx: &Context,
    previous: Option<&ETagStoreStatus>,
    new: &ETagStoreStatus,
) {
    let find = |s: Option<&ETagStoreStatus>| {
        s?.conditions
            .iter()
            .find(|c| c.type_ == SIDECARS_INJECTED)
            .cloned()
    };
    let Some(now) = find(Some(new)) else { return };
    let before = find(previous);
    if now.status == "False"
        && before.as_ref().is_none_or(|b| {
            b.status != "False" || b.reason != now.reason || b.message != now.message
        })
    {
        ctx.event(store, EventType::Warning, &now.reason, now.message.clone())
            .await;
    } else if now.status == "True" && before.is_some_and(|b| b.status == "False") {
        ctx.event(store, EventType::Normal, &now.reason, now.message.clone())
            .await;
    }
}

/// Run the controller until `shutdown` resolves: over every namespace, or
/// one controller per namespace of `watch_namespaces` (each with its own
/// watches, so the operator needs rights in those namespaces only).
pub async fn run(
    ctx: Arc<Context>,
    watch_namespaces: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.boxed().shared();
    if watch_namespaces.is_empty() {
        run_one(ctx, None, shutdown).await;
    } else {
        futures::future::join_all(
            watch_namespaces
                .into_iter()
                .map(|ns| run_one(ctx.clone(), Some(ns), shutdown.clone())),
        )
        .await;
    }
}

async fn run_one(
    ctx: Arc<Context>,
    watch_namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let stores: Api<ETagStore> = match &watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    fn api<K: Resource<DynamicType = (), Scope = NamespaceResourceScope>>(
        c: &Client,
        ns: &Option<String>,
    ) -> Api<K> {
        match ns {
            Some(ns) => Api::namespaced(c.clone(), ns),
            None => Api::all(c.clone()),
        }
    }
    // Only our children are watched, so the caches stay small.
    let owned = watcher::Config::default().labels(OWNER_LABEL);
    let ns = &watch_namespace;
    // Pod churn wakes a store many times a second; one reconcile covers a
    // burst. Every reconcile waits this long, so it is also the floor of
    // create → children and Redis ready → Ready (goal ≤ 1 s, the benchmark's
    // control-plane section): a quarter second coalesces a rollout's events
    // without making every store wait a whole second.
    let controller = Controller::new(stores, watcher::Config::default())
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(250)));
    let referencing = secret_watch::mapper(controller.store());
    let opted_in = fleet::pod_mapper(controller.store());
    // Redis pods (labelled with their store) wake it too: a pod stuck in
    // ImagePullBackOff changes no StatefulSet status, yet the store must say so.
    let pods_to_stores = move |pod: PartialObjectMeta<Pod>| {
        let mut stores = heal::store_of_pod(&pod.metadata);
        stores.extend(opted_in(pod));
        stores
    };
    controller
        .owns(api::<StatefulSet>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<Secret>(&client, ns), owned.clone())
        .owns(api::<NetworkPolicy>(&client, ns), owned.clone())
        .owns(api::<PodDisruptionBudget>(&client, ns), owned)
        // Opted-in and injected pods come and go: keep the pod counts and
        // SidecarsInjected current. Metadata only, and no cache is kept.
        .watches(
            api::<PartialObjectMeta<Pod>>(&client, ns),
            watcher::Config::default(),
            pods_to_stores,
        )
        // An external store's password Secret is the user's: watch only
        // metadata, and wake the stores that name it at once.
        .watches(
            api::<PartialObjectMeta<Secret>>(&client, ns),
            watcher::Config::default(),
            referencing,
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(store = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
