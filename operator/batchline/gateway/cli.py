"""`batchline gateway`: the OpenAI-compatible endpoint, against the cluster or a static upstream table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

log = logging.getLogger("batchline.gateway")


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from batchline.gateway.auth import ApiKeys
    from batchline.gateway.discovery import KubernetesDiscovery, static_models
    from batchline.gateway.metrics import Metrics, demand_labels
    from batchline.gateway.routing import Model, Router
    from batchline.gateway.server import Gateway, Options
    from batchline.gateway.triton import Upstreams

    try:
        keys = ApiKeys(args.api_key_file)
    except OSError as exc:
        raise SystemExit(f"batchline gateway: cannot read {args.api_key_file}: {exc.strerror}") from None
    metrics = Metrics()
    router = Router(
        max_waiting=args.max_waiting,
        hold_timeout_s=args.hold_timeout,
        max_in_flight_per_endpoint=args.max_in_flight_per_replica,
    )

    def waiting(model_id: str, count: int) -> None:
        model = router.models.get(model_id)
        labels = demand_labels(model) if model is not None else (model_id, "", model_id)
        metrics.waiting.labels(*labels).set(count)

    router.on_waiting = waiting
    upstreams = Upstreams(args.upstream_timeout)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def publish(models: dict[str, Model]) -> None:
        router.update(models)
        for model in models.values():  # a model's gauges exist from the start, at 0
            metrics.waiting.labels(*demand_labels(model)).set(router.waiting.get(model.id, 0))
            metrics.in_flight.labels(*demand_labels(model))
        addresses = {e.address for model in models.values() for e in model.endpoints}
        task = loop.create_task(upstreams.keep(addresses))  # close the channels of pods that are gone
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    discovery = None
    if args.upstream:
        publish(static_models(args.upstream))
    else:
        def from_thread(models: dict[str, Model]) -> None:
            loop.call_soon_threadsafe(publish, models)

        discovery = KubernetesDiscovery(from_thread, args.namespace or (), args.kubeconfig)
        discovery.start()
    options = Options(max_request_bytes=args.max_request_bytes, client_write_timeout_s=args.client_write_timeout)
    gateway = Gateway(router, upstreams, metrics, keys, options)
    runner = web.AppRunner(gateway.app(), handler_cancellation=True, access_log=None,
                           shutdown_timeout=args.shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    server: Any = site._server
    port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else args.port
    # The first line on stdout says where it listens (tests and scripts read it with --port 0).
    print(f"batchline gateway listening on http://{args.host}:{port} "
          f"({'static upstreams' if args.upstream else 'LLMDeployments'}; API keys {'on' if keys.enabled else 'off'})",
          flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # Not ready from now on, so Kubernetes takes the pod out of the Service; still serving meanwhile
    # (clients that resolved it a moment ago), then no new connections, and streams in progress get
    # up to --shutdown-timeout to finish.
    gateway.draining = True
    if args.drain_seconds > 0:
        log.info("draining for %g s", args.drain_seconds)
        await asyncio.sleep(args.drain_seconds)
    if discovery is not None:
        discovery.stop()
    await runner.cleanup()
    await upstreams.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("gateway", help="serve one OpenAI-compatible API for every LLMDeployment",
                       description=__doc__)
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    p.add_argument("--upstream", action="append", metavar="NAME=HOST:PORT[,HOST:PORT...][?task=...&triton_model=...]",
                   help="serve NAME from these Triton gRPC addresses instead of discovering LLMDeployments "
                        "(repeatable; task is text-generation or embeddings, triton_model defaults to NAME)")
    p.add_argument("--kubeconfig", help="kubeconfig to use (default: in-cluster, then $KUBECONFIG)")
    p.add_argument("-n", "--namespace", action="append",
                   help="serve the LLMDeployments of these namespaces (repeatable; default: all). With exactly one "
                        "namespace model ids are names, otherwise namespace/name")
    p.add_argument("--max-waiting", type=int, default=100,
                   help="requests a model may hold waiting for a replica before answering 429 (default 100)")
    p.add_argument("--hold-timeout", type=float, default=60.0,
                   help="seconds a request waits for a ready replica with room before 503/504 (default 60)")
    p.add_argument("--max-in-flight-per-replica", type=int, default=64,
                   help="requests in flight per replica before new ones wait; 0 for no limit (default 64)")
    p.add_argument("--api-key-file", help="file of API keys, one per line (also: $BATCHLINE_GATEWAY_API_KEYS)")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest request body (default 1 MiB)")
    p.add_argument("--client-write-timeout", type=float, default=30.0,
                   help="seconds a streaming client may read nothing before it is dropped and its generation "
                        "cancelled (default 30)")
    p.add_argument("--upstream-timeout", type=float, default=300.0,
                   help="seconds the model may send nothing (before its first token, or between two) before the "
                        "request fails: 504, or an error event mid-stream (default 300)")
    p.add_argument("--drain-seconds", type=float, default=0.0,
                   help="on SIGTERM, answer /readyz with 503 and keep serving this long before closing the port "
                        "(default 0)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="then, seconds streams in progress get to finish before they are cut (default 30; 0: no limit)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)
