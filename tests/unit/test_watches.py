"""What the operator watches: a server-side selector on every child kind, so everything it makes must carry it;
and no change-detecting handler, since kopf builds no diff base for one (handlers.NoDiffBase)."""

from __future__ import annotations

from typing import Any

from kopf._core.intents import registries

from batchline import api
from batchline.config import OperatorConfig
from batchline.controller import handlers
from batchline.resources import model_cache, serving
from batchline.resources.build_job import build_job
from tests.crd_schema import llmd

CFG = OperatorConfig(model_cache_host_path="/var/cache/batchline", inference_pools=True)
MANAGED = {api.LABEL_MANAGED_BY: api.MANAGED_BY}


def _labelled(obj: dict[str, Any]) -> bool:
    return MANAGED.items() <= obj["metadata"].get("labels", {}).items()


def test_everything_the_operator_makes_carries_the_watch_selector() -> None:
    obj = llmd()
    obj["metadata"]["uid"] = "u1"
    made = [
        *serving.children(obj, 1, CFG, "k1"),
        build_job([obj], obj["spec"], "k1", 1, CFG),
        model_cache.gc_job("team-a", ["k1"], CFG),
        model_cache.catalogue("team-a", CFG),
    ]
    kinds = {"Service", "PodDisruptionBudget", "Deployment", "PodMonitor", "InferencePool", "Job", "ConfigMap"}
    assert {m["kind"] for m in made} == kinds
    for m in made:
        assert _labelled(m), m["kind"]
        template = m.get("spec", {}).get("template")
        if template is not None:  # its pods: Triton, builders, clean-up
            assert _labelled(template), f"pods of {m['kind']}"


def test_every_label_filtered_watch_is_selected_server_side() -> None:
    registry = registries.get_default_registry()
    filtered = {
        (h.selector.group, h.selector.version, h.selector.any_name or h.selector.plural)
        for h in [*registry._indexing.get_all_handlers(), *registry._watching.get_all_handlers(),
                  *registry._spawning.get_all_handlers()]
        if h.labels
    }  # fmt: skip
    assert filtered <= set(handlers.WATCHED_CHILDREN)


def test_no_change_detecting_handlers() -> None:
    assert list(registries.get_default_registry()._changing.get_all_handlers()) == []


def test_no_handler_puts_a_finalizer_on_llmdeployments() -> None:
    """kopf adds one for any timer or daemon: a write per object, and deletions that hang while no operator runs.
    The resync timer is per namespace, on its cache catalogue (handlers.namespace_tick)."""
    registry = registries.get_default_registry()
    handlers_ = [*registry._spawning.get_all_handlers(), *registry._changing.get_all_handlers()]
    on_llmds = [h for h in handlers_ if (h.selector.any_name or h.selector.plural) == api.PLURAL]
    assert [h.id for h in on_llmds if h.requires_finalizer] == []
    assert any(h.id == "namespace_tick" for h in registry._spawning.get_all_handlers())
