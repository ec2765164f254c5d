"""The next step of a namespace's model-cache clean-up: collect unused builds beyond the size budget.

Level-based like reconcile: the plan comes from the catalogue and what is in use (wanted by an
LLMDeployment's spec, or served by its pods); a clean-up Job removes those builds from the volume,
and once it has succeeded their catalogue entries go. Pure: controller.reconcile.collect_cache writes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from batchline.build.catalogue import CacheEntry, collectable
from batchline.config import OperatorConfig
from batchline.observed import JobView
from batchline.resources.common import Manifest
from batchline.resources.model_cache import gc_job, gc_job_name


@dataclass(frozen=True)
class Step:
    job: Manifest | None = None  # a clean-up Job to start for `removing`
    removing: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # keys whose builds a finished Job removed: drop them from the catalogue


def in_use(wanted: Iterable[str], served: Iterable[str | None]) -> set[str]:
    """Builds no clean-up may touch: those an LLMDeployment's spec wants and those its pods serve now."""
    return set(wanted) | {key for key in served if key}


def plan(
    namespace: str,
    cache: Mapping[str, CacheEntry],
    keys_in_use: Collection[str],
    jobs: Sequence[JobView],
    config: OperatorConfig,
) -> Step:
    keys = collectable(cache, keys_in_use, config.model_cache_budget_bytes)
    if not keys or any(j.finished is None for j in jobs):
        return Step()  # nothing to do, or a clean-up is running
    done = next((j for j in jobs if j.name == gc_job_name(keys)), None)
    if done is None:
        return Step(job=gc_job(namespace, keys, config), removing=tuple(keys))
    if done.finished == "Complete":
        return Step(removed=tuple(keys))
    return Step()  # failed: its Job (kept for a while by its TTL) shows why; the plan is retried after that
