"""tunesmith serve: the OpenAI SDK against a served tiny run answers as evaluation did; errors in
OpenAI's shape (400/401/404/413/422/429/504); cache, batching, fallback, overload and memory;
the exported merged model answers as the run. Servers listen on 127.0.0.1 only, and every load
loop is bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import httpx
import pytest

from conftest import colour_codes
from serve_helpers import ScriptedEngine, running, scripted
from tunesmith import pipeline
from tunesmith.recipe import load_recipe
from tunesmith.rundir import open_run
from tunesmith.serve.app import create_app
from tunesmith.serve.state import Fallback, load_served


@pytest.fixture(scope="module")
def served_run(tmp_path_factory, tiny_model_dir):
    """A tiny trained and evaluated run (real model, real evaluation)."""
    root = tmp_path_factory.mktemp("served")
    files = colour_codes(root)
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={files['train']}",
                                f"data.test={files['test']}", "data.system_prompt=Answer with the code.",
                                "train.max_steps=40", "train.lr=0.01", "train.batch_size=4",
                                "eval.max_new_tokens=6", "eval.forgetting_probe=false",
                                "eval.bias.enabled=false",
                                f"output.dir={root / 'runs'}", "name=served"])
    pipeline.fine_tune(recipe)
    result = pipeline.evaluate_run(recipe)
    return recipe, open_run(recipe), result.predictions


def test_the_sdk_answers_as_evaluation_did(served_run):
    from openai import OpenAI

    recipe, run_dir, predictions = served_run
    app = create_app(lambda: load_served(str(run_dir.root)))
    with running(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["served"]
        for row in predictions:
            messages = [{"role": "user", "content": row.prompt}]
            reply = client.chat.completions.create(model="served", messages=messages, temperature=0,
                                                   max_tokens=recipe.eval.max_new_tokens)
            assert reply.choices[0].message.content == row.finetuned_prediction
            streamed = client.chat.completions.create(model="served", messages=messages, temperature=0,
                                                      max_tokens=recipe.eval.max_new_tokens, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
            assert text.strip() == row.finetuned_prediction
        scored = client.completions.create(model="served", prompt="code for red", max_tokens=0, echo=True,
                                           logprobs=1, temperature=0)
        tokens = scored.choices[0].logprobs
        assert "".join(tokens.tokens) == "code for red" and tokens.token_logprobs[0] is None
        assert all(lp < 0 for lp in tokens.token_logprobs[1:])
        starts = [sum(len(t) for t in tokens.tokens[:i]) for i in range(len(tokens.tokens))]
        assert tokens.text_offset == starts
        generated = client.completions.create(model="served", prompt="code for red", max_tokens=3, logprobs=2,
                                              temperature=0)
        assert len(generated.choices[0].logprobs.tokens) == generated.usage.completion_tokens <= 3


def _post(url: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "my invoice is wrong"}],
        "temperature": 0}


def _error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == code
    assert "Traceback" not in response.text and response.headers["x-request-id"]
    return body["error"]


def test_errors_have_openais_shape(monkeypatch):
    served = scripted(None, None, "serve.max_body_bytes=2000")
    app = create_app(lambda: served, api_keys=["k1", "k2"], config=served.recipe.serve)
    with running(app) as url:
        assert httpx.get(f"{url}/health").json()["status"] == "ok"  # no key needed
        _error(_post(url, CHAT), 401, "invalid_api_key")
        _error(_post(url, CHAT, Authorization="Bearer nope"), 401, "invalid_api_key")
        key = {"Authorization": "Bearer k2"}
        assert _post(url, CHAT, **key).status_code == 200
        error = _error(_post(url, {**CHAT, "temperature": 3}, **key), 422, "invalid_request")
        assert error["param"] == "temperature"
        assert error["message"] == "temperature: must be at most 2 (got 3)"  # our words, not pydantic's
        _error(_post(url, {**CHAT, "messages": []}, **key), 422, "invalid_request")
        error = _error(_post(url, {**CHAT, "max_tokens": 100}, **key), 400, "context_length_exceeded")
        assert "context is 64 tokens" in error["message"] and "max_tokens asks for 100" in error["message"]
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 3000}]}
        _error(_post(url, big, **key), 413, "request_too_large")
        _error(httpx.get(f"{url}/v1/nothing", headers=key), 404, "not_found")


def test_a_full_queue_answers_429_with_retry_after():
    served = scripted(ScriptedEngine(delay=0.5), None, "serve.queue_size=2", "serve.max_batch_size=1",
                      "serve.cache_size=0")
    app = create_app(lambda: served)

    async def burst(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            posts = [client.post(f"{url}/v1/chat/completions", json=CHAT) for _ in range(8)]
            return await asyncio.gather(*posts)

    with running(app) as url:
        responses = asyncio.run(burst(url))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 2 and codes.count(429) >= 4, codes
    refused = next(r for r in responses if r.status_code == 429)
    _error(refused, 429, "queue_full")
    assert int(refused.headers["retry-after"]) >= 1


def test_concurrent_requests_are_batched_and_repeats_cached():
    engine = ScriptedEngine(delay=0.2)
    served = scripted(engine, None, "serve.max_wait_ms=50")
    app = create_app(lambda: served)

    async def together(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            bodies = [{**CHAT, "messages": [{"role": "user", "content": f"ticket {i}"}]} for i in range(8)]
            return await asyncio.gather(*(client.post(f"{url}/v1/chat/completions", json=b) for b in bodies))

    with running(app) as url:
        assert all(r.status_code == 200 for r in asyncio.run(together(url)))
        assert max(engine.batches) > 1 and sum(engine.batches) == 8  # 8 requests, fewer batches
        first, again = _post(url, CHAT), _post(url, CHAT)
        sampled = [_post(url, {**CHAT, "temperature": 0.7}) for _ in range(2)]
    assert "x-tunesmith-cache" not in first.headers and again.headers["x-tunesmith-cache"] == "hit"
    assert again.json()["choices"] == first.json()["choices"]
    assert all("x-tunesmith-cache" not in r.headers for r in sampled)  # no seed: not deterministic
    assert served.cache.hits == 1


@pytest.mark.parametrize("trouble", ["raises", "times out", "answers invalid JSON"])
def test_the_fallback_answers_and_says_so(trouble):
    engine = {"raises": ScriptedEngine(fail=True), "times out": ScriptedEngine(delay=5),
              "answers invalid JSON": ScriptedEngine(answer="I think it is billing")}[trouble]
    fixed = Fallback("fixed", "fixed-answer", answer='{"category": "other", "priority": "medium"}',
                     on_invalid_output=True)
    served = scripted(engine, fixed, "serve.timeout_seconds=0.5", "serve.output_check=json")
    with running(create_app(lambda: served)) as url:
        reply = _post(url, CHAT)
    assert reply.status_code == 200 and reply.headers["x-tunesmith-model"] == "fixed-answer"
    assert reply.json()["model"] == "fixed-answer"
    assert json.loads(reply.json()["choices"][0]["message"]["content"]) == {"category": "other",
                                                                            "priority": "medium"}


def test_the_base_model_or_another_run_can_be_the_fallback():
    base = scripted(ScriptedEngine(fail=True, base_works=True), Fallback("base", "scripted:base"))
    other = scripted(ScriptedEngine(answer='{"category": "other"}'))
    run = scripted(ScriptedEngine(fail=True), Fallback("run", "other-run", served=other))
    with running(create_app(lambda: base)) as url:
        reply = _post(url, CHAT).json()
    assert reply["model"] == "scripted:base"
    assert reply["choices"][0]["message"]["content"].startswith("base: ")
    with running(create_app(lambda: run)) as url:  # the other run's batcher starts with the primary's
        reply = _post(url, CHAT).json()
    assert reply["model"] == "other-run"
    assert reply["choices"][0]["message"]["content"] == '{"category": "other"}'


def test_a_client_that_goes_away_stops_its_row():
    engine = ScriptedEngine(delay=10)
    with running(create_app(lambda: scripted(engine, None, "serve.max_wait_ms=0"))) as url:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=0.5)
        deadline = time.monotonic() + 5
        while engine.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert engine.cancelled == 1 and time.monotonic() - started < 6  # not the 10 s it would take


def test_without_a_fallback_failures_are_classified():
    from tunesmith.serve.errors import ERRORS

    before = dict(ERRORS)
    with running(create_app(lambda: scripted(ScriptedEngine(fail=True)))) as url:
        _error(_post(url, CHAT), 500, "model_error")
    slow = scripted(ScriptedEngine(delay=5), None, "serve.timeout_seconds=0.3")
    with running(create_app(lambda: slow)) as url:
        _error(_post(url, CHAT), 504, "timeout")
    assert ERRORS[("model", "model_error")] == before.get(("model", "model_error"), 0) + 1
    assert ERRORS[("infrastructure", "timeout")] == before.get(("infrastructure", "timeout"), 0) + 1


def test_overload_gets_429s_not_collapse_and_memory_stays_flat():
    """1,000 requests from 32 concurrent clients (bounded in count and time) against a small queue."""
    import psutil

    served = scripted(ScriptedEngine(delay=0.002), None, "serve.queue_size=8", "serve.cache_size=0",
                      "serve.max_wait_ms=1")
    process = psutil.Process(os.getpid())

    async def load(url: str, count: int) -> list[int]:
        codes: list[int] = []
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(i: int) -> None:
                async with limit:
                    body = {**CHAT, "messages": [{"role": "user", "content": f"ticket {i}"}]}
                    codes.append((await client.post(f"{url}/v1/chat/completions", json=body)).status_code)
            await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout=120)
        return codes

    with running(create_app(lambda: served)) as url:
        asyncio.run(load(url, 200))  # warm up: allocations that happen once
        before = process.memory_info().rss
        started = time.monotonic()
        codes = asyncio.run(load(url, 1000))
        elapsed = time.monotonic() - started
        after = process.memory_info().rss
    assert len(codes) == 1000 and set(codes) <= {200, 429} and codes.count(429) > 0 and codes.count(200) > 0
    assert after <= before * 1.10, (before, after)
    assert elapsed < 120


def test_the_export_answers_with_its_own_template_as_evaluation_did(served_run, tmp_path):
    """Loaded in plain transformers, its own chat template applied to the test prompts with no
    system prompt from us (what vLLM and TGI do), the fp32 export answers every test prompt as
    `tunesmith eval` did; the bf16 export's agreement is measured; `export --check` says both."""
    import subprocess
    import sys

    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.export.merged import check_export, export_merged

    recipe, run_dir, predictions = served_run
    merged = export_merged(run_dir.root, tmp_path / "fp32", dtype="float32")
    assert not list(merged.glob("*.bin")) and list(merged.glob("*.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(merged)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert model.generation_config.do_sample is False
    assert model.generation_config.max_new_tokens == recipe.eval.max_new_tokens
    tested = [p for p in predictions if p.set == "test"]
    for row in tested:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": row.prompt}], return_dict=True,
                                               add_generation_prompt=True, return_tensors="pt")
        # the recipe's system prompt, from the export's own template
        assert "Answer with the code." in tokenizer.decode(inputs["input_ids"][0])
        with torch.inference_mode():
            out = model.generate(**inputs)
        answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert answer == row.finetuned_prediction
    # a conversation that brings its own system message keeps it (as training would have)
    own = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Mine."}, {"role": "user", "content": "x"}], tokenize=False)
    assert "Mine." in own and "Answer with the code." not in own

    assert check_export(run_dir.root, merged).same == len(tested)
    bf16 = export_merged(run_dir.root, tmp_path / "bf16")  # the default
    with safe_open(next(bf16.glob("*.safetensors")), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()}  # noqa: SIM118 - safe_open is not a dict == {torch.bfloat16}
    agreement = check_export(run_dir.root, bf16)
    assert agreement.examples == len(tested) and agreement.dtype == "bfloat16"
    command = [sys.executable, "-m", "tunesmith", "export", str(run_dir.root), str(bf16), "--check"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"export check: {agreement.same} of {len(tested)} test answers" in result.stdout
    assert "(bfloat16)" in result.stdout


def test_schema_fuzzing_finds_no_5xx_and_no_response_off_schema():
    """Schemathesis generates requests from the app's OpenAPI schema, valid and invalid, for every
    operation: no 5xx, and every response matches its documented status, type and schema.
    `positive_data_acceptance` is off: a request the schema allows can still ask for more tokens
    than the context holds (400, by design)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    served = scripted(ScriptedEngine(context_length=4096), None, "serve.cache_size=0")
    with running(create_app(lambda: served)) as url:
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
        for operation in operations:
            @given(case=operation.as_strategy())
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def fuzz(case):
                case.call_and_validate(excluded_checks=[checks.positive_data_acceptance])
            fuzz()


def test_sigterm_drains_requests_in_flight(served_run):
    """SIGTERM while requests wait for their batch: every one is answered, then the process exits 0."""
    import signal
    import socket
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    _, run_dir, _ = served_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", str(run_dir.root),
                               "--port", str(port), "serve.max_wait_ms=1500", "serve.cache_size=0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        body = {"messages": [{"role": "user", "content": "code for red now"}], "max_tokens": 4,
                "temperature": 0}
        with ThreadPoolExecutor(4) as pool:
            replies = [pool.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=60)
                       for _ in range(4)]
            time.sleep(0.5)  # they are in, waiting for company
            server.send_signal(signal.SIGTERM)
            codes = [r.result().status_code for r in replies]
        assert codes == [200] * 4
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_keys_come_from_the_environment_and_a_file(tmp_path, monkeypatch):
    from tunesmith.serve import api_keys, check_exposure

    monkeypatch.setenv("TUNESMITH_API_KEY", " k1, ,k2 ")
    (tmp_path / "keys").write_text("k3\n\n  k4 \n")
    assert api_keys(str(tmp_path / "keys")) == ["k1", "k2", "k3", "k4"]
    monkeypatch.delenv("TUNESMITH_API_KEY")
    assert api_keys(None) == []
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_exposure(host, [], insecure=False)  # loopback: no key needed
    check_exposure("0.0.0.0", ["k"], insecure=False)
    check_exposure("0.0.0.0", [], insecure=True)
    with pytest.raises(Exception, match="needs an API key"):
        check_exposure("192.168.1.5", [], insecure=False)


def test_the_cache_is_a_bounded_lru_with_a_time_to_live():
    from tunesmith.serve.cache import ResponseCache

    now = [0.0]
    cache = ResponseCache(size=2, ttl_seconds=10, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1          # a is now the most recent
    cache.put("c", 3)                   # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("c") == 3
    now[0] = 10.5
    assert cache.get("a") is None       # older than the TTL
    assert (cache.hits, cache.misses, len(cache)) == (2, 2, 1)
    key = ResponseCache.key("chat", "m", {"messages": [1], "temperature": 0, "stream": False, "user": "x"})
    assert key == ResponseCache.key("chat", "m", {"temperature": 0, "messages": [1]})  # order, stream, user
    assert key != ResponseCache.key("chat", "other", {"messages": [1], "temperature": 0})


def test_the_adapter_is_merged_for_serving_only_where_nothing_needs_the_base():
    from tunesmith.serve.engines import _merge

    lora = load_recipe(None)
    assert _merge(lora, bf16=True)
    assert not _merge(lora, bf16=False)  # fp32: answers exactly as evaluation scored
    assert not _merge(load_recipe(None, ["serve.fallback.kind=base"]), bf16=True)
    assert not _merge(load_recipe(None, ["train.method=full"]), bf16=True)


def test_bf16_serving_runs_bf16_weights_and_answers(served_run):
    """serve.precision=bf16 on the CPU: the adapter merged, bf16 weights (not autocast), the decode
    attention of models/cpu_bf16.py; the run still answers its test prompts (the tiny model's
    answers may differ from fp32 in near ties, so they are compared to fp32 by count, not one by one)."""
    import torch

    from tunesmith.models.cpu_bf16 import ATTENTION
    from tunesmith.models.generation import GenRequest

    recipe, run_dir, predictions = served_run
    bf16 = load_served(str(run_dir.root), ["serve.precision=bf16"]).engine
    assert not hasattr(bf16.model, "peft_config")  # merged
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert bf16.model.config._attn_implementation == ATTENTION and not bf16.bf16  # no autocast on top
    prompts = [bf16.render([{"role": "system", "content": recipe.data.system_prompt},
                            {"role": "user", "content": row.prompt}]) for row in predictions]
    answers = [r.text.strip() for r in bf16.generate([GenRequest(p, recipe.eval.max_new_tokens, temperature=0)
                                                      for p in prompts])]
    same = sum(a == row.finetuned_prediction for a, row in zip(answers, predictions, strict=True))
    assert same >= len(predictions) - 1, (answers, [row.finetuned_prediction for row in predictions])


def test_the_prefix_cache_changes_no_answer(served_run):
    """A batch with the shared system prompt + template computed once answers as without it."""
    from tunesmith.models.generation import GenRequest

    recipe, run_dir, predictions = served_run
    answers = {}
    for cached in (True, False):
        engine = load_served(str(run_dir.root), [f"serve.prefix_cache={str(cached).lower()}"]).engine
        prompts = [engine.render([{"role": "system", "content": "Answer with the code."},
                                  {"role": "user", "content": row.prompt}]) for row in predictions]
        results = engine.generate([GenRequest(p, 6, temperature=0) for p in prompts])
        answers[cached] = [(r.text, r.prompt_tokens, r.completion_tokens) for r in results]
        assert len(engine._prefixes) == (1 if cached else 0)
    assert answers[True] == answers[False]
    assert [a[0].strip() for a in answers[True]] == [row.finetuned_prediction for row in predictions]


def test_each_row_keeps_its_own_limits(served_run):
    """One batch, three rows of the same prompt: no limit, a stop string, one token."""
    from tunesmith.models.generation import GenRequest

    _, run_dir, predictions = served_run
    engine = load_served(str(run_dir.root)).engine
    prompt = engine.render([{"role": "system", "content": "Answer with the code."},
                            {"role": "user", "content": predictions[0].prompt}])
    full = engine.generate([GenRequest(prompt, 6, temperature=0)])[0]
    assert full.text.strip() == predictions[0].finetuned_prediction and full.text
    stop = full.text[min(1, len(full.text) - 1)]  # a stop string the answer reaches by its second character
    again, stopped, short = engine.generate([GenRequest(prompt, 6, temperature=0),
                                             GenRequest(prompt, 6, temperature=0, stop=[stop]),
                                             GenRequest(prompt, 1, temperature=0)])
    assert again.text == full.text  # in a batch as alone
    assert stopped.text == full.text[:full.text.find(stop)] and stopped.finish_reason == "stop"
    assert short.completion_tokens == 1 and short.finish_reason == "length"
    assert short.text == engine.tokenizer.decode(engine.tokenizer(full.text, add_special_tokens=False)
                                                 ["input_ids"][:1])


def test_n_choices_and_their_stream():
    served = scripted(ScriptedEngine(answer="one two"), None, "serve.cache_size=0")
    with running(create_app(lambda: served)) as url:
        reply = _post(url, {**CHAT, "n": 2}).json()
        assert [c["index"] for c in reply["choices"]] == [0, 1]
        assert {c["message"]["content"] for c in reply["choices"]} == {"one two"}
        texts = {0: "", 1: ""}
        finished = set()
        with httpx.stream("POST", f"{url}/v1/chat/completions", json={**CHAT, "n": 2, "stream": True},
                          timeout=30) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        choice = json.loads(line[6:])["choices"][0]
        texts[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finished.add(choice["index"])
    assert {k: v.strip() for k, v in texts.items()} == {0: "one two", 1: "one two"} and finished == {0, 1}


def test_the_canary_replays_the_test_set_and_alerts_on_a_drop(served_run, monkeypatch):
    """The canary scores the live model on the run's test examples as evaluation did; when the
    score is below the evaluation's CI, the canary-drop alert fires."""
    from tunesmith.artifacts import EvalSummary, load
    from tunesmith.serve import canary

    recipe, run_dir, predictions = served_run
    served = load_served(str(run_dir.root), ["monitor.canary_every_seconds=0.2"])
    prepared = canary.prepare(served)
    test = load(EvalSummary, run_dir.eval_summary).sets["test"]
    assert len(prepared.prompts) == len(predictions) and prepared.floor == test.finetuned.ci[0]

    async def replayed() -> float:
        served.batcher.start()
        try:
            return await canary.replay(served, prepared)
        finally:
            await served.batcher.stop()
    assert asyncio.run(replayed()) == pytest.approx(test.finetuned.value)  # as evaluation scored

    impossible = canary.Canary(prepared.prompts, prepared.references, floor=1.5)
    monkeypatch.setattr(canary, "prepare", lambda s: impossible)
    with running(create_app(lambda: served)):
        deadline = time.monotonic() + 30
        while "canary_drop>0" not in served.monitor.alerts.firing and time.monotonic() < deadline:
            time.sleep(0.1)
    assert "canary_drop>0" in served.monitor.alerts.firing


def test_dropped_connections_leave_no_stray_cancelled_error_in_the_log(caplog):
    """A client that goes away mid-answer (lm-evaluation-harness after a crash) cancels its rows;
    the server logs no 'exception was never retrieved' CancelledError traceback for it."""
    import gc
    import logging
    import socket

    served = scripted(ScriptedEngine(delay=0.6))
    bodies = [("/v1/completions", {"prompt": "hello there", "max_tokens": 3}),
              ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]
    with caplog.at_level(logging.ERROR, logger="asyncio"), running(create_app(lambda: served)) as url:
        port = int(url.rsplit(":", 1)[1])
        for path, body in bodies:
            data = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        while served.engine.cancelled < len(bodies) and time.monotonic() < deadline:
            time.sleep(0.05)
        gc.collect()
    assert served.engine.cancelled == len(bodies)  # the rows were stopped, not answered
    assert not [r for r in caplog.records if "CancelledError" in (r.getMessage() + str(r.exc_info))]


def test_completions_take_a_batch_and_score_echoed_prompts_in_one_pass():
    """A batch of prompts: choice i * n + j answers prompt i; echo + logprobs with max_tokens 1
    is scored (the engine's prompt logprobs and greedy next token, with top_logprobs), as
    lm-evaluation-harness asks; token ids need an engine with a tokenizer."""
    served = scripted()
    with running(create_app(lambda: served)) as url:
        def post(**body):
            return httpx.post(f"{url}/v1/completions", json=body, timeout=30)

        batch = post(prompt=["one two", "three"], n=2, max_tokens=5, temperature=0).json()
        assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
        assert batch["usage"]["prompt_tokens"] == 3  # the scripted engine counts words: 2 + 1
        scored = post(prompt=["a b c", "d e"], echo=True, logprobs=1, max_tokens=1, temperature=0).json()
        first, second = scored["choices"]
        assert first["logprobs"]["tokens"] == ["a", "b", "c", " end"] and first["text"] == "a b c end"
        assert first["logprobs"]["top_logprobs"][1] == {"b": -1.0}
        assert first["logprobs"]["token_logprobs"][0] is None
        assert second["logprobs"]["tokens"] == ["d", "e", " end"] and second["finish_reason"] == "length"
        assert served.engine.batches == [4]  # only the batch was generated; scoring generates nothing
        ids = post(prompt=[[1, 2], [3]])
        assert ids.status_code == 400 and "takes text prompts" in ids.json()["error"]["message"]
        streamed = post(prompt=["a", "b"], stream=True)
        assert streamed.status_code == 400 and "takes one prompt" in streamed.json()["error"]["message"]
        empty = post(prompt=[[]])
        assert empty.status_code == 422
