"""The build Job and the cache catalogue as a platform team sees them in kubectl."""

from __future__ import annotations

from batchline import api
from batchline.build.catalogue import CacheEntry, collectable
from batchline.build.spec_key import repository_inputs, repository_key
from batchline.config import OperatorConfig
from batchline.observed import BUILD_BLOCKED, BUILD_OUT_OF_MEMORY, build_pod_problem
from batchline.resources.build_job import HF_HOME, build_job, builder_args
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
    assert "--sparsity=0" in args
    pruned = llmd(quantization={"mode": "int8-weight-only", "sparsity": 0.25})["spec"]
    assert "--sparsity=0.25" in builder_args(pruned, "k2", "/ckpt")
    for expected in ("--mode=int4-weight-only", "--group-size=64", "--max-batch-size=16", "--model-name=chat",
                     "--instance-kind=KIND_CPU", "--preferred-batch-size=4", "--preferred-batch-size=8",
                     "--max-perplexity-increase=0.05", "--termination-log=/dev/termination-log"):  # fmt: skip
        assert expected in args


def test_the_deprecated_dequantize_at_load_reaches_no_build_and_keeps_the_key() -> None:
    # The field stays in the CRD (no effect) so that existing manifests still apply.
    obj = llmd(quantization={"mode": "int8-weight-only", "dequantizeAtLoad": True})
    job = build_job([obj], obj["spec"], "k1", 1, CFG)
    assert not any("dequantize" in arg for arg in job["spec"]["template"]["spec"]["containers"][0]["args"])
    # Its CRD default (false) went: an object without it keeps the key it had with the default filled in.
    plain = llmd(quantization={"mode": "int8-weight-only"})["spec"]
    assert "dequantizeAtLoad" not in plain["quantization"]
    with_default = {**plain, "quantization": {**plain["quantization"], "dequantizeAtLoad": False}}
    assert repository_key(plain) == repository_key(with_default)


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


def test_keys_that_alias_one_build_folder_count_its_bytes_once() -> None:
    # "a" and "b" differ only in how the build Job ran (a token Secret, builder memory): one folder.
    cache = {
        "a": CacheEntry("a", "2026-01-01T00:00:00Z", {"key": "c1", "sizeBytes": 100}),
        "b": CacheEntry("b", "2026-02-01T00:00:00Z", {"key": "c1", "sizeBytes": 100}),
        "old": CacheEntry("old", "2026-01-15T00:00:00Z", {"key": "c2", "sizeBytes": 50}),
    }
    assert collectable(cache, {"b"}, budget_bytes=150) == []  # 150 bytes on the volume, not 250
    # Removing "a" frees nothing while "b" names the folder, so "old" goes too.
    assert collectable(cache, {"b"}, budget_bytes=120) == ["a", "old"]
    assert collectable(cache, set(), budget_bytes=60) == ["a", "old", "b"]
    assert collectable(cache, set(), budget_bytes=100) == ["a", "old"]


def test_a_catalogue_entry_round_trips_through_configmap_data() -> None:
    entry = CacheEntry("k1", "2026-11-22T10:00:00Z", {"key": "c1", "sizeBytes": 136})
    assert CacheEntry.from_data("k1", entry.to_data()) == entry
    assert CacheEntry.from_data("k2", "not json").summary == {}


def _pod(obj: dict) -> dict:
    return build_job([obj], obj["spec"], "k1", 1, CFG)["spec"]["template"]["spec"]


def test_a_per_model_token_secret_and_key_reach_the_build_and_are_required() -> None:
    private = llmd(
        model={"source": "hf://meta-llama/Llama-3.1-8B@main", "tokenSecretRef": {"name": "llama", "key": "t"}}
    )
    [token] = [e for e in _pod(private)["containers"][0]["env"] if e["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "llama", "key": "t", "optional": False}
    default_key = llmd(model={"source": "hf://a/b", "tokenSecretRef": {"name": "llama"}})
    [token] = [e for e in _pod(default_key)["containers"][0]["env"] if e["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {"name": "llama", "key": "HF_TOKEN", "optional": False}
    # A Job's pod cannot change, so another Secret is another build (and Job), not an edit of the running one.
    assert repository_key(private["spec"]) != repository_key(default_key["spec"])
    assert repository_key(llmd()["spec"]) == repository_key(llmd()["spec"])


def test_downloads_go_to_an_emptydir_of_the_build_pod_never_to_the_shared_cache() -> None:
    pod = _pod(llmd())
    container = pod["containers"][0]
    assert {"name": "HF_HOME", "value": HF_HOME} in container["env"]
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == HF_HOME]
    assert {"name": mount["name"], "emptyDir": {}} in pod["volumes"]
    cache_mount = next(m for m in container["volumeMounts"] if m["name"] == "model-cache")["mountPath"]
    assert not HF_HOME.startswith(cache_mount + "/")


def test_per_model_builder_resources_override_the_chart_wide_ones() -> None:
    default = _pod(llmd())["containers"][0]["resources"]
    assert default == {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"memory": "32Gi"}}
    big = llmd(build={"resources": {"memory": "96Gi"}})
    assert _pod(big)["containers"][0]["resources"] == {
        "requests": {"cpu": "4", "memory": "96Gi"},
        "limits": {"memory": "96Gi"},
    }
    both = llmd(build={"resources": {"cpu": 16, "memory": "64Gi"}})
    assert _pod(both)["containers"][0]["resources"]["requests"] == {"cpu": "16", "memory": "64Gi"}
    assert len({repository_key(o["spec"]) for o in (llmd(), big, both)}) == 3


def test_vllm_on_several_gpus_builds_one_tensor_parallel_engine() -> None:
    tp = llmd(serving={"backend": "vllm"}, resources={"gpu": {"count": 4}})
    assert "--tensor-parallel-size=4" in builder_args(tp["spec"], "k", "/c")
    one = llmd(serving={"backend": "vllm"}, resources={"gpu": {"count": 1}})
    assert not any(a.startswith("--tensor-parallel-size") for a in builder_args(one["spec"], "k", "/c"))
    python = llmd(resources={"gpu": {"count": 4}})  # data-parallel copies, one per GPU
    assert not any(a.startswith("--tensor-parallel-size") for a in builder_args(python["spec"], "k", "/c"))
    assert repository_key(tp["spec"]) != repository_key(one["spec"])
    # The python backend's copies per GPU need no new build.
    assert repository_key(python["spec"]) == repository_key(llmd(resources={"gpu": {"count": 2}})["spec"])


def test_none_on_gpus_is_a_new_build_since_it_keeps_the_checkpoints_precision() -> None:
    gpu_none = repository_inputs(llmd()["spec"])  # gpu.count 1 by default
    assert gpu_none["precision"] == "checkpoint"
    # Specs whose build did not change keep their keys: CPU none (float32 as before), other modes.
    assert "precision" not in repository_inputs(llmd(resources={"gpu": {"count": 0}})["spec"])
    assert "precision" not in repository_inputs(llmd(quantization={"mode": "fp32"})["spec"])
    assert "precision" not in repository_inputs(llmd(quantization={"mode": "int8-weight-only"})["spec"])
    fp32 = llmd(quantization={"mode": "fp32"})
    assert "--mode=fp32" in builder_args(fp32["spec"], "k", "/c")
    assert repository_key(fp32["spec"]) != repository_key(llmd()["spec"])


def _build_pod(env: list, state: dict, memory: str = "2Gi") -> dict:
    container = {"name": "builder", "env": env, "resources": {"limits": {"memory": memory}}}
    return {
        "metadata": {"name": "batchline-build-k1-1-abcde", "namespace": "team-a"},
        "spec": {"containers": [container]},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "builder", "state": state}]},
    }


TOKEN_ENV = [
    {"name": "HF_HOME", "value": HF_HOME},
    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-llama", "key": "token", "optional": False}}},
]


def _waiting(message: str) -> dict:
    return {"waiting": {"reason": "CreateContainerConfigError", "message": message}}


def test_a_build_held_by_a_missing_token_secret_names_the_secret_and_how_to_create_it() -> None:
    problem = build_pod_problem(_build_pod(TOKEN_ENV, _waiting('secret "hf-llama" not found')))
    assert problem is not None and problem.reason == BUILD_BLOCKED and problem.secret == "hf-llama"
    assert 'Secret "hf-llama" does not exist in namespace team-a' in problem.message
    assert "kubectl create secret generic hf-llama -n team-a --from-literal=token=<token>" in problem.message
    no_key = build_pod_problem(_build_pod(TOKEN_ENV, _waiting("couldn't find key token in Secret team-a/hf-llama")))
    assert no_key is not None and no_key.secret == "hf-llama"
    assert 'has no key "token"' in no_key.message and "spec.model.tokenSecretRef.key" in no_key.message
    # The local process node's words for the same thing.
    local = build_pod_problem(_build_pod(TOKEN_ENV, _waiting("env 'HF_TOKEN': secret 'hf-llama' has no key 'token'")))
    assert local is not None and local.secret == "hf-llama"


def test_other_waiting_reasons_and_unrelated_config_errors_are_not_blamed_on_the_secret() -> None:
    assert build_pod_problem(_build_pod(TOKEN_ENV, {"waiting": {"reason": "ContainerCreating"}})) is None
    assert build_pod_problem(_build_pod(TOKEN_ENV, _waiting('configmap "other" not found'))) is None
    assert build_pod_problem(_build_pod(TOKEN_ENV, {"running": {}})) is None
    failed = {"terminated": {"reason": "Error", "exitCode": 2, "message": "checkpoint folder /x does not exist"}}
    assert build_pod_problem(_build_pod(TOKEN_ENV, failed)) is None


def test_an_oom_killed_build_says_the_memory_it_had_and_which_field_to_raise() -> None:
    killed = {"terminated": {"reason": "OOMKilled", "exitCode": 137, "message": "quantizing layer 12 of 32"}}
    problem = build_pod_problem(_build_pod(TOKEN_ENV, killed, memory="2Gi"))
    assert problem is not None and problem.reason == BUILD_OUT_OF_MEMORY and problem.memory == "2Gi"
    assert "The build ran out of memory at 2Gi" in problem.message
    assert "set spec.build.resources.memory higher (e.g. 4Gi)" in problem.message
    big = build_pod_problem(_build_pod(TOKEN_ENV, killed, memory="1.5Ti"))
    assert big is not None and "at 1.5Ti" in big.message and "(e.g. 3Ti)" in big.message


def test_build_and_clean_up_jobs_get_the_pull_secrets_for_their_images() -> None:
    cfg = OperatorConfig(image_pull_secrets=("regcred",))
    a = llmd(name="a", imagePullSecrets=[{"name": "team-a"}])
    b = llmd(name="b", imagePullSecrets=[{"name": "team-b"}, {"name": "regcred"}])
    pod = build_job([b, a], a["spec"], "k1", 1, cfg)["spec"]["template"]["spec"]
    # The chart's first, then each owner's (by name), each once: the same list whichever owner reconciles.
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "team-a"}, {"name": "team-b"}]
    assert build_job([a, b], b["spec"], "k1", 1, cfg)["spec"]["template"] == build_job(
        [b, a], a["spec"], "k1", 1, cfg)["spec"]["template"]
    assert "imagePullSecrets" not in build_job([llmd()], llmd()["spec"], "k1", 1, CFG)["spec"]["template"]["spec"]
    gc = gc_job("team-a", ["old"], cfg)["spec"]["template"]["spec"]
    assert gc["imagePullSecrets"] == [{"name": "regcred"}]
    assert gc["containers"][0]["image"] == cfg.checker_image
    assert "imagePullSecrets" not in gc_job("team-a", ["old"], CFG)["spec"]["template"]["spec"]
