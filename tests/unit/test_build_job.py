"""The build Job and the cache catalogue as a platform team sees them in kubectl."""

from __future__ import annotations

from batchline import api
from batchline.build.catalogue import CacheEntry, collectable
from batchline.config import OperatorConfig
from batchline.resources.build_job import build_job, builder_args
from batchline.resources.model_cache import gc_job
from tests.crd_schema import llmd

CFG = OperatorConfig()


def test_builder_args_carry_every_build_input_of_the_spec() -> None:
    spec = llmd(
        quantization={"mode": "int4-weight-only", "groupSize": 64, "qualityGate": {"maxPerplexityIncreasePercent": 5}},
        serving={"maxBatchSize": 16, "modelName": "chat", "dynamicBatching": {"preferredBatchSizes": [4, 8]}},
        resources={"gpu": {"count": 0}},
    )["spec"]
    args = builder_args(spec, "k1", "/ckpt")
    assert args[:4] == ["build", "/ckpt", "/models", "--alias=k1"]
    assert "--sparsity=0" in args and "--dequantize-at-load" not in args
    pruned = llmd(quantization={"mode": "int8-weight-only", "sparsity": 0.25, "dequantizeAtLoad": True})["spec"]
    assert {"--sparsity=0.25", "--dequantize-at-load"} <= set(builder_args(pruned, "k2", "/ckpt"))
    for expected in ("--mode=int4-weight-only", "--group-size=64", "--max-batch-size=16", "--model-name=chat",
                     "--instance-kind=KIND_CPU", "--preferred-batch-size=4", "--preferred-batch-size=8",
                     "--max-perplexity-increase=0.05", "--termination-log=/dev/termination-log"):  # fmt: skip
        assert expected in args


def test_a_pvc_source_is_mounted_read_only_and_gated_models_get_the_token_secret() -> None:
    obj = llmd(model={"source": "pvc://weights/llama/8b"})
    job = build_job([obj], obj["spec"], "k1", 1, CFG)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][1] == "/source/llama/8b"
    assert {"name": "source", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}} in pod["volumes"]
    token = next(e for e in container["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True
    assert pod["restartPolicy"] == "Never" and container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["metadata"]["labels"][api.LABEL_BUILD_KEY] == "k1"
    assert job["metadata"]["name"] == "batchline-build-k1-1"


def test_only_an_fp8_python_build_asks_for_a_gpu() -> None:
    cpu = llmd(quantization={"mode": "int8-weight-only"})
    assert (
        api.GPU_RESOURCE
        not in build_job([cpu], cpu["spec"], "k", 1, CFG)["spec"]["template"]["spec"]["containers"][0]["resources"][
            "requests"
        ]
    )
    fp8 = llmd(quantization={"mode": "fp8"}, serving={"backend": "python"})
    pod = build_job([fp8], fp8["spec"], "k", 1, CFG)["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"][api.GPU_RESOURCE] == "1" and pod["tolerations"]


def _entry(key: str, built_at: str, size: int) -> CacheEntry:
    return CacheEntry(key, built_at, {"sizeBytes": size})


def test_cache_collects_unused_builds_oldest_first_only_beyond_the_budget() -> None:
    cache = {
        "old": _entry("old", "2026-01-01T00:00:00Z", 40),
        "mid": _entry("mid", "2026-02-01T00:00:00Z", 40),
        "used": _entry("used", "2025-01-01T00:00:00Z", 40),
    }
    assert collectable(cache, {"used"}, budget_bytes=200) == []
    assert collectable(cache, {"used"}, budget_bytes=80) == ["old"]
    assert collectable(cache, {"used"}, budget_bytes=10) == ["old", "mid"]  # never a build in use
    job = gc_job("ns", ["old", "mid"], CFG)
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:5] == ["cache", "gc", "/models", "mid", "old"]


def test_a_catalogue_entry_round_trips_through_configmap_data() -> None:
    entry = CacheEntry("k1", "2026-11-22T10:00:00Z", {"key": "c1", "sizeBytes": 136})
    assert CacheEntry.from_data("k1", entry.to_data()) == entry
    assert CacheEntry.from_data("k2", "not json").summary == {}
