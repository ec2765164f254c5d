"""Routing, discovery and request validation: pure logic, no processes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from batchline import api
from batchline.gateway import openai_api as oa
from batchline.gateway.auth import ApiKeys
from batchline.gateway.discovery import endpoints_from, models_from, parse_upstream, static_models
from batchline.gateway.routing import Endpoint, Model, Rejected, Router, UnknownModel, pick

A, B, C = Endpoint("10.0.0.1:8001"), Endpoint("10.0.0.2:8001"), Endpoint("10.0.0.3:8001")


def test_pick_prefers_the_fewest_in_flight_and_skips_unready_terminating_and_excluded() -> None:
    assert pick([A, B, C], {A.address: 2, B.address: 1, C.address: 3}) == B
    unready = Endpoint(B.address, ready=False)
    terminating = Endpoint(B.address, ready=True, terminating=True)
    assert pick([A, unready, C], {A.address: 2, C.address: 3}) == A
    assert pick([A, terminating, C], {A.address: 2, C.address: 3}) == A
    assert pick([A, B], {A.address: 5}, exclude={B.address}) == A
    assert pick([A, B], {}, exclude={A.address, B.address}) is None
    assert pick([], {}) is None


def test_pick_respects_the_limit_and_rotates_among_equals() -> None:
    assert pick([A, B], {A.address: 4, B.address: 4}, limit=4) is None
    assert pick([A, B], {A.address: 4, B.address: 3}, limit=4) == B
    assert {pick([A, B, C], {}, turn=turn) for turn in range(3)} == {A, B, C}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_router_holds_a_request_until_a_replica_is_ready() -> None:
    async def scenario() -> tuple[str, int]:
        router = Router(hold_timeout_s=10)
        router.update({"m": Model("m", "model")})  # scaled to zero: no endpoint
        waiting = asyncio.create_task(router.acquire("m"))
        await asyncio.sleep(0.01)
        held = router.waiting["m"]
        router.update({"m": Model("m", "model", endpoints=(A,))})
        lease = await asyncio.wait_for(waiting, 5)
        return lease.endpoint.address, held

    assert run(scenario()) == (A.address, 1)


def test_router_answers_429_when_the_queue_is_full_and_503_or_504_at_the_deadline() -> None:
    async def scenario() -> list[int]:
        statuses = []
        router = Router(max_waiting=1, hold_timeout_s=0.2, max_in_flight_per_endpoint=1)
        router.update({"m": Model("m", "model", endpoints=(A,)), "z": Model("z", "model")})
        lease = await router.acquire("m")
        held = asyncio.create_task(router.acquire("m"))
        await asyncio.sleep(0.01)
        for coroutine in (router.acquire("m"), held, router.acquire("z")):
            try:
                await coroutine
            except Rejected as exc:
                statuses.append(exc.status)
        router.release(lease)
        assert router.in_flight == {}
        with pytest.raises(UnknownModel):
            await router.acquire("nope")
        return statuses

    assert run(scenario()) == [429, 504, 503]


def test_router_releases_make_room_for_held_requests_and_ejection_moves_traffic() -> None:
    async def scenario() -> list[str]:
        router = Router(hold_timeout_s=5, max_in_flight_per_endpoint=1)
        router.update({"m": Model("m", "model", endpoints=(A, B))})
        first, second = await router.acquire("m"), await router.acquire("m")
        held = asyncio.create_task(router.acquire("m"))
        await asyncio.sleep(0.01)
        router.release(first)
        third = await asyncio.wait_for(held, 1)
        router.release(second)
        router.release(third)
        router.eject(A.address)
        after = await router.acquire("m")
        return [first.endpoint.address, third.endpoint.address, after.endpoint.address]

    first, third, after = run(scenario())
    assert third == first and after == B.address


def _llmd(name: str, namespace: str = "team", *, task: str = "text-generation", phase: str = "Ready") -> dict:
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {"model": {"task": task, "source": "hf://org/m"}, "quantization": {"mode": "int8-weight-only"},
                 "serving": {"modelName": "llm"}},
        "status": {"build": {"phase": phase, "report": {"compressionRatio": "3.90", "top1Agreement": "0.977"}},
                   "readyReplicas": 2},
    }


def _slice(service: str, endpoints: list[dict], namespace: str = "team") -> dict:
    return {
        "metadata": {"name": f"{service}-x1", "namespace": namespace,
                     "labels": {api.LABEL_LLMD: service, "kubernetes.io/service-name": service}},
        "ports": [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}],
        "endpoints": endpoints,
    }


def test_endpoints_from_slices_follow_readiness_and_termination() -> None:
    found = endpoints_from([_slice("a", [
        {"addresses": ["10.1.0.1"], "conditions": {"ready": True}, "targetRef": {"name": "a-1"}},
        {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.1.0.3"], "conditions": {"ready": True, "terminating": True}},
        {"addresses": ["10.1.0.4"]},  # no conditions: ready
        {"addresses": ["fd00::5"], "conditions": {"ready": True}},
    ])])
    by_address = {e.address: e for e in found}
    assert by_address["10.1.0.1:8001"].ready and by_address["10.1.0.1:8001"].pod == "a-1"
    assert not by_address["10.1.0.2:8001"].ready
    assert by_address["10.1.0.3:8001"].terminating and not by_address["10.1.0.3:8001"].ready
    assert by_address["10.1.0.4:8001"].ready
    assert by_address["[fd00::5]:8001"].ready


def test_models_from_llmdeployments_and_slices() -> None:
    llmds = [_llmd("chat"), _llmd("embed", task="embeddings"), _llmd("new", phase="Building"), _llmd("chat", "other")]
    slices = [_slice("chat", [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}}]),
              _slice("chat", [{"addresses": ["10.2.0.1"], "conditions": {"ready": True}}], namespace="other")]
    single = models_from(llmds[:3], slices, qualified=False)
    assert set(single) == {"chat", "embed"}  # a first build still running is not servable yet
    chat = single["chat"]
    assert (chat.namespace, chat.name) == ("team", "chat")
    assert chat.triton_model == "llm" and [e.address for e in chat.endpoints] == ["10.1.0.1:8001"]
    assert chat.info["quantization"] == "int8-weight-only"
    assert chat.info["build"] == {"compressionRatio": "3.90", "top1Agreement": "0.977"}
    assert single["embed"].task == "embeddings" and single["embed"].endpoints == ()
    many = models_from(llmds, slices, qualified=True)
    assert set(many) == {"team/chat", "team/embed", "other/chat"}
    assert [e.address for e in many["other/chat"].endpoints] == ["10.2.0.1:8001"]
    building_but_serving = _llmd("rolling", phase="Building")
    building_but_serving["status"]["build"]["servingKey"] = "abc"
    assert "rolling" in models_from([building_but_serving], [], qualified=False)


def test_static_upstreams() -> None:
    model = parse_upstream("chat=10.0.0.1:8001,10.0.0.2:8001?triton_model=llm")
    assert (model.id, model.triton_model, model.task) == ("chat", "llm", "text-generation")
    assert [e.address for e in model.endpoints] == ["10.0.0.1:8001", "10.0.0.2:8001"]
    assert parse_upstream("e=h:1?task=embeddings").task == "embeddings"
    merged = static_models(["m=h:1", "m=h:2"])
    assert [e.address for e in merged["m"].endpoints] == ["h:1", "h:2"]
    for bad in ("m", "=h:1", "m=h", "m=h:1?task=vision", "m=h:1?colour=red"):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_chat_requests_are_validated_into_generations() -> None:
    parsed = oa.parse_chat({
        "model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]}],
        "max_tokens": 5, "max_completion_tokens": 7, "stop": "x", "seed": 3, "stream": True,
        "stream_options": {"include_usage": True}, "user": "ignored",
    })
    assert parsed.messages == ({"role": "user", "content": "ab"},)
    assert (parsed.max_tokens, parsed.stop, parsed.seed, parsed.include_usage) == (7, ("x",), 3, True)
    assert oa.parse_completion({"model": "m", "prompt": ["one"]}).max_tokens == 16


@pytest.mark.parametrize(("body", "param"), [
    ([], None),
    ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}, "stream_options"),
    ({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
])
def test_bad_chat_requests(body: Any, param: str | None) -> None:
    with pytest.raises(oa.BadRequest) as raised:
        oa.parse_chat(body)
    assert raised.value.param == param


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2], "", None])
def test_bad_prompts(prompt: Any) -> None:
    with pytest.raises(oa.BadRequest):
        oa.parse_completion({"model": "m", "prompt": prompt})


def test_chunks_are_openai_sse_events() -> None:
    request = oa.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True,
                             "stream_options": {"include_usage": True}})
    writer = oa.ChunkWriter(request, "chatcmpl-1", 1700000000)
    events = [writer.first(), writer.text("he said \"hi\"\n"), writer.text("", "stop"), writer.usage(3, 2)]
    bodies = [json.loads(event[len(b"data: "):]) for event in events if event]
    assert all(event and event.endswith(b"\n\n") for event in events)
    assert bodies[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert bodies[1]["choices"][0]["delta"] == {"content": "he said \"hi\"\n"} and bodies[1]["usage"] is None
    assert bodies[2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert bodies[3]["choices"] == [] and bodies[3]["usage"]["total_tokens"] == 5
    assert {body["id"] for body in bodies} == {"chatcmpl-1"}


def test_api_keys_check_bearer_tokens(tmp_path: Any) -> None:
    path = tmp_path / "keys"
    path.write_text("k1  # first\n\nk2\n")
    keys = ApiKeys(str(path), env="k3")
    assert [keys.check(f"Bearer {key}") for key in ("k1", "k2", "k3")] == [True, True, True]
    assert not keys.check("Bearer k4") and not keys.check(None) and not keys.check("Basic k1")
    assert not keys.check("Bearer ")
    assert ApiKeys(None, env="").check(None)  # no keys configured: open


def test_the_gateway_imports_neither_the_controller_nor_kopf() -> None:
    import subprocess
    import sys

    code = ("import sys, batchline.gateway.cli, batchline.gateway.server, batchline.gateway.discovery; "
            "print(sorted(m for m in sys.modules if m.startswith(('batchline.controller', 'kopf', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
