"""The golden scenario: what builds each golden data directory, and how it is read back.

Shared by ``generate.py`` (run under an old commit's install, against that commit's
server) and ``tests/server/storage/test_golden.py`` (today's server). It uses only what
every fenliu since the first on-disk format has: the generated wire code in
``fenliu.client._pb`` (Presence, Routing and Queue since format 1; Monitor since format
2), grpcio and protobuf; and the server's command line (``--port --data-dir --shards
--tick-interval --snapshot-interval``, "fenliu serving on HOST:PORT" on stderr).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pbg

HERE = Path(__file__).resolve().parent
CLOCK = HERE / "clock.py"
SHARDS = 2
SHOPS = ["gold-a", "gold-t", "gold-off"]  # shards 1, 0, 1
MISSING_SHOP = "gold-none"
SESSION_IDS = [f"s{n}" for n in range(1, 31)]  # issued, ended and never issued ones
BUYERS = {
    "gold-a": [f"b{n}" for n in range(1, 14)] + ["bp", "bq", "br", "team"],
    "gold-t": ["c1", "c2"],
    "gold-off": ["o1", "o2"],
}
AGENTS_GONE = {"gold-a": ["tmp"]}  # removed agents, read too (NOT_FOUND)
REPEATED_REQUEST = ("gold-a", "b10", "r-p2-b10")  # routed in phase 2, retried by a probe
# Format 5 (issue 11): every mutating request has an idempotency key. Phases 1 and 2 send
# keyed calls (kept in the image, and in the journal tail) when the wire code has it.
KEYED = "request_id" in pb.SetStatusRequest.DESCRIPTOR.fields_by_name
TIME_FIELDS = {"waited_ms", "longest_wait_ms", "at_ms"}  # grow with the wall clock


class Stubs:
    def __init__(self, channel: grpc.Channel) -> None:
        self.presence = pbg.PresenceStub(channel)
        self.routing = pbg.RoutingStub(channel)
        self.queue = pbg.QueueStub(channel)
        self.monitor = pbg.MonitorStub(channel) if hasattr(pbg, "MonitorStub") else None


# ------------------------------------------------------------------ a server process


@contextmanager
def server(
    python: str,
    data: Path,
    log: Path,
    *,
    tick: float,
    clock_ms: int | None = None,
    cwd: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real ``python -m fenliu.server`` on a loopback port; killed (SIGKILL) on exit
    unless the caller stopped it. ``clock_ms``: start its wall clock there (clock.py)."""
    args = [python]
    if clock_ms is not None:
        args += [str(CLOCK), str(clock_ms)]
    args += ["-m", "fenliu.server", "--host", "127.0.0.1", "--port", "0"]
    args += ["--data-dir", str(data), "--shards", str(SHARDS)]
    args += ["--tick-interval", str(tick), "--snapshot-interval", "3600"]
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        child = subprocess.Popen(args, stdout=out, stderr=out, cwd=cwd)
    try:
        yield child, _wait_serving(child, log, start)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)


def _wait_serving(
    child: subprocess.Popen[bytes], log: Path, start: int, timeout: float = 60
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes()[start:].decode(errors="replace")
        found = re.findall(r"fenliu serving on 127\.0\.0\.1:(\d+)", text)
        if found:
            return f"127.0.0.1:{found[-1]}"
        if child.poll() is not None:
            raise AssertionError(f"the server exited with {child.returncode}:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"the server did not serve in {timeout}s:\n{log.read_text()}")


def stop(child: subprocess.Popen[bytes]) -> int:
    """SIGTERM (drain, final snapshot) and wait for the exit code."""
    child.terminate()
    return child.wait(60)


# ------------------------------------------------------------------ answers as JSON


def as_json(message: Message) -> dict[str, Any]:
    """Every field the message type has, defaults included (a field added later shows as
    extra, never as missing), enum values by name."""
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def answer(label: str, call: Callable[[], Message]) -> dict[str, Any]:
    try:
        return {"call": label, "reply": as_json(call())}
    except grpc.RpcError as exc:
        return {"call": label, "error": exc.code().name}  # type: ignore[attr-defined]


# ------------------------------------------------------------------ building the data


def phase1(s: Stubs, log: Callable[[dict[str, Any]], None]) -> None:
    """State in every shape, ticking: ends with SIGTERM (a final snapshot)."""
    P, R = s.presence, s.routing

    def do(label: str, call: Callable[[], Message]) -> dict[str, Any]:
        result = answer(label, call)
        log(result)
        return result

    def route(shop: str, buyer: str, **kw: Any) -> dict[str, Any]:
        req = pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=f"r-{buyer}", **kw)
        return do(f"Route {shop} {buyer} {kw}", lambda: R.Route(req))

    def agent(
        shop: str, agent_id: str, status: int, mx: int, groups: list[str], role: int = 1
    ) -> None:
        req = pb.RegisterAgentRequest(
            shop_id=shop, agent_id=agent_id, role=role, groups=groups, max_concurrent=mx,
            status=status,
        )  # fmt: skip
        do(f"RegisterAgent {shop} {agent_id}", lambda: P.RegisterAgent(req))

    hour = 3_600_000
    policy = pb.ShopPolicy(
        strategy=pb.STRATEGY_LEAST_LOAD, queue_limit=2,
        on_queue_full=pb.ON_QUEUE_FULL_LEAVE_MESSAGE,
        priority_crowds=["vip"], set_priority_crowds=True, priority_may_exceed_capacity=False,
        accept_timeout_ms=hour, reply_timeout_ms=2 * hour, idle_end_timeout_ms=2 * hour,
        time_zone="Europe/Berlin",
    )  # fmt: skip
    do(
        "SetShopPolicy gold-a",
        lambda: P.SetShopPolicy(pb.SetShopPolicyRequest(shop_id="gold-a", policy=policy)),
    )
    ON, INV, SUS, OFF = (
        pb.AGENT_STATUS_ONLINE, pb.AGENT_STATUS_INVISIBLE, pb.AGENT_STATUS_SUSPENDED,
        pb.AGENT_STATUS_OFFLINE,
    )  # fmt: skip
    agent("gold-a", "boss", OFF, 1, [], role=pb.AGENT_ROLE_MAIN)
    agent("gold-a", "a1", ON, 2, ["presale"])
    agent("gold-a", "a2", ON, 1, ["presale", "aftersale"])
    agent("gold-a", "a3", INV, 1, ["aftersale"])
    agent("gold-a", "a4", SUS, 1, [])
    b1 = route("gold-a", "b1", channel="item_page")
    b2 = route("gold-a", "b2", channel="order_page")
    b3 = route("gold-a", "b3", group="aftersale")
    route("gold-a", "b4")
    route("gold-a", "b5")  # everyone non-OFFLINE full: queued
    route("gold-a", "b6", crowds=["vip"])  # priority, may not exceed: queued first
    route("gold-a", "b7")  # the queue is at its limit: a left message
    do(
        "AddPrivateContact gold-a bp",
        lambda: P.AddPrivateContact(pb.PrivateContactRequest(shop_id="gold-a", buyer_id="bp")),
    )
    route("gold-a", "bp", addressed_agent_id="boss")  # MAIN OFFLINE: a left message for MAIN
    route("gold-a", "b8", addressed_agent_id="a1")  # a1 full: its backlog
    sid = lambda d: d["reply"]["session_id"]  # noqa: E731
    do(
        "Acknowledge b1",
        lambda: R.Acknowledge(
            pb.SessionRequest(
                shop_id="gold-a", agent_id=b1["reply"]["agent_id"], session_id=sid(b1)
            )
        ),
    )
    do(
        "Reply b2",
        lambda: R.Reply(
            pb.SessionRequest(
                shop_id="gold-a", agent_id=b2["reply"]["agent_id"], session_id=sid(b2)
            )
        ),
    )
    do(
        "Transfer b3",
        lambda: R.Transfer(
            pb.TransferRequest(shop_id="gold-a", session_id=sid(b3), to_agent_id="a1", force=True)
        ),
    )
    do(
        "EndSessions b2",
        lambda: R.EndSessions(pb.EndSessionsRequest(shop_id="gold-a", session_ids=[sid(b2)])),
    )
    do(
        "SetStatus a3",
        lambda: P.SetStatus(pb.SetStatusRequest(shop_id="gold-a", agent_id="a3", status=SUS)),
    )
    route("gold-a", "team", from_team_member=True, addressed_agent_id="a1")

    # gold-t: timers fire on ticks (an accept timeout moves the session), then it settles.
    fast = pb.ShopPolicy(
        accept_timeout_ms=600, reply_timeout_ms=2 * hour, idle_end_timeout_ms=2 * hour
    )
    do(
        "SetShopPolicy gold-t",
        lambda: P.SetShopPolicy(pb.SetShopPolicyRequest(shop_id="gold-t", policy=fast)),
    )
    agent("gold-t", "t1", ON, 1, [])
    agent("gold-t", "t2", ON, 1, [])
    route("gold-t", "c1")
    time.sleep(1.5)  # ticks every 0.2 s: at least one accept timeout
    slow = pb.ShopPolicy(accept_timeout_ms=hour)
    do(
        "SetShopPolicy gold-t slow",
        lambda: P.SetShopPolicy(pb.SetShopPolicyRequest(shop_id="gold-t", policy=slow)),
    )
    for _ in range(20):  # the holder acknowledges (it may move under us: retry)
        holders = [
            pb.SessionRequest(shop_id="gold-t", agent_id=a, session_id=x.session_id)
            for a in ("t1", "t2")
            for x in R.ListAgentSessions(
                pb.ListAgentSessionsRequest(shop_id="gold-t", agent_id=a)
            ).sessions
        ]
        if holders:
            ack = holders[0]
            if "error" not in do("Acknowledge c1", lambda: R.Acknowledge(ack)):  # noqa: B023
                break
        time.sleep(0.3)
    route("gold-t", "c2")

    agent("gold-off", "off1", OFF, 2, [])
    route("gold-off", "o1")  # nobody non-OFFLINE: a left message
    if KEYED:  # in the image: an outcome, and a refusal that a retry must not turn into one
        reg = pb.RegisterAgentRequest(
            shop_id="gold-a", agent_id="tmp1", max_concurrent=1, request_id="g-p1-reg"
        )
        do("RegisterAgent tmp1 keyed", lambda: P.RegisterAgent(reg))
        do(
            "RemoveAgent tmp1",
            lambda: P.RemoveAgent(pb.RemoveAgentRequest(shop_id="gold-a", agent_id="tmp1")),
        )
        do("SetStatus ghost keyed", lambda: P.SetStatus(KEYED_GHOST))
        do(
            "RegisterAgent ghost",
            lambda: P.RegisterAgent(pb.RegisterAgentRequest(shop_id="gold-off", agent_id="ghost")),
        )
    time.sleep(0.5)  # a few more ticks


def phase2(s: Stubs, log: Callable[[dict[str, Any]], None]) -> None:
    """Every kind of command once more, after the snapshot: the journal tail."""
    P, R, Q = s.presence, s.routing, s.queue

    def do(label: str, call: Callable[[], Message]) -> dict[str, Any]:
        result = answer(label, call)
        log(result)
        return result

    def held(shop: str, agent_id: str) -> list[Any]:
        return list(
            R.ListAgentSessions(
                pb.ListAgentSessionsRequest(shop_id=shop, agent_id=agent_id)
            ).sessions
        )

    OFF = pb.AGENT_STATUS_OFFLINE
    policy = pb.ShopPolicy(notice_interval_ms=3_600_000, queue_order=pb.QUEUE_ORDER_FIFO)
    do(
        "SetShopPolicy gold-a",
        lambda: P.SetShopPolicy(pb.SetShopPolicyRequest(shop_id="gold-a", policy=policy)),
    )
    do(
        "RegisterAgent tmp",
        lambda: P.RegisterAgent(KEYED_TMP if KEYED else _TMP),
    )
    do(
        "RemoveAgent tmp",
        lambda: P.RemoveAgent(pb.RemoveAgentRequest(shop_id="gold-a", agent_id="tmp")),
    )
    if KEYED:  # in the journal tail: a refusal
        do("Acknowledge nope keyed", lambda: R.Acknowledge(KEYED_ACK))
    do(
        "SetStatus a4",
        lambda: P.SetStatus(pb.SetStatusRequest(shop_id="gold-a", agent_id="a4", status=OFF)),
    )
    do(
        "AddPrivateContact bq",
        lambda: P.AddPrivateContact(pb.PrivateContactRequest(shop_id="gold-a", buyer_id="bq")),
    )
    do(
        "RemovePrivateContact bq",
        lambda: P.RemovePrivateContact(pb.PrivateContactRequest(shop_id="gold-a", buyer_id="bq")),
    )
    do(
        "AddPrivateContact br",
        lambda: P.AddPrivateContact(pb.PrivateContactRequest(shop_id="gold-a", buyer_id="br")),
    )
    shop, buyer, rid = REPEATED_REQUEST
    do("Route b10", lambda: R.Route(pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=rid)))
    batch = pb.RouteBatchRequest(requests=[
        pb.RouteRequest(shop_id="gold-a", buyer_id="b11", request_id="r-b11"),
        pb.RouteRequest(shop_id="gold-a", buyer_id="b12", request_id="r-b12", crowds=["vip"]),
    ])  # fmt: skip
    do("RouteBatch b11 b12", lambda: R.RouteBatch(batch))
    a1 = held("gold-a", "a1")
    new = [x for x in a1 if x.state == pb.SESSION_STATE_ASSIGNED]
    if new:
        do(
            "Acknowledge a1",
            lambda: R.Acknowledge(
                pb.SessionRequest(shop_id="gold-a", agent_id="a1", session_id=new[0].session_id)
            ),
        )
    active = [x for x in held("gold-a", "a1") if x.state == pb.SESSION_STATE_ACTIVE]
    do(
        "Reply a1",
        lambda: R.Reply(
            pb.SessionRequest(shop_id="gold-a", agent_id="a1", session_id=active[-1].session_id)
        ),
    )
    do(
        "Transfer a1 to presale",
        lambda: R.Transfer(
            pb.TransferRequest(
                shop_id="gold-a",
                session_id=active[0].session_id,
                agent_id="a1",
                to_group="presale",
                force=True,
            )
        ),
    )
    left = Q.ListLeftMessages(pb.ListLeftMessagesRequest(shop_id="gold-a")).entries
    free = [e for e in left if not e.agent_id]
    if free:
        do(
            "Pick a left message",
            lambda: Q.Pick(
                pb.PickRequest(
                    shop_id="gold-a", agent_id="a2", session_id=free[0].session_id, force=True
                )
            ),
        )
    queue = Q.ListQueue(pb.ListQueueRequest(shop_id="gold-a")).entries
    if queue:
        do(
            "LeaveQueue",
            lambda: Q.LeaveQueue(pb.BuyerRequest(shop_id="gold-a", buyer_id=queue[-1].buyer_id)),
        )
    do(
        "Route b13",
        lambda: R.Route(
            pb.RouteRequest(shop_id="gold-a", buyer_id="b13", request_id="r-b13", group="presale")
        ),
    )
    ended = [x for x in held("gold-a", "a2") if x.state == pb.SESSION_STATE_ACTIVE]
    if ended:
        do(
            "EndSessions a2",
            lambda: R.EndSessions(
                pb.EndSessionsRequest(shop_id="gold-a", session_ids=[ended[0].session_id])
            ),
        )
    do(
        "Route o2",
        lambda: R.Route(pb.RouteRequest(shop_id="gold-off", buyer_id="o2", request_id="r-o2")),
    )
    time.sleep(1.0)  # ticks in the journal tail too (nothing is due)


# ------------------------------------------------------------------ reading it back


def observe(s: Stubs) -> list[dict[str, Any]]:
    """The observable state, through read RPCs only (nothing changes)."""
    P, R, Q = s.presence, s.routing, s.queue
    out: list[dict[str, Any]] = []

    def ask(label: str, method: Callable[[Any], Message], request: Message) -> dict[str, Any]:
        result = answer(label, lambda: method(request))
        out.append(result)
        return result

    for shop in [*SHOPS, MISSING_SHOP]:
        ask(f"GetShopPolicy {shop}", P.GetShopPolicy, pb.GetShopPolicyRequest(shop_id=shop))
        team = ask(f"ListTeam {shop}", P.ListTeam, pb.ListTeamRequest(shop_id=shop))
        agents = [a["agent_id"] for a in team.get("reply", {}).get("agents", [])]
        for agent_id in [*agents, *AGENTS_GONE.get(shop, [])]:
            request = pb.ListAgentSessionsRequest(shop_id=shop, agent_id=agent_id)
            ask(f"ListAgentSessions {shop} {agent_id}", R.ListAgentSessions, request)
        for label, queue in [
            ("", pb.ListQueueRequest(shop_id=shop, limit=1000)),
            (" priority", pb.ListQueueRequest(shop_id=shop, priority_only=True)),
            (" longest", pb.ListQueueRequest(shop_id=shop, sort=pb.QUEUE_SORT_LONGEST_WAIT)),
            (" presale", pb.ListQueueRequest(shop_id=shop, group="presale")),
        ]:
            ask(f"ListQueue {shop}{label}", Q.ListQueue, queue)
        left = pb.ListLeftMessagesRequest(shop_id=shop, limit=1000)
        ask(f"ListLeftMessages {shop}", Q.ListLeftMessages, left)
        for sid in SESSION_IDS if shop != MISSING_SHOP else SESSION_IDS[:1]:
            request = pb.GetSessionRequest(shop_id=shop, session_id=sid)
            ask(f"GetSession {shop} {sid}", R.GetSession, request)
        for buyer in BUYERS.get(shop, ["nobody"]):
            ask(
                f"GetPosition {shop} {buyer}",
                Q.GetPosition,
                pb.BuyerRequest(shop_id=shop, buyer_id=buyer),
            )
        if s.monitor is not None:  # since format 2
            for window in (60, 5):
                stats = pb.GetShopStatsRequest(shop_id=shop, window_minutes=window)
                ask(f"GetShopStats {shop} {window}", s.monitor.GetShopStats, stats)
    return out


_TMP_FIELDS: dict[str, Any] = dict(
    shop_id="gold-a", agent_id="tmp", max_concurrent=1, status=pb.AGENT_STATUS_ONLINE
)
_TMP = pb.RegisterAgentRequest(**_TMP_FIELDS)
if KEYED:
    KEYED_TMP = pb.RegisterAgentRequest(**_TMP_FIELDS, request_id="g-p2-reg")
    KEYED_GHOST = pb.SetStatusRequest(
        shop_id="gold-off", agent_id="ghost", status=pb.AGENT_STATUS_ONLINE, request_id="g-p1-ghost"
    )
    KEYED_ACK = pb.SessionRequest(
        shop_id="gold-a", agent_id="a1", session_id="s999", request_id="g-p2-ack"
    )


def keyed_probes(s: Stubs) -> list[dict[str, Any]]:
    """Format 5: the keyed calls of phases 1 and 2 again, with their keys: each answers as
    it did then and applies nothing (tmp1 and tmp stay removed, ghost stays OFFLINE); a key
    reused by another request is FAILED_PRECONDITION."""
    P, R = s.presence, s.routing
    reg1 = pb.RegisterAgentRequest(
        shop_id="gold-a", agent_id="tmp1", max_concurrent=1, request_id="g-p1-reg"
    )
    other = pb.RegisterAgentRequest(shop_id="gold-a", agent_id="tmp1", request_id="g-p1-reg")
    return [
        answer("RegisterAgent tmp1 keyed again", lambda: P.RegisterAgent(reg1)),
        answer("SetStatus ghost keyed again", lambda: P.SetStatus(KEYED_GHOST)),
        answer("RegisterAgent tmp keyed again", lambda: P.RegisterAgent(KEYED_TMP)),
        answer("Acknowledge nope keyed again", lambda: R.Acknowledge(KEYED_ACK)),
        answer("RegisterAgent key reused", lambda: P.RegisterAgent(other)),
    ]


def probe(s: Stubs, a1_first: str | None = None, keyed: bool = False) -> list[dict[str, Any]]:
    """Changes whose answers depend on what the reads cannot show (request ids kept,
    recent and private contacts, session and event counters, the queue's order), then
    the state again. Run on a copy of the golden data, at the moment it was read.

    ``a1_first``: the session of a1's to end, as the old server listed it first (the
    list's order changed since: issue 15 sorts it); None takes today's first."""
    P, R, Q = s.presence, s.routing, s.queue
    out: list[dict[str, Any]] = []
    shop, buyer, rid = REPEATED_REQUEST
    out.append(
        answer(
            "Route repeated request",
            lambda: R.Route(pb.RouteRequest(shop_id=shop, buyer_id=buyer, request_id=rid)),
        )
    )
    out.append(
        answer(
            "Route returning b2",
            lambda: R.Route(pb.RouteRequest(shop_id="gold-a", buyer_id="b2", request_id="p-b2")),
        )
    )
    out.append(
        answer(
            "Route private br",
            lambda: R.Route(
                pb.RouteRequest(
                    shop_id="gold-a", buyer_id="br", request_id="p-br", addressed_agent_id="boss"
                )
            ),
        )
    )
    a1 = R.ListAgentSessions(pb.ListAgentSessionsRequest(shop_id="gold-a", agent_id="a1")).sessions
    if a1:
        first = a1_first or a1[0].session_id
        end = pb.EndSessionsRequest(shop_id="gold-a", session_ids=[first])
        out.append(answer("EndSessions a1 first", lambda: R.EndSessions(end)))
    out.append(
        answer(
            "Pick a2", lambda: Q.Pick(pb.PickRequest(shop_id="gold-a", agent_id="a2", force=True))
        )
    )
    out.append(
        answer(
            "Route new o9",
            lambda: R.Route(pb.RouteRequest(shop_id="gold-off", buyer_id="o9", request_id="p-o9")),
        )
    )
    out.append(
        answer(
            "SetStatus off1 ONLINE",
            lambda: P.SetStatus(
                pb.SetStatusRequest(
                    shop_id="gold-off", agent_id="off1", status=pb.AGENT_STATUS_ONLINE
                )
            ),
        )
    )
    out.append(
        answer(
            "SetStatus boss ONLINE",
            lambda: P.SetStatus(
                pb.SetStatusRequest(
                    shop_id="gold-a", agent_id="boss", status=pb.AGENT_STATUS_ONLINE
                )
            ),
        )
    )
    out.append(
        answer(
            "Route new c3",
            lambda: R.Route(pb.RouteRequest(shop_id="gold-t", buyer_id="c3", request_id="p-c3")),
        )
    )
    if keyed:  # format 5 and later (a keyed call to older data would be a new one)
        out.extend(keyed_probes(s))
    return out + observe(s)


def stubs(target: str) -> tuple[grpc.Channel, Stubs]:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel, Stubs(channel)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def python_of(venv: str) -> str:
    return os.path.join(venv, "bin", "python") if venv else sys.executable
