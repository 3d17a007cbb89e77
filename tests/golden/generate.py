"""Write one golden data directory with an OLD commit's real server (see README.md).

    git worktree add /tmp/fmt-C C        # C: the commit that introduced the format
    python3 -m venv /tmp/venv-C && /tmp/venv-C/bin/pip install -e /tmp/fmt-C
    /tmp/venv-C/bin/python tests/golden/generate.py tests/golden/format-N --commit C --format N

Never run it with today's code: the point of a golden directory is that an old fenliu
wrote it. The python given must be the old commit's install (``import fenliu`` is that
commit); this script, clock.py and scenario.py use nothing else of fenliu than its
generated wire code and its server's command line.

1. A server (ticking every 0.2 s) gets ``scenario.phase1``, then SIGTERM: a final snapshot.
2. A second server on the same directory gets ``scenario.phase2`` (every kind of command
   again: the journal tail), its state is read back (``scenario.observe``), then SIGKILL:
   the directory holds a snapshot and a journal to replay after it.
3. On a throwaway copy, a third server whose clock starts at the moment of the reads
   answers ``scenario.probe`` (changes whose answers depend on hidden state).

``expected.json``: the reads and the probes, with the commit and the reads' wall-clock
window; ``scenario.json``: what each scenario call answered (for people, not compared).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import scenario as sc  # this folder is on sys.path when the script runs


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--format", type=int, required=True)
    args = parser.parse_args()
    import fenliu.server  # the OLD commit's, by construction (checked below, with git)

    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = out / "data"
    work = Path(tempfile.mkdtemp(prefix="golden-gen-"))
    log = work / "server.log"
    python = sys.executable
    built: list[dict[str, Any]] = []

    with sc.server(python, data, log, tick=0.2, cwd=work) as (child, target):
        channel, stubs = sc.stubs(target)
        sc.phase1(stubs, built.append)
        channel.close()
        if sc.stop(child) != 0:
            sys.exit(f"the server did not stop cleanly:\n{log.read_text()}")
    with sc.server(python, data, log, tick=0.3, cwd=work) as (child, target):
        channel, stubs = sc.stubs(target)
        sc.phase2(stubs, built.append)
        read_from = sc.now_ms()
        reads = sc.observe(stubs)
        read_to = sc.now_ms()
        channel.close()
        child.kill()  # SIGKILL: no final snapshot, the journal tail stays to be replayed
        child.wait(30)

    scratch = work / "probe-data"
    shutil.copytree(data, scratch)
    with sc.server(python, scratch, log, tick=3600, clock_ms=read_to, cwd=work) as (_, target):
        channel, stubs = sc.stubs(target)
        probes = sc.probe(stubs, keyed=args.format >= 5)
        channel.close()

    versions = {
        _header_version(path)
        for path in data.rglob("*")
        if path.is_file() and path.name not in NOT_FENLIU_FILES
    }
    if versions != {args.format}:
        sys.exit(f"the files are in format(s) {sorted(versions)}, not {args.format}")
    head = subprocess.run(
        ["git", "-C", str(Path(fenliu.server.__file__).parent), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not head.startswith(args.commit):
        sys.exit(f"the install is at {head}, not {args.commit}")
    expected = {
        "format": args.format,
        "commit": head,
        "shards": sc.SHARDS,
        "read_at_ms": [read_from, read_to],
        "reads": reads,
        "probes": probes,
    }
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    (out / "scenario.json").write_text(json.dumps(built, indent=1) + "\n")
    shutil.rmtree(work)
    print(f"{out}: format {args.format} by {head}")
    for path in sorted(data.rglob("*")):
        if path.is_file():
            print(f"  {path.relative_to(out)}  {path.stat().st_size} bytes")
    return 0


NOT_FENLIU_FILES = ("MANIFEST", "LOCK")  # format 4's JSON manifest and its lock file


def _header_version(path: Path) -> int:
    """The format version in a fenliu file's header: b"FENLIU", then a u16 (little end)."""
    head = path.read_bytes()[:8]
    if head[:6] != b"FENLIU":
        sys.exit(f"{path}: not a fenliu file")
    return int.from_bytes(head[6:8], "little")


if __name__ == "__main__":
    sys.exit(main())
