//! Scenario 4: the apiserver itself rejects invalid ETagStores with the CEL
//! rules' messages (and accepts a valid one, so the rejections are specific).

use kube::api::PostParams;
use sametag_k8s_e2e::ets::{create_namespace, etagstore, etagstores};
use sametag_k8s_e2e::{Error, Result};
use serde_json::json;

use crate::ctx::Ctx;

const NS: &str = "e2e-validation";

pub async fn rejected(ctx: &Ctx) -> Result<()> {
    create_namespace(&ctx.admin, NS, &[]).await?;
    let api = etagstores(&ctx.admin, NS);
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };

    let valid = etagstore(
        "valid",
        json!({
            "redis": { "external": { "url": "rediss://redis.shared.svc:6379/0", "secretRef": { "name": "pw" } } },
            "policy": { "mode": "Trust", "maxAge": "30s",
                        "maxBodyBytes": 1048576,
                        "routes": [{ "path": "/api/**", "mode": "Trust", "maxAge": "1m", "invalidates": ["/api", "/api/{items,tags}/[!_]*"] },
                                   { "path": "/static/{css,{js,mjs}}/[]a-z]*.{css,js}", "mode": "Validate", "invalidates": ["/static/\\{x\\}"] }] }
        }),
    )?;
    api.create(&dry, &valid)
        .await
        .map_err(|e| Error::Other(format!("a valid ETagStore was rejected: {e}")))?;

    let cases = [
        (
            json!({ "redis": { "managed": {}, "external": { "url": "redis://r:6379", "secretRef": { "name": "pw" } } } }),
            "set exactly one of managed or external",
        ),
        (
            json!({ "redis": {} }),
            "set exactly one of managed or external",
        ),
        (
            json!({ "redis": { "external": { "url": "http://r:6379", "secretRef": { "name": "pw" } } } }),
            "must start with redis://, rediss://, redis+sentinel://",
        ),
        (
            json!({ "redis": { "external": { "url": "redis://user:secret@r:6379", "secretRef": { "name": "pw" } } } }),
            "must not carry credentials",
        ),
        (
            json!({ "redis": { "external": { "url": "rediss+sentinel://:secret@s1:26379,s2:26379/m", "secretRef": { "name": "pw" } } } }),
            "must not carry credentials",
        ),
        (
            json!({ "redis": { "external": { "url": "redis+cluster://n1:7000", "username": "a b", "secretRef": { "name": "pw" } } } }),
            "username must not contain",
        ),
        (
            json!({ "policy": { "mode": "Validate", "maxAge": "30s" } }),
            "maxAge is only allowed with mode Trust",
        ),
        (
            json!({ "policy": { "routes": [{ "path": "api/**" }] } }),
            "routes[].path must start with '/'",
        ),
        (
            json!({ "policy": { "routes": [{ "path": "/a", "mode": "Validate", "maxAge": "5s" }] } }),
            "routes[].maxAge is only allowed with mode Trust",
        ),
        (
            json!({ "policy": { "routes": [{ "path": "/a", "invalidates": ["b/**"] }] } }),
            "routes[].invalidates entries must start with '/'",
        ),
        (
            json!({ "redis": { "managed": { "replicas": 9 } } }),
            "spec.redis.managed.replicas",
        ),
        (
            json!({ "policy": { "mode": "Sometimes" } }),
            "Unsupported value",
        ),
        // Globs the sidecar's parser cannot compile, as far as a regex sees.
        (
            json!({ "policy": { "routes": [{ "path": "/a/[b" }] } }),
            "routes[].path is not a valid glob",
        ),
        (
            json!({ "policy": { "routes": [{ "path": "/a/{b,c" }] } }),
            "routes[].path is not a valid glob",
        ),
        (
            json!({ "policy": { "routes": [{ "path": "/a/b}" }] } }),
            "routes[].path is not a valid glob",
        ),
        (
            json!({ "policy": { "routes": [{ "path": "/a", "invalidates": ["/a/[!]"] }] } }),
            "a routes[].invalidates entry is not a valid glob",
        ),
        (
            json!({ "policy": { "maxBodyBytes": "8MB" } }),
            "maxBodyBytes must be a byte count from 1 to 1Gi",
        ),
        (
            json!({ "policy": { "maxBodyBytes": 0 } }),
            "maxBodyBytes must be a byte count from 1 to 1Gi",
        ),
        (
            json!({ "policy": { "maxBodyBytes": "2147483648" } }),
            "maxBodyBytes must be a byte count from 1 to 1Gi",
        ),
        (
            json!({ "policy": { "mode": "Trust", "maxAge": "1.5h" } }),
            "should match",
        ),
    ];
    let mut problems = Vec::new();
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let obj = etagstore(&format!("invalid-{i}"), spec.clone())?;
        match api.create(&dry, &obj).await {
            Ok(_) => problems.push(format!("accepted {spec}")),
            Err(kube::Error::Api(s)) => {
                if s.code != 422 || !s.message.contains(want) {
                    problems.push(format!(
                        "{spec}: expected 422 with {want:?}, got {} {:?}",
                        s.code, s.message
                    ));
                }
            }
            Err(e) => problems.push(format!("{spec}: {e}")),
        }
    }
    // The same through kubectl, as a user sees it.
    let file = ctx.cp.dir.path().join("invalid-ets.yaml");
    std::fs::write(
        &file,
        "apiVersion: sametag.dev/v1alpha1\nkind: ETagStore\nmetadata:\n  name: by-kubectl\nspec:\n  policy:\n    maxAge: 10s\n",
    )
    .map_err(|source| Error::Io { what: "write invalid-ets.yaml".into(), source })?;
    match ctx
        .tools
        .kubectl(["apply", "-n", NS, "-f", file.to_str().unwrap_or_default()])
        .await
    {
        Ok(out) => problems.push(format!(
            "kubectl apply accepted an invalid ETagStore: {out}"
        )),
        Err(e)
            if e.to_string()
                .contains("spec.policy.maxAge is only allowed with mode Trust") => {}
        Err(e) => problems.push(format!("kubectl apply: unexpected error: {e}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(problems.join("\n    ")))
    }
}
