"""Benchmark of `batchline gateway`: what it adds to time to first token, its CPU per streamed token,
and one gateway process's ceiling in streamed tokens/s. All in one run, on one machine.

1. Overhead: the same streamed completions (a decoupled echo model in a real tritonserver, `--delay-ms`
   per token) sent straight to Triton's gRPC stream and through the gateway, in alternating rounds of
   `--concurrency` requests; TTFT p50/p95 on each side and the difference, and the gateway process's
   CPU time per 1,000 tokens it streamed.
2. Ceiling: `--streams` concurrent streams through the gateway against the echo model with no delay
   (it emits tokens as fast as it can) for `--seconds`; streamed tokens/s and the gateway's CPU share
   (a process on one core cannot pass 100%; below it, the upstream or the client is the limit).

    .venv/bin/python bench/gateway_bench.py [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from model_repo_builder.triton_server import TritonServer  # noqa: E402
from tests.gateway.echo_model import write_generation_model  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def prompt(tokens: int) -> str:
    return " ".join(f"w{index}" for index in range(tokens))


def _bytes(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<I", len(raw)) + raw


async def direct_stream(stub: Any, model: str, tokens: int) -> tuple[float, int]:
    """One streamed generation straight over Triton's gRPC stream: (TTFT, responses)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    for name, datatype, raw in (("text_input", "BYTES", _bytes(prompt(tokens))),
                                ("stream", "BOOL", b"\x01"),
                                ("max_tokens", "INT32", struct.pack("<i", tokens))):
        tensor = request.inputs.add()
        tensor.name, tensor.datatype = name, datatype
        tensor.shape.append(1)
        request.raw_input_contents.append(raw)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    done = asyncio.Event()

    async def requests() -> Any:
        yield request
        await done.wait()

    started = time.perf_counter()
    call = stub.ModelStreamInfer(requests())
    ttft, count = 0.0, 0
    while True:
        reply = await call.read()
        if reply is grpc.aio.EOF or reply.error_message:
            raise RuntimeError(f"direct stream failed: {reply}")
        count += 1
        if count == 1:
            ttft = time.perf_counter() - started
        if reply.infer_response.parameters["triton_final_response"].bool_param:
            done.set()
            break
    return ttft, count


async def gateway_stream(session: aiohttp.ClientSession, url: str, model: str, tokens: int) -> tuple[float, int]:
    """One streamed completion through the gateway: (TTFT, SSE events)."""
    body = {"model": model, "prompt": prompt(tokens), "max_tokens": tokens, "stream": True}
    started = time.perf_counter()
    ttft, events = 0.0, 0
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_any():
            if not events:
                ttft = time.perf_counter() - started
            events += chunk.count(b"data: ")
    return ttft, events


def start_gateway(upstream: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "batchline.cli", "gateway", "--host", "127.0.0.1", "--port", "0",
         "--upstream", upstream, "--max-in-flight-per-replica", "0", "--max-waiting", "100000"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        raise RuntimeError(f"the gateway did not start: {line}")
    return process, line.split()[4]


async def overhead(args: argparse.Namespace, grpc_url: str, url: str, pid: int) -> dict[str, Any]:
    channel = grpc.aio.insecure_channel(grpc_url)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    direct: list[float] = []
    through: list[float] = []
    gateway_cpu, gateway_tokens = 0.0, 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(2):  # warm both paths (connections, the model's config in the gateway)
            await direct_stream(stub, "timed", args.tokens)
            await gateway_stream(session, url, "timed", args.tokens)
        rounds = max(1, args.requests // args.concurrency)
        for _ in range(rounds):
            results = await asyncio.gather(*(direct_stream(stub, "timed", args.tokens)
                                             for _ in range(args.concurrency)))
            direct += [ttft for ttft, _ in results]
            before = cpu_seconds(pid)
            results = await asyncio.gather(*(gateway_stream(session, url, "timed", args.tokens)
                                             for _ in range(args.concurrency)))
            gateway_cpu += cpu_seconds(pid) - before
            through += [ttft for ttft, _ in results]
            gateway_tokens += args.tokens * args.concurrency
    await channel.close()
    figures = {
        "requests_per_side": len(direct),
        "direct_ttft_ms": {"p50": percentile(direct, 0.5) * 1e3, "p95": percentile(direct, 0.95) * 1e3},
        "gateway_ttft_ms": {"p50": percentile(through, 0.5) * 1e3, "p95": percentile(through, 0.95) * 1e3},
        "gateway_cpu_ms_per_1000_tokens": gateway_cpu / gateway_tokens * 1e6,
    }
    figures["added_ttft_ms"] = {q: figures["gateway_ttft_ms"][q] - figures["direct_ttft_ms"][q] for q in ("p50", "p95")}
    figures["mean_ttft_ms"] = {"direct": statistics.fmean(direct) * 1e3, "gateway": statistics.fmean(through) * 1e3}
    return figures


async def ceiling(args: argparse.Namespace, url: str, pid: int) -> dict[str, Any]:
    tokens = 0
    stop_at = time.perf_counter() + args.seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        while time.perf_counter() < stop_at:
            _, events = await gateway_stream(session, url, "flood", args.ceiling_tokens)
            tokens += max(0, events - 1)  # less [DONE]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await gateway_stream(session, url, "flood", 10)
        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(args.streams)))
        elapsed, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu_before
    return {"streams": args.streams, "seconds": elapsed, "tokens": tokens, "tokens_per_s": tokens / elapsed,
            "gateway_cpu_share": cpu / elapsed, "tokens_per_gateway_cpu_s": tokens / cpu if cpu else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="streamed requests per side (overhead)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32, help="tokens per request (overhead)")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="the model's time per token (overhead)")
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams (ceiling)")
    parser.add_argument("--ceiling-tokens", type=int, default=500, help="tokens per request (ceiling)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the ceiling run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        write_generation_model(repository, "timed", delay_ms=args.delay_ms)
        write_generation_model(repository, "flood", delay_ms=0)
        with TritonServer([repository]) as triton:
            gateway, url = start_gateway(f"timed={triton.grpc_url}")
            flood, flood_url = start_gateway(f"flood={triton.grpc_url}")
            try:
                results = {
                    "cpus": os.cpu_count(),
                    "overhead": asyncio.run(overhead(args, triton.grpc_url, url, gateway.pid)),
                    "ceiling": asyncio.run(ceiling(args, flood_url, flood.pid)),
                }
            finally:
                for process in (gateway, flood):
                    process.terminate()
                    process.wait(10)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
