"""The simulator's report: JSON (everything), markdown (the comparison) and one plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROWS = (
    ("sessions", "sessions", "{}"),
    ("wait_mean_s", "wait for an agent, mean (s)", "{:.1f}"),
    ("wait_p50_s", "wait p50 (s)", "{:.1f}"),
    ("wait_p90_s", "wait p90 (s)", "{:.1f}"),
    ("wait_p99_s", "wait p99 (s)", "{:.1f}"),
    ("fast_reply_rate", "first reply within 2 min (queue time included)", "{:.1%}"),
    ("queue_mean", "queue length, mean", "{:.1f}"),
    ("queue_max", "queue length, max", "{}"),
    ("left_messages", "left messages", "{}"),
    ("queue_wait_expiries", "queue-wait expiries", "{}"),
    ("abandoned", "buyers who gave up waiting", "{}"),
    ("fairness_jain", "fairness of served (Jain, 1 = even)", "{:.3f}"),
)


def markdown(runs: dict[str, dict[str, Any]], title: str, notes: list[str]) -> str:
    names = list(runs)
    lines = [f"# {title}", ""]
    lines += notes + ([""] if notes else [])
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for key, label, fmt in ROWS:
        lines.append(f"| {label} | " + " | ".join(fmt.format(runs[n][key]) for n in names) + " |")
    causes = sorted({c for n in names for c in runs[n]["reassigned"]})
    for cause in causes:
        values = " | ".join(str(runs[n]["reassigned"].get(cause, 0)) for n in names)
        lines.append(f"| reassigned: {cause.replace('_', ' ')} | {values} |")
    lines.append("")
    lines.append("Served per agent (min / median / max):")
    lines.append("")
    for n in names:
        served = sorted(a["served"] for a in runs[n]["agents"].values()) or [0]
        lines.append(f"- {n}: {served[0]} / {served[len(served) // 2]} / {served[-1]}")
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    """Queue length over time, the wait percentiles and served per agent, one figure."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "fenliu simulate: the plots need matplotlib: pip install 'fenliu[sim]' "
            "(or pass --no-plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (q, w, s) = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, run in runs.items():
        series = run["queue_series"]
        q.plot([x for x, _ in series], [y for _, y in series], label=name, linewidth=1)
    q.set_xlabel("minutes")
    q.set_ylabel("queued buyers")
    q.set_title("queue length")
    q.legend(fontsize=8)
    labels = ("p50", "p90", "p99")
    width = 0.8 / max(1, len(runs))
    for i, (name, run) in enumerate(runs.items()):
        values = [run[f"wait_{p}_s"] for p in labels]
        w.bar([k + i * width for k in range(3)], values, width, label=name)
    w.set_xticks([k + width * (len(runs) - 1) / 2 for k in range(3)], labels)
    w.set_ylabel("seconds")
    w.set_title("wait for an agent")
    for name, run in runs.items():
        served = sorted((a["served"] for a in run["agents"].values()), reverse=True)
        s.plot(range(1, len(served) + 1), served, marker=".", label=name, linewidth=1)
    s.set_xlabel("agents, busiest first")
    s.set_ylabel("sessions served")
    s.set_title("served per agent")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(
    out: Path,
    runs: dict[str, dict[str, Any]],
    meta: dict[str, Any],
    title: str,
    notes: list[str],
    plot_it: bool = True,
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(runs, title, notes)
    if plot_it:
        plot(runs, out / "simulate.png", title)
        text += "\n![the runs compared](simulate.png)\n"
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1) + "\n")
    return text


class Bar:
    """A progress bar on stderr, for long runs (only when stderr is a terminal, or forced)."""

    def __init__(self, label: str, enabled: bool | None = None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.last = -1

    def __call__(self, fraction: float) -> None:
        if not self.enabled:
            return
        pct = int(fraction * 100)
        if pct == self.last:
            return
        self.last = pct
        filled = pct * 30 // 100
        sys.stderr.write(f"\r{self.label:<24} [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}%")
        if pct >= 100:
            sys.stderr.write("\n")
        sys.stderr.flush()
