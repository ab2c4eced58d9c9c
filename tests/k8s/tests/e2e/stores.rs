//! Scenarios 2, 3 and 10: a managed ETagStore's children, status, printer
//! columns, drift repair and garbage collection; an external ETagStore's
//! Degraded → Ready as its Secret appears and changes, within seconds (the
//! operator watches Secrets; no waiting for a requeue); a policy only the
//! sidecar's parser refuses never reaches the policy ConfigMap.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::{
    DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams,
};
use kube::core::NamespaceResourceScope;
use sametag_k8s_e2e::ets::{
    condition, create_namespace, etagstore, etagstores, owned_by, status_summary, wait_condition,
};
use sametag_k8s_e2e::{Error, Result, wait};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::ctx::Ctx;

const WAIT: Duration = Duration::from_secs(60);

/// Names of the objects of kind `K` in `ns` controlled by `uid`.
async fn owned<K>(client: &kube::Client, ns: &str, uid: &str) -> Result<Vec<String>>
where
    K: kube::Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|o| owned_by(o.meta(), uid))
        .filter_map(|o| o.meta().name.clone())
        .collect())
}

/// Every kind of child a managed store must have, by kind: names owned by uid.
async fn children(
    client: &kube::Client,
    ns: &str,
    uid: &str,
) -> Result<BTreeMap<&'static str, Vec<String>>> {
    Ok(BTreeMap::from([
        ("Secret", owned::<Secret>(client, ns, uid).await?),
        ("ConfigMap", owned::<ConfigMap>(client, ns, uid).await?),
        ("StatefulSet", owned::<StatefulSet>(client, ns, uid).await?),
        ("Service", owned::<Service>(client, ns, uid).await?),
        (
            "NetworkPolicy",
            owned::<NetworkPolicy>(client, ns, uid).await?,
        ),
    ]))
}

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// Every store, managed or external, owns `<store>-purge` holding a random
/// purge token (the sidecars' purge API and `sametag-operator invalidate`
/// authenticate with it), created once: a reconcile never changes it.
async fn purge_token(client: &kube::Client, ns: &str, store: &str, uid: &str) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let name = format!("{store}-purge");
    let secret = wait::until("the purge-token Secret", WAIT, || {
        let (secrets, name) = (secrets.clone(), name.clone());
        async move {
            secrets
                .get_opt(&name)
                .await?
                .map(Some)
                .ok_or_else(|| err(format!("no Secret {name}")))
        }
    })
    .await?;
    if !owned_by(&secret.metadata, uid) {
        return Err(err(format!("{name} is not controlled by the store")));
    }
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        .unwrap_or_default();
    if token.len() < 32 || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(err(format!(
            "{name}: token {token:?} is not a long random string"
        )));
    }
    Ok(token)
}

pub async fn managed(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    let ns = "e2e-managed";
    create_namespace(&ctx.admin, ns, &[]).await?;
    let api = etagstores(&ctx.admin, ns);
    let obj = etagstore(
        "web",
        json!({ "redis": { "managed": {} }, "policy": { "mode": "Validate" } }),
    )?;
    let created = api.create(&PostParams::default(), &obj).await?;
    let uid = created.metadata.uid.clone().ok_or_else(|| err("no uid"))?;

    // 1. Children appear, each with a controller owner reference to the store.
    let kids = wait::until("the managed store's children", WAIT, || {
        let (client, uid) = (ctx.admin.clone(), uid.clone());
        async move {
            let kids = children(&client, ns, &uid).await?;
            let missing: Vec<_> = kids
                .iter()
                .filter(|(_, v)| v.is_empty())
                .map(|(k, _)| *k)
                .collect();
            if missing.is_empty() {
                Ok(Some(kids))
            } else {
                Err(err(format!("missing {missing:?}")))
            }
        }
    })
    .await?;
    let token = purge_token(&ctx.admin, ns, "web", &uid).await?;
    // Redis config and the sidecar policy: two ConfigMaps, or one holding
    // both. The policy is applied last: wait for it, not just any ConfigMap.
    let cms: Api<ConfigMap> = Api::namespaced(ctx.admin.clone(), ns);
    let policy_cm = wait::until("a ConfigMap carrying the policy", WAIT, || {
        let (client, uid, cms) = (ctx.admin.clone(), uid.clone(), cms.clone());
        async move {
            let kids = children(&client, ns, &uid).await?;
            for name in &kids["ConfigMap"] {
                let cm = cms.get(name).await?;
                let text = serde_json::to_string(&cm.data).unwrap_or_default();
                if text.contains("Validate") {
                    return Ok(Some(name.clone()));
                }
            }
            Err(err(format!(
                "no ConfigMap carries the policy: {:?}",
                kids["ConfigMap"]
            )))
        }
    })
    .await?;

    // 2. Not ready while Redis is not: Ready=False for the current generation.
    let store = wait_condition(&api, "web", "Ready", "False", WAIT).await?;
    if condition(&store, "Progressing").is_none() {
        return Err(err("no Progressing condition while Redis is starting"));
    }

    // 3. Redis becomes ready: set the StatefulSet status the way the
    //    StatefulSet controller would once the kubelet reports ready pods.
    let sts_api: Api<StatefulSet> = Api::namespaced(ctx.admin.clone(), ns);
    let sts_name = kids["StatefulSet"][0].clone();
    let sts = sts_api.get(&sts_name).await?;
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = json!({ "status": {
        "observedGeneration": sts.metadata.generation,
        "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        "currentReplicas": replicas, "updatedReplicas": replicas,
    }});
    sts_api
        .patch_status(&sts_name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let store = wait_condition(&api, "web", "Ready", "True", WAIT).await?;
    let endpoint = store.data["status"]["endpoint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !endpoint.starts_with("redis") {
        return Err(err(format!("status.endpoint {endpoint:?}")));
    }

    // 4. kubectl get ets shows the printer columns.
    let out = ctx.tools.kubectl(["get", "ets", "-n", ns]).await?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if header
        != [
            "NAME", "READY", "MODE", "ENDPOINT", "PRIMARY", "INJECTED", "AGE",
        ]
    {
        return Err(err(format!("kubectl get ets header: {header:?}\n{out}")));
    }
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    if row.get(..6)
        != Some(
            &[
                "web",
                "True",
                "Validate",
                endpoint.as_str(),
                "web-redis-0",
                "0/0",
            ][..],
        )
    {
        return Err(err(format!("kubectl get ets row: {row:?}")));
    }

    // 5. A spec change moves observedGeneration and reaches the policy ConfigMap.
    let patch = json!({ "spec": { "policy": { "mode": "Trust", "maxAge": "45s" } } });
    api.patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_condition(&api, "web", "Ready", "True", WAIT).await?;
    wait::until("the policy ConfigMap to carry mode Trust", WAIT, || {
        let (cms, name) = (cms.clone(), policy_cm.clone());
        async move {
            let text = serde_json::to_string(&cms.get(&name).await?.data).unwrap_or_default();
            Ok((text.contains("Trust") && text.contains("45s")).then_some(()))
        }
    })
    .await?;

    // 6. Drift is repaired: edit a child's content, the operator puts it back.
    let before = cms.get(&policy_cm).await?.data;
    let edited: BTreeMap<String, String> = before
        .clone()
        .unwrap_or_default()
        .into_keys()
        .map(|k| (k, "mode: Bypass\n".to_string()))
        .collect();
    cms.patch(
        &policy_cm,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "data": edited })),
    )
    .await?;
    wait::until(
        "the operator to repair the edited policy ConfigMap",
        WAIT,
        || {
            let (cms, name, before) = (cms.clone(), policy_cm.clone(), before.clone());
            async move { Ok((cms.get(&name).await?.data == before).then_some(())) }
        },
    )
    .await?;
    // A deleted child is recreated too.
    let svcs: Api<Service> = Api::namespaced(ctx.admin.clone(), ns);
    let svc_name = kids["Service"][0].clone();
    let old_uid = svcs.get(&svc_name).await?.metadata.uid;
    svcs.delete(&svc_name, &DeleteParams::default()).await?;
    wait::until("the operator to recreate the deleted Service", WAIT, || {
        let (svcs, name, old_uid) = (svcs.clone(), svc_name.clone(), old_uid.clone());
        async move {
            Ok(svcs
                .get_opt(&name)
                .await?
                .filter(|s| s.metadata.uid != old_uid)
                .map(|_| ()))
        }
    })
    .await?;

    // Reconciles since (drift repair, status writes) kept the purge token.
    if purge_token(&ctx.admin, ns, "web", &uid).await? != token {
        return Err(err("a reconcile changed the purge token"));
    }

    // 7. Deleting the store garbage-collects every child (kube-controller-manager).
    api.delete("web", &DeleteParams::foreground()).await?;
    wait::until(
        "garbage collection of the store's children",
        Duration::from_secs(90),
        || {
            let (client, uid) = (ctx.admin.clone(), uid.clone());
            async move {
                let kids = children(&client, ns, &uid).await?;
                let left: Vec<_> = kids.values().flatten().collect();
                if left.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(err(format!("still there: {left:?}")))
                }
            }
        },
    )
    .await
}

/// How fast a Secret change must reach a Degraded store's status (its
/// requeue is 30 s, so only the operator's Secret watch can meet this).
const FAST: Duration = Duration::from_secs(10);
/// Pause before a Secret change, past the reconcile a status write triggers.
const SETTLE: Duration = Duration::from_secs(2);

/// Secret `redis-pass` with the password under `key`.
fn password_secret(key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("redis-pass".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(b"s3cret".to_vec()),
        )])),
        ..Default::default()
    }
}

/// Wait at most FAST until the store is Degraded=True for `reason`.
async fn wait_reason(api: &Api<DynamicObject>, name: &str, reason: &str) -> Result<()> {
    wait::until(
        &format!("ETagStore {name} Degraded with reason {reason}"),
        FAST,
        || async move {
            let obj = api.get(name).await?;
            match condition(&obj, "Degraded") {
                Some((s, r, _)) if s == "True" && r == reason => Ok(Some(())),
                _ => Err(err(format!("status {}", status_summary(&obj)))),
            }
        },
    )
    .await
}

pub async fn external(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    let ns = "e2e-external";
    create_namespace(&ctx.admin, ns, &[]).await?;
    let api = etagstores(&ctx.admin, ns);
    let obj = etagstore(
        "ext",
        json!({ "redis": { "external": { "url": ctx.redis_url(), "secretRef": { "name": "redis-pass" } } } }),
    )?;
    api.create(&PostParams::default(), &obj).await?;

    let store = wait_condition(&api, "ext", "Degraded", "True", WAIT).await?;
    let (_, reason, message) = condition(&store, "Degraded").unwrap_or_default();
    if reason.is_empty() || !message.contains("redis-pass") {
        return Err(err(format!(
            "Degraded must name the missing Secret: reason {reason:?}, message {message:?}"
        )));
    }
    if condition(&store, "Ready").is_some_and(|(s, _, _)| s == "True") {
        return Err(err("Ready=True while the Secret is missing"));
    }

    // The operator watches Secrets: each change below must show within
    // FAST, well under the 30 s requeue of a Degraded store. Settle first so
    // the reconcile echoing the Degraded status write cannot be what sees it.
    tokio::time::sleep(SETTLE).await;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), ns);
    secrets
        .create(&PostParams::default(), &password_secret("pw"))
        .await?;
    wait_reason(&api, "ext", "SecretKeyMissing").await?;

    tokio::time::sleep(SETTLE).await;
    secrets
        .replace(
            "redis-pass",
            &PostParams::default(),
            &password_secret("password"),
        )
        .await?;
    let store = wait_condition(&api, "ext", "Ready", "True", FAST).await?;
    if condition(&store, "Degraded").is_some_and(|(s, _, _)| s == "True") {
        return Err(err("still Degraded after the Secret got its key"));
    }
    let endpoint = store.data["status"]["endpoint"]
        .as_str()
        .unwrap_or_default();
    if endpoint != ctx.redis_url() {
        return Err(err(format!("status.endpoint {endpoint:?}")));
    }
    // External mode runs no Redis.
    let uid = store.metadata.uid.clone().unwrap_or_default();
    if !owned::<StatefulSet>(&ctx.admin, ns, &uid).await?.is_empty() {
        return Err(err("an external store must not get a StatefulSet"));
    }
    purge_token(&ctx.admin, ns, "ext", &uid).await?;
    Ok(())
}

/// Scenario 10: a policy the CRD's CEL rules accept but the sidecar's parser
/// refuses (a reversed range in a glob) is not written: the store is
/// Degraded/InvalidPolicy with the parser's message and a Warning Event, the
/// policy ConfigMap keeps the last valid policy (so injected sidecars keep
/// starting), and fixing the policy applies it and clears the condition.
pub async fn invalid_policy(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    let ns = "e2e-invalid-policy";
    create_namespace(&ctx.admin, ns, &[]).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), ns);
    secrets
        .create(&PostParams::default(), &password_secret("password"))
        .await?;
    let api = etagstores(&ctx.admin, ns);
    let obj = etagstore(
        "shop",
        json!({
            "redis": { "external": { "url": ctx.redis_url(), "secretRef": { "name": "redis-pass" } } },
            "policy": { "mode": "Trust", "maxAge": "30s", "routes": [{ "path": "/api/items/**", "maxAge": "1m" }] }
        }),
    )?;
    api.create(&PostParams::default(), &obj).await?;
    wait_condition(&api, "shop", "Ready", "True", WAIT).await?;
    let cms: Api<ConfigMap> = Api::namespaced(ctx.admin.clone(), ns);
    let policy_text = |cm: ConfigMap| {
        cm.data
            .and_then(|d| d.get("policy.yaml").cloned())
            .unwrap_or_default()
    };
    let valid = policy_text(cms.get("shop-policy").await?);
    sametag_policy::Policy::from_yaml(&valid).map_err(|e| {
        err(format!(
            "the operator wrote a policy the sidecar refuses: {e}\n{valid}"
        ))
    })?;
    if !valid.contains("/api/items/**") {
        return Err(err(format!("policy ConfigMap lacks the route:\n{valid}")));
    }

    // The apiserver accepts it (every [ closes), the sidecar would exit 2.
    let bad = json!({ "spec": { "policy": { "routes": [{ "path": "/api/items/[z-a]", "maxAge": "1m" }] } } });
    api.patch("shop", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .map_err(|e| {
            err(format!(
                "the CRD refused the policy this scenario needs it to accept: {e}"
            ))
        })?;
    let store = wait_condition(&api, "shop", "Degraded", "True", WAIT).await?;
    let (_, reason, message) = condition(&store, "Degraded").unwrap_or_default();
    if reason != "InvalidPolicy"
        || !message.starts_with("spec.policy: routes[0].path: ")
        || !message.contains("[z-a]")
    {
        return Err(err(format!(
            "Degraded must carry InvalidPolicy and the parser's message: reason {reason:?}, message {message:?}"
        )));
    }
    // Let a few reconciles pass (the status write triggers one), then the
    // ConfigMap must still hold the last valid policy.
    tokio::time::sleep(SETTLE).await;
    let kept = policy_text(cms.get("shop-policy").await?);
    if kept != valid {
        return Err(err(format!(
            "the policy ConfigMap changed under an invalid policy:\nbefore:\n{valid}\nafter:\n{kept}"
        )));
    }
    let events: Api<Event> = Api::namespaced(ctx.admin.clone(), ns);
    wait::until("a Warning Event InvalidPolicy", WAIT, || {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await?;
            let seen: Vec<String> = list
                .items
                .iter()
                .map(|e| format!("{:?}/{:?}", e.type_, e.reason))
                .collect();
            let found = list.items.iter().any(|e| {
                e.reason.as_deref() == Some("InvalidPolicy")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref().is_some_and(|n| n.contains("[z-a]"))
            });
            if found {
                Ok(Some(()))
            } else {
                Err(err(format!("events so far: {seen:?}")))
            }
        }
    })
    .await?;

    // Fixed: applied at once, the condition clears.
    let good = json!({ "spec": { "policy": { "routes": [{ "path": "/api/v2/[a-z]*/**", "maxAge": "1m" }] } } });
    api.patch("shop", &PatchParams::default(), &Patch::Merge(&good))
        .await?;
    let store = wait_condition(&api, "shop", "Degraded", "False", WAIT).await?;
    if condition(&store, "Ready").is_none_or(|(s, _, _)| s != "True") {
        return Err(err(format!(
            "not Ready after the fix: {}",
            status_summary(&store)
        )));
    }
    let fixed = policy_text(cms.get("shop-policy").await?);
    if !fixed.contains("/api/v2/[a-z]*/**") {
        return Err(err(format!("the fixed policy was not applied:\n{fixed}")));
    }
    sametag_policy::Policy::from_yaml(&fixed).map_err(|e| {
        err(format!(
            "the operator wrote a policy the sidecar refuses: {e}\n{fixed}"
        ))
    })?;
    Ok(())
}

/// Scenario 18: an external store as production runs one: `rediss://` with
/// a private CA (a real redis-server serving TLS only, its certificate made
/// with rcgen), an ACL user (the default user is off) whose password has
/// every character a URL would mangle. Degraded while the CA Secret is
/// missing; Ready (and StoreReachable) only once the operator connected,
/// authenticated and pinged it; a wrong password is AuthenticationFailed,
/// with a message that names the user, not the password.
pub async fn external_tls_acl(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    const PASSWORD: &str = "p@ss w:/rd%41#?x";
    let redis = sametag_k8s_e2e::redis::TestRedis::start(
        &[
            "user default off".to_owned(),
            format!("user app on \">{PASSWORD}\" ~* &* +@all"),
        ],
        true,
    )?;
    let ca = redis.ca_pem.clone().unwrap_or_default();
    let ns = "e2e-external-tls";
    create_namespace(&ctx.admin, ns, &[]).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.admin.clone(), ns);
    let secret = |name: &str, key: &str, value: &str| Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    secrets
        .create(
            &PostParams::default(),
            &secret("redis-auth", "password", PASSWORD),
        )
        .await?;
    let api = etagstores(&ctx.admin, ns);
    let obj = etagstore(
        "tls",
        json!({ "redis": { "external": {
            "url": redis.url(),
            "username": "app",
            "secretRef": { "name": "redis-auth" },
            "caSecretRef": { "name": "redis-ca" },
        } } }),
    )?;
    api.create(&PostParams::default(), &obj).await?;
    wait_reason(&api, "tls", "CASecretMissing").await?;

    secrets
        .create(&PostParams::default(), &secret("redis-ca", "ca.crt", &ca))
        .await?;
    let store = wait_condition(&api, "tls", "Ready", "True", FAST).await?;
    match condition(&store, "StoreReachable") {
        Some((s, r, _)) if s == "True" && r == "Reachable" => {}
        other => return Err(err(format!("StoreReachable: {other:?}"))),
    }

    // One character off: the operator is refused, and says so.
    tokio::time::sleep(SETTLE).await;
    secrets
        .replace(
            "redis-auth",
            &PostParams::default(),
            &secret("redis-auth", "password", &PASSWORD[1..]),
        )
        .await?;
    wait_reason(&api, "tls", "AuthenticationFailed").await?;
    let store = api.get("tls").await?;
    let (status, reason, message) = condition(&store, "StoreReachable").unwrap_or_default();
    if status != "False" || reason != "AuthenticationFailed" || !message.contains("\"app\"") {
        return Err(err(format!(
            "StoreReachable {status}/{reason}: {message:?}"
        )));
    }
    let all = serde_json::to_string(&store.data["status"]).unwrap_or_default();
    if all.contains(&PASSWORD[1..]) {
        return Err(err(format!("the status shows the password: {all}")));
    }
    if condition(&store, "Ready").is_some_and(|(s, _, _)| s == "True") {
        return Err(err("Ready=True with a wrong password"));
    }

    // Fixed again: Ready again, within seconds (the Secret is watched).
    secrets
        .replace(
            "redis-auth",
            &PostParams::default(),
            &secret("redis-auth", "password", PASSWORD),
        )
        .await?;
    wait_condition(&api, "tls", "Ready", "True", FAST).await?;
    Ok(())
}
