"""MLLP client throughput: ``MllpClient.send`` against a raw asyncio send/ACK loop.

Run in the project venv from the repository root::

    .venv/bin/python bench/mllp_bench.py                  # 5,000 messages x 5 rounds
    .venv/bin/python bench/mllp_bench.py --quick          # 500 x 3

Server: a canned-ACK MLLP server in a *separate process* (this script with ``--serve``), so
the server's CPU does not compete with the client's event loop or GIL. It answers each frame
with a fixed ACK whose MSA-2 is the frame's MSH-10 (spliced in, no parsing), bound to
127.0.0.1 on a free port, stopped by PID at the end.

Messages: ``--messages`` pre-built ORM^O01 orders (the same bytes for every configuration,
~480 bytes each, distinct MSH-10s), sent one at a time on one connection (one in flight, as the
real peers require). Configurations, interleaved in each round:

* ``raw``: ``asyncio.open_connection``; per message ``write(VT+msg+FS CR)``, ``drain()``,
  ``readuntil(FS CR)``: the least an asyncio program can do;
* ``client``: ``MllpClient.send`` (framing check, the sans-I/O framer, lock, ACK timeout,
  stale-connection check, stats);
* ``client+judge``: the same plus ``judge_ack`` on every ACK (what the deliverer does).

Throughput = messages / wall seconds; the table shows the median of the rounds and the
ratio to ``raw`` (goal: ``client`` >= 0.5x). The configurations run in reversed order every
other round. The report (with the load average at the start and the end) is printed and
written to ``bench/results/mllp.md`` (``--results``; ``--quick`` writes
``bench/.work/mllp-quick.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapter.hl7.ack_judge import judge_ack  # noqa: E402
from adapter.hl7.client import MllpClient, control_id  # noqa: E402
from tests.integration.mllp_support import order  # noqa: E402

ACK_HEAD = b"\x0bMSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20240301101501||ACK^O01|A1|P|2.4\rMSA|AA|"


# ---- the canned-ACK server (runs in its own process) ----
class _Canned(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.t = transport
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\x1c\r")) >= 0:
            head = self.buf[: self.buf.find(b"\r")]
            msh10 = bytes(head.split(b"|")[9])
            del self.buf[: end + 2]
            self.t.write(ACK_HEAD + msh10 + b"\x1c\r")


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Canned, "127.0.0.1", port)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


# ---- the clients ----
async def raw_loop(port: int, messages: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for m in messages:
            writer.write(b"\x0b" + m + b"\x1c\r")
            await writer.drain()
            await reader.readuntil(b"\x1c\r")
    finally:
        writer.close()
        await writer.wait_closed()


async def client_loop(port: int, messages: list[bytes]) -> None:
    async with MllpClient("127.0.0.1", port, ack_timeout=10) as client:
        for m in messages:
            await client.send(m)


async def judged_loop(port: int, messages: list[bytes]) -> None:
    ids = [control_id(m) for m in messages]
    async with MllpClient("127.0.0.1", port, ack_timeout=10) as client:
        for m, cid in zip(messages, ids, strict=True):
            if not judge_ack(cid, await client.send(m)).delivered:
                raise SystemExit(f"not delivered: {cid}")


CONFIGS: dict[str, Callable[[int, list[bytes]], Awaitable[None]]] = {
    "raw": raw_loop,
    "client": client_loop,
    "client+judge": judged_loop,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--results", type=Path, help="markdown output (default depends on --quick)")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    if args.quick:
        args.messages, args.rounds = 500, 3
    results = args.results or (
        ROOT / "bench" / ".work" / "mllp-quick.md"
        if args.quick
        else ROOT / "bench" / "results" / "mllp.md"
    )
    started_at = dt.datetime.now(dt.UTC)
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != b"READY":
            raise SystemExit("canned-ACK server did not start")
        messages = [order(n) for n in range(1, args.messages + 1)]
        asyncio.run(raw_loop(port, messages[:200]))  # warm-up
        rates: dict[str, list[float]] = {name: [] for name in CONFIGS}
        for round_no in range(args.rounds):
            configs = list(CONFIGS.items())
            for name, loop in configs if round_no % 2 == 0 else reversed(configs):
                started = time.perf_counter()
                asyncio.run(loop(port, messages))
                rates[name].append(len(messages) / (time.perf_counter() - started))
    finally:
        server.terminate()
        server.wait(10)
    med = {name: statistics.median(r) for name, r in rates.items()}
    size = statistics.mean(len(m) for m in messages)
    load_end = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    lines = [
        "# MLLP client throughput",
        "",
        f"`.venv/bin/python bench/mllp_bench.py{' --quick' if args.quick else ''}` "
        f"({args.messages:,} messages x {args.rounds} rounds), {started_at:%Y-%m-%d %H:%M} UTC. "
        f"Load average (1/5/15 min) at the start {load_start}, at the end {load_end}.",
        "",
        f"MLLP throughput, {args.messages} pre-built ORM^O01 ({size:.0f} B avg), one in flight, "
        f"canned-ACK server in its own process; median of {args.rounds} rounds, configurations "
        f"interleaved (order reversed every other round). "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs.",
        "",
        "| configuration | messages/s (median) | min | max | ratio to raw |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rates.items():
        lines.append(
            f"| {name} | {med[name]:,.0f} | {min(r):,.0f} | {max(r):,.0f} "
            f"| {med[name] / med['raw']:.2f}x |"
        )
    goal = med["client"] / med["raw"]
    lines += ["", f"Goal client >= 0.5x raw: {'met' if goal >= 0.5 else 'NOT met'} ({goal:.2f}x)"]
    text = "\n".join(lines) + "\n"
    print(text)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text, encoding="utf-8")
    print(f"written to {results}", file=sys.stderr)


if __name__ == "__main__":
    main()
