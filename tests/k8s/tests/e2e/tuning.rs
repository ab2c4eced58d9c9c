//! Scenario 11: `config.sametag.dev/*` annotations through the real
//! apiserver: valid ones reach the sidecar's env, resources and the pod's
//! grace period; invalid ones leave the default, and `kubectl` prints the
//! webhook's warning; a Warning Event names the annotation.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::ListParams;
use sametag_k8s_e2e::{Error, Result, wait};

use crate::ctx::Ctx;
use crate::injection;

const NS: &str = "e2e-tuning";

fn err(msg: impl Into<String>) -> Error {
    Error::Other(msg.into())
}

/// `kubectl <args>` with `stdin`; (exit code, stdout, stderr).
pub(crate) async fn kubectl_with(
    ctx: &Ctx,
    args: &[&str],
    stdin: &str,
    path_prefix: Option<&std::path::Path>,
) -> Result<(i32, String, String)> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = tokio::process::Command::new(&ctx.tools.kubectl);
    cmd.args(args)
        .env("KUBECONFIG", &ctx.tools.kubeconfig)
        .env("HOME", &ctx.tools.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()));
    }
    let io = |what: &str| {
        let what = format!("kubectl {}: {what}", args.join(" "));
        move |source| Error::Io { what, source }
    };
    let mut child = cmd.spawn().map_err(io("spawn"))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .map_err(io("stdin"))?;
    }
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .map_err(|_| err(format!("kubectl {} took over 120s", args.join(" "))))?
        .map_err(io("wait"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn env(pod: &Pod, name: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "sametag-sidecar")?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)?
        .value
        .clone()
}

fn resource(pod: &Pod, side: &str, key: &str) -> Option<String> {
    let c = pod
        .spec
        .as_ref()?
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "sametag-sidecar")?;
    let r = c.resources.clone()?;
    let m = if side == "requests" {
        r.requests
    } else {
        r.limits
    }?;
    m.get(key).map(|q| q.0.clone())
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: tuned
  annotations:
    sametag.dev/inject: "true"
    config.sametag.dev/upstream-timeout: 45s
    config.sametag.dev/drain-timeout: 60s
    config.sametag.dev/log-level: debug
    config.sametag.dev/max-body-size: 16Mi
    config.sametag.dev/cpu-request: 100m
    config.sametag.dev/memory-limit: 256Mi
    config.sametag.dev/cpu-limit: lots
    config.sametag.dev/memory-request: 1Gi
spec:
  containers:
    - name: app
      image: registry.example/app:1
      ports: [{ name: http, containerPort: 8080 }]
"#;

pub async fn annotations(ctx: &Ctx) -> Result<()> {
    ctx.require_operator()?;
    injection::store(ctx, NS, &[]).await?;
    let (code, stdout, stderr) =
        kubectl_with(ctx, &["create", "-n", NS, "-f", "-"], POD, None).await?;
    if code != 0 {
        return Err(err(format!(
            "kubectl create failed ({code}): {stdout}{stderr}"
        )));
    }
    // kubectl prints each admission warning as `Warning: <text>`.
    for key in ["cpu-limit", "memory-request"] {
        let line = format!("Warning: sametag: annotation config.sametag.dev/{key}=");
        if !stderr.contains(&line) {
            return Err(err(format!(
                "no warning for {key} in kubectl's stderr:\n{stderr}"
            )));
        }
    }
    if stderr.matches("Warning: sametag:").count() != 2 {
        return Err(err(format!(
            "expected exactly two sametag warnings:\n{stderr}"
        )));
    }
    if !stderr.contains("exceed the memory limit 256Mi") {
        return Err(err(format!(
            "the memory-request warning should say why:\n{stderr}"
        )));
    }

    let pods: Api<Pod> = Api::namespaced(ctx.admin.clone(), NS);
    let pod = pods.get("tuned").await?;
    injection::check_injected(&pod)?;
    let want_env = [
        ("SAMETAG_UPSTREAM_TIMEOUT", "45s"),
        ("SAMETAG_DRAIN_TIMEOUT", "1m"),
        ("RUST_LOG", "debug"),
        ("SAMETAG_MAX_BODY_BYTES", "16777216"),
        ("SAMETAG_TAG_BUFFER_BUDGET", "134217728"),
    ];
    for (name, want) in want_env {
        if env(&pod, name).as_deref() != Some(want) {
            return Err(err(format!("{name} = {:?}, want {want}", env(&pod, name))));
        }
    }
    let want_res = [
        ("requests", "cpu", Some("100m")),
        ("limits", "cpu", None),
        ("requests", "memory", Some("32Mi")),
        ("limits", "memory", Some("256Mi")),
    ];
    for (side, key, want) in want_res {
        if resource(&pod, side, key).as_deref() != want {
            return Err(err(format!(
                "{side}.{key} = {:?}, want {want:?}",
                resource(&pod, side, key)
            )));
        }
    }
    let grace = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds);
    if grace != Some(65) {
        return Err(err(format!(
            "terminationGracePeriodSeconds = {grace:?}, want 65 (60s drain + 5s)"
        )));
    }

    // The Warning Event names the annotations.
    let events: Api<Event> = Api::namespaced(ctx.admin.clone(), NS);
    wait::until(
        "a Warning Event InvalidAnnotation",
        Duration::from_secs(30),
        || {
            let events = events.clone();
            async move {
                let list = events.list(&ListParams::default()).await?.items;
                let hit = list.iter().find(|e| {
                    e.reason.as_deref() == Some("InvalidAnnotation")
                        && e.type_.as_deref() == Some("Warning")
                        && e.involved_object.name.as_deref() == Some("tuned")
                        && e.message.as_deref().is_some_and(|m| {
                            m.contains("config.sametag.dev/cpu-limit")
                                && m.contains("config.sametag.dev/memory-request")
                        })
                });
                Ok(hit.map(|_| ()))
            }
        },
    )
    .await
}
