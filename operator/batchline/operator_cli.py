"""`batchline operator`: run the kopf operator against the current kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any


def run(args: argparse.Namespace) -> int:
    if args.kubeconfig:  # before kopf: importing it imports kubernetes.config, which reads $KUBECONFIG once
        os.environ["KUBECONFIG"] = args.kubeconfig
    import kopf

    import batchline.controller.handlers  # noqa: F401  (registers the handlers)
    from batchline.controller.resilience import install_outage_log

    kwargs: dict[str, Any] = {"standalone": args.standalone, "priority": args.priority}
    if args.namespace:
        kwargs["namespaces"] = args.namespace
    else:
        kwargs["clusterwide"] = True
    if args.liveness:
        kwargs["liveness_endpoint"] = args.liveness
    if args.peering:
        kwargs["peering_name"] = args.peering
    kopf.configure(verbose=args.verbose)
    install_outage_log()
    if not args.verbose:  # one line per handler run per object is noise at resync rates
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    asyncio.run(kopf.operator(**kwargs))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("operator", help="run the operator against the current kubeconfig")
    p.add_argument("--kubeconfig", help="kubeconfig to use (default: $KUBECONFIG, then in-cluster)")
    p.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    p.add_argument("--standalone", action="store_true", help="no peering: assume this is the only operator")
    p.add_argument("--priority", type=int, default=0, help="peering priority (the highest one is active)")
    p.add_argument("--peering", metavar="NAME",
                   help="peering object to use instead of kopf's shared 'default' (must exist; the chart creates it)")
    p.add_argument("--liveness", help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run)
