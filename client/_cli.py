"""``fenliu``: the operator's command line over the SDK.

    fenliu agent register shop1 alice --max 5 --groups presale --status online
    fenliu agent update shop1 alice --max 8
    fenliu route shop1 buyer1 --crowd vip
    fenliu team shop1
    fenliu queue list shop1 --sort longest
    fenliu stats shop1 --window 15
    fenliu watch shop1 --agent alice
    fenliu simulate data/ --shop shop1 --variant max=+3   # what-if, no server needed

Every command prints its result and exits 0; a refused request prints one line naming
the field and exits 1; an unreachable server exits 2 (a usage error too, with a suggestion
for a mistyped command or flag). Output has one style: a record as aligned ``key  value``
lines (nested records as ``today.assigned``), a list of records as a table (after its
record, under ``name:``), a watch stream as one ``type key=value ...`` line per item.
Times read as ISO dates in the shop's time zone (the local one when it is unknown),
durations as ``1m 30s``. ``--json`` prints the results as they are (times in ms since the
epoch) and ``--get FIELD[,FIELD]`` just those fields' values, for scripts. A closed pipe
(``fenliu team shop1 | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import difflib
import enum
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

import grpc

from ._client import DEFAULT_TARGET, DEFAULT_TIMEOUT, Client
from ._errors import DeadlineExceeded, FenliuError, Unavailable
from ._types import Event, OnQueueFull, QueueOrder, QueueSort, Role, Status, Strategy
from ._version import version

Handler = Callable[[Client, argparse.Namespace], Any]


def _choice(kind: type[enum.IntEnum]) -> Callable[[str], Any]:
    """An argparse type: an enum member by name, case and dashes forgiven."""

    def parse(text: str) -> Any:
        try:
            return kind[text.upper().replace("-", "_")]
        except KeyError:
            choices = [m.name.lower().replace("_", "-") for m in kind]
            raise argparse.ArgumentTypeError(
                f"{text!r} is not one of: {', '.join(choices)}{_did_you_mean(text, choices)}"
            ) from None

    parse.__name__ = kind.__name__.lower()
    return parse


def _did_you_mean(wrong: str, choices: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ""."""
    close = difflib.get_close_matches(wrong.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a mistyped subcommand or choice (Python 3.14's
    ``suggest_on_error``, done with difflib)."""

    def error(self, message: str) -> NoReturn:
        found = re.search(r"invalid choice: '([^']*)'", message)
        if found:
            choices = [
                str(choice)
                for action in self._actions
                if action.choices is not None
                for choice in action.choices
            ]
            message += _did_you_mean(found.group(1), choices)
        super().error(message)


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
        a.shop, a.agent, role=a.role, groups=a.groups, max_concurrent=a.max, status=a.status,
        replace=a.replace,
    )  # fmt: skip


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
    zone = None if a.json else a.zones.zone()
    try:
        for item in stream:
            if a.json:
                line = json.dumps({"type": type(item).__name__, **_plain(item)})
            else:
                line = _line(item, zone)
            print(line, flush=True)
            events += isinstance(item, Event)
            if a.count and events >= a.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        stream.close()  # type: ignore[attr-defined]
    return _PRINTED


def _stats(c: Client, a: argparse.Namespace) -> Any:
    return c.get_shop_stats(a.shop, window_minutes=a.window)


def _global_options(p: argparse.ArgumentParser, *, here: bool) -> None:
    """The options of ``fenliu`` itself; ``here`` False: a command's copy, which may be
    given after the command (``fenliu team shop1 --json``) and defaults to nothing."""

    def default(value: Any) -> Any:
        return value if here else argparse.SUPPRESS

    p.add_argument(
        "--target",
        default=default(os.environ.get("FENLIU_TARGET", DEFAULT_TARGET)),
        help=f"server address (env FENLIU_TARGET, default {DEFAULT_TARGET})",
    )
    p.add_argument(
        "--token",
        default=default(os.environ.get("FENLIU_TOKEN")),
        help="bearer token, when the server has auth on (env FENLIU_TOKEN)",
    )
    p.add_argument(
        "--tls", action="store_true", default=default(False),
        help="TLS, verified by the system's roots",
    )  # fmt: skip
    p.add_argument(
        "--tls-ca",
        default=default(os.environ.get("FENLIU_TLS_CA")),
        metavar="PEM",
        help="TLS, verified by this CA bundle (env FENLIU_TLS_CA)",
    )
    p.add_argument(
        "--tls-cert",
        default=default(os.environ.get("FENLIU_CLIENT_CERT")),
        metavar="PEM",
        help="client certificate chain, for a server that wants one (mutual TLS; env "
        "FENLIU_CLIENT_CERT)",
    )
    p.add_argument(
        "--tls-key",
        default=default(os.environ.get("FENLIU_CLIENT_KEY")),
        metavar="PEM",
        help="the client certificate's private key (env FENLIU_CLIENT_KEY)",
    )
    p.add_argument(
        "--json", action="store_true", default=default(False), help="print results as JSON"
    )
    p.add_argument(
        "--get",
        type=_csv,
        default=default(None),
        metavar="FIELD[,FIELD]",
        help="print only these fields' values, space-separated (for scripts)",
    )
    p.add_argument(
        "--timeout", type=float, default=default(DEFAULT_TIMEOUT), help="deadline, seconds"
    )


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fenliu", description="Operate a fenliu routing server.")
    p.add_argument("--version", action="version", version=f"fenliu {version()}")
    _global_options(p, here=True)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, here=False)
    top = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # needs no server: its own options, parsed by fenliu.server.sim.cli (imported lazily)
    simulate = top.add_parser(
        "simulate",
        help="what-if: replay a shop's traffic under another policy (no server needed)",
        add_help=False,
        prefix_chars="\0",
    )
    simulate.add_argument("args", nargs=argparse.REMAINDER)

    def command(
        parent: Any, name: str, handler: Handler, helptext: str, *args: str
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = parent.add_parser(name, help=helptext, parents=[common])
        for arg in args:
            sub.add_argument(arg)
        sub.set_defaults(handler=handler, parser=sub)
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
    reg = command(
        agent, "register", _register,
        "create an agent (an existing one: with --replace; 'agent update' changes fields)",
        "shop", "agent",
    )  # fmt: skip
    reg.add_argument("--role", type=_choice(Role), default=Role.SUB, help="main or sub")
    reg.add_argument("--groups", type=_csv, default=[], help="comma-separated skill groups")
    reg.add_argument("--max", type=int, default=0, help="max concurrent conversations")
    reg.add_argument("--status", type=_choice(Status), default=Status.OFFLINE)
    reg.add_argument(
        "--replace", action="store_true", help="replace an existing agent's role, groups, max"
    )
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
    cluster = top.add_parser("cluster", help="cluster mode").add_subparsers(
        required=True, metavar="ACTION"
    )
    command(
        cluster, "status", lambda c, a: c.cluster_map(with_lag=True),
        "the nodes, and every shard's owner, epoch and lag (messages not yet applied)",
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


_OFF_WHEN_ZERO = ("timeout_ms", "limit_ms")


def _duration(ms: int) -> str:
    """``850ms``, ``12.5s``, ``1m 30s``, ``2h 5m``, ``180d``: at most two units."""
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:.3g}s"
    seconds = ms // 1000
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def _time(ms: int, zone: datetime.tzinfo | None) -> str:
    """An ISO-like time in ``zone`` (the local zone if None), to the second."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)
    local = moment.astimezone(zone) if zone is not None else moment.astimezone()
    return local.isoformat(sep=" ", timespec="seconds")


def _readable(data: Any, zone: datetime.tzinfo | None) -> Any:
    """Human forms of plain data: ``*_at_ms`` as times, other ``*_ms`` as durations (0 is
    "-" for a time, "off" for a timer), rates as percentages; keys lose their ``_ms``."""
    if isinstance(data, list):
        return [_readable(item, zone) for item in data]
    if not isinstance(data, dict):
        return data
    shown: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, int) and not isinstance(value, bool) and key.endswith("_ms"):
            name = key.removesuffix("_ms")
            if key.endswith("at_ms"):
                shown[name] = _time(value, zone) if value else "-"
            elif value == 0 and key.endswith(_OFF_WHEN_ZERO):
                shown[name] = "off"
            else:
                shown[name] = _duration(value)
        elif key.endswith("_rate") and isinstance(value, float):
            shown[key] = f"{value:.1%}"
        else:
            shown[key] = _readable(value, zone)
    return shown


def _has_times(data: Any) -> bool:
    if isinstance(data, list):
        return any(_has_times(item) for item in data)
    if isinstance(data, dict):
        return any((k.endswith("at_ms") and bool(v)) or _has_times(v) for k, v in data.items())
    return False


def _render(value: Any, zone: datetime.tzinfo | None = None) -> str:
    """Human output: a table for a list of records, ``key  value`` lines for one record
    (nested records as dotted keys, lists of records as tables after it)."""
    data = _plain(value)
    if data is None:
        return "ok"
    data = _readable(data, zone)
    if isinstance(data, list):
        return _table(data)
    if not isinstance(data, dict):
        return str(data)
    lines: list[tuple[str, str]] = []
    tables: list[tuple[str, list[Any]]] = []

    def walk(record: dict[str, Any], prefix: str) -> None:
        for key, item in record.items():
            if isinstance(item, dict):
                walk(item, f"{prefix}{key}.")
            elif isinstance(item, list) and item and isinstance(item[0], dict):
                tables.append((f"{prefix}{key}", item))
            else:
                lines.append((f"{prefix}{key}", _cell(item)))

    if set(data) == {"entries", "total"}:  # a queue listing: the entries, then the count
        return _table(data["entries"]) + f"\n({data['total']} in all)"
    walk(data, "")
    width = max((len(k) for k, _ in lines), default=0)
    text = "\n".join(f"{k.ljust(width)}  {v}".rstrip() for k, v in lines)
    for name, rows in tables:
        text += f"\n\n{name}:\n{_table(rows)}"
    return text


def _table(rows: list[Any]) -> str:
    if not rows:
        return "(none)"
    flat = [_flat(row) for row in rows]
    columns = list(dict.fromkeys(c for row in flat for c in row))
    cells = [[row.get(c, "") for c in columns] for row in flat]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _flat(row: Any, prefix: str = "") -> dict[str, str]:
    if not isinstance(row, dict):
        return {prefix.rstrip(".") or "value": _cell(row)}
    flat: dict[str, str] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _cell(value)
    return flat


def _cell(value: Any) -> str:
    if value is None:
        return "-"  # unknown (a shard's lag its owner did not tell)
    if isinstance(value, list):
        if not value:
            return "-"
        if isinstance(value[0], dict):
            return f"{len(value)} item(s)"
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    if value == "":
        return "-"
    return str(value)


def _line(item: Any, zone: datetime.tzinfo | None) -> str:
    """One watch item as ``type key=value ...`` (readable times, empty fields left out)."""
    data = _readable(_plain(item), zone)
    fields = " ".join(f"{k}={_cell(v)}" for k, v in data.items() if v not in ("", "-", None))
    return f"{type(item).__name__} {fields}".rstrip()


def _fields(result: Any, names: list[str]) -> str:
    """``--get``: the named fields of the result, space-separated (a list: one line each)."""
    data = _plain(result)
    rows = data if isinstance(data, list) else [data]
    lines = []
    for row in rows:
        if not isinstance(row, dict):
            _usage("fenliu: --get: this command's result has no fields")
        values = []
        for name in names:
            if name not in row:
                known = ", ".join(row)
                _usage(
                    f"fenliu: --get: no field {name!r}{_did_you_mean(name, list(row))} "
                    f"(fields: {known})"
                )
            values.append(_cell(row[name]))
        lines.append(" ".join(values))
    return "\n".join(lines)


def _usage(message: str) -> NoReturn:
    print(message, file=sys.stderr)
    raise SystemExit(2)


class _Zones:
    """The shop's time zone for readable times (asked once, only when there are times)."""

    def __init__(self, client: Client, shop: str | None) -> None:
        self._client = client
        self._shop = shop
        self._zone: datetime.tzinfo | None = None
        self._asked = False

    def zone(self) -> datetime.tzinfo | None:
        if not self._asked and self._shop:
            self._asked = True
            try:
                self._zone = ZoneInfo(self._client.get_shop_policy(self._shop).time_zone)
            except (FenliuError, ValueError, KeyError):
                self._zone = None  # an unknown shop, or an old server: the local zone
        return self._zone


def _tls(args: argparse.Namespace) -> bool | grpc.ChannelCredentials:
    """The channel's TLS from ``--tls``, ``--tls-ca`` and the client certificate flags.

    Raises:
        OSError: a file cannot be read (``filename`` names the flag's value).
        ValueError: only one of ``--tls-cert`` and ``--tls-key``.
    """
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together (the certificate and its key)")
    pem: dict[str, bytes | None] = {}
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert),
                       ("--tls-key", args.tls_key)):  # fmt: skip
        if path:
            try:
                with open(path, "rb") as file:
                    pem[flag] = file.read()
            except OSError as exc:
                raise OSError(exc.errno, f"cannot read {flag} {path}: {exc.strerror}") from None
    if pem:
        return grpc.ssl_channel_credentials(
            root_certificates=pem.get("--tls-ca"),
            private_key=pem.get("--tls-key"),
            certificate_chain=pem.get("--tls-cert"),
        )
    return bool(args.tls)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; a flag nobody knows is a usage error with the closest one suggested."""
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub: argparse.ArgumentParser = getattr(args, "parser", parser)
        known = [o for action in sub._actions for o in action.option_strings]
        hints = [
            _did_you_mean(extra.split("=")[0], known).strip()
            for extra in extras
            if extra.startswith("-")
        ]
        hint = " ".join(h for h in hints if h)
        sub.error(f"unrecognized arguments: {' '.join(extras)}{' ' + hint if hint else ''}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say, and no traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def _main(argv: Sequence[str] | None) -> int:
    args = _parse(argv)
    if args.command == "simulate":
        from fenliu.server.sim.cli import main as simulate

        return simulate(args.args)
    try:
        tls = _tls(args)
    except (OSError, ValueError) as exc:
        print(f"fenliu: {exc.strerror if isinstance(exc, OSError) else exc}", file=sys.stderr)
        return 2
    try:
        with Client(
            args.target, timeout=args.timeout, retries=1, token=args.token, tls=tls
        ) as client:
            args.zones = _Zones(client, getattr(args, "shop", None))
            result = args.handler(client, args)
            if result is not _PRINTED:
                if args.get:
                    text = _fields(result, args.get)
                elif args.json:
                    text = json.dumps(_plain(result), indent=2, ensure_ascii=False)
                else:
                    data = _plain(result)
                    zone = args.zones.zone() if _has_times(data) else None
                    text = _render(result, zone)
                print(text, flush=True)
    except (Unavailable, DeadlineExceeded) as exc:
        print(f"fenliu: cannot reach {args.target}: {exc.message}", file=sys.stderr)
        return 2
    except FenliuError as exc:
        reason = f" [{exc.reason}]" if exc.reason else ""
        print(f"fenliu: {exc.code.name}: {exc.message}{reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
