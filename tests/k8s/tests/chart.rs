//! The Helm chart without a cluster: `helm lint`, `helm template` snapshots
//! for the main value combinations, the values schema, the properties the
//! chart promises (restricted pods, a webhook that cannot block the cluster,
//! leader election with replicas > 1), and that its CRDs and RBAC cannot
//! drift from `crds/` and `operator/rbac.yaml`; the observability pack
//! (monitors, dashboard, alerts) off by default, its rules checked and
//! unit-tested with Debian's `promtool`, and every dashboard query naming a
//! metric the README documents; that its default images are the ones the
//! release workflow publishes, and that it works as a subchart.
//!
//! Snapshots live in `charts/sametag/tests/snapshots/`; after an intended
//! chart change, refresh them with
//! `SAMETAG_UPDATE_SNAPSHOTS=1 cargo test -p sametag-k8s-e2e --test chart`
//! and review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

use sametag_k8s_e2e::{bins, repo_root};
use serde_json::Value;

#[path = "../../common/prom.rs"]
mod prom;

const RELEASE: &str = "sametag";
const NAMESPACE: &str = "sametag-system";
/// The value files under `tests/values/`, each linted and snapshotted.
const CASES: [&str; 5] = ["default", "webhook-url", "ha", "existing-sa", "monitoring"];
/// The monitoring objects, none of which a default install creates.
const MONITORING_KINDS: [&str; 3] = ["PodMonitor", "ServiceMonitor", "PrometheusRule"];

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
        for case in CASES {
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
    for case in CASES {
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
    for case in ["default", "ha", "webhook-url", "monitoring"] {
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
    let single = operator_args(&docs(
        &template(&["--set", "replicaCount=1"]).expect("render"),
    ));
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

/// Safe defaults: two replicas with leader election, a PodDisruptionBudget
/// and a spread over nodes; a single replica gets neither.
#[test]
fn default_is_two_replicas_with_a_pdb_and_a_spread() {
    let docs = docs(&render_case("default"));
    let dep = one(&docs, "Deployment");
    assert_eq!(dep["spec"]["replicas"], 2);
    assert!(operator_args(&docs).contains(&"--leader-elect=true".to_string()));
    let pdb = one(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let spread = &dep["spec"]["template"]["spec"]["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    assert_eq!(
        spread["labelSelector"]["matchLabels"],
        dep["spec"]["selector"]["matchLabels"]
    );
    let one_replica = docs_of(&["--set", "replicaCount=1"]);
    assert!(find(&one_replica, "PodDisruptionBudget").is_empty());
    assert!(
        one(&one_replica, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
            .is_null()
    );
    // Fail is offered: both webhooks get it.
    let fail = docs_of(&["--set", "webhook.failurePolicy=Fail"]);
    for h in one(&fail, "MutatingWebhookConfiguration")["webhooks"]
        .as_array()
        .expect("webhooks")
    {
        assert_eq!(h["failurePolicy"], "Fail");
    }
}

fn docs_of(args: &[&str]) -> Vec<Value> {
    docs(&template(args).unwrap_or_else(|e| panic!("helm template {args:?}: {e}")))
}

/// With watchNamespaces, RBAC is Roles in those namespaces: the ClusterRole
/// keeps only cluster-scoped rules (the named webhook configuration, the
/// watched namespaces' labels), and the webhook only sees those namespaces.
#[test]
fn watch_namespaces_make_roles_and_no_cluster_wide_namespaced_rules() {
    let docs = docs_of(&["--set", "watchNamespaces={shop,web}"]);
    let cluster = one(&docs, "ClusterRole");
    for r in cluster["rules"].as_array().expect("rules") {
        let res = r["resources"][0].as_str().unwrap_or_default();
        assert!(
            ["namespaces", "mutatingwebhookconfigurations"].contains(&res),
            "cluster-wide rule on {res}: {r}"
        );
        assert!(r["resourceNames"].is_array(), "unnamed cluster rule: {r}");
    }
    let ns_rule = cluster["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["resources"][0] == "namespaces")
        .expect("namespaces rule");
    assert_eq!(ns_rule["resourceNames"], serde_json::json!(["shop", "web"]));
    let roles = find(&docs, "Role");
    for ns in ["shop", "web"] {
        let role = roles
            .iter()
            .find(|r| r["metadata"]["namespace"] == ns)
            .unwrap_or_else(|| panic!("no Role in {ns}"));
        let resources: Vec<&str> = role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .flat_map(|r| r["resources"].as_array().expect("resources").iter())
            .filter_map(Value::as_str)
            .collect();
        for want in ["etagstores", "secrets", "pods", "statefulsets", "events"] {
            assert!(
                resources.contains(&want),
                "{ns}: {want} missing: {resources:?}"
            );
        }
        assert!(
            find(&docs, "RoleBinding")
                .iter()
                .any(|b| b["metadata"]["namespace"] == ns
                    && b["subjects"][0]["namespace"] == NAMESPACE),
            "no RoleBinding in {ns}"
        );
    }
    assert!(operator_args(&docs).contains(&"--watch-namespace=shop,web".to_string()));
    for h in one(&docs, "MutatingWebhookConfiguration")["webhooks"]
        .as_array()
        .expect("webhooks")
    {
        let exprs = h["namespaceSelector"]["matchExpressions"]
            .as_array()
            .expect("selector");
        assert!(
            exprs
                .iter()
                .any(|e| e["operator"] == "In" && e["values"] == serde_json::json!(["shop", "web"])),
            "{exprs:?}"
        );
    }
    // The deprecated single value still works and merges.
    let old = docs_of(&[
        "--set",
        "watchNamespace=shop",
        "--set",
        "watchNamespaces={shop,x}",
    ]);
    assert!(operator_args(&old).contains(&"--watch-namespace=shop,x".to_string()));
}

/// cert-manager as the webhook certificate's issuer: a Certificate into the
/// Secret the operator reads, a self-signed Issuer unless one is named, the
/// CA injector's annotation, and an operator that only reads the Secret.
#[test]
fn cert_manager_issues_the_webhook_certificate() {
    let docs = docs_of(&["--set", "webhook.certManager.enabled=true"]);
    let cert = one(&docs, "Certificate");
    assert_eq!(cert["apiVersion"], "cert-manager.io/v1");
    assert_eq!(cert["spec"]["secretName"], "sametag-webhook-tls");
    let dns: Vec<&str> = cert["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        dns.contains(&"sametag-webhook.sametag-system.svc"),
        "{dns:?}"
    );
    let issuer = one(&docs, "Issuer");
    assert!(issuer["spec"]["selfSigned"].is_object());
    assert_eq!(
        cert["spec"]["issuerRef"]["name"],
        issuer["metadata"]["name"]
    );
    let mwc = one(&docs, "MutatingWebhookConfiguration");
    assert_eq!(
        mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "sametag-system/sametag-webhook"
    );
    for h in mwc["webhooks"].as_array().expect("webhooks") {
        assert!(h["clientConfig"]["caBundle"].is_null());
    }
    let args = operator_args(&docs);
    assert!(
        args.contains(&"--cert-manager=true".to_string()),
        "{args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--cert-validity")),
        "{args:?}"
    );
    // The operator only reads its certificate Secret.
    let role = find(&docs, "Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == NAMESPACE)
        .expect("release Role");
    let secrets = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["resources"][0] == "secrets")
        .expect("secrets rule");
    assert_eq!(secrets["verbs"], serde_json::json!(["get"]));
    // An existing issuer: no Issuer made.
    let named = docs_of(&[
        "--set",
        "webhook.certManager.enabled=true",
        "--set",
        "webhook.certManager.issuerRef.name=corp-ca",
        "--set",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]);
    assert!(find(&named, "Issuer").is_empty());
    let cert = one(&named, "Certificate");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "corp-ca");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    // Off by default.
    let default = docs_of(&[]);
    assert!(find(&default, "Certificate").is_empty());
    assert!(one(&default, "MutatingWebhookConfiguration")["metadata"]["annotations"].is_null());
}

/// OpenShift restricted-v2: no UIDs in the operator pod, and the operator
/// is told to leave them out of the sidecar and Redis pods too.
#[test]
fn omit_uids_leaves_uids_to_the_platform() {
    let docs = docs_of(&["--set", "securityContext.omitUids=true"]);
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert!(pod["securityContext"]["runAsUser"].is_null());
    assert!(pod["securityContext"]["runAsGroup"].is_null());
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(operator_args(&docs).contains(&"--omit-uids=true".to_string()));
    let default = docs_of(&[]);
    let pod = &one(&default, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert!(
        !operator_args(&default)
            .iter()
            .any(|a| a.starts_with("--omit-uids"))
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
        ("watchNamespaces={Bad_NS}", "an invalid namespace name"),
        (
            "topologySpread.whenUnsatisfiable=Sometimes",
            "an unknown whenUnsatisfiable",
        ),
        (
            "webhook.certManager.issuerRef.kind=Secret",
            "an unknown issuer kind",
        ),
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

/// The operator replaces stuck Redis pods (it deletes them; their
/// StatefulSet recreates them) and never creates or changes a pod, in the
/// cluster-wide rules and in a watched namespace's Role alike.
#[test]
fn pods_may_be_deleted_never_created_or_changed() {
    let pods_verbs = |rules: &Value| -> Value {
        let rules = rules.as_array().expect("rules");
        let pods: Vec<&Value> = rules
            .iter()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "pods"))
            })
            .collect();
        assert_eq!(pods.len(), 1, "one rule on pods: {pods:?}");
        pods[0]["verbs"].clone()
    };
    let want = serde_json::json!(["get", "list", "watch", "delete"]);
    let cluster = docs(&render_case("default"));
    assert_eq!(pods_verbs(&one(&cluster, "ClusterRole")["rules"]), want);
    let watched = docs_of(&["--set", "watchNamespaces={shop}"]);
    let role = find(&watched, "Role")
        .into_iter()
        .find(|r| r["metadata"]["namespace"] == "shop")
        .expect("Role in shop");
    assert_eq!(pods_verbs(&role["rules"]), want);
}

#[test]
fn monitoring_is_off_by_default() {
    let docs = docs(&render_case("default"));
    for kind in MONITORING_KINDS {
        assert!(find(&docs, kind).is_empty(), "{kind} rendered by default");
    }
    assert!(
        find(&docs, "ConfigMap").is_empty(),
        "a dashboard ConfigMap rendered by default"
    );
}

#[test]
fn monitors_select_injected_sidecars_and_the_operator() {
    let docs = docs(&render_case("monitoring"));
    // The pod label and admin port name are what the webhook writes.
    let inject = std::fs::read_to_string(repo_root().join("operator/src/webhook/inject.rs"))
        .expect("inject.rs");
    assert!(inject.contains(r#"name: Some("sametag-admin".into())"#));
    let children = std::fs::read_to_string(repo_root().join("operator/src/children/mod.rs"))
        .expect("children/mod.rs");
    assert!(children.contains(r#"pub const STORE_LABEL: &str = "sametag.dev/store";"#));

    let pm = one(&docs, "PodMonitor");
    assert_eq!(
        pm["spec"]["selector"]["matchExpressions"],
        serde_json::json!([{"key": "sametag.dev/store", "operator": "Exists"}])
    );
    assert_eq!(pm["spec"]["namespaceSelector"]["any"], true);
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(ep["port"], "sametag-admin");
    assert_eq!(ep["path"], "/metrics");
    assert_eq!(ep["interval"], "15s");
    assert_eq!(pm["metadata"]["labels"]["release"], "prometheus");

    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    // It selects the metrics Service and only that one.
    let wanted = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let selected: Vec<&Value> = find(&docs, "Service")
        .into_iter()
        .filter(|svc| {
            wanted
                .iter()
                .all(|(k, v)| &svc["metadata"]["labels"][k] == v)
        })
        .collect();
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert_eq!(selected[0]["metadata"]["name"], "sametag-metrics");
    assert_eq!(selected[0]["spec"]["ports"][0]["name"], "metrics");

    let cm = one(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "sametag");
    assert_eq!(
        one(&docs, "PrometheusRule")["metadata"]["labels"]["release"],
        "prometheus"
    );

    // A restricted PodMonitor lists its namespaces instead.
    let only = docs_with(&[
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.namespaces={shop,blog}",
    ]);
    assert_eq!(
        one(&only, "PodMonitor")["spec"]["namespaceSelector"],
        serde_json::json!({"matchNames": ["shop", "blog"]})
    );
}

fn docs_with(args: &[&str]) -> Vec<Value> {
    docs(&template(args).unwrap_or_else(|e| panic!("helm template {args:?}: {e}")))
}

/// The rendered PrometheusRule's spec (a Prometheus rule file).
fn rule_file(args: &[&str]) -> String {
    let mut all = vec!["--set", "metrics.prometheusRule.enabled=true"];
    all.extend_from_slice(args);
    let docs = docs_with(&all);
    serde_yaml_ng::to_string(&one(&docs, "PrometheusRule")["spec"]).expect("yaml")
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Default thresholds: checked, then unit-tested.
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, rule_file(&[])).expect("write rules");
    let out = prom::promtool(&["check", "rules", rules.to_str().expect("utf-8")], None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.contains("5 rules found"), "{out}");
    let test = dir.path().join("alerts_test.yaml");
    std::fs::copy(chart_dir().join("tests/rules/alerts_test.yaml"), &test).expect("copy test");
    prom::promtool(&["test", "rules", test.to_str().expect("utf-8")], None)
        .unwrap_or_else(|e| panic!("{e}"));
    // Other thresholds still make valid rules.
    std::fs::write(
        &rules,
        rule_file(&[
            "--set",
            "metrics.prometheusRule.storeDownFor=30s",
            "--set",
            "metrics.prometheusRule.unavailablePercent=50",
            "--set",
            "metrics.prometheusRule.certificateExpiringDays=20",
        ]),
    )
    .expect("write rules");
    prom::promtool(&["check", "rules", rules.to_str().expect("utf-8")], None)
        .unwrap_or_else(|e| panic!("{e}"));
    // Every alert reads only documented metrics.
    let documented = documented_metrics();
    let none = std::collections::BTreeSet::new();
    let rendered: Value = serde_yaml_ng::from_str(&rule_file(&[])).expect("rules yaml");
    for rule in rendered["groups"][0]["rules"].as_array().expect("rules") {
        let expr = rule["expr"].as_str().expect("expr");
        for name in prom::promql_metric_names(expr, &none) {
            assert!(
                documented.contains(&name),
                "{}: {name} is not in the README",
                rule["alert"]
            );
        }
    }
}

/// The metric names of the README's sidecar and operator tables.
fn documented_metrics() -> std::collections::BTreeSet<String> {
    let readme = prom::readme();
    ["### Sidecar metrics", "### Operator metrics"]
        .into_iter()
        .flat_map(|h| prom::readme_metrics(&readme, h))
        .collect()
}

#[test]
fn dashboard_parses_and_queries_only_documented_metrics() {
    let docs = docs_with(&["--set", "metrics.dashboard.enabled=true"]);
    let cm = one(&docs, "ConfigMap");
    let json = cm["data"]["sametag.json"].as_str().expect("dashboard JSON");
    let dashboard: Value = serde_json::from_str(json).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "sametag-overview");
    let documented = documented_metrics();
    // Histograms are queried by their _bucket series.
    let histograms: std::collections::BTreeSet<String> = documented
        .iter()
        .filter(|n| n.ends_with("_seconds") && !n.ends_with("_timestamp_seconds"))
        .cloned()
        .collect();
    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let names = prom::promql_metric_names(expr, &histograms);
        assert!(!names.is_empty(), "a query names no sametag metric: {expr}");
        for name in names {
            assert!(
                documented.contains(&name),
                "the dashboard queries {name}, which the README does not list: {expr}"
            );
            used.insert(name);
        }
    }
    // The panels the README promises.
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "304 ratio",
        "Trust hit rate",
        "Bytes saved",
        "Store latency",
        "Uninjected pods",
    ] {
        assert!(titles.contains(&want), "no panel {want:?} in {titles:?}");
    }
    for name in [
        "sametag_requests_total",
        "sametag_not_modified_saved_bytes_total",
        "sametag_store_operation_duration_seconds",
        "sametag_pods_without_sidecar",
    ] {
        assert!(used.contains(name), "the dashboard never queries {name}");
    }
}
