//! The Helm chart without a cluster: `helm lint`, `helm template` snapshots
//! for the main value combinations, the values schema, the properties the
//! chart promises (restricted pods, a webhook that cannot block the cluster,
//! leader election with replicas > 1), that its CRDs and RBAC cannot
//! drift from `crds/` and `operator/rbac.yaml`, that its default images are
//! the ones the release workflow publishes, and that it works as a subchart.
//!
//! Snapshots live in `charts/sametag/tests/snapshots/`; after an intended
//! chart change, refresh them with
//! `SAMETAG_UPDATE_SNAPSHOTS=1 cargo test -p sametag-k8s-e2e --test chart`
//! and review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

use sametag_k8s_e2e::{bins, repo_root};
use serde_json::Value;

const RELEASE: &str = "sametag";
const NAMESPACE: &str = "sametag-system";

fn chart_dir() -> PathBuf {
    repo_root().join("charts/sametag")
}

fn helm() -> PathBuf {
    bins::tool("helm").unwrap_or_else(|e| panic!("{e}"))
}

/// `helm template` with extra args; Err(stderr) when helm fails.
fn template(args: &[&str]) -> Result<String, String> {
    let out = Command::new(helm())
        .arg("template")
        .arg(RELEASE)
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE, "--kube-version", "1.34.0"])
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("sametag-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("sametag-helm-config"),
        )
        .output()
        .expect("run helm");
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("utf-8"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}, got {}", found.len());
    found[0]
}

fn values_file(case: &str) -> PathBuf {
    chart_dir().join(format!("tests/values/{case}.yaml"))
}

fn render_case(case: &str) -> String {
    let f = values_file(case);
    template(&["-f", f.to_str().expect("utf-8 path")])
        .unwrap_or_else(|e| panic!("helm template {case}: {e}"))
}

fn operator_args(docs: &[Value]) -> Vec<String> {
    one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_string())
        .collect()
}

#[test]
fn helm_lint_is_clean() {
    for strict in [false, true] {
        for case in ["default", "webhook-url", "ha", "existing-sa"] {
            let mut cmd = Command::new(helm());
            cmd.arg("lint").arg(chart_dir());
            if strict {
                cmd.arg("--strict");
            }
            let out = cmd
                .arg("-f")
                .arg(values_file(case))
                .output()
                .expect("run helm lint");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "helm lint (strict={strict}, {case}) failed:\n{text}"
            );
            assert!(
                !text.contains("[WARNING]"),
                "helm lint (strict={strict}, {case}) warns:\n{text}"
            );
        }
    }
}

#[test]
fn snapshots_match() {
    let update = std::env::var_os("SAMETAG_UPDATE_SNAPSHOTS").is_some();
    let dir = chart_dir().join("tests/snapshots");
    let mut failures = Vec::new();
    for case in ["default", "webhook-url", "ha", "existing-sa"] {
        let got = render_case(case);
        let path = dir.join(format!("{case}.yaml"));
        if update {
            std::fs::write(&path, &got).expect("write snapshot");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            let first = got
                .lines()
                .zip(want.lines())
                .enumerate()
                .find(|(_, (g, w))| g != w)
                .map(|(i, (g, w))| format!("line {}: got {g:?}, snapshot {w:?}", i + 1))
                .unwrap_or_else(|| {
                    format!(
                        "lengths differ: got {} lines, snapshot {}",
                        got.lines().count(),
                        want.lines().count()
                    )
                });
            failures.push(format!("{case}: {first}"));
        }
    }
    assert!(
        failures.is_empty(),
        "helm template output differs from charts/sametag/tests/snapshots (if intended, rerun with \
         SAMETAG_UPDATE_SNAPSHOTS=1 and review the diff):\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_object_has_the_standard_labels() {
    for case in ["default", "ha", "webhook-url"] {
        for d in docs(&render_case(case)) {
            let labels = &d["metadata"]["labels"];
            for key in [
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/version",
                "app.kubernetes.io/managed-by",
                "helm.sh/chart",
            ] {
                assert!(
                    labels[key].is_string(),
                    "{case}: {} {} lacks label {key}",
                    d["kind"],
                    d["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn operator_pod_is_restricted_and_probed() {
    let docs = docs(&render_case("default"));
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert!(c[probe]["httpGet"]["path"].is_string(), "{probe} missing");
    }
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    assert_eq!(pod["serviceAccountName"], "sametag");
}

#[test]
fn leader_election_follows_replicas() {
    let single = operator_args(&docs(&render_case("default")));
    assert!(
        single.contains(&"--leader-elect=false".to_string()),
        "{single:?}"
    );
    let ha = docs(&render_case("ha"));
    assert_eq!(one(&ha, "Deployment")["spec"]["replicas"], 3);
    assert!(operator_args(&ha).contains(&"--leader-elect=true".to_string()));
}

#[test]
fn webhook_cannot_block_the_cluster_and_sees_only_opted_in_pods() {
    let docs = docs(&render_case("default"));
    let mwc = one(&docs, "MutatingWebhookConfiguration");
    let hooks = mwc["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 2);
    for h in hooks {
        assert_eq!(h["failurePolicy"], "Ignore");
        assert!(h["timeoutSeconds"].as_i64().expect("timeout") <= 5);
        assert_eq!(h["sideEffects"], "None");
        assert_eq!(h["rules"][0]["resources"], serde_json::json!(["pods"]));
        assert_eq!(h["rules"][0]["operations"], serde_json::json!(["CREATE"]));
        // Opt-in is enforced in the apiserver, before any call.
        assert!(
            h["matchConditions"][0]["expression"]
                .as_str()
                .expect("cel")
                .contains("sametag.dev/inject")
        );
        assert!(
            h["namespaceSelector"]["matchExpressions"]
                .as_array()
                .is_some_and(|m| m.len() == 2)
        );
        // The operator owns the CA: the chart never writes caBundle.
        assert!(h["clientConfig"]["caBundle"].is_null());
        assert_eq!(h["clientConfig"]["service"]["name"], "sametag-webhook");
        assert_eq!(h["clientConfig"]["service"]["path"], "/mutate");
    }
    let svc = find(&docs, "Service");
    assert_eq!(svc.len(), 1);
    assert_eq!(svc[0]["spec"]["ports"][0]["port"], 443);

    let url = docs_for_url();
    let mwc = one(&url, "MutatingWebhookConfiguration");
    for h in mwc["webhooks"].as_array().expect("webhooks") {
        assert_eq!(h["clientConfig"]["url"], "https://127.0.0.1:9443/mutate");
        assert!(h["clientConfig"]["service"].is_null());
    }
    assert!(
        find(&url, "Service").is_empty(),
        "no webhook Service when webhook.url is set"
    );
    assert!(
        operator_args(&url).contains(&"--webhook-url=https://127.0.0.1:9443/mutate".to_string())
    );
}

fn docs_for_url() -> Vec<Value> {
    docs(&render_case("webhook-url"))
}

#[test]
fn schema_rejects_bad_values() {
    for (set, why) in [
        ("webhook.timeoutSeconds=10", "timeoutSeconds above 5"),
        ("webhook.failurePolicy=Sometimes", "unknown failurePolicy"),
        ("replicaCount=0", "zero replicas"),
        (
            "webhook.url=http://insecure/mutate",
            "a non-https webhook URL",
        ),
        ("logFormat=xml", "unknown log format"),
        ("nosuchkey=1", "an unknown top-level key"),
    ] {
        let err = template(&["--set", set])
            .err()
            .unwrap_or_else(|| panic!("{why} ({set}) was accepted"));
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{set}: {err}"
        );
    }
}

#[test]
fn existing_service_account_and_no_rbac_no_webhook() {
    let docs = docs(&render_case("existing-sa"));
    assert!(find(&docs, "ServiceAccount").is_empty());
    assert!(find(&docs, "ClusterRole").is_empty());
    assert!(find(&docs, "MutatingWebhookConfiguration").is_empty());
    let dep = one(&docs, "Deployment");
    assert_eq!(dep["metadata"]["name"], "etags");
    assert_eq!(
        dep["spec"]["template"]["spec"]["serviceAccountName"],
        "my-operator"
    );
    assert!(operator_args(&docs).contains(&"--watch-namespace=shop".to_string()));
}

fn crd_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .filter(|e| {
            e.path()
                .extension()
                .is_some_and(|x| x == "yaml" || x == "yml")
        })
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let generated = crd_files(&repo_root().join("crds"));
    let chart = crd_files(&chart_dir().join("files/crds"));
    assert!(!generated.is_empty(), "crds/ holds no CRD YAML");
    let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&chart),
        names(&generated),
        "charts/sametag/files/crds/ and crds/ hold different files"
    );
    for ((name, a), (_, b)) in chart.iter().zip(&generated) {
        assert!(
            a == b,
            "charts/sametag/files/crds/{name} differs from crds/{name}: copy crds/*.yaml into charts/sametag/files/crds/"
        );
    }
    // Helm installs a chart's crds/ once and never upgrades it: the CRDs
    // must come from templates/ only.
    assert!(
        !chart_dir().join("crds").exists(),
        "charts/sametag/crds/ is back: helm would never upgrade it (the chart templates files/crds/)"
    );
}

/// `v` with every number as a float: helm's fromYaml/toYaml turn `1.0`
/// into `1`, which JSON Schema (and the apiserver) read alike.
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Null, |f| serde_json::json!(f)),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The templated CRDs are the generated ones (spec and name unchanged), with
/// the chart's labels and the keep policy; `crds.install=false` leaves them out.
#[test]
fn rendered_crds_are_the_generated_ones_kept_on_uninstall() {
    let rendered = docs(&template(&[]).expect("render"));
    let crds = find(&rendered, "CustomResourceDefinition");
    let generated = crd_files(&repo_root().join("crds"));
    assert_eq!(
        crds.len(),
        generated.len(),
        "one rendered CRD per file in crds/"
    );
    for (name, bytes) in &generated {
        let want: Value =
            serde_yaml_ng::from_slice(bytes).unwrap_or_else(|e| panic!("crds/{name}: {e}"));
        let got = crds
            .iter()
            .find(|c| c["metadata"]["name"] == want["metadata"]["name"])
            .unwrap_or_else(|| panic!("crds/{name} is not rendered"));
        assert_eq!(
            numbers_as_f64(&got["spec"]),
            numbers_as_f64(&want["spec"]),
            "rendered spec of crds/{name}"
        );
        assert_eq!(got["apiVersion"], want["apiVersion"]);
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "crds/{name}: no keep policy"
        );
    }
    let no_keep = docs(&template(&["--set", "crds.keep=false"]).expect("render"));
    assert!(
        one(&no_keep, "CustomResourceDefinition")["metadata"]["annotations"].is_null(),
        "crds.keep=false still annotates the CRD"
    );
    let without = docs(&template(&["--set", "crds.install=false"]).expect("render"));
    assert!(find(&without, "CustomResourceDefinition").is_empty());
    assert_eq!(find(&without, "Deployment").len(), 1);
}

/// `version = "..."` of `[workspace.package]` in the root Cargo.toml.
fn workspace_version() -> String {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("Cargo.toml");
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(v) = line.strip_prefix("version = ") {
            return v.trim_matches('"').to_owned();
        }
    }
    panic!("no version in [workspace.package] of Cargo.toml");
}

fn yaml_file(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// The chart's default images are what `.github/workflows/release.yml`
/// pushes (its OPERATOR_IMAGE and SIDECAR_IMAGE, tagged with the version),
/// and the chart, its appVersion and the crates share one version, as the
/// workflow requires of a release tag.
#[test]
fn default_images_are_the_released_images() {
    let chart = yaml_file(&chart_dir().join("Chart.yaml"));
    let app_version = chart["appVersion"].as_str().expect("appVersion").to_owned();
    assert_eq!(
        chart["version"],
        app_version.as_str(),
        "chart version vs appVersion"
    );
    assert_eq!(
        workspace_version(),
        app_version,
        "Cargo.toml version vs appVersion"
    );

    let workflow = yaml_file(&repo_root().join(".github/workflows/release.yml"));
    let env = |k: &str| {
        workflow["env"][k]
            .as_str()
            .unwrap_or_else(|| panic!("release.yml sets no env {k}"))
            .to_owned()
    };
    let (operator_image, sidecar_image) = (env("OPERATOR_IMAGE"), env("SIDECAR_IMAGE"));
    // Every job's `run:` scripts, as one text.
    let steps: String = workflow["jobs"]
        .as_object()
        .expect("jobs")
        .values()
        .flat_map(|job| job["steps"].as_array().cloned().unwrap_or_default())
        .filter_map(|step| step["run"].as_str().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("\n");
    for c in ["operator", "sidecar"] {
        assert!(
            repo_root().join(c).join("Containerfile").is_file(),
            "{c}/Containerfile missing"
        );
    }
    assert!(
        steps.contains("-f \"$c/Containerfile\"") && steps.contains("for c in operator sidecar"),
        "release.yml no longer builds operator/Containerfile and sidecar/Containerfile"
    );
    assert!(
        steps.contains("${c^^}_IMAGE"),
        "release.yml tags images by another name"
    );
    assert!(
        env("CHART_REPO").starts_with("oci://") && steps.contains("helm push"),
        "release.yml pushes the chart to an OCI registry"
    );

    let values = yaml_file(&chart_dir().join("values.yaml"));
    assert_eq!(values["image"]["repository"], operator_image.as_str());
    let docs = docs(&template(&[]).expect("render"));
    let container = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("{operator_image}:{app_version}").as_str()
    );
    assert!(
        operator_args(&docs).contains(&format!("--sidecar-image={sidecar_image}:{app_version}")),
        "default sidecar image: {:?}",
        operator_args(&docs)
    );
}

/// The images run as the chart's non-root user: the Containerfiles' USER is
/// the uid/gid the chart and the webhook ask for, on an empty base.
#[test]
fn containerfiles_are_scratch_and_non_root() {
    for c in ["operator", "sidecar"] {
        let text = std::fs::read_to_string(repo_root().join(c).join("Containerfile"))
            .expect("Containerfile");
        let instr: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(instr.first(), Some(&"FROM scratch"), "{c}: base");
        assert!(instr.contains(&"USER 65532:65532"), "{c}: USER");
        assert!(
            !instr.iter().any(|l| l.starts_with("RUN ")),
            "{c}: a RUN needs a shell the image does not have"
        );
        assert!(
            instr
                .iter()
                .any(|l| l.starts_with("COPY")
                    && l.ends_with(&format!("/usr/local/bin/sametag-{c}"))),
            "{c}: binary"
        );
        assert!(
            text.contains("/etc/ssl/certs/ca-certificates.crt"),
            "{c}: CA roots"
        );
    }
    let docs = docs(&template(&[]).expect("render"));
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
}

/// As a subchart (a parent depending on it through file://): helm hands it
/// the parent's `global` values, which the schema must accept, while unknown
/// keys are still refused; the parent's values reach it.
#[test]
fn works_as_a_subchart() {
    let parent = tempfile::tempdir().expect("tempdir");
    let p = parent.path();
    std::fs::write(
        p.join("Chart.yaml"),
        format!(
            "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: sametag\n    version: \"{}\"\n    repository: \"file://{}\"\n",
            yaml_file(&chart_dir().join("Chart.yaml"))["version"]
                .as_str()
                .expect("version"),
            chart_dir().display()
        ),
    )
    .expect("write Chart.yaml");
    std::fs::write(
        p.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\n  labels: {team: web}\nsametag:\n  replicaCount: 2\n  logFormat: text\n",
    )
    .expect("write values.yaml");
    let helm_in = |args: &[&str]| {
        let out = Command::new(helm())
            .args(args)
            .current_dir(p)
            .env("HELM_CACHE_HOME", p.join(".helm/cache"))
            .env("HELM_CONFIG_HOME", p.join(".helm/config"))
            .env("HELM_DATA_HOME", p.join(".helm/data"))
            .output()
            .expect("run helm");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = helm_in(&["dependency", "update", "."]);
    assert!(ok, "helm dependency update: {text}");
    let (ok, text) = helm_in(&["lint", "--strict", "."]);
    assert!(
        ok && !text.contains("[WARNING]"),
        "helm lint of the parent: {text}"
    );
    let (ok, text) = helm_in(&["template", "p", ".", "--kube-version", "1.34.0"]);
    assert!(ok, "helm template of the parent: {text}");
    let rendered = docs(&text);
    assert_eq!(one(&rendered, "Deployment")["spec"]["replicas"], 2);
    assert!(operator_args(&rendered).contains(&"--log-format=text".to_string()));
    assert_eq!(find(&rendered, "CustomResourceDefinition").len(), 1);
    let (ok, text) = helm_in(&[
        "template",
        "p",
        ".",
        "--kube-version",
        "1.34.0",
        "--set",
        "sametag.nosuchkey=1",
    ]);
    assert!(
        !ok && text.contains("nosuchkey"),
        "an unknown subchart key was accepted: {text}"
    );
}

#[test]
fn chart_rbac_is_the_operators_rbac() {
    let operator =
        std::fs::read(repo_root().join("operator/rbac.yaml")).expect("operator/rbac.yaml");
    let chart =
        std::fs::read(chart_dir().join("files/rbac.yaml")).expect("charts/sametag/files/rbac.yaml");
    assert!(
        operator == chart,
        "charts/sametag/files/rbac.yaml differs from operator/rbac.yaml: copy it (the chart templates its rules from it)"
    );
    // What the chart renders: the operator's rules, scoped to this release's
    // webhook configuration, without the create that only
    // --manage-webhook-config needs.
    let source = docs(&String::from_utf8(operator).expect("utf-8"));
    let want_rules = &one(&source, "ClusterRole")["rules"];
    let rendered = docs(&template(&["--set", "fullnameOverride=etags"]).expect("render"));
    let role = find(&rendered, "ClusterRole")[0];
    let got = role["rules"].as_array().expect("rules");
    let mwc_rules: Vec<&Value> = got
        .iter()
        .filter(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == "mutatingwebhookconfigurations"))
        })
        .collect();
    assert_eq!(mwc_rules.len(), 1, "{mwc_rules:?}");
    assert_eq!(mwc_rules[0]["resourceNames"], serde_json::json!(["etags"]));
    assert!(
        !mwc_rules[0]["verbs"]
            .as_array()
            .expect("verbs")
            .iter()
            .any(|v| v == "create")
    );
    let others = |rules: &[Value]| -> Vec<Value> {
        rules
            .iter()
            .filter(|r| {
                !r["resources"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "mutatingwebhookconfigurations"))
            })
            .cloned()
            .collect()
    };
    assert_eq!(
        others(got),
        others(want_rules.as_array().expect("rules")),
        "ClusterRole rules drifted"
    );
    assert_eq!(
        one(&rendered, "Role")["rules"],
        one(&source, "Role")["rules"],
        "Role rules drifted"
    );
}
