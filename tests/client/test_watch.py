"""The SDK's watch streams and shop stats against real servers."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from fenliu.client import (
    AsyncClient,
    Client,
    Event,
    EventKind,
    FellBehind,
    FellBehindCause,
    NotFound,
    Reason,
    Started,
    Status,
    Unavailable,
    WatchItem,
)
from fenliu.client._pb import fenliu_pb2_grpc as pb_grpc
from fenliu.server.config import Config
from fenliu.server.rpc.app import Server


async def next_item(stream: object) -> WatchItem:
    return await asyncio.wait_for(stream.__anext__(), 30)  # type: ignore[attr-defined]


def test_the_async_watcher_reconnects_and_resumes_across_a_restart(tmp_path: Path) -> None:
    async def run() -> None:
        config = Config(shards=2, data_dir=str(tmp_path), tick_interval_s=3600, grace_s=5)
        server = Server(dataclasses.replace(config, host="127.0.0.1", port=0))
        port = server.bind()
        await server.start()
        async with AsyncClient(f"127.0.0.1:{port}", backoff=0.01) as fenliu:
            await fenliu.register_agent("s", "a", max_concurrent=5, status=Status.ONLINE)
            async with fenliu.watch_shop("s") as stream:
                assert await next_item(stream) == Started(head_seq=1)
                await fenliu.route("s", "b1")
                first = await next_item(stream)
                assert isinstance(first, Event) and (first.seq, first.kind) == (
                    2,
                    EventKind.ASSIGNED,
                )
                await server.stop()  # ends the stream; the SDK keeps trying to reconnect
                server = Server(dataclasses.replace(config, host="127.0.0.1", port=port))
                server.bind()
                await server.start()
                # Reconnected, resuming after seq 2: nothing was lost, so no FellBehind.
                assert await next_item(stream) == Started(head_seq=2)
                await fenliu.route("s", "b2")
                second = await next_item(stream)
                assert isinstance(second, Event)
                assert (second.seq, second.buyer_id, second.reason) == (3, "b2", Reason.STRATEGY)
                assert stream.last_seq == 3
        await server.stop()

    asyncio.run(run())


def test_the_async_watcher_resuming_too_far_back_is_told_it_fell_behind(target: str) -> None:
    async def run() -> None:
        async with AsyncClient(target) as fenliu:
            await fenliu.register_agent("far", "a", max_concurrent=5, status=Status.ONLINE)
            await fenliu.route("far", "b1")
            async with fenliu.watch_agent("far", "a", after_seq=0) as stream:
                assert await next_item(stream) == Started(head_seq=2)
                assert await next_item(stream) == FellBehind(2, FellBehindCause.NOT_KEPT)
                assert stream.last_seq == 2

    asyncio.run(run())


def test_a_watch_of_an_unknown_shop_raises_not_found(target: str) -> None:
    async def run() -> None:
        async with AsyncClient(target) as fenliu:
            with pytest.raises(NotFound) as info:
                await next_item(fenliu.watch_shop("no-such-shop"))
            assert info.value.field == "shop_id"

    asyncio.run(run())


def test_the_blocking_client_watches_and_reads_stats(fenliu: Client) -> None:
    fenliu.register_agent("blk", "a", max_concurrent=1, status=Status.ONLINE)
    stream = fenliu.watch_agent("blk", "a")
    assert next(stream) == Started(head_seq=1)
    fenliu.route("blk", "b1")
    fenliu.route("blk", "b2")  # queued: not a's event
    fenliu.set_status("blk", "a", Status.SUSPENDED)
    items = [next(stream), next(stream)]
    assert [(i.seq, i.kind, i.status) for i in items if isinstance(i, Event)] == [
        (2, EventKind.ASSIGNED, None),
        (4, EventKind.STATUS_CHANGED, Status.SUSPENDED),
    ]
    stream.close()  # type: ignore[attr-defined]
    stats = fenliu.get_shop_stats("blk", window_minutes=5)
    assert (stats.queue_length, stats.open_sessions, stats.event_seq) == (1, 2, 4)
    assert (stats.today.assigned, stats.window.assigned, stats.window_minutes) == (1, 1, 5)
    assert [(a.agent_id, a.status, a.load) for a in stats.agents] == [("a", Status.SUSPENDED, 1)]


def test_the_async_watcher_gives_up_on_a_server_that_never_comes() -> None:
    async def run() -> None:
        async with AsyncClient("127.0.0.1:1", backoff=0.01) as fenliu:
            stream = fenliu.watch_shop("s", give_up_after=0.2)
            with pytest.raises(Unavailable, match="could not reconnect"):
                await next_item(stream)

    asyncio.run(run())


def test_a_watch_cut_off_with_cancelled_reconnects_and_resumes() -> None:
    """A stopping server's grpc cancels the calls still running past its grace: the stream
    ends with the status CANCELLED, which is the server going away, not the caller's
    cancellation (seen in a planned hand-off). A loopback grpc server whose WatchShop cuts
    its first stream off so, then serves the resumed one."""
    from fenliu.client._pb import fenliu_pb2 as pb
    from fenliu.client._watch import WatchStream

    asked: list[int | None] = []

    async def watch_shop(request: pb.WatchShopRequest, context: Any) -> Any:
        asked.append(request.after_seq if request.HasField("after_seq") else None)
        if len(asked) == 1:
            yield pb.WatchMessage(started=pb.WatchStarted(head_seq=4))
            await context.abort(grpc.StatusCode.CANCELLED, "the server is stopping")
        yield pb.WatchMessage(started=pb.WatchStarted(head_seq=4))

    async def run() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(
            watch_shop,
            request_deserializer=pb.WatchShopRequest.FromString,
            response_serializer=pb.WatchMessage.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("fenliu.v1.Monitor", {"WatchShop": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.MonitorStub(channel)

                def open_stream(after: int | None) -> Any:
                    return stub.WatchShop(pb.WatchShopRequest(shop_id="s", after_seq=after))

                async with WatchStream(open_stream, None, backoff=0.01) as stream:
                    assert await next_item(stream) == Started(head_seq=4)
                    assert await next_item(stream) == Started(head_seq=4)  # reconnected
                    assert stream.reconnects == 1
            assert asked == [None, 4]  # resumed after the head it had been told
        finally:
            await server.stop(0)

    asyncio.run(run())
