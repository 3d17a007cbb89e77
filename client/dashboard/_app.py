"""The dashboard's HTTP side (aiohttp): the page, its SSE stream and the supervisor actions.

GET  /                              the shops this dashboard was started with, and a form
GET  /shops/{shop}                  the page (static HTML + JS served from the package)
GET  /shops/{shop}/events           server-sent events: hello/reset, events, state, link, behind
GET  /api/shops/{shop}              whether the shop can be watched (or fenliu's error)
GET  /api/shops/{shop}/agents/{agent}/sessions
POST /api/shops/{shop}/status       {"agent": "a1", "status": "online"}
POST /api/shops/{shop}/max          {"agent": "a1", "max": 5}
POST /api/shops/{shop}/pick         {"agent": "a1", "session": "s9", "force": false}
POST /api/shops/{shop}/end          {"sessions": ["s1", "s2"]}

Every action is one SDK call; a refused one answers with the HTTP status below and
``{"error": {"code", "reason", "field", "subject", "message"}}`` from fenliu's error.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from fenliu.client import (
    AsyncClient,
    DeadlineExceeded,
    Decision,
    FailedPrecondition,
    FenliuError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QueueFull,
    Session,
    Unauthenticated,
    Unavailable,
)

from ._feed import STATUS_NAMES, ShopFeed, _name, error_json

log = logging.getLogger("fenliu.dashboard")

COOKIE = "fenliu_dashboard_token"
MAX_FEEDS = 64
HEARTBEAT = 15.0
LINGER = 60.0  # seconds a feed keeps watching after its last page closed

# fenliu's refusal -> the HTTP status the page gets (everything else: 500)
_HTTP_STATUS: tuple[tuple[type[FenliuError], int], ...] = (
    (InvalidArgument, 400),
    (NotFound, 404),
    (FailedPrecondition, 409),
    (QueueFull, 429),
    (PermissionDenied, 403),
    (Unauthenticated, 502),  # the dashboard's own token was refused by fenliu
    (Unavailable, 503),
    (DeadlineExceeded, 504),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """A malformed action body; names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def http_status(error: FenliuError) -> int:
    for kind, status in _HTTP_STATUS:
        if isinstance(error, kind):
            return status
    return 500


def _static(name: str) -> bytes:
    return (resources.files("fenliu.client.dashboard") / "static" / name).read_bytes()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _drain(queue: asyncio.Queue[bytes | None], first: bytes) -> tuple[list[bytes], bool]:
    """``first`` and every message already queued after it; True when the end (None) came."""
    chunks = [first]
    while not queue.empty():
        message = queue.get_nowait()
        if message is None:
            return chunks, True
        chunks.append(message)
    return chunks, False


class Dashboard:
    """The aiohttp application and the feeds it keeps (one per shop watched)."""

    def __init__(
        self,
        fenliu: AsyncClient,
        *,
        token: str | None,
        shops: tuple[str, ...],
        linger: float = LINGER,
    ):
        self.fenliu = fenliu
        self.linger = linger
        self._retiring: dict[str, asyncio.TimerHandle] = {}
        self.token = token
        self.shops = shops
        self.feeds: dict[str, ShopFeed] = {}
        self._starting: dict[str, asyncio.Future[ShopFeed]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.TimerHandle | None = None
        self._files = {
            name: _static(name) for name in ("index.html", "dashboard.js", "dashboard.css")
        }
        self.app = web.Application(middlewares=[self._guard])
        self.app.add_routes(
            [
                web.get("/", self.home),
                web.get("/static/{name}", self.static),
                web.get("/favicon.ico", self.no_icon),
                web.get("/shops/{shop}", self.page),
                web.get("/shops/{shop}/events", self.events),
                web.get("/api/shops/{shop}", self.check),
                web.get("/api/shops/{shop}/agents/{agent}/sessions", self.sessions),
                web.post("/api/shops/{shop}/status", self.set_status),
                web.post("/api/shops/{shop}/max", self.set_max),
                web.post("/api/shops/{shop}/pick", self.pick),
                web.post("/api/shops/{shop}/end", self.end),
            ]
        )
        self.app.on_shutdown.append(self._close_feeds)

    # ------------------------------------------------------------ auth

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The page's token (when set), and actions only from this dashboard's own page."""
        if self.token is None:
            # No token: served on loopback only. A page of another site that resolves its
            # own name to 127.0.0.1 (DNS rebinding) still sends its own Host: refuse it.
            if not is_loopback(request.url.host or ""):
                return web.Response(status=403, text="open this dashboard as 127.0.0.1\n")
        else:
            given = request.query.get("token")
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                # From a link with ?token=: keep it in a cookie and drop it from the address.
                kept = {k: v for k, v in request.query.items() if k != "token"}
                target = request.rel_url.with_query(kept)
                response = web.HTTPSeeOther(str(target))
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
                raise response
            sent = request.cookies.get(COOKIE, "")
            auth = request.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                sent = auth[len("Bearer ") :]
            if not hmac.compare_digest(sent.encode(), self.token.encode()):
                return web.Response(
                    status=401,
                    text="This dashboard needs its token: open it as /?token=... "
                    "(fenliu-dashboard --token, or FENLIU_DASHBOARD_TOKEN).\n",
                )
        if request.method == "POST":
            # A JSON body and a same-origin request: a form on another site cannot send one.
            origin = request.headers.get("Origin")
            if origin is not None and origin.split("://", 1)[-1] != request.host:
                return _json_error(403, "", "origin", f"cross-origin request from {origin}")
            if request.content_type != "application/json":
                return _json_error(415, "", "body", "send the action as application/json")
        return await handler(request)

    # ------------------------------------------------------------ pages

    async def home(self, request: web.Request) -> web.Response:
        links = "".join(f'<li><a href="/shops/{_attr(s)}">{_html(s)}</a></li>' for s in self.shops)
        body = (
            "<!doctype html><meta charset=utf-8><title>fenliu dashboard</title>"
            '<link rel=stylesheet href="/static/dashboard.css">'
            "<main class=home><h1>fenliu dashboard</h1>"
            f"<ul>{links}</ul>"
            "<form onsubmit=\"location.href='/shops/'+encodeURIComponent(this.shop.value);"
            'return false"><label>Shop <input name=shop required></label> '
            "<button>Open</button></form></main>"
        )
        return web.Response(text=body, content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._files or name == "index.html":
            raise web.HTTPNotFound()
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return web.Response(
            body=self._files[name], content_type=kind, headers={"Cache-Control": "no-cache"}
        )

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._files["index.html"],
            content_type="text/html",
            headers={"Cache-Control": "no-cache"},
        )

    async def feed(self, shop: str) -> ShopFeed:
        """The shop's feed, started on first use (NotFound for an unknown shop)."""
        feed = self.feeds.get(shop)
        if feed is not None:
            return feed
        starting = self._starting.get(shop)
        if starting is not None:
            return await asyncio.shield(starting)
        if len(self.feeds) >= MAX_FEEDS:
            raise web.HTTPServiceUnavailable(text=f"this dashboard watches {MAX_FEEDS} shops")
        future: asyncio.Future[ShopFeed] = asyncio.get_running_loop().create_future()
        self._starting[shop] = future
        try:
            feed = ShopFeed(self.fenliu, shop)
            await feed.start()
            self.feeds[shop] = feed
            future.set_result(feed)
            return feed
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a caller may not be waiting on it
            raise
        finally:
            del self._starting[shop]

    async def check(self, request: web.Request) -> web.Response:
        """Whether the shop can be watched (its feed starts), or fenliu's error."""
        shop = request.match_info["shop"]
        try:
            feed = await self.feed(shop)
        except FenliuError as exc:
            return web.json_response({"error": error_json(exc)}, status=http_status(exc))
        return web.json_response({"shop": shop, "pages": feed.pages, "seq": feed.last_seq})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The page's live stream (SSE); resumes after ``Last-Event-ID``."""
        shop = request.match_info["shop"]
        try:
            feed = await self.feed(shop)
        except FenliuError as exc:
            return web.json_response({"error": error_json(exc)}, status=http_status(exc))
        last = request.headers.get("Last-Event-ID") or request.query.get("after")
        try:
            last_id = int(last) if last else None
        except ValueError:
            last_id = None
        try:  # a dashboard that just started first catches up with what fenliu kept
            await asyncio.wait_for(feed.ready.wait(), 5.0)
        except TimeoutError:
            pass
        if last_id is not None:
            await feed.backfill(last_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        sub = feed.subscribe(last_id)
        retiring = self._retiring.pop(shop, None)
        if retiring is not None:
            retiring.cancel()
        try:
            await response.write(b"retry: 1000\n\n")
            self._beat_soon()
            queue = sub.queue
            while True:
                # A plain get (no wait_for: a task and a timer per message per page); the
                # keep-alive comes from _beat, every HEARTBEAT seconds, to every page.
                message = queue.get_nowait() if not queue.empty() else await queue.get()
                if message is None:
                    break
                if queue.empty():
                    await response.write(message)
                    continue
                # What queued up meanwhile goes in the same write (one send per page).
                chunks, end = _drain(queue, message)
                await response.write(b"".join(chunks))
                if end:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            feed.unsubscribe(sub)
            if feed.pages == 0 and shop not in self._retiring:
                loop = asyncio.get_running_loop()
                self._retiring[shop] = loop.call_later(self.linger, self._retire, shop)
        return response

    def _beat_soon(self) -> None:
        if self._heartbeat is None:
            loop = asyncio.get_running_loop()
            self._heartbeat = loop.call_later(HEARTBEAT, self._beat)

    def _beat(self) -> None:
        """A comment line to every page with nothing queued (proxies keep the stream open)."""
        self._heartbeat = None
        for feed in self.feeds.values():
            feed.heartbeat()
        if any(feed.pages for feed in self.feeds.values()):
            self._beat_soon()

    def _retire(self, shop: str) -> None:
        """Nobody watched the shop for ``linger`` seconds: stop its feed (and its watch)."""
        self._retiring.pop(shop, None)
        feed = self.feeds.get(shop)
        if feed is not None and feed.pages == 0:
            del self.feeds[shop]
            task = asyncio.get_running_loop().create_task(feed.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_feeds(self, app: web.Application) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for feed in list(self.feeds.values()):
            await feed.close()

    # ------------------------------------------------------------ actions

    async def _action(
        self, request: web.Request, run: Callable[[str, dict[str, Any]], Awaitable[Any]]
    ) -> web.Response:
        shop = request.match_info["shop"]
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRequest("body", "the body must be a JSON object")
            result = await run(shop, body)
        except json.JSONDecodeError:
            return _json_error(400, "", "body", "the body is not JSON")
        except BadRequest as exc:
            return _json_error(400, "", exc.field, str(exc))
        except FenliuError as exc:
            return web.json_response({"error": error_json(exc)}, status=http_status(exc))
        feed = self.feeds.get(shop)
        if feed is not None:
            feed.touch()
        return web.json_response({"ok": True, "result": result})

    async def set_status(self, request: web.Request) -> web.Response:
        async def run(shop: str, body: dict[str, Any]) -> Any:
            agent = _text(body, "agent")
            status = STATUS_NAMES.get(_text(body, "status"))
            if status is None:
                raise BadRequest("status", f"status must be one of {', '.join(STATUS_NAMES)}")
            done = await self.fenliu.set_status(shop, agent, status)
            return {"status": _name(done.agent.status), "moved": [_decision(d) for d in done.moved]}

        return await self._action(request, run)

    async def set_max(self, request: web.Request) -> web.Response:
        async def run(shop: str, body: dict[str, Any]) -> Any:
            agent_id = _text(body, "agent")
            value = body.get("max")
            if not isinstance(value, int) or isinstance(value, bool):
                raise BadRequest("max", "max must be a whole number")
            # UpdateAgent changes the max only (the agent's role and groups stay).
            done = await self.fenliu.update_agent(shop, agent_id, max_concurrent=value)
            return {"max": done.max_concurrent}

        return await self._action(request, run)

    async def pick(self, request: web.Request) -> web.Response:
        async def run(shop: str, body: dict[str, Any]) -> Any:
            agent = _text(body, "agent")
            session = body.get("session", "")
            if not isinstance(session, str):
                raise BadRequest("session", "session must be a string")
            force = bool(body.get("force", False))
            return _decision(await self.fenliu.pick(shop, agent, session, force=force))

        return await self._action(request, run)

    async def end(self, request: web.Request) -> web.Response:
        async def run(shop: str, body: dict[str, Any]) -> Any:
            sessions = body.get("sessions")
            if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
                raise BadRequest("sessions", "sessions must be a list of session ids")
            done = await self.fenliu.end_sessions(shop, sessions)
            moved = [_decision(d) for d in done.moved]
            return {"ended": done.ended, "already_ended": done.already_ended, "moved": moved}

        return await self._action(request, run)

    async def sessions(self, request: web.Request) -> web.Response:
        shop, agent = request.match_info["shop"], request.match_info["agent"]
        try:
            found = await self.fenliu.list_agent_sessions(shop, agent)
        except FenliuError as exc:
            return web.json_response({"error": error_json(exc)}, status=http_status(exc))
        return web.json_response({"sessions": [_session(s) for s in found]})


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise BadRequest(field, f"{field} must be a non-empty string")
    return value


def _decision(d: Decision) -> dict[str, Any]:
    return {
        "outcome": _name(d.outcome),
        "reason": _name(d.reason),
        "buyer": d.buyer_id,
        "agent": d.agent_id,
        "session": d.session_id,
        "state": _name(d.state),
    }


def _session(s: Session) -> dict[str, Any]:
    return {
        "session": s.session_id,
        "buyer": s.buyer_id,
        "state": _name(s.state),
        "group": s.group,
        "channel": s.channel,
        "priority": s.priority,
        "created": s.created_at_ms,
        "first_reply": s.first_reply_at_ms,
    }


def _json_error(status: int, code: str, field: str, message: str) -> web.Response:
    error = {"code": code or "BAD_REQUEST", "reason": "", "field": field, "subject": "",
             "message": message}  # fmt: skip
    return web.json_response({"error": error}, status=status)


def _html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
