"""serve.engine upstream: tunesmith's watched server in front of another OpenAI-compatible server
(here a second `tunesmith serve` of the same run, on loopback: it speaks the same API). The SDK
gets the answers the built-in engine gives (chat, streaming, completions with logprobs); metrics,
drift windows, feedback and the request log keep working; when the upstream goes away, the
fallback answers. And serve.engine vllm's command line, through a fake vllm module that records
its arguments and serves in its place."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import write_jsonl
from serve_helpers import running
from tunesmith import pipeline
from tunesmith.recipe import load_recipe
from tunesmith.serve.app import create_app
from tunesmith.serve.state import load_served

COLOURS = ["red", "blue", "green", "black", "white", "pink"]
FIXED = "no code known"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("upstream")
    train_file = write_jsonl(root / "train.jsonl", [
        {"instruction": f"code for {c} #{i}", "output": c[:2].upper()} for i in range(12) for c in COLOURS])
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={train_file}",
                                "data.system_prompt=Answer with the code.", "train.max_steps=30",
                                "train.lr=0.01", "train.batch_size=4", f"output.dir={root / 'runs'}",
                                "name=fronted"])
    pipeline.fine_tune(recipe)
    return recipe.run_dir


def total(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_in_front_of_an_upstream_the_sdk_gets_the_builtin_answers_and_watching_goes_on(run_dir):
    from openai import OpenAI

    with contextlib.ExitStack() as stack:
        upstream_url = stack.enter_context(running(create_app(
            lambda: load_served(str(run_dir), ["monitor.enabled=false"]))))
        front = load_served(str(run_dir), [
            "serve.engine=upstream", f"serve.upstream.url={upstream_url}", "serve.upstream.model=fronted",
            "monitor.window_size=5", "serve.fallback.kind=fixed", f"serve.fallback.answer={FIXED}"])
        front_url = running(create_app(lambda: front))
        url = front_url.__enter__()
        try:
            assert httpx.get(f"{url}/health").json()["engine"] == "upstream"
            direct = OpenAI(base_url=f"{upstream_url}/v1", api_key="x", max_retries=0)
            fronted = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            ids = []
            for colour in COLOURS[:5]:
                messages = [{"role": "user", "content": f"code for {colour} #3"}]
                want = direct.chat.completions.create(model="fronted", messages=messages, temperature=0,
                                                      max_tokens=6).choices[0].message.content
                reply = fronted.chat.completions.create(model="fronted", messages=messages, temperature=0,
                                                        max_tokens=6)
                assert reply.choices[0].message.content == want  # the run's template and system prompt
                ids.append(reply.id)
                streamed = fronted.chat.completions.create(model="fronted", messages=messages, temperature=0,
                                                           max_tokens=6, stream=True, seed=1)
                pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
                assert "".join(pieces).strip() == want.strip()
            ask = {"model": "fronted", "prompt": "code for red", "max_tokens": 4, "logprobs": 2,
                   "temperature": 0}
            raw, mine = direct.completions.create(**ask), fronted.completions.create(**ask)
            for client in (direct, fronted):  # streamed completions, from tunesmith's own server too
                events = list(client.completions.create(**ask, stream=True,
                                                        stream_options={"include_usage": True}))
                assert "".join(e.choices[0].text for e in events if e.choices) == raw.choices[0].text
                assert events[-1].usage.completion_tokens == raw.usage.completion_tokens
            assert mine.choices[0].text == raw.choices[0].text
            assert mine.choices[0].logprobs.tokens == raw.choices[0].logprobs.tokens
            assert mine.choices[0].logprobs.token_logprobs == pytest.approx(
                raw.choices[0].logprobs.token_logprobs)
            echoed = fronted.completions.create(model="fronted", prompt="code for red", max_tokens=0,
                                                echo=True, logprobs=1, temperature=0)
            assert "".join(echoed.choices[0].logprobs.tokens) == "code for red"

            # feedback on an answer the upstream made, stored by tunesmith
            rated = httpx.post(f"{url}/v1/feedback", json={"response_id": ids[0], "rating": -1,
                                                           "correction": "RE"})
            assert rated.status_code == 200

            # the upstream goes away: the fallback answers, and says so
            stack.close()
            gone = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                "messages": [{"role": "user", "content": "code for blue #1"}], "temperature": 0.7})
            assert gone.status_code == 200 and gone.json()["choices"][0]["message"]["content"] == FIXED
            assert gone.headers["X-Tunesmith-Model"] == "fixed-answer"
            metrics = httpx.get(f"{url}/metrics").text
        finally:
            front_url.__exit__(None, None, None)
    assert total(metrics, "tunesmith_requests_total", route="/v1/chat/completions", status="200") == 11
    assert total(metrics, "tunesmith_fallbacks_total") == 1
    assert total(metrics, "tunesmith_time_to_first_token_seconds_count") == 5
    front.monitor.wait()
    windows = front.monitor.windows
    assert len(windows) >= 2 and all("drift" in w for w in windows), windows  # 5 answers a window
    assert [r["rating"] for r in front.monitor.store.rated()] == [-1]
    assert len(front.monitor.store.recent_requests(limit=100)) >= 13


def test_a_refused_connection_goes_to_the_fallback_at_once(run_dir):
    front = load_served(str(run_dir), ["serve.engine=upstream", "serve.upstream.url=http://127.0.0.1:9",
                                       "monitor.enabled=false", "serve.fallback.kind=fixed",
                                       f"serve.fallback.answer={FIXED}"])
    with running(create_app(lambda: front)) as url:
        started = time.monotonic()
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                            json={"messages": [{"role": "user", "content": "code for red"}]})
        assert answer.status_code == 200 and answer.headers["X-Tunesmith-Model"] == "fixed-answer"
        assert time.monotonic() - started < 10
        no_fallback = load_served(str(run_dir), ["serve.engine=upstream", "monitor.enabled=false",
                                                 "serve.upstream.url=http://127.0.0.1:9"])
    with running(create_app(lambda: no_fallback)) as url:
        failed = httpx.post(f"{url}/v1/chat/completions", timeout=30,
                            json={"messages": [{"role": "user", "content": "code for red"}]})
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "model_error"


FAKE_VLLM = '''
"""A stand-in for vLLM's OpenAI server: records its command line and environment, then serves
the run named by --lora-modules with tunesmith's own server on the port it was given."""
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
Path(os.environ["FAKE_VLLM_RECORD"]).write_text(json.dumps(
    {"argv": args, "key": os.environ.get("VLLM_API_KEY"), "clients": os.environ.get("TUNESMITH_API_KEY")}))
first = args[args.index("--lora-modules") + 1]
run = str(Path(first.split("=", 1)[1]).parent)
os.environ["TUNESMITH_API_KEY"] = os.environ["VLLM_API_KEY"]  # vLLM checks the key it is given
os.execv(sys.executable, [sys.executable, "-m", "tunesmith", "serve", run, "--port",
                          args[args.index("--port") + 1], "monitor.enabled=false"])
'''


def test_engine_vllm_starts_vllm_with_the_adapters_and_serves_in_front(run_dir, tmp_path, monkeypatch):
    fake = tmp_path / "fake" / "vllm" / "entrypoints" / "openai"
    fake.mkdir(parents=True)
    for package in (fake.parents[1], fake.parent, fake):
        (package / "__init__.py").write_text("")
    (fake / "api_server.py").write_text(FAKE_VLLM)
    record = tmp_path / "vllm.json"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "fake"),
                                                      os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAKE_VLLM_RECORD", str(record))
    monkeypatch.setenv("TUNESMITH_API_KEY", "client-key-1,client-key-2")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    port = _free_port()
    served = load_served(str(run_dir), ["serve.engine=vllm", f"serve.vllm.port={port}",
                                        "serve.vllm.tensor_parallel_size=2", "serve.vllm.max_model_len=256",
                                        "serve.vllm.extra_args=[--enable-prefix-caching]",
                                        "serve.vllm.startup_timeout_seconds=120",
                                        f"serve.vllm.adapters=[{run_dir}]", "monitor.enabled=false"])
    try:
        recorded = json.loads(record.read_text())
        argv = recorded["argv"]
        flag = {name: argv[argv.index(name) + 1] for name in ("--model", "--served-model-name", "--port",
                                                              "--tensor-parallel-size", "--max-model-len",
                                                              "--max-lora-rank", "--host")}
        assert flag["--served-model-name"] == "fronted-base" and flag["--port"] == str(port)
        assert flag["--tensor-parallel-size"] == "2" and flag["--max-model-len"] == "256"
        assert flag["--host"] == "127.0.0.1" and flag["--max-lora-rank"] == "16"
        assert Path(flag["--model"]) == Path(load_recipe(run_dir / "recipe.yaml").model.name)  # the base
        modules = argv[argv.index("--lora-modules") + 1:argv.index("--enable-prefix-caching")]
        assert modules == [f"fronted={run_dir / 'model'}", f"fronted={run_dir / 'model'}"]
        assert "--enable-lora" in argv and argv[-1] == "--enable-prefix-caching"
        assert recorded["key"] and "client-key" not in recorded["key"]  # its own key, not the clients'
        assert recorded["clients"] is None  # the clients' keys are not handed to vLLM
        assert not any("client-key" in a for a in argv)
        assert served.engine.base_model == "fronted-base" and served.engine.model == "fronted"

        async def ask():
            from tunesmith.models.generation import GenRequest

            return served.engine.generate([GenRequest(served.engine.render(
                [{"role": "user", "content": "code for red"}]), 4, temperature=0)])
        import asyncio

        assert asyncio.run(ask())[0].finish_reason in ("stop", "length")
    finally:
        served.engine.close()
    assert served.engine.process.poll() is not None  # vLLM stops with the server


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


