#!/usr/bin/env python3
"""Many concurrent connections, each echoing its own payload: the load of
scripts/bench.sh scale and of the scale lab test.

  conns.py serve HOST PORT
        in mpb-srv: an echo server (every byte read is written back) for
        as many connections as the open-file limit allows; runs until
        killed
  conns.py run HOST PORT COUNT [--concurrency C] [--len BYTES] [--seed S]
                               [--deadline SECS] [--hold SECS]
        the LAN host's side, bounded by the deadline (default 120 s):
        1. opens COUNT connections, at most C connecting at once (default
           200); each sends its own BYTES (default 512, derived from the
           seed and its index) and reads them back;
        2. once every connection is open (or failed), prints one JSON line
           {"phase": "open", "opened": .., "failed": .., "errors": {..},
            "open_secs": .., "per_sec": ..} and holds them all open until a
           line arrives on stdin (or --hold SECS pass, or stdin closes);
        3. on every connection still open, sends its payload again, reversed,
           and reads it back, then closes them all; prints
           {"phase": "done", "echoed": .., "lost": .., "corrupt": ..,
            "errors": {..}}.
        A connection is corrupt when it echoes other bytes than it sent;
        lost when it failed after it was open.
"""
import asyncio
import hashlib
import json
import resource
import socket
import sys
import time


# Longest wait for one connect or one echo: on a narrow shaped line,
# thousands of echoes at once queue behind each other.
OP_TIMEOUT = 30.0


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def payload(seed, index, length):
    out = bytearray()
    block = 0
    while len(out) < length:
        out += hashlib.sha256(f"{seed}:{index}:{block}".encode()).digest()
        block += 1
    return bytes(out[:length])


def error_name(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, asyncio.IncompleteReadError):
        return "eof"
    if isinstance(e, OSError) and e.errno is not None:
        import errno

        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


async def serve(host, port):
    async def echo(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = await asyncio.start_server(
        echo, host, port, family=family, backlog=8192, reuse_address=True
    )
    async with server:
        await server.serve_forever()


class Conn:
    __slots__ = ("reader", "writer", "data")

    def __init__(self, reader, writer, data):
        self.reader = reader
        self.writer = writer
        self.data = data


async def echo_once(conn, data, timeout):
    conn.writer.write(data)
    await asyncio.wait_for(conn.writer.drain(), timeout)
    got = await asyncio.wait_for(conn.reader.readexactly(len(data)), timeout)
    return got == data


async def run(host, port, count, concurrency, length, seed, deadline, hold):
    started = time.monotonic()
    end = started + deadline
    slots = asyncio.Semaphore(concurrency)
    conns = [None] * count
    errors = {}
    corrupt = 0

    def left():
        return max(0.1, end - time.monotonic())

    async def open_one(i):
        nonlocal corrupt
        async with slots:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), min(OP_TIMEOUT, left())
                )
            except Exception as e:  # noqa: BLE001 - counted by kind
                name = error_name(e)
                errors[name] = errors.get(name, 0) + 1
                return
            conn = Conn(reader, writer, payload(seed, i, length))
            try:
                if await echo_once(conn, conn.data, min(OP_TIMEOUT, left())):
                    conns[i] = conn
                else:
                    corrupt += 1
                    writer.close()
            except Exception as e:  # noqa: BLE001
                name = error_name(e)
                errors[name] = errors.get(name, 0) + 1
                writer.close()

    await asyncio.gather(*(open_one(i) for i in range(count)))
    opened_at = time.monotonic()
    opened = sum(1 for c in conns if c is not None)
    open_secs = opened_at - started
    print(
        json.dumps(
            {
                "phase": "open",
                "count": count,
                "opened": opened,
                "failed": count - opened,
                "corrupt": corrupt,
                "errors": errors,
                "open_secs": round(open_secs, 3),
                "per_sec": round(opened / open_secs, 1) if open_secs > 0 else 0,
            }
        ),
        flush=True,
    )

    # Hold every connection open until told (or the hold runs out).
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(
            loop.run_in_executor(None, sys.stdin.readline), min(hold, left())
        )
    except asyncio.TimeoutError:
        pass

    later = {}
    echoed = 0
    lost = 0

    async def again(conn):
        nonlocal echoed, lost, corrupt
        async with slots:
            try:
                if await echo_once(conn, conn.data[::-1], min(OP_TIMEOUT, left())):
                    echoed += 1
                else:
                    corrupt += 1
            except Exception as e:  # noqa: BLE001
                lost += 1
                name = error_name(e)
                later[name] = later.get(name, 0) + 1
            finally:
                conn.writer.close()

    await asyncio.gather(*(again(c) for c in conns if c is not None))
    print(
        json.dumps(
            {
                "phase": "done",
                "echoed": echoed,
                "lost": lost,
                "corrupt": corrupt,
                "errors": later,
                "secs": round(time.monotonic() - started, 3),
            }
        ),
        flush=True,
    )


def main(argv):
    raise_nofile()
    if len(argv) >= 3 and argv[0] == "serve":
        asyncio.run(serve(argv[1], int(argv[2])))
        return 0
    if len(argv) >= 4 and argv[0] == "run":
        opts = {"--concurrency": 200, "--len": 512, "--seed": 1, "--deadline": 120.0,
                "--hold": 60.0}
        rest = argv[4:]
        while rest:
            key = rest.pop(0)
            if key not in opts or not rest:
                print(f"conns.py: unknown or incomplete option {key}", file=sys.stderr)
                return 2
            opts[key] = type(opts[key])(rest.pop(0))
        asyncio.run(
            run(argv[1], int(argv[2]), int(argv[3]), opts["--concurrency"], opts["--len"],
                opts["--seed"], opts["--deadline"], opts["--hold"])
        )
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
