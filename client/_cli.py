"""``fenliu``: the operator's command line over the SDK.

    fenliu agent register shop1 alice --max 5 --groups presale --status online
    fenliu agent update shop1 alice --max 8
    fenliu route shop1 buyer1 --crowd vip
    fenliu team shop1
    fenliu queue list shop1 --sort longest
    fenliu stats shop1 --window 15
    fenliu watch shop1 --agent alice

Every command prints its result (``--json`` for machines) and exits 0; a refused request
prints one line naming the field and exits 1; an unreachable server exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from ._client import DEFAULT_TARGET, DEFAULT_TIMEOUT, Client
from ._errors import DeadlineExceeded, FenliuError, Unavailable
from ._types import Event, OnQueueFull, QueueOrder, QueueSort, Role, Status, Strategy

Handler = Callable[[Client, argparse.Namespace], Any]


def _choice(kind: type[enum.IntEnum]) -> Callable[[str], Any]:
    """An argparse type: an enum member by name, case and dashes forgiven."""

    def parse(text: str) -> Any:
        try:
            return kind[text.upper().replace("-", "_")]
        except KeyError:
            names = ", ".join(m.name.lower().replace("_", "-") for m in kind)
            raise argparse.ArgumentTypeError(f"{text!r} is not one of: {names}") from None

    parse.__name__ = kind.__name__.lower()
    return parse


def _csv(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "yes", "1"):
        return True
    if text.lower() in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on/off")


# ---------------------------------------------------------------- commands

_POLICY_FLAGS: dict[str, tuple[Callable[[str], Any], str]] = {
    "strategy": (_choice(Strategy), "least-new, least-load or round-robin"),
    "queue_order": (_choice(QueueOrder), "fifo or lifo"),
    "queue_limit": (int, "queue entries before on-queue-full applies"),
    "on_queue_full": (_choice(OnQueueFull), "leave-message or reject"),
    "priority_crowds": (_csv, "comma-separated crowd tags that skip the queue ('' clears)"),
    "priority_may_exceed_capacity": (_on_off, "on/off"),
    "route_when_all_suspended": (_on_off, "on/off"),
    "auto_assign_left_messages": (_on_off, "on/off"),
    "notice_interval_ms": (int, "ms between two priority notices to one buyer"),
    "accept_timeout_ms": (int, "ms; 0 is off"),
    "reply_timeout_ms": (int, "ms; 0 is off"),
    "idle_end_timeout_ms": (int, "ms; 0 is off"),
    "queue_wait_limit_ms": (int, "ms; 0 is off"),
    "sticky_window_ms": (int, "ms a recent contact gets its buyer back"),
    "recent_contact_ttl_ms": (int, "ms recent contacts are kept"),
    "time_zone": (str, "IANA name, e.g. Asia/Shanghai"),
}


def _policy_set(c: Client, a: argparse.Namespace) -> Any:
    fields = {name: getattr(a, name) for name in _POLICY_FLAGS if getattr(a, name) is not None}
    return c.set_shop_policy(a.shop, **fields)


def _route(c: Client, a: argparse.Namespace) -> Any:
    return c.route(
        a.shop, a.buyer, request_id=a.request_id, addressed_agent_id=a.to, crowds=a.crowd,
        group=a.group, channel=a.channel, from_team_member=a.team,
    )  # fmt: skip


def _transfer(c: Client, a: argparse.Namespace) -> Any:
    return c.transfer(a.shop, a.session, to_agent_id=a.to_agent, to_group=a.to_group, force=a.force)


def _register(c: Client, a: argparse.Namespace) -> Any:
    return c.register_agent(
        a.shop, a.agent, role=a.role, groups=a.groups, max_concurrent=a.max, status=a.status
    )


def _update(c: Client, a: argparse.Namespace) -> Any:
    return c.update_agent(a.shop, a.agent, role=a.role, groups=a.groups, max_concurrent=a.max)


def _queue_list(c: Client, a: argparse.Namespace) -> Any:
    return c.list_queue(
        a.shop, priority_only=a.priority, group=a.group, channel=a.channel, sort=a.sort,
        limit=a.limit,
    )  # fmt: skip


class _Printed:
    """The result of a command that printed its own output (``watch``)."""


_PRINTED = _Printed()


def _watch(c: Client, a: argparse.Namespace) -> _Printed:
    """Print each watch item as it comes (a JSON object per line with --json), until
    ``--count`` events have been printed or Ctrl-C; reconnects for up to ``--timeout`` s."""
    if a.agent:
        stream = c.watch_agent(a.shop, a.agent, after_seq=a.after, give_up_after=a.timeout)
    else:
        stream = c.watch_shop(a.shop, after_seq=a.after, give_up_after=a.timeout)
    events = 0
    try:
        for item in stream:
            data = {"type": type(item).__name__, **_plain(item)}
            print(json.dumps(data) if a.json else _cell(data), flush=True)
            events += isinstance(item, Event)
            if a.count and events >= a.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()  # type: ignore[attr-defined]
    return _PRINTED


def _stats(c: Client, a: argparse.Namespace) -> Any:
    stats = c.get_shop_stats(a.shop, window_minutes=a.window)
    if a.json:
        return stats
    data = _plain(stats)
    agents, today, window = data.pop("agents"), data.pop("today"), data.pop("window")
    print(_render(data))
    for name, counts in (("today", today), (f"last {stats.window_minutes} min", window)):
        rate = f"{counts['fast_reply_rate']:.1%}"
        print(f"{name}: {_cell(counts)} (first reply within 2 min: {rate})")
    print(_table(agents))
    return _PRINTED


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fenliu", description="Operate a fenliu routing server.")
    p.add_argument(
        "--target",
        default=os.environ.get("FENLIU_TARGET", DEFAULT_TARGET),
        help=f"server address (env FENLIU_TARGET, default {DEFAULT_TARGET})",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("FENLIU_TOKEN"),
        help="bearer token, when the server has auth on (env FENLIU_TOKEN)",
    )
    p.add_argument("--tls", action="store_true", help="TLS, verified by the system's roots")
    p.add_argument(
        "--tls-ca",
        default=os.environ.get("FENLIU_TLS_CA"),
        metavar="PEM",
        help="TLS, verified by this CA bundle (env FENLIU_TLS_CA)",
    )
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="deadline, seconds")
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        parent: Any, name: str, handler: Handler, helptext: str, *args: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=helptext)
        for arg in args:
            sub.add_argument(arg)
        sub.set_defaults(handler=handler)
        return sub

    policy = top.add_parser("policy", help="show or change a shop's policy").add_subparsers(
        required=True, metavar="ACTION"
    )
    command(policy, "get", lambda c, a: c.get_shop_policy(a.shop), "show the policy", "shop")
    policy_set = command(policy, "set", _policy_set, "change the named fields", "shop")
    for name, (kind, helptext) in _POLICY_FLAGS.items():
        policy_set.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, help=helptext)

    agent = top.add_parser("agent", help="register, remove, set status").add_subparsers(
        required=True, metavar="ACTION"
    )
    reg = command(agent, "register", _register, "create or update an agent", "shop", "agent")
    reg.add_argument("--role", type=_choice(Role), default=Role.SUB, help="main or sub")
    reg.add_argument("--groups", type=_csv, default=[], help="comma-separated skill groups")
    reg.add_argument("--max", type=int, default=0, help="max concurrent conversations")
    reg.add_argument("--status", type=_choice(Status), default=Status.OFFLINE)
    update = command(agent, "update", _update, "change only the fields given", "shop", "agent")
    update.add_argument("--role", type=_choice(Role), help="main or sub")
    update.add_argument("--groups", type=_csv, help="comma-separated skill groups ('' for none)")
    update.add_argument("--max", type=int, help="max concurrent conversations")
    command(
        agent, "remove", lambda c, a: c.remove_agent(a.shop, a.agent), "remove", "shop", "agent"
    )
    status = command(
        agent, "status", lambda c, a: c.set_status(a.shop, a.agent, a.status), "set status",
        "shop", "agent",
    )  # fmt: skip
    status.add_argument("status", type=_choice(Status), help="online/invisible/suspended/offline")
    private = command(
        agent, "private", lambda c, a: _private(c, a), "add/remove a MAIN private contact",
        "shop", "buyer",
    )  # fmt: skip
    private.add_argument("--remove", action="store_true")

    command(top, "team", lambda c, a: c.list_team(a.shop), "list the team", "shop")
    route = command(top, "route", _route, "route one buyer message", "shop", "buyer")
    route.add_argument("--to", default="", help="addressed agent")
    route.add_argument("--crowd", action="append", default=[], help="a crowd tag (repeatable)")
    route.add_argument("--group", default="", help="required skill group")
    route.add_argument("--channel", default="", help="entry point")
    route.add_argument("--request-id", default="", help="idempotency key (default: new)")
    route.add_argument("--team", action="store_true", help="the sender is a team member")
    command(
        top, "ack", lambda c, a: c.acknowledge(a.shop, a.agent, a.session), "acknowledge",
        "shop", "agent", "session",
    )  # fmt: skip
    command(
        top, "reply", lambda c, a: c.reply(a.shop, a.agent, a.session), "record a reply",
        "shop", "agent", "session",
    )  # fmt: skip
    transfer = command(top, "transfer", _transfer, "transfer a session", "shop", "session")
    transfer.add_argument("--to-agent", default="")
    transfer.add_argument("--to-group", default="")
    transfer.add_argument("--force", action="store_true", help="allow a full target")
    end = command(top, "end", lambda c, a: c.end_sessions(a.shop, a.sessions), "end", "shop")
    end.add_argument("sessions", nargs="+")

    queue = top.add_parser("queue", help="the shop queue").add_subparsers(
        required=True, metavar="ACTION"
    )
    listing = command(queue, "list", _queue_list, "list the queue", "shop")
    listing.add_argument("--priority", action="store_true", help="priority entries only")
    listing.add_argument("--group", default="")
    listing.add_argument("--channel", default="")
    listing.add_argument("--sort", type=_choice(QueueSort), default=QueueSort.QUEUE_ORDER)
    listing.add_argument("--limit", type=int, default=0)
    command(
        queue, "position", lambda c, a: c.get_position(a.shop, a.buyer), "a buyer's place",
        "shop", "buyer",
    )  # fmt: skip
    pick = command(
        queue, "pick", lambda c, a: c.pick(a.shop, a.agent, a.session, force=a.force),
        "an agent takes a session", "shop", "agent",
    )  # fmt: skip
    pick.add_argument("session", nargs="?", default="", help="default: the first it may take")
    pick.add_argument("--force", action="store_true", help="allow going above max")
    command(
        queue, "leave", lambda c, a: c.leave_queue(a.shop, a.buyer), "a buyer leaves",
        "shop", "buyer",
    )  # fmt: skip
    command(
        top, "left-messages", lambda c, a: c.list_left_messages(a.shop), "list left messages",
        "shop",
    )  # fmt: skip
    stats = command(top, "stats", _stats, "queue, today's and recent counts, agents", "shop")
    stats.add_argument("--window", type=int, default=0, help="sliding window, 1-60 minutes")
    watch = command(top, "watch", _watch, "print the shop's events as they happen", "shop")
    watch.add_argument("--agent", default="", help="only the events naming this agent")
    watch.add_argument("--after", type=int, default=None, help="resume after this seq")
    watch.add_argument("--count", type=int, default=0, help="stop after this many events")
    return p


def _private(c: Client, a: argparse.Namespace) -> None:
    if a.remove:
        c.remove_private_contact(a.shop, a.buyer)
    else:
        c.add_private_contact(a.shop, a.buyer)


# ---------------------------------------------------------------- output


def _plain(value: Any) -> Any:
    """Results as JSON-ready data: enums by name, dataclasses as dicts."""
    if isinstance(value, enum.Enum):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Exception):
        return str(value)
    return value


def _render(value: Any) -> str:
    """Human output: a table for a list of records, ``key: value`` lines for one record."""
    data = _plain(value)
    if data is None:
        return "ok"
    if isinstance(data, dict) and isinstance(data.get("entries"), list):
        return _table(data["entries"]) + f"\n({data['total']} in all)"
    if isinstance(data, list):
        return _table(data) if data else "(none)"
    if isinstance(data, dict):
        width = max(len(k) for k in data)
        return "\n".join(f"{k.ljust(width)}  {_cell(v)}" for k, v in data.items())
    return str(data)


def _table(rows: list[Any]) -> str:
    if not rows:
        return "(none)"
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if isinstance(value, list):
        if not value:
            return "-"
        if isinstance(value[0], dict):
            return f"{len(value)} item(s)"
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def _tls(args: argparse.Namespace) -> bool | grpc.ChannelCredentials:
    if args.tls_ca:
        with open(args.tls_ca, "rb") as file:
            return grpc.ssl_channel_credentials(root_certificates=file.read())
    return bool(args.tls)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        tls = _tls(args)
    except OSError as exc:
        print(f"fenliu: cannot read --tls-ca {args.tls_ca}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        with Client(
            args.target, timeout=args.timeout, retries=1, token=args.token, tls=tls
        ) as client:
            result = args.handler(client, args)
    except (Unavailable, DeadlineExceeded) as exc:
        print(f"fenliu: cannot reach {args.target}: {exc.message}", file=sys.stderr)
        return 2
    except FenliuError as exc:
        reason = f" [{exc.reason}]" if exc.reason else ""
        print(f"fenliu: {exc.code.name}: {exc.message}{reason}", file=sys.stderr)
        return 1
    if result is not _PRINTED:
        print(json.dumps(_plain(result), indent=2) if args.json else _render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
