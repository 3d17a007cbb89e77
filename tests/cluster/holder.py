"""A real process that owns shards (``python holder.py ...``): the cluster tests SIGKILL
and SIGSTOP it. It takes its shards, prints ``owned <index> <epoch>`` for each, and with
``--nats`` takes over their streams and appends one record every ``--every`` seconds,
printing ``trying <index> <n>`` as each begins, ``acked <index> <seq> <n>`` once it is
durable and ``refused <index> <why>`` when it is not (then it stops).
``--no-lease-check`` leaves only the stream's fencing to stop it: no lease check before an
append, and shards lost with the lease not fenced here (the write path would never do
that: it shows the second layer holds on its own)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from fenliu.server.cluster.member import Member
from fenliu.server.cluster.ownership import Ownership
from fenliu.server.core import types as t
from fenliu.server.storage import codec

T0 = 1_700_000_000_000


def say(*parts: object) -> None:
    print(*parts, flush=True)


async def main(args: argparse.Namespace) -> None:
    etcd = args.etcd.split(",")
    storage = None
    if args.nats:
        member = await Member.join(
            args.nats.split(","), etcd, cluster=args.cluster, node_id=args.node,
            shards=args.shards, ttl_s=args.ttl,
        )  # fmt: skip
        own, storage = member.ownership, member.storage
        if args.no_lease_check:
            # neither the lease check before each append nor the fencing of shards lost
            # with the lease (whichever notices first would refuse the append)
            storage.allowed = None
            own.on_lost = None
    else:
        own = Ownership(etcd, args.cluster, args.node, ttl_s=args.ttl)
        await own.start()
    indexes = [int(i) for i in args.take.split(",")]
    for index in indexes:
        while (epoch := await own.acquire(index)) is None:
            await asyncio.sleep(0.05)
        if storage is not None:
            await storage.take_over(index, epoch)
        say("owned", index, epoch)
    if storage is None:
        await asyncio.Event().wait()
        return
    n = 0
    while True:
        for index in indexes:
            record = codec.encode_command(t.Tick(at=T0 + n, shard=index))
            say("trying", index, n)  # an append in flight until its acked / refused
            try:
                await storage.append([(index, [record])])
                say("acked", index, storage.logs[index].position, n)
            except OSError as exc:
                say("refused", index, str(exc).replace("\n", " "))
                return
            n += 1
        await asyncio.sleep(args.every)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--etcd", required=True)
    parser.add_argument("--nats", default="")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--take", required=True)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--every", type=float, default=0.02)
    parser.add_argument("--no-lease-check", action="store_true")
    asyncio.run(main(parser.parse_args()))
    sys.exit(0)
