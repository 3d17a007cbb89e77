"""tests/_procs.py: a process the test started is found by its marker at any moment,
also while it is between two programs (``execve`` in progress), when the kernel shows
an empty environment for it."""

from __future__ import annotations

import os
import subprocess
import uuid

from tests._procs import MARKER, marked


def test_a_process_in_the_middle_of_exec_is_still_found() -> None:
    # bash execs setsid, which execs sleep: looked for at once, most of these are caught
    # mid-exec (an empty /proc/PID/environ for a moment), which must not hide them
    missed = []
    for _ in range(60):
        marker = uuid.uuid4().hex
        child = subprocess.Popen(
            ["bash", "-c", "exec setsid sleep 600"], env={**os.environ, MARKER: marker}
        )
        try:
            found = marked(marker)
            if found != [child.pid]:
                missed.append(found)
        finally:
            child.kill()
            child.wait(10)
    assert not missed, f"{len(missed)} of 60 were not found: {missed}"
