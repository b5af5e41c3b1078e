"""Redis pub/sub clients compared for crowtwist's broker: txredisapi vs redis-py's asyncio client.

    python3 -m venv /tmp/redisbench
    /tmp/redisbench/bin/pip install twisted txredisapi==1.6.0 'redis>=5'
    /tmp/redisbench/bin/python benchmarks/redis_clients.py

Starts its own redis-server (``--save '' --appendonly no``) on a free
127.0.0.1 port, runs each client in a child process of its own (a reactor is
chosen once per process) and stops the server at the end.  Each client is run
in its natural setting:

``txredisapi``
    on Twisted's default reactor (epoll on Linux), as crowtwist's broker uses it:
    ``publish()`` called without waiting for the reply (the replies are
    pipelined on one connection), a ``SubscriberProtocol`` on a second one.
``redis-py tasks @ asyncio reactor``
    ``redis.asyncio`` on Twisted's asyncio reactor, driven from Twisted code
    the way crowtwist would have to: every publish is
    ``Deferred.fromFuture(asyncio.ensure_future(r.publish(...)))`` on a
    ``single_connection_client`` (one connection, so one publisher's order is
    kept, but redis-py holds that connection's lock until the reply is read:
    one PUBLISH in flight at a time, no pipelining).
``redis-py pipeline @ asyncio reactor``
    the same, but publishing through a writer that crowtwist would have to
    write: messages queue up, and one Twisted coroutine
    (``ensureDeferred``) sends whatever is queued as one
    ``pipeline(transaction=False)`` and awaits its ``execute()`` through
    ``Deferred.fromFuture``, then sends the next batch.  This is the fastest
    order-keeping way to publish a stream of messages with redis-py (a pool
    of connections would pipeline too, but loses the order).
``... @ plain asyncio``
    the two redis-py variants again on a plain asyncio loop, without Twisted
    (the reference: what the bridging costs).

The subscriber for redis-py is ``r.pubsub()`` read with ``async for ... in
pubsub.listen()`` in an asyncio task.  Measured, each ``--rounds`` times
(median reported), after a short warm-up:

* throughput: ``--messages`` PUBLISHes of ``--size`` bytes sent as fast as the
  publisher takes them, received by one subscriber connection in the same
  process; messages/s from the first send to the last receipt;
* round trip: publish one message, wait until the subscriber has it (the
  PUBLISH reply is then awaited outside the timed part), ``--roundtrips``
  times; p50 and p99 in µs;
* CPU: user+system time of the client process (``resource.getrusage``) per
  message, in the throughput run and in the round-trip run.  Redis's own CPU
  is not counted.

Both clients use hiredis when it is installed and a pure-Python reply parser
otherwise; the table names the parser each one used.  The results and the
choice they led to are in docs/redis-client-choice.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

CHANNEL = b"bench"

MODES = {
    "txredisapi": "txredisapi @ Twisted default reactor",
    "redispy-tasks-twisted": "redis-py tasks @ Twisted asyncio reactor",
    "redispy-pipeline-twisted": "redis-py pipeline @ Twisted asyncio reactor",
    "redispy-tasks-asyncio": "redis-py tasks @ plain asyncio (reference)",
    "redispy-pipeline-asyncio": "redis-py pipeline @ plain asyncio (reference)",
}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


# ---------------------------------------------------------------------------
# The measurements, written once over a small "driver" interface so that every
# client runs the same code.  Under Twisted a driver's waits are Deferreds;
# under plain asyncio they are futures.  A driver has:
#   publish(data)          send one PUBLISH, do not wait (returns a waitable for its reply)
#   drain()                a waitable: every PUBLISH sent so far has its reply
#   on_message             set by the measurement: called with each message received
#   new_waiter()/fire(w)   a one-shot waitable and how to fire it
# ---------------------------------------------------------------------------


async def measure(driver: Any, args: argparse.Namespace) -> dict[str, Any]:
    payload = b"x" * args.size

    async def throughput(count: int) -> tuple[float, float]:
        received = 0
        done = driver.new_waiter()

        def on_message(_data: bytes) -> None:
            nonlocal received
            received += 1
            if received == count:
                driver.fire(done)

        driver.on_message = on_message
        cpu0 = cpu()
        t0 = time.perf_counter()
        publish = driver.publish
        for _ in range(count):
            publish(payload)
        await done
        elapsed = time.perf_counter() - t0
        await driver.drain()
        used = cpu() - cpu0
        return count / elapsed, used / count * 1e6

    async def roundtrips(count: int) -> tuple[float, float, float]:
        times = []
        waiter = None

        def on_message(_data: bytes) -> None:
            driver.fire(waiter)

        driver.on_message = on_message
        cpu0 = cpu()
        for _ in range(count):
            waiter = driver.new_waiter()
            t0 = time.perf_counter()
            reply = driver.publish(payload)
            await waiter
            times.append(time.perf_counter() - t0)
            await reply
        used = cpu() - cpu0
        us = [t * 1e6 for t in times]
        return percentile(us, 0.50), percentile(us, 0.99), used / count * 1e6

    await throughput(min(2000, args.messages))  # warm-up
    await roundtrips(min(200, args.roundtrips))
    rounds = []
    for _ in range(args.rounds):
        rate, cpu_tp = await throughput(args.messages)
        p50, p99, cpu_rt = await roundtrips(args.roundtrips)
        rounds.append({"msgs_per_s": rate, "cpu_us_per_msg": cpu_tp, "rt_p50_us": p50, "rt_p99_us": p99,
                       "rt_cpu_us_per_msg": cpu_rt})
    return {"rounds": rounds}


# --- txredisapi on Twisted's default reactor --------------------------------


def run_txredisapi(args: argparse.Namespace) -> dict[str, Any]:
    import txredisapi
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
    from twisted.internet.endpoints import TCP4ClientEndpoint

    class Driver:
        on_message: Any = None

        def __init__(self, pub: Any) -> None:
            self._pub = pub
            self._last: Any = None

        def publish(self, data: bytes) -> Any:
            d = self._last = self._pub.publish(CHANNEL, data)
            return d

        def drain(self) -> Any:
            # Replies come in order on one connection: the last one is enough.
            return self._last

        new_waiter = staticmethod(Deferred)

        @staticmethod
        def fire(d: Any) -> None:
            d.callback(None)

    driver_box: list[Driver] = []

    class Subscriber(txredisapi.SubscriberProtocol):
        def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
            driver_box[0].on_message(message)

    def connect(protocol: Any) -> Any:
        class Factory(txredisapi.RedisFactory):
            def buildProtocol(self, addr: Any) -> Any:
                built = protocol(None)  # charset None: bytes in, bytes out
                built.factory = self
                return built

        factory = Factory(None, None, 1, isLazy=True, charset=None)
        factory.deferred.addErrback(lambda _: None)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", args.port)
        return endpoint.connect(factory).addCallback(lambda p: p.whenConnected())

    result: dict[str, Any] = {}

    async def main() -> None:
        pub, sub = await gatherResults([connect(txredisapi.RedisProtocol), connect(Subscriber)])
        await sub.subscribe([CHANNEL])
        driver_box.append(Driver(pub))
        result.update(await measure(driver_box[0], args))
        pub.transport.loseConnection()
        sub.transport.loseConnection()

    def stop(outcome: Any) -> Any:
        reactor.stop()
        return outcome

    ensureDeferred(main()).addErrback(lambda f: result.update(error=f.getTraceback())).addBoth(stop)
    reactor.run()
    result["reactor"] = type(reactor).__name__
    result["parser"] = "hiredis" if txredisapi.hiredis is not None else "pure Python"
    result["version"] = "txredisapi " + txredisapi.__version__ if hasattr(txredisapi, "__version__") else "txredisapi"
    return result


# --- redis-py's asyncio client ----------------------------------------------


def redis_clients(args: argparse.Namespace, single: bool) -> tuple[Any, Any]:
    import redis.asyncio

    pub = redis.asyncio.Redis(host="127.0.0.1", port=args.port, single_connection_client=single)
    sub = redis.asyncio.Redis(host="127.0.0.1", port=args.port)
    return pub, sub


async def subscriber_loop(pubsub: Any, box: list[Any]) -> None:
    async for message in pubsub.listen():
        if message["type"] == "message":
            box[0].on_message(message["data"])


def parser_name() -> str:
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis" if HIREDIS_AVAILABLE else "pure Python"


def run_redispy_twisted(args: argparse.Namespace, pipelined: bool) -> dict[str, Any]:
    import asyncio

    from twisted.internet import asyncioreactor

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)

    import redis
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred, succeed
    from twisted.internet.task import deferLater

    def bridge(coro: Any) -> Deferred[Any]:
        return Deferred.fromFuture(asyncio.ensure_future(coro))

    class TaskDriver:
        """Every publish a task of its own, on one connection (one PUBLISH in flight at a time)."""

        on_message: Any = None

        def __init__(self, pub: Any) -> None:
            self._pub = pub
            self._last: Any = succeed(None)

        def publish(self, data: bytes) -> Any:
            d = self._last = bridge(self._pub.publish(CHANNEL, data))
            return d

        def drain(self) -> Any:
            return self._last

        new_waiter = staticmethod(Deferred)

        @staticmethod
        def fire(d: Any) -> None:
            d.callback(None)

    class PipelineDriver(TaskDriver):
        """Messages queued; one writer sends what is queued as one pipeline, then the next batch."""

        def __init__(self, pub: Any) -> None:
            super().__init__(pub)
            self._queue: list[tuple[bytes, Deferred[Any]]] = []
            self._writing = False

        def publish(self, data: bytes) -> Any:
            d: Deferred[Any] = Deferred()
            self._queue.append((data, d))
            if not self._writing:
                self._writing = True
                ensureDeferred(self._writer())
            self._last = d
            return d

        async def _writer(self) -> None:
            try:
                while self._queue:
                    batch, self._queue = self._queue, []
                    pipe = self._pub.pipeline(transaction=False)
                    for data, _ in batch:
                        pipe.publish(CHANNEL, data)
                    replies = await bridge(pipe.execute())
                    for (_, d), reply in zip(batch, replies):
                        d.callback(reply)
            finally:
                self._writing = False

    result: dict[str, Any] = {}

    async def main() -> None:
        pub, sub = redis_clients(args, single=not pipelined)
        pubsub = sub.pubsub()
        await bridge(pubsub.subscribe(CHANNEL))
        box: list[Any] = [(PipelineDriver if pipelined else TaskDriver)(pub)]
        reader = asyncio.ensure_future(subscriber_loop(pubsub, box))
        # asyncio holds tasks and stream readers weakly: without a strong
        # reference from outside, this coroutine, its clients and the reader
        # task are one garbage cycle that gc collects mid-run (under plain
        # asyncio, asyncio.run's task is that reference).  A broker would
        # keep them on itself.
        keep.extend([pub, sub, pubsub, reader])
        try:
            result.update(await measure(box[0], args))
        finally:
            # Deferreds call back at once, so the measurement may have resumed
            # inside the subscriber's task: leave it before closing things.
            await deferLater(reactor, 0, lambda: None)
            reader.cancel()
            await Deferred.fromFuture(asyncio.gather(reader, return_exceptions=True))
            await bridge(pubsub.aclose())
            await bridge(pub.aclose())
            await bridge(sub.aclose())

    def stop(outcome: Any) -> Any:
        reactor.stop()
        return outcome

    keep: list[Any] = []
    reactor.callWhenRunning(
        lambda: keep.append(
            ensureDeferred(main()).addErrback(lambda f: result.update(error=f.getTraceback())).addBoth(stop)
        )
    )
    reactor.run()
    result["reactor"] = type(reactor).__name__
    result["parser"] = parser_name()
    result["version"] = "redis-py " + redis.__version__
    return result


def run_redispy_asyncio(args: argparse.Namespace, pipelined: bool) -> dict[str, Any]:
    import asyncio

    import redis

    class TaskDriver:
        on_message: Any = None

        def __init__(self, pub: Any) -> None:
            self._pub = pub
            self._last: Any = None

        def publish(self, data: bytes) -> Any:
            t = self._last = asyncio.ensure_future(self._pub.publish(CHANNEL, data))
            return t

        def drain(self) -> Any:
            return self._last

        @staticmethod
        def new_waiter() -> Any:
            return asyncio.get_running_loop().create_future()

        @staticmethod
        def fire(f: Any) -> None:
            f.set_result(None)

    class PipelineDriver(TaskDriver):
        def __init__(self, pub: Any) -> None:
            super().__init__(pub)
            self._queue: list[tuple[bytes, Any]] = []
            self._writing = False

        def publish(self, data: bytes) -> Any:
            f = asyncio.get_running_loop().create_future()
            self._queue.append((data, f))
            if not self._writing:
                self._writing = True
                asyncio.ensure_future(self._writer())
            self._last = f
            return f

        async def _writer(self) -> None:
            try:
                while self._queue:
                    batch, self._queue = self._queue, []
                    pipe = self._pub.pipeline(transaction=False)
                    for data, _ in batch:
                        pipe.publish(CHANNEL, data)
                    replies = await pipe.execute()
                    for (_, f), reply in zip(batch, replies):
                        f.set_result(reply)
            finally:
                self._writing = False

    async def main() -> dict[str, Any]:
        pub, sub = redis_clients(args, single=not pipelined)
        pubsub = sub.pubsub()
        await pubsub.subscribe(CHANNEL)
        box: list[Any] = [(PipelineDriver if pipelined else TaskDriver)(pub)]
        reader = asyncio.ensure_future(subscriber_loop(pubsub, box))
        try:
            return await measure(box[0], args)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await pubsub.aclose()
            await pub.aclose()
            await sub.aclose()

    result = asyncio.run(main())
    result["reactor"] = "asyncio " + type(asyncio.new_event_loop()).__name__
    result["parser"] = parser_name()
    result["version"] = "redis-py " + redis.__version__
    return result


def child(mode: str, args: argparse.Namespace) -> None:
    if mode == "txredisapi":
        result = run_txredisapi(args)
    elif mode.endswith("-twisted"):
        result = run_redispy_twisted(args, pipelined="pipeline" in mode)
    else:
        result = run_redispy_asyncio(args, pipelined="pipeline" in mode)
    print(json.dumps(result))


# --- the parent: Redis, the children, the table ------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(binary: str) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="redisbench-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--logfile", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
                    return server, port, next((v[2:] for v in version if v.startswith("v=")), "?")
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit("redis-server did not come up")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Modes: " + ", ".join(MODES))
    parser.add_argument("--messages", type=int, default=50_000, help="PUBLISHes per throughput round (50000)")
    parser.add_argument("--roundtrips", type=int, default=5_000, help="round trips per latency round (5000)")
    parser.add_argument("--size", type=int, default=64, help="message size in bytes (64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the median is reported (3)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of the modes")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    parser.add_argument("--json", action="store_true", help="print the results as JSON as well")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args)
        return

    server, port, redis_version = start_redis(args.redis_server)
    results: dict[str, Any] = {}
    try:
        for mode in args.modes.split(","):
            command = [sys.executable, os.path.abspath(__file__), "--child", mode, "--port", str(port),
                       "--messages", str(args.messages), "--roundtrips", str(args.roundtrips),
                       "--size", str(args.size), "--rounds", str(args.rounds)]
            started = time.monotonic()
            out = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if out.returncode != 0 or not out.stdout.strip():
                raise SystemExit(f"{mode} failed:\n{out.stderr}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if "error" in result:
                raise SystemExit(f"{mode} failed:\n{result['error']}")
            result["seconds"] = time.monotonic() - started
            results[mode] = result
            print(f"  {mode}: {result['seconds']:.1f} s", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(10)

    print(f"\nRedis {redis_version} on 127.0.0.1, Python {sys.version.split()[0]}, {args.messages} x "
          f"{args.size}-byte messages, {args.roundtrips} round trips, median of {args.rounds} rounds\n")
    print("| client @ loop | reactor / loop | parser | throughput (msg/s) | CPU µs/msg (throughput) "
          "| round trip p50 (µs) | p99 (µs) | CPU µs/round trip |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for mode, result in results.items():
        def med(key: str) -> float:
            return statistics.median(r[key] for r in result["rounds"])

        print(f"| {MODES[mode]} | {result['reactor']} | {result['version']}, {result['parser']} "
              f"| {med('msgs_per_s'):,.0f} | {med('cpu_us_per_msg'):.1f} | {med('rt_p50_us'):.0f} "
              f"| {med('rt_p99_us'):.0f} | {med('rt_cpu_us_per_msg'):.1f} |")
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
