"""bench/route_batch.py runs, both codecs interleaved where the wire codec is compiled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fenliu.server.rpc import service

SCRIPT = Path(__file__).parents[2] / "bench" / "route_batch.py"


def test_route_batch_bench_times_each_codec_the_server_can_use() -> None:
    args = ["--batch", "50", "--rounds", "2", "--shops", "3", "--agents", "2", "--world", "100"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    codecs = ["upb", "wire"] if service.WIRE else ["upb"]
    assert record["server_codec"] == codecs[-1]
    assert list(record["decisions_per_s"]) == codecs
    assert all(rate > 0 for rate in record["decisions_per_s"].values())
    for codec in codecs:
        stages = record["stage_us_per_decision"][codec]
        assert set(stages) == {"decode", "convert", "core", "encode"}
        assert all(us > 0 for us in stages.values())
    assert ("wire_over_upb" in record) is service.WIRE
