"""`invemb serve` through typer's CliRunner (uvicorn.run replaced: nothing binds a port), and
load_service on a trained controller run."""
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from invemb.cli import app
from serve_helpers import API_KEY, AUTH
from toy import BagEncoder

runner = CliRunner()


def test_help_has_examples():
    res = runner.invoke(app, ["serve", "--help"])
    assert res.exit_code == 0
    for needle in ("invemb serve --model backbone", "/v1/embeddings", "INVEMB_API_KEY", "--controller", "127.0.0.1"):
        assert needle in res.output


@pytest.mark.parametrize("args, needle", [
    (["--port", "70000"], "port must be in 0..65535"),
    (["--set", "max_wait_ms=-1"], "max_wait_ms must be >= 0"),
    (["--set", "nope=1"], "unknown ServeConfig key"),
    (["--set", "max_batch_texts=many"], "expected an int"),
    (["--log-level", "loud"], "unknown log level"),
    (["--controller", "/no/such/run"], "no such controller run folder"),
])
def test_bad_arguments_exit_2_with_one_line(monkeypatch, args, needle):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    res = runner.invoke(app, ["serve", "--model", "backbone", *args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_missing_model_and_bad_port_type(monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    res = runner.invoke(app, ["serve", "--model", "/no/such/model"])
    assert res.exit_code == 2 and "no such run or model folder" in res.output
    res = runner.invoke(app, ["serve", "--model", "backbone", "--port", "eighty"])
    assert res.exit_code == 2 and "Traceback" not in res.output


@pytest.fixture
def started(monkeypatch):
    """Run `invemb serve` with uvicorn.run captured and the toy BagEncoder as every model."""
    import uvicorn

    import invemb

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(app=app, **kw))
    monkeypatch.setattr(invemb, "load", lambda path, **kw: BagEncoder())
    return calls


def test_serve_starts_with_controller_and_env_api_key(started, trained_toy_run, monkeypatch):
    run, _ = trained_toy_run
    monkeypatch.setenv("INVEMB_API_KEY", API_KEY)
    res = runner.invoke(app, ["serve", "--model", "toy-em", "--controller", str(run), "--port", "8123",
                              "--set", "max_wait_ms=1"])
    assert res.exit_code == 0, res.output
    assert started["host"] == "127.0.0.1" and started["port"] == 8123 and started["access_log"] is False
    with TestClient(started["app"]) as c:
        assert c.post("/v1/invert", json={"text": "The big cat sat."}).status_code == 401
        r = c.post("/v1/invert", json={"text": "The big cat sat."}, headers=AUTH)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "toy-em" and r.json()["encoder_calls"] > 0
        r = c.post("/v1/embeddings", json={"input": ["a cat", "a dog"]}, headers=AUTH)
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 32
        assert c.get("/healthz").json()["controller"] is True


def test_serve_decodes_with_the_given_overrides_and_refuses_bad_ones_at_start(started, trained_toy_run):
    run, _ = trained_toy_run
    res = runner.invoke(app, ["serve", "--model", "toy-em", "--controller", str(run), "--decode", "beam=1",
                              "--decode", "units_k=3"], env={"INVEMB_API_KEY": ""})
    assert res.exit_code == 0, res.output
    with TestClient(started["app"]) as c:
        decode = c.get("/healthz").json()["decode"]
        assert decode["beam"] == 1 and decode["units_k"] == 3
        r = c.post("/v1/invert", json={"text": "The big cat sat."})
        assert r.status_code == 200 and r.json()["reconstruction"], r.text
    for args, needle in ((["--decode", "beam=0"], "beam=0 (at least 1)"), (["--decode", "nope=1"], "nope"),
                         (["--decode", "max_words=500", "--decode", "max_steps=500"], "Placer reads at most")):
        res = runner.invoke(app, ["serve", "--model", "toy-em", "--controller", str(run), *args], env={"INVEMB_API_KEY": ""})
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    res = runner.invoke(app, ["serve", "--model", "toy-em", "--decode", "beam=1"])
    assert res.exit_code == 2 and "needs --controller" in res.output


def test_public_host_without_key_warns(started):
    res = runner.invoke(app, ["serve", "--model", "toy-em", "--host", "0.0.0.0"], env={"INVEMB_API_KEY": ""})
    assert res.exit_code == 0, res.output
    assert "without an API key" in res.output and started["host"] == "0.0.0.0"


def test_a_controller_run_as_model_is_explained(trained_toy_run, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    res = runner.invoke(app, ["serve", "--model", str(trained_toy_run[0])])
    assert res.exit_code == 2 and "pass it as --controller" in res.output


def test_controller_of_another_encoder_is_refused(trained_toy_run, tiny_bert_dir, monkeypatch):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    run, _ = trained_toy_run
    res = runner.invoke(app, ["serve", "--model", tiny_bert_dir, "--controller", str(run)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "dimension" in res.output or "fingerprint" in res.output
