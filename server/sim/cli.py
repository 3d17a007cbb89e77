"""``fenliu simulate``: what-if runs of a shop's traffic through the real core.

    fenliu simulate DATA_DIR --shop s1 --variant max=+3 --variant strategy=least-load
    fenliu simulate rec.flrec --from 2026-11-11T00:00 --to 2026-11-12T00:00 --out report/
    fenliu simulate --synthetic agents=20,sessions=5000 --variant agents=+5
    fenliu simulate export DATA_DIR --shop s1 --from ... --to ... -o rec.flrec

Times are ISO dates (UTC unless they name an offset) or ms since the epoch. It needs no
server: it reads the data directory (read-only, so it may be a running server's) or a
recording file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import engine, recording, report, synthetic
from .model import Behaviour, Parametric


def _time(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or ms") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fenliu simulate",
        description="Replay a shop's traffic (a data directory, a recording file, or a "
        "synthetic model) through the real core under its own policy and under variants.",
        epilog="Variant keys: strategy, queue_order, queue_limit, on_queue_full, "
        "accept_timeout, reply_timeout, idle_end_timeout, queue_wait_limit (durations as "
        "90s, 5m), priority_crowds (vip+svip), max (8, +3), max.AGENT (8), agents (+5, -2). "
        "Synthetic keys: agents, max, sessions, hours, shifts (8-20+12-24), bursts "
        "(20@30m), burst_factor, followups, patience (s), churn, vip, flat, seed. "
        "'fenliu simulate export DATA --shop S -o FILE' writes a recording file.",
    )
    p.add_argument("source", nargs="?", help="a data directory or a recording file")
    p.add_argument("--shop", help="the shop (default: the busiest)")
    p.add_argument("--from", dest="start", type=_time, help="start of the range")
    p.add_argument("--to", dest="end", type=_time, help="end of the range")
    p.add_argument("--synthetic", metavar="KEY=VALUE,...", help="a synthetic traffic model")
    p.add_argument("--variant", action="append", default=[], metavar="[NAME:]KEY=VALUE,...")
    p.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="write the baseline run's journal as a recording file (a synthetic "
        "day to replay later)",
    )
    p.add_argument("--seed", type=int, default=1, help="the behaviour model's seed")
    p.add_argument("--out", type=Path, help="write report.md, report.json, simulate.png here")
    p.add_argument("--no-plot", action="store_true", help="no plot (no matplotlib needed)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when it is a terminal)",
    )
    return p


def _export(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="fenliu simulate export", description="Write a shop's recording from a data directory."
    )
    p.add_argument("data_dir", type=Path)
    p.add_argument("--shop")
    p.add_argument("--from", dest="start", type=_time)
    p.add_argument("--to", dest="end", type=_time)
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        rec = recording.from_data_dir(args.data_dir, args.shop, args.start, args.end)
    except (ValueError, OSError) as exc:
        print(f"fenliu simulate export: {exc}", file=sys.stderr)
        return 1
    rec.write(args.output)
    print(f"{args.output}: shop {rec.shop_id}, {len(rec.commands)} commands")
    return 0


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv[:1] == ["export"]:
        return _export(argv[1:])
    p = _parser()
    args = p.parse_args(argv)
    if (args.source is None) == (args.synthetic is None):
        p.error("give a data directory or recording file, or --synthetic (one of them)")
    try:
        variants = [engine.parse_variant(v) for v in args.variant]
        result = run(args, variants)
    except (ValueError, OSError) as exc:
        print(f"fenliu simulate: {exc}", file=sys.stderr)
        return 1
    runs, meta, title, notes = result
    if args.out is not None:
        text = report.write(args.out, runs, meta, title, notes, plot_it=not args.no_plot)
    else:
        text = report.markdown(runs, title, notes)
    if args.json:
        print(json.dumps({"meta": meta, "runs": runs}, indent=1))
    else:
        print(text, end="")
    return 0


def run(
    args: argparse.Namespace, variants: list[engine.Variant]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], str, list[str]]:
    runs: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    behaviour: Behaviour
    if args.synthetic is not None:
        model = synthetic.parse_model(args.synthetic)
        traffic = synthetic.traffic(model)
        behaviour = Parametric(seed=model.seed)
        title = f"What-if on a synthetic day of shop {model.shop_id}"
    else:
        rec = recording.load(Path(args.source), args.shop, args.start, args.end)
        analysis = engine.analyse(rec, progress=report.Bar("recorded", args.progress))
        traffic, behaviour = analysis.traffic, analysis.behaviour
        runs["recorded"] = analysis.recorded
        title = f"What-if on shop {rec.shop_id}'s recording"
        if traffic.dropped:
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(traffic.dropped.items()))
            notes.append(f"Recorded agents' actions the model does not replay: {dropped}.")
    for variant in [engine.Variant(), *variants]:
        bar = report.Bar(variant.name, args.progress)
        keep = args.record is not None and not variant.policy and variant.name == "baseline"
        runs[variant.name], journal = engine.simulate(
            traffic, behaviour, variant, seed=args.seed, progress=bar, record=keep
        )
        if journal is not None:
            journal.write(args.record)
    if "recorded" in runs:
        r, b = runs["recorded"], runs["baseline"]
        gap = (b["fast_reply_rate"] - r["fast_reply_rate"]) * 100
        wait = (b["wait_mean_s"] / r["wait_mean_s"] - 1) * 100 if r["wait_mean_s"] else 0.0
        notes.append(
            f"Model check (baseline = the recording's own policy, agents from the model): "
            f"2-minute rate {gap:+.1f} points, mean wait {wait:+.0f}% against the recording."
        )
    span_h = (traffic.end - traffic.start) / 3_600_000
    meta = {
        "shop_id": traffic.shop_id,
        "start": traffic.start,
        "end": traffic.end,
        "hours": round(span_h, 2),
        "seed": args.seed,
        "variants": {
            v.name: v.__dict__ | {"policy": {k: str(x) for k, x in v.policy.items()}}
            for v in variants
        },
        "model": behaviour.summary() if hasattr(behaviour, "summary") else type(behaviour).__name__,
    }
    return runs, meta, title, notes
