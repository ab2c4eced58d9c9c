"""Plots for bench/results: throughput and latency per configuration, and the
seed scenario's 304 rate before/after. Reads results.json written by
sametag-bench; writes throughput.png, latency.png, revalidation.png."""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["app", "nginx", "validate-mem", "validate-redis", "trust304-mem", "trust304-redis", "hello"]
COLORS = {
    "app": "#888888",
    "nginx": "#009639",
    "validate-mem": "#1f77b4",
    "validate-redis": "#17becf",
    "trust304-mem": "#d62728",
    "trust304-redis": "#ff7f0e",
    "hello": "#9467bd",
}


def groups(runs):
    """(label, {config: run}) per workload, in a stable order."""
    keys = []
    for r in runs:
        k = (r["size"], r["conns"])
        if k not in keys:
            keys.append(k)
    keys.sort(key=lambda k: (k[0] == 0, k[0], k[1]))
    out = []
    for size, conns in keys:
        label = (f"{size // 1024} KiB" if size else "304 / hello") + f"\n{conns} conns"
        out.append((label, {r["config"]: r for r in runs if r["size"] == size and r["conns"] == conns}))
    return out


def bars(ax, gs, value, ylabel, title):
    configs = [c for c in ORDER if any(c in g for _, g in gs)]
    width = 0.8 / max(1, len(configs))
    for i, c in enumerate(configs):
        xs, ys = [], []
        for j, (_, g) in enumerate(gs):
            if c in g:
                xs.append(j + i * width - 0.4 + width / 2)
                ys.append(value(g[c]))
        ax.bar(xs, ys, width, label=c, color=COLORS.get(c))
    ax.set_xticks(range(len(gs)))
    ax.set_xticklabels([label for label, _ in gs])
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)


def main(out):
    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    gs = groups(res["runs"])
    machine = res["machine"]
    sub = f'{machine["nproc"]} CPUs, {machine["cpu"]}, wrk {res["threads"]} threads, {res["duration_s"]} s/run'

    fig, ax = plt.subplots(figsize=(12, 5))
    bars(ax, gs, lambda r: r["wrk"]["rps"], "requests / s", f"Throughput per configuration ({sub})")
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    bars(axes[0], gs, lambda r: r["wrk"]["p50_ms"], "ms", "p50 latency")
    bars(axes[1], gs, lambda r: r["wrk"]["p99_ms"], "ms", "p99 latency")
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)

    sc = res["scenarios"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = [s["kind"] for s in sc]
    rate = lambda v: 100.0 * v["not_modified"] / max(1, v["requests"])  # noqa: E731
    xs = range(len(sc))
    ax.bar([x - 0.2 for x in xs], [rate(s["without"]) for s in sc], 0.4, label="without sametag", color="#999999")
    ax.bar([x + 0.2 for x in xs], [rate(s["with"]) for s in sc], 0.4, label="with sametag", color="#1f77b4")
    for x, s in zip(xs, sc):
        ax.text(x - 0.2, rate(s["without"]) + 1, f'{rate(s["without"]):.0f}%', ha="center")
        ax.text(x + 0.2, rate(s["with"]) + 1, f'{rate(s["with"]):.0f}%', ha="center")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels)
    ax.set_ylim(0, 110)
    ax.set_ylabel("revalidations answered 304 (%)")
    ax.set_title("Seed scenario: 3 replicas behind round-robin HAProxy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "revalidation.png", dpi=110)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results")
