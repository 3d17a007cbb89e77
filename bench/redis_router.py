"""A gRPC + Redis-Lua router on fenliu's proto: the baseline SPEC §8 measures Route against.

    python bench/redis_router.py --redis 127.0.0.1:6379 --port 0

It serves ``Presence/RegisterAgent`` and ``Routing/Route``, ``RouteBatch`` and ``RouteStream`` of
``protos/fenliu/v1`` (every other method answers UNIMPLEMENTED) the way such a router is
usually built: grpc.aio on uvloop in front of one Redis, each Route one ``EVALSHA`` of a
Lua script that decides atomically inside Redis, every key of a shop under its ``{shop}``
hash tag (so it would run on a Redis Cluster unchanged). Its client is as lean as a Python
one gets: one connection, every command issued in one turn of the event loop written in
one ``write`` (auto-pipelining, as ioredis and rueidis do), replies parsed by hiredis.

The script's rules are the ones bench/cpu.py's load exercises, written as such a router
would have them:
  0. the same ``request_id`` again → the decision it got (kept an hour);
  2. an open session of (shop, buyer) → its agent, or its place in the queue; its last
     message time refreshed;
  6. else the least-loaded eligible agent by LEAST_NEW (fewest new customers, then lowest
     load; ties by agent id, where fenliu takes the longest since its last assignment);
     nobody with room but someone not OFFLINE → the shop queue; nobody → a left message.
Every decision says which rule made it, as fenliu's do. What it leaves out (team messages,
private and recent contacts, addressed agents, crowds, groups, timers) a Route of
bench/cpu.py never needs; fenliu does all of it on the same requests.

Bad input (an id that is not 1–128 of ``[A-Za-z0-9._:@-]``, a batch over 1,000) answers
INVALID_ARGUMENT naming the field and changes nothing, as fenliu does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
from typing import Any

import grpc
import grpc.aio
import hiredis

from fenliu.client._pb import fenliu_pb2 as pb, fenliu_pb2_grpc as pb_grpc

REQUEST_TTL_S = 3600
MAX_BATCH = 1000
STREAM_WINDOW = 128
ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
INVALID = grpc.StatusCode.INVALID_ARGUMENT

# KEYS: 1 the request's decision, 2 open sessions (buyer -> "agent|session"), 3 eligible
# agents (a sorted set, score new * 2^14 + load), 4 loads, 5 capacities, 6 new-customer
# counts, 7 the session counter, 8 the queue, 9 agents not OFFLINE, 10 last message times.
# ARGV: 1 buyer, 2 now (ms), 3 the request's TTL (s). A decision is
# "outcome|reason|agent|session|position|state" with the proto's enum numbers.
ROUTE = """
local hit = redis.call('GET', KEYS[1])
if hit then return hit end
local out
local open = redis.call('HGET', KEYS[2], ARGV[1])
if open then
  local bar = string.find(open, '|', 1, true)
  local agent, sid = string.sub(open, 1, bar - 1), string.sub(open, bar + 1)
  if agent ~= '' then
    out = '1|2|' .. agent .. '|' .. sid .. '|0|3'
  else
    out = '3|2||' .. sid .. '|' .. (redis.call('LPOS', KEYS[8], ARGV[1]) + 1) .. '|1'
  end
  redis.call('HSET', KEYS[10], ARGV[1], ARGV[2])
else
  local sid = 's' .. redis.call('INCR', KEYS[7])
  local best = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if best then
    local load = redis.call('HINCRBY', KEYS[4], best, 1)
    local new = redis.call('HINCRBY', KEYS[6], best, 1)
    if load >= tonumber(redis.call('HGET', KEYS[5], best)) then
      redis.call('ZREM', KEYS[3], best)
    else
      redis.call('ZADD', KEYS[3], new * 16384 + load, best)
    end
    redis.call('HSET', KEYS[2], ARGV[1], best .. '|' .. sid)
    out = '1|8|' .. best .. '|' .. sid .. '|0|3'
  elseif tonumber(redis.call('GET', KEYS[9]) or '0') > 0 then
    local position = redis.call('RPUSH', KEYS[8], ARGV[1])
    redis.call('HSET', KEYS[2], ARGV[1], '|' .. sid)
    out = '3|10||' .. sid .. '|' .. position .. '|1'
  else
    out = '4|12||' .. sid .. '|0|5'
  end
  redis.call('HSET', KEYS[10], ARGV[1], ARGV[2])
end
redis.call('SET', KEYS[1], out, 'EX', ARGV[3])
return out
"""

# KEYS: 3, 4, 5, 6, 9 of ROUTE. ARGV: 1 agent, 2 max_concurrent, 3 not OFFLINE (0/1),
# 4 routable (ONLINE or INVISIBLE: 0/1). Returns 0 when the agent exists already.
REGISTER = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then return 0 end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 0)
redis.call('HSET', KEYS[4], ARGV[1], 0)
if ARGV[3] == '1' then redis.call('INCR', KEYS[5]) end
if ARGV[4] == '1' and tonumber(ARGV[2]) > 0 then redis.call('ZADD', KEYS[1], 0, ARGV[1]) end
return 1
"""


class RedisError(Exception):
    """A reply Redis marked as an error."""


class Redis(asyncio.Protocol):
    """One connection; ``call`` queues a command and returns a future of its reply. The
    commands of one turn of the event loop leave in one write, replies come back in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=RedisError)
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._lost: BaseException | None = None

    @classmethod
    async def connect(cls, host: str, port: int) -> Redis:
        _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = exc or ConnectionError("redis closed the connection")
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        reply = self._reader.gets()
        while reply is not False:
            waiter = self._waiting.popleft()
            if not waiter.done():
                if isinstance(reply, RedisError):
                    waiter.set_exception(reply)
                else:
                    waiter.set_result(reply)
            reply = self._reader.gets()

    def call(self, *args: bytes | str | int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        if self._lost is not None:
            waiter.set_exception(self._lost)
            return waiter
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(encode(args))
        self._waiting.append(waiter)
        return waiter

    def _flush(self) -> None:
        assert self._transport is not None
        self._transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def encode(args: tuple[bytes | str | int, ...]) -> bytes:
    """A command in RESP: an array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def check_id(value: str, field: str) -> tuple[str, str] | None:
    """The field and why ``value`` is not an id; None when it is one."""
    if ID.fullmatch(value) is None:
        return field, f"{field}: must be 1-128 characters of [A-Za-z0-9._:@-], got {value!r:.40}"
    return None


def route_error(request: pb.RouteRequest, prefix: str = "") -> tuple[str, str] | None:
    return (check_id(request.shop_id, prefix + "shop_id")
            or check_id(request.buyer_id, prefix + "buyer_id")
            or check_id(request.request_id, prefix + "request_id"))  # fmt: skip


def shop_keys(shop: str) -> tuple[str, ...]:
    """ROUTE's KEYS 2-10 of ``shop`` (KEYS[1] is the request's)."""
    tag = "{" + shop + "}"
    return tuple(f"{tag}:{name}" for name in
                 ("open", "free", "load", "cap", "new", "seq", "queue", "up", "seen"))  # fmt: skip


def decision(reply: bytes, buyer_id: str) -> pb.Decision:
    outcome, reason, agent, session, position, state = reply.split(b"|")
    return pb.Decision(outcome=int(outcome), reason=int(reason), agent_id=agent.decode(),
                       session_id=session.decode(), queue_position=int(position),
                       state=int(state), buyer_id=buyer_id)  # fmt: skip


class Router:
    """The servicers' shared state: the connection, the scripts' SHA1s, the shops' keys."""

    def __init__(self, redis: Redis, route_sha: bytes, register_sha: bytes) -> None:
        self.redis, self.route_sha, self.register_sha = redis, route_sha, register_sha
        self._keys: dict[str, tuple[str, ...]] = {}
        self.now = lambda: int(asyncio.get_running_loop().time() * 1000)

    def route(self, request: pb.RouteRequest) -> asyncio.Future[Any]:
        shop = request.shop_id
        keys = self._keys.get(shop)
        if keys is None:
            keys = self._keys[shop] = shop_keys(shop)
        return self.redis.call(b"EVALSHA", self.route_sha, b"10",
                               "{" + shop + "}:r:" + request.request_id, *keys,
                               request.buyer_id, self.now(), REQUEST_TTL_S)  # fmt: skip


class Routing(pb_grpc.RoutingServicer):
    def __init__(self, router: Router) -> None:
        self._router = router

    async def Route(self, request: pb.RouteRequest, context: Any) -> pb.Decision:
        error = route_error(request)
        if error:
            await context.abort(INVALID, error[1])
        return decision(await self._router.route(request), request.buyer_id)

    async def RouteBatch(self, request: pb.RouteBatchRequest, context: Any) -> pb.RouteBatchReply:
        items = request.requests
        if len(items) > MAX_BATCH:
            await context.abort(INVALID, f"requests: at most {MAX_BATCH}, got {len(items)}")
        answers = self._route_each(items, "requests")
        reply = pb.RouteBatchReply()
        add = reply.results.add
        for buyer, error, wait in answers:
            await set_result(add(), buyer, error, wait)
        return reply

    async def RouteStream(self, requests: Any, context: Any) -> Any:
        """Each message's requests sent to Redis as it is read (a reader task, up to
        ``STREAM_WINDOW`` messages ahead of the replies), answered in order: one reply a
        message when the caller coalesces, else one a request; an item's error is its
        answer."""
        await context.send_initial_metadata((("fenliu-coalesce", "1"),))
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[Any] = asyncio.Queue(STREAM_WINDOW)

        async def read() -> None:
            try:
                async for item in requests:
                    batch = [item.request, *item.more]
                    await answers.put((item.coalesce, self._route_each(batch, "more")))
            finally:
                await answers.put(None)

        reader = loop.create_task(read())
        try:
            while (message := await answers.get()) is not None:
                coalesce, each = message
                if coalesce:
                    reply = pb.RouteStreamReply()
                    await set_result(reply.result, *each[0])
                    for answer in each[1:]:
                        await set_result(reply.more.add(), *answer)
                    yield reply
                else:
                    for answer in each:
                        reply = pb.RouteStreamReply()
                        await set_result(reply.result, *answer)
                        yield reply
            await reader
        finally:
            reader.cancel()

    def _route_each(self, items: Any, field: str) -> list[tuple[str, Any, Any]]:
        """Per item its buyer, its error (the field and why) or the future of its decision:
        every valid item's EVALSHA queued now, so they leave in one write. Over
        ``MAX_BATCH`` items, each one's answer is the error, none routed."""
        if len(items) > MAX_BATCH:
            why = f"{field}: at most {MAX_BATCH} requests, got {len(items)}"
            return [(item.buyer_id, (field, why), None) for item in items]
        out = []
        for i, item in enumerate(items):
            error = route_error(item, f"{field}[{i}].")
            out.append((item.buyer_id, error, None if error else self._router.route(item)))
        return out


async def set_result(target: Any, buyer: str, error: Any, wait: Any) -> None:
    """A RouteResult set to the item's error, or to its decision once Redis answers."""
    if error is not None:
        target.error.code, (target.error.field, target.error.message) = INVALID.value[0], error
    else:
        target.decision.CopyFrom(decision(await wait, buyer))


class Presence(pb_grpc.PresenceServicer):
    def __init__(self, router: Router) -> None:
        self._router = router

    async def RegisterAgent(self, request: pb.RegisterAgentRequest, context: Any) -> pb.Agent:
        error = check_id(request.shop_id, "shop_id") or check_id(request.agent_id, "agent_id")
        if not error and request.max_concurrent > 10_000:
            error = "max_concurrent", f"max_concurrent: 0-10000, got {request.max_concurrent}"
        if error:
            await context.abort(INVALID, error[1])
        status = request.status or pb.AGENT_STATUS_OFFLINE
        keys = shop_keys(request.shop_id)
        made = await self._router.redis.call(
            b"EVALSHA", self._router.register_sha, b"5", keys[1], keys[2], keys[3], keys[4],
            keys[7], request.agent_id, request.max_concurrent,
            int(status != pb.AGENT_STATUS_OFFLINE),
            int(status in (pb.AGENT_STATUS_ONLINE, pb.AGENT_STATUS_INVISIBLE)),
        )  # fmt: skip
        if not made:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"agent_id: {request.agent_id} is registered already")  # fmt: skip
        return pb.Agent(agent_id=request.agent_id, role=request.role or pb.AGENT_ROLE_SUB,
                        max_concurrent=request.max_concurrent, status=status)  # fmt: skip


async def serve(redis_at: str, host: str, port: int) -> None:
    redis_host, _, redis_port = redis_at.rpartition(":")
    redis = await Redis.connect(redis_host, int(redis_port))
    route_sha = await redis.call(b"SCRIPT", b"LOAD", ROUTE)
    register_sha = await redis.call(b"SCRIPT", b"LOAD", REGISTER)
    router = Router(redis, route_sha, register_sha)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_RoutingServicer_to_server(Routing(router), server)
    pb_grpc.add_PresenceServicer_to_server(Presence(router), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"redis router serving on {host}:{bound}", file=sys.stderr, flush=True)
    try:
        await server.wait_for_termination()
    finally:
        redis.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--redis", required=True, help="HOST:PORT of the Redis to route in")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free one (printed)")
    args = p.parse_args()
    import signal

    import uvloop

    async def run() -> None:
        task = asyncio.ensure_future(serve(args.redis, args.host, args.port))
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
