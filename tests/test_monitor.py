"""Watching a served model: /metrics in Prometheus' format with every metric; the request log and
feedback; drift tests on hand-made windows; alert rules with hysteresis and a webhook; the
served tiny run sending no drift alert for in-distribution traffic and one within a window of
shifted traffic. Servers listen on 127.0.0.1 only; every loop is bounded."""

from __future__ import annotations

import http.server
import json
import os
import random
import re
import threading
import time

import httpx
import numpy as np
import pytest
import yaml

from conftest import needs_pg
from serve_helpers import running, scripted
from tunesmith.artifacts import DriftReference
from tunesmith.monitor.alerts import Alerts
from tunesmith.monitor.drift import Window, compare, label_test, mmd_test, psi
from tunesmith.monitor.live import Monitor, Observation, Reference
from tunesmith.monitor.metrics import Metrics
from tunesmith.monitor.store import Store, UnknownRequest
from tunesmith.recipe import AlertRule, MonitorConfig, load_recipe
from tunesmith.serve.app import create_app

CHAT = {"model": "scripted", "messages": [{"role": "user", "content": "my invoice is wrong"}],
        "temperature": 0}


def _monitored(tmp_path, *overrides: str, reference: Reference | None = None):
    served = scripted(None, None, *overrides)
    store = Store.open(tmp_path / "requests.db")
    served.metrics = Metrics()
    served.batcher.metrics = served.metrics
    served.monitor = Monitor(served.recipe.monitor, served.metrics, store, reference)
    return served


# --- metrics and the request log ---------------------------------------------------------------

METRICS = ["tunesmith_requests_total", "tunesmith_request_duration_seconds_bucket",
           "tunesmith_queue_wait_seconds_bucket", "tunesmith_time_to_first_token_seconds_bucket",
           "tunesmith_prompt_tokens_total", "tunesmith_completion_tokens_total",
           "tunesmith_generation_tokens_per_second", "tunesmith_batch_size_bucket", "tunesmith_queue_depth",
           "tunesmith_cache_lookups_total", "tunesmith_fallbacks_total", "tunesmith_feedback_total",
           "tunesmith_alert_firing", "process_cpu_seconds_total", "process_resident_memory_bytes"]


def test_metrics_parse_and_name_everything(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from tunesmith.monitor.metrics import sample_value

    served = _monitored(tmp_path)
    app = create_app(lambda: served)
    with running(app) as url:
        assert httpx.get(f"{url}/ready").json()["status"] == "ready"
        for _ in range(2):  # the second is a cache hit
            assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        streamed = {**CHAT, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=streamed, timeout=30) as r:
            assert r.status_code == 200 and "[DONE]" in "".join(r.iter_text())
        assert httpx.post(f"{url}/v1/chat/completions", json={"messages": []}, timeout=30).status_code == 422
        text = httpx.get(f"{url}/metrics").text
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    assert not [m for m in METRICS if m not in names], names
    ok = {"route": "/v1/chat/completions", "status": "200", "error_class": ""}
    assert sample_value(text, "tunesmith_requests_total", ok) == 3
    assert sample_value(text, "tunesmith_requests_total", {"status": "422", "error_class": "input"}) == 1
    assert sample_value(text, "tunesmith_cache_lookups_total", {"result": "hit"}) == 1
    assert sample_value(text, "tunesmith_batch_size_count") == 2  # the cache hit never reached the model
    assert sample_value(text, "tunesmith_time_to_first_token_seconds_count") == 1
    assert sample_value(text, "process_resident_memory_bytes") > 10_000_000
    judged = served.monitor.judge(served.monitor._window, time.time())  # the answers so far, as a window
    assert judged["errors_by_class"] == {"input": 1} and judged["cache_hit_rate"] == 0.25


def test_every_answer_is_logged_and_can_be_rated(tmp_path):
    served = _monitored(tmp_path)
    app = create_app(lambda: served)
    with running(app) as url:
        answer = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30).json()
        receipt = httpx.post(f"{url}/v1/feedback", json={"response_id": answer["id"], "rating": -1,
                                                         "correction": '{"category": "billing"}'})
        assert receipt.status_code == 200 and receipt.json()["request_id"] == answer["id"][len("chatcmpl-"):]
        unknown = httpx.post(f"{url}/v1/feedback", json={"response_id": "chatcmpl-nope", "rating": 1})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "response_id"
        invalid = httpx.post(f"{url}/v1/feedback", json={"response_id": answer["id"], "rating": 5})
        assert invalid.status_code == 422 and invalid.json()["error"]["param"] == "rating"
    rows = served.monitor.store.rated()
    assert len(rows) == 1 and rows[0]["rating"] == -1
    assert json.loads(rows[0]["prompt"])[0]["content"] == "my invoice is wrong"
    assert rows[0]["response"] == served.engine.answer
    logged = served.monitor.store.recent_requests()
    assert [r["status"] for r in logged] == [200]  # answers are logged; feedback calls are not
    assert logged[0]["answered_by"] == "scripted" and logged[0]["latency_ms"] > 0


def test_pii_is_scrubbed_and_old_rows_expire(tmp_path):
    served = _monitored(tmp_path, "monitor.scrub_pii=true")
    app = create_app(lambda: served)
    body = {**CHAT, "messages": [{"role": "user", "content": "mail me at ana@example.com"}]}
    with running(app) as url:
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    store = served.monitor.store
    (row,) = store.recent_requests()
    assert "ana@example.com" not in row["prompt"] and "<EMAIL>" in row["prompt"]
    store.add_feedback(row["id"], 1)
    store.log_request({**row, "id": "old", "time": time.time() - 40 * 86400})
    store.add_feedback("old", -1)
    store.prune()  # retention 30 days: the old request and its feedback go, the new one stays
    assert [r["id"] for r in store.recent_requests()] == [row["id"]]
    assert [r["request_id"] for r in store.rated()] == [row["id"]]
    with pytest.raises(UnknownRequest):
        store.add_feedback("old", 1)


# --- drift tests on hand-made windows ----------------------------------------------------------

def test_psi_by_hand():
    reference = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert psi(reference, reference) == pytest.approx(0.0)
    # quintile edges 2.8, 4.6, 6.4, 8.2: the window puts everything in the top bin
    shares = np.array([0.2, 0.2, 0.2, 0.2, 0.2])
    moved = np.maximum(np.array([0, 0, 0, 0, 1.0]), 1e-4)
    expected = float(np.sum((moved - shares) * np.log(moved / shares)))
    assert psi(reference, [9, 10, 10, 9]) == pytest.approx(expected)


def test_label_test_rejects_a_new_mix_and_accepts_the_old():
    reference = {"billing": 50, "technical": 50}
    assert not label_test(reference, ["billing"] * 10 + ["technical"] * 10, 0.01).drifted
    shifted = label_test(reference, ["billing"] * 2 + ["thermostat"] * 18, 0.01)
    assert shifted.drifted and shifted.p_value < 1e-6


def test_mmd_tells_a_moved_cloud_from_the_same_one():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 8))
    assert not mmd_test(reference, rng.normal(size=(40, 8)), 0.01).drifted
    assert mmd_test(reference, rng.normal(loc=1.0, size=(40, 8)), 0.01).drifted


def test_compare_runs_every_test_the_reference_allows():
    reference = DriftReference(rows=4, lengths=[5, 6, 5, 6] * 10, vocabulary=["invoice", "wrong", "my", "is"],
                               oov_rate=0.05, labels={"billing": 10, "account": 10})
    same = Window(["my invoice is wrong"] * 20, [5, 6] * 10, ["billing", "account"] * 10)
    result = compare(reference, None, same, MonitorConfig())
    assert [t.test for t in result.tests] == ["KS", "PSI", "OOV rate ratio", "chi-square"]
    assert result.score == 0.0
    moved = Window(["thermostat heating stuck"] * 20, [15, 16] * 10, ["thermostat"] * 20)
    assert compare(reference, None, moved, MonitorConfig()).score == 1.0


# --- alerts ------------------------------------------------------------------------------------

class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - the http.server API
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_alerts_fire_once_clear_with_hysteresis_and_post_a_webhook(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store, metrics = Store.open(tmp_path / "alerts.db"), Metrics()
    rule = AlertRule(metric="error_rate", above=0.1, clear_below=0.05, windows=2)
    alerts = Alerts([rule], metrics, store, f"http://127.0.0.1:{server.server_port}/hook")
    states = []
    for value in [0.2, 0.0, 0.2, 0.2, 0.08, 0.2, 0.07, 0.01, 0.02]:
        states.append([c.state for c in alerts.evaluate({"error_rate": value})])
    # one window above is not enough (windows=2); hovering between 0.05 and 0.1 neither clears nor re-fires
    assert states == [[], [], [], ["firing"], [], [], [], ["resolved"], []]
    assert [a["state"] for a in store.recent_alerts()] == ["resolved", "firing"]
    deadline = time.monotonic() + 10
    while len(_Hook.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.shutdown()
    assert [h["state"] for h in _Hook.received] == ["firing", "resolved"]
    assert alerts.evaluate({"latency": 1.0}) == []  # a metric without a rule is ignored


# --- the served tiny run: drift against its training data --------------------------------------

COLOURS = ["red", "blue", "green", "black", "white", "pink"]
SHIFTED = ["The thermostat in meeting room {} shows 31 degrees and the heating will not switch off",
           "Our smart radiator valve on floor {} keeps beeping since the firmware update last night",
           "Boiler pressure dropped below one bar in building {} and the hallway sensors read zero"]


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory, tiny_model_dir):
    from conftest import write_jsonl
    from tunesmith import pipeline

    root = tmp_path_factory.mktemp("monitored")
    train_file = write_jsonl(root / "train.jsonl", [
        {"instruction": f"code for {c} #{i}", "output": c[:2].upper()} for i in range(12) for c in COLOURS])
    test_file = write_jsonl(root / "test.jsonl", [
        {"instruction": f"code for {c} now", "output": c[:2].upper()} for c in COLOURS])
    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={train_file}",
                                f"data.test={test_file}",
                                "train.max_steps=30", "train.lr=0.01", "train.batch_size=4",
                                f"output.dir={root / 'runs'}", "name=monitored"])
    pipeline.fine_tune(recipe)
    return recipe.run_dir


def _ask(url: str, text: str) -> None:
    body = {"messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 4}
    assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200


def _settle(monitor: Monitor, answered: int) -> None:
    """Until the monitor has seen `answered` answers (a response reaches the client just before
    its observation is recorded) and judged every full window."""
    deadline = time.monotonic() + 30
    while monitor.observed < answered and time.monotonic() < deadline:
        time.sleep(0.02)
    monitor.wait()


def _dashboard(url: str, tmp_path):
    import shutil

    import browser

    if shutil.which("chromium") is None and not os.environ.get("CI"):
        return None  # make test installs Debian chromium (and CI requires it)
    return browser.render(url, tmp_path / "profile")


def _cell(dom: str, test_id: str) -> str | None:
    import html

    found = re.search(f'data-testid="{test_id}"[^>]*>([^<]*)<', dom)
    return html.unescape(found.group(1)) if found else None


def test_drift_alert_fires_on_shifted_traffic_and_not_on_the_usual(monitored_run, capsys, tmp_path):
    from tunesmith.serve.state import load_served

    reference = json.loads((monitored_run / "train" / "drift_reference.json").read_text())
    assert reference["rows"] == 66 and "code" in reference["vocabulary"]  # 72 rows less val
    served = load_served(str(monitored_run), ["monitor.window_size=10"])
    assert served.monitor.reference is not None and served.monitor.reference.embeddings.shape[1] == 384
    drift_rule = next(s.name for s in served.monitor.alerts.states if s.rule.metric == "drift")
    with running(create_app(lambda: served)) as url:
        for i in range(20):  # two windows of what the model was trained on
            _ask(url, f"code for {COLOURS[i % 6]} #{i % 12}")
        _settle(served.monitor, 20)
        usual = [w["drift"] for w in served.monitor.windows]
        assert len(usual) == 2 and drift_rule not in served.monitor.alerts.firing, served.monitor.windows
        for i in range(10):  # one window of something else
            _ask(url, SHIFTED[i % 3].format(i))
        _settle(served.monitor, 30)
        assert drift_rule in served.monitor.alerts.firing, served.monitor.windows[-1]
        summary = httpx.get(f"{url}/monitor/summary").json()
        metrics = httpx.get(f"{url}/metrics").text
        page = _dashboard(f"{url}/dashboard", tmp_path)
    assert summary["firing"] == [drift_rule] and summary["alerts"][0]["state"] == "firing"
    assert 'tunesmith_alert_firing{rule="drift>0.5"} 1.0' in metrics
    if page is not None:  # the dashboard, rendered by headless Chromium, shows the same numbers
        assert not page.console_errors, page.console_errors
        assert _cell(page.dom, "status") == "ALERT: drift>0.5" and _cell(page.dom, "requests") == "30"
        assert _cell(page.dom, "drift") == f"{served.monitor.windows[-1]['drift']:.2f}"
        assert page.dom.count("<tr>") >= 1 + 5 + 1 + 1  # headers, five drift tests, one alert
    answers = [r["response"] for r in served.monitor.store.recent_requests()[10:]]  # the usual traffic's

    # the false-alarm rate: 20 more windows of usual traffic, judged by a monitor of their own
    judge = Monitor(served.recipe.monitor, Metrics(), None, served.monitor.reference,
                    served.engine.count_tokens)
    rng, alarms = random.Random(0), 0
    for _ in range(20):
        window = [Observation(f"r{i}", "/v1/chat/completions", 200, 0.1, response=rng.choice(answers),
                              user_text=f"code for {rng.choice(COLOURS)} #{rng.randrange(12)}")
                  for i in range(10)]
        alarms += judge.judge(window, time.time())["drift"] > 0.5
    with capsys.disabled():
        print(f"\ndrift false alarms on 20 in-distribution windows of 10: {alarms}/20 "
              f"(usual windows {usual}, shifted {served.monitor.windows[-1]['drift']})")
    assert alarms <= 2


# --- the loop back: feedback -> data -> preference training ------------------------------------

def _lora_b_norm(adapter_dir) -> float:
    """LoRA's B matrices start at zero: a norm above zero means training moved them."""
    from safetensors.numpy import load_file

    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return float(sum(np.abs(v).sum() for k, v in weights.items() if "lora_B" in k))


def test_feedback_is_exported_and_trains_kto(monitored_run, tiny_model_dir, tmp_path):
    import subprocess
    import sys

    from tunesmith import pipeline
    from tunesmith.serve.state import load_served

    served = load_served(str(monitored_run))
    ratings = {"code for red #1": (1, None), "code for blue #2": (-1, "BL"), "code for pink #3": (-1, "PI"),
               "code for green #4": (1, None), "code for red now": (-1, "RE")}  # the last is a test prompt
    with running(create_app(lambda: served)) as url:
        for text, (rating, correction) in ratings.items():
            body = {"messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 4}
            answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
            feedback = {"response_id": answer["id"], "rating": rating, "correction": correction}
            assert httpx.post(f"{url}/v1/feedback", json=feedback).status_code == 200
        online = httpx.get(f"{url}/monitor/summary").json()["feedback"]
        assert online["online_accuracy"] == 2 / 5 and online["online_accuracy_ci"][0] < 0.4 < online[
            "online_accuracy_ci"][1]
    out = tmp_path / "feedback"
    done = subprocess.run([sys.executable, "-m", "tunesmith", "feedback", "export", str(monitored_run),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "export.json").read_text())
    assert report["rated"] == 5
    sft = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    corrections = [r for r in sft if r["meta"]["kind"] == "correction"]
    assert sorted(r["messages"][-1]["content"] for r in corrections) == ["BL", "PI"]  # RE was a test prompt
    approved = sorted(r["messages"][0]["content"] for r in sft if r["meta"]["kind"] == "approved")
    assert approved == ["code for green #4", "code for red #1"]  # the answers rated +1, as given
    assert report["sft_rows"] == {"correction": 2, "approved": 2}
    assert report["dropped"]["sft"]["test_leakage"] == 1
    kto = [json.loads(line) for line in (out / "kto.jsonl").read_text().splitlines()]
    assert len(kto) == 6 and sum(r["label"] for r in kto) == 4  # 4 rated + 2 corrections, less the test's
    assert report["rows"]["dpo"] == 2  # each correction against the answer it corrected
    card = yaml.safe_load((out / "README.md").read_text().split("---")[1])  # the served run's terms
    assert card["license"] == "unknown" and card["tunesmith"]["consent"] == "unknown"
    assert card["tunesmith"]["files"] == ["sft.jsonl", "kto.jsonl", "dpo.jsonl"]

    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={out / 'kto.jsonl'}",
                                "train.method=kto", "train.max_steps=3", "train.batch_size=4",
                                "data.val_fraction=0", f"output.dir={tmp_path / 'runs'}", "name=kto"])
    pipeline.prepare(recipe)
    pipeline.fine_tune(recipe)
    assert _lora_b_norm(recipe.run_dir / "model") > 0
    assert not (recipe.run_dir / "model" / "ref").exists()
    licensed = json.loads((recipe.run_dir / "data" / "report.json").read_text())["licenses"]["files"][0]
    assert (licensed["declared_in"], licensed["consent"]) == (str(out / "README.md"), "unknown")


def test_feedback_is_not_exported_without_users_consent(monitored_run, tmp_path):
    from tunesmith.errors import ConfigError
    from tunesmith.monitor.export import export
    from tunesmith.rundir import RunDir

    recipe = load_recipe(monitored_run / "recipe.yaml", ["monitor.consent=none"])
    with pytest.raises(ConfigError, match="monitor.consent is none: the served model's users did not agree"):
        export(RunDir(monitored_run), recipe, tmp_path / "feedback")
    assert not (tmp_path / "feedback").exists()


def test_dpo_trains_on_a_public_preference_file(tiny_model_dir, tmp_path):
    from conftest import REAL
    from tunesmith import pipeline

    recipe = load_recipe(None, [f"model.name={tiny_model_dir}", f"data.train={REAL / 'dpo_en_demo.json'}",
                                "train.method=dpo", "train.max_steps=3", "train.batch_size=2",
                                "train.max_length=256",  # long rows are truncated, not filtered out:
                                "data.filters.max_tokens=100000",
                                f"output.dir={tmp_path / 'runs'}", "name=dpo"])
    result = pipeline.fine_tune(recipe)
    assert result.steps == 3 and _lora_b_norm(recipe.run_dir / "model") > 0
    summary = json.loads((recipe.run_dir / "train" / "summary.json").read_text())
    assert summary["method"] == "dpo" and summary["train_examples"] > 30


def test_retraining_continues_the_served_adapter(monitored_run, tiny_model_dir, tmp_path):
    """train.init_adapter starts from the earlier run's adapter: with a vanishing learning rate
    the new adapter is the old one (a fresh LoRA would start with B = 0)."""
    from safetensors.numpy import load_file

    from tunesmith import pipeline

    first = load_file(str(monitored_run / "model" / "adapter_model.safetensors"))
    recipe = load_recipe(monitored_run / "recipe.yaml", [
        f"train.init_adapter={monitored_run / 'model'}", "train.lr=1e-12", "train.max_steps=2",
        f"output.dir={tmp_path / 'runs'}", "name=again"])
    pipeline.fine_tune(recipe)
    again = load_file(str(recipe.run_dir / "model" / "adapter_model.safetensors"))
    assert again.keys() == first.keys() and _lora_b_norm(monitored_run / "model") > 0
    assert all(np.allclose(again[k], first[k], atol=1e-6) for k in first)


def test_monitor_advises_retraining_only_for_a_reason(tmp_path):
    import subprocess
    import sys

    from tunesmith.monitor.summary import advise, read
    from tunesmith.rundir import RunDir

    run, recipe = RunDir(tmp_path / "runs" / "x"), load_recipe(None)
    store = Store.open(run.monitor_db)
    quiet = {"requests": 40, "start": 0, "end": 10, "p95_latency_ms": 120.0, "error_rate": 0.0,
             "cache_hit_rate": 0.0, "fallback_rate": 0.0, "drift": 0.2, "negative_feedback_rate": 0.1}
    store.add_window(quiet)
    assert not advise(read(run, recipe), recipe).retrain
    store.add_window({**quiet, "drift": 1.0})
    store.add_alert("drift>0.5", "firing", 1.0, 0.5, "drift is 1")
    advice = advise(read(run, recipe), recipe)
    assert advice.retrain and advice.reasons[0].startswith("drift:")
    store.add_alert("drift>0.5", "resolved", 0.1, 0.4, "drift back to 0.1")  # a resolved alert is no reason
    assert not advise(read(run, recipe), recipe).retrain
    store.add_window({**quiet, "negative_feedback_rate": 0.6})
    assert advise(read(run, recipe), recipe).reasons == [
        "feedback: 60% of the ratings in a recent window were negative"]
    store.close()
    (run.root / "recipe.yaml").write_text("name: x\n")
    shown = subprocess.run([sys.executable, "-m", "tunesmith", "monitor", str(run.root)], capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0 and "retraining advised:" in shown.stdout and "60%" in shown.stdout


@needs_pg
def test_replicas_share_one_postgresql_store(empty_pg_database):
    """Two stores on one PostgreSQL database (two replicas): what one logs, the other can rate."""
    first, second = Store.open(empty_pg_database), Store.open(empty_pg_database)
    first.log_request({"id": "r1", "time": time.time(), "route": "/v1/chat/completions", "status": 200,
                       "latency_ms": 12.0, "prompt": '[{"role": "user", "content": "hi"}]',
                       "response": "hello"})
    first.flush()
    second.add_feedback("r1", -1, correction="hi there")
    (rated,) = first.rated()
    assert (rated["request_id"], rated["rating"], rated["correction"]) == ("r1", -1, "hi there")
    first.close()
    second.close()


def test_online_accuracy_has_a_wilson_interval():
    from tunesmith.evaluate.stats import wilson
    from tunesmith.monitor.live import online_accuracy

    low, high = wilson(8, 10)  # the textbook example: 8 of 10 -> [0.490, 0.943]
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert wilson(0, 5)[0] == 0.0 and wilson(0, 5)[1] > 0.4  # 0% is not certainty after 5 ratings
    rated = [{"rating": 1}] * 8 + [{"rating": -1}] * 2
    assert online_accuracy(rated)["online_accuracy"] == 0.8
    assert online_accuracy([])["online_accuracy"] is None
