"""One clean-up pass over a namespace's model cache: collect unused builds beyond the size budget.

Level-based like reconcile: the plan comes from the catalogue and what is in use (wanted by an
LLMDeployment's spec, or served by its pods); a clean-up Job removes those builds from the volume,
and once it has succeeded their catalogue entries go. An idle pass writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

from kubernetes import client

from batchline.controller.writer import Applier
from batchline.config import OperatorConfig
from batchline.build.catalogue import CacheEntry, collectable
from batchline.resources.model_cache import gc_job, gc_job_name
from batchline.observed import JobView

log = logging.getLogger(__name__)


def collect(
    namespace: str,
    cache: Mapping[str, CacheEntry],
    in_use: Collection[str],
    jobs: Sequence[JobView],
    applier: Applier,
    core: client.CoreV1Api,
    config: OperatorConfig,
) -> int:
    """Returns the number of writes made."""
    plan = collectable(cache, in_use, config.model_cache_budget_bytes)
    if not plan or any(j.finished is None for j in jobs):
        return 0  # nothing to do, or a clean-up is running
    done = next((j for j in jobs if j.name == gc_job_name(plan)), None)
    if done is None:
        applier.apply(gc_job(namespace, plan, config))
        log.info("cache of %s is over budget: removing unused builds %s", namespace, plan)
        return 1
    if done.finished == "Complete":
        core.patch_namespaced_config_map(config.model_cache_pvc, namespace, {"data": dict.fromkeys(plan)})
        log.info("removed builds %s from the cache catalogue of %s", plan, namespace)
        return 1
    return 0  # failed: its Job (kept for a while by its TTL) shows why; the plan is retried after that
