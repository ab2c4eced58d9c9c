//! Smoke run of `sametag-cp-bench --quick` (the benchmark `bench/run.sh`
//! runs), so it cannot rot: it starts its own control plane, chart and
//! operator, measures tiny counts, and must write a complete
//! `controlplane.json` and `controlplane.md` with no failed request, every
//! store's children seen and every store Ready.

use std::process::Command;

use sametag_k8s_e2e::cpbench::ControlPlaneResults;
use sametag_k8s_e2e::cpbench::measure::expected_children;

#[test]
fn the_control_plane_benchmark_runs_end_to_end() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = Command::new(env!("CARGO_BIN_EXE_sametag-cp-bench"))
        .args(["--quick", "--note", "smoke run"])
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run sametag-cp-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{}\n{stdout}\n{stderr}", run.status);
    // One progress line per step, numbered up to the total.
    let steps: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("[cp-bench"))
        .collect();
    assert!(
        steps.last().is_some_and(|l| l.contains("writing")) && steps.len() >= 6,
        "{stdout}"
    );

    let json = std::fs::read_to_string(out.path().join("controlplane.json")).expect("json");
    let r: ControlPlaneResults = serde_json::from_str(&json).expect("parse");
    for (what, l) in [
        ("webhook", &r.webhook),
        ("create opted in", &r.create_injected),
        ("create not opted in", &r.create_plain),
    ] {
        assert_eq!((l.count, l.errors), (10, 0), "{what}: {l:?}\n{stdout}");
        assert!(
            l.p50_ms > 0.0 && l.p99_ms >= l.p50_ms && l.max_ms >= l.p99_ms,
            "{what}: {l:?}"
        );
    }
    assert_eq!(r.stores.len(), 2, "{stdout}");
    for s in &r.stores {
        assert!(
            s.children_ms.is_some() && s.ready_ms.is_some(),
            "{s:?}\n{stdout}"
        );
        let timed: Vec<&String> = s.per_child_ms.keys().collect();
        let want: Vec<String> = expected_children(&s.name).into_iter().collect();
        assert_eq!(timed, want.iter().collect::<Vec<_>>());
    }
    if r.webhook_metric.is_none() {
        assert!(!r.webhook_metric_note.is_empty());
    }
    let md = std::fs::read_to_string(out.path().join("controlplane.md")).expect("md");
    assert!(md.starts_with("\n## Control plane"), "{md}");
    assert!(md.contains("**Note:** smoke run"), "{md}");

    // --render-only rewrites the same Markdown from the JSON.
    std::fs::remove_file(out.path().join("controlplane.md")).expect("rm");
    let rerender = Command::new(env!("CARGO_BIN_EXE_sametag-cp-bench"))
        .arg("--render-only")
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("render");
    assert!(rerender.status.success());
    assert_eq!(
        std::fs::read_to_string(out.path().join("controlplane.md")).expect("md"),
        md
    );
}
