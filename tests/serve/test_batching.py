"""Micro-batching: the batcher on its own, then concurrent HTTP clients against the app and a real
uvicorn server on a free loopback port."""
import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from invemb.serve.batching import MicroBatcher, QueueFull
from serve_helpers import API_KEY, AUTH, RecordingEncoder
from tests.conftest import FakeEncoder

pytestmark = pytest.mark.timeout(120)  # a batching bug shows up as a hang: fail it instead


class Recorder:
    """fn(texts) -> (upper-cased texts,): records each call's texts; optionally slow or failing."""

    def __init__(self, delay=0.0, fail_on=None):
        self.calls, self.delay, self.fail_on = [], delay, fail_on

    def __call__(self, texts):
        self.calls.append(list(texts))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on in texts:
            raise ValueError(f"bad text {self.fail_on!r}")
        return ([t.upper() for t in texts],)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submits_share_one_call():
    fn = Recorder()

    async def main():
        b = MicroBatcher(fn, max_batch=64, max_wait_ms=50)
        outs = await asyncio.gather(*(b.submit([f"t{i}", f"u{i}"]) for i in range(10)))
        await b.aclose()
        return b, outs

    b, outs = run(main())
    assert outs == [([f"T{i}", f"U{i}"],) for i in range(10)]
    assert [len(c) for c in fn.calls] == [20]
    assert b.stats.to_dict()["mean_batch_texts"] == 20 and b.stats.requests == 10


def test_max_batch_is_respected_and_a_large_request_goes_alone():
    fn = Recorder()

    async def main():
        b = MicroBatcher(fn, max_batch=4, max_wait_ms=20)
        outs = await asyncio.gather(*(b.submit([f"a{i}", f"b{i}"]) for i in range(5)), b.submit(list("abcdefg")))
        await b.aclose()
        return outs

    outs = run(main())
    assert outs[:5] == [([f"A{i}", f"B{i}"],) for i in range(5)] and outs[5] == (list("ABCDEFG"),)
    sizes = [len(c) for c in fn.calls]
    assert sum(sizes) == 17 and 7 in sizes and all(s <= 4 for s in sizes if s != 7)


def test_one_failing_request_does_not_fail_the_others():
    fn = Recorder(fail_on="bad")

    async def main():
        b = MicroBatcher(fn, max_batch=64, max_wait_ms=50)
        outs = await asyncio.gather(b.submit(["ok"]), b.submit(["bad"]), b.submit(["fine", "too"]),
                                    return_exceptions=True)
        again = await b.submit(["later"])
        await b.aclose()
        return outs, again

    (ok, bad, fine), again = run(main())
    assert ok == (["OK"],) and fine == (["FINE", "TOO"],) and again == (["LATER"],)
    assert isinstance(bad, ValueError) and "bad" in str(bad)


def test_a_cancelled_request_is_not_encoded():
    fn = Recorder(delay=0.1)

    async def main():
        b = MicroBatcher(fn, max_batch=64, max_wait_ms=0)
        first = asyncio.create_task(b.submit(["first"]))
        await asyncio.sleep(0.02)  # "first" is now in the worker thread
        gone = asyncio.create_task(b.submit(["gone"]))
        kept = asyncio.create_task(b.submit(["kept"]))
        await asyncio.sleep(0.01)
        gone.cancel()  # a client that disconnected while waiting
        out = await asyncio.gather(first, kept)
        await b.aclose()
        return out

    assert run(main()) == [(["FIRST"],), (["KEPT"],)]
    assert fn.calls == [["first"], ["kept"]]


def test_queue_limit_and_close():
    fn = Recorder(delay=0.1)

    async def main():
        b = MicroBatcher(fn, max_batch=64, max_wait_ms=0, max_queued=3)
        first = asyncio.create_task(b.submit(["x"]))
        await asyncio.sleep(0.02)
        waiting = asyncio.create_task(b.submit(["a", "b"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await b.submit(["c", "d"])
        await first
        await b.aclose()
        with pytest.raises(RuntimeError, match="shutting down"):  # a request still waiting fails, never hangs
            await waiting

    run(main())
    with pytest.raises(ValueError):
        MicroBatcher(fn, max_batch=0)


def test_concurrent_http_clients_are_all_answered_and_merged():
    """64 concurrent requests through the ASGI app: every one answered with its own vectors, and
    far fewer encoder calls than requests."""
    from invemb.serve.app import ServeConfig, Service, create_app

    enc = RecordingEncoder(delay=0.05)  # slow enough that requests pile up even on a busy machine
    service = Service(enc, cfg=ServeConfig(max_batch_texts=32, max_wait_ms=5, encode_batch_size=32), name="fake")  # one encoder call per micro-batch
    app = create_app(service, api_key=API_KEY)
    rng = np.random.default_rng(0)
    requests = [[f"text {i} {j}" for j in range(int(rng.integers(1, 4)))] for i in range(64)]

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as c:
            async def one(texts):
                fmt = "base64" if len(texts) == 2 else "float"
                r = await c.post("/v1/embeddings", json={"input": texts, "encoding_format": fmt}, headers=AUTH)
                return texts, fmt, r

            out = await asyncio.gather(*(one(t) for t in requests))
            health = (await c.get("/healthz")).json()
        await service.aclose()
        return out, health

    out, health = asyncio.run(main())
    ref = FakeEncoder(dim=16)
    assert len(out) == 64
    for texts, fmt, r in out:
        assert r.status_code == 200, r.text
        rows = [d["embedding"] for d in r.json()["data"]]
        got = np.stack([np.frombuffer(__import__("base64").b64decode(x), "<f4") for x in rows]) if fmt == "base64" \
            else np.array(rows, dtype=np.float32)
        assert np.allclose(got, ref.encode(texts).numpy(), atol=1e-6), texts
    n_texts = sum(len(t) for t in requests)
    assert sum(enc.batch_sizes) == n_texts
    assert max(enc.batch_sizes) > 1 and len(enc.batch_sizes) < 64 / 2 and max(enc.batch_sizes) <= 32
    assert health["batching"]["texts"] == n_texts and health["batching"]["requests"] == 64


@pytest.fixture
def live_server():
    """A real uvicorn server (h11, lifespan) over the fake encoder, on a free loopback port."""
    import uvicorn

    from invemb.serve.app import Service, create_app

    enc = RecordingEncoder(delay=0.02)
    app = create_app(Service(enc, name="fake"), api_key=API_KEY)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", enc
    server.should_exit = True
    thread.join(10)


def test_real_server_under_concurrent_clients(live_server):
    url, enc = live_server

    async def main():
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"input": [f"q{i}"]}) for i in range(48)))
            bad = await c.post("/v1/embeddings", content=b"{oops", headers={"Content-Type": "application/json"})
            after = await c.get("/healthz")
        return rs, bad, after

    rs, bad, after = asyncio.run(main())
    assert [r.status_code for r in rs] == [200] * 48 and bad.status_code == 400 and after.status_code == 200
    assert max(enc.batch_sizes) > 1


def test_openai_client_works(live_server):
    import openai  # the dev extra installs it: the real client is the compatibility check
    url, _ = live_server
    client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
    res = client.embeddings.create(model="fake", input=["the cat", "a dog"])  # the client asks for base64
    got = torch.tensor([d.embedding for d in res.data])
    assert torch.allclose(got, FakeEncoder(dim=16).encode(["the cat", "a dog"]), atol=1e-6)
    assert res.usage.prompt_tokens == 4 and res.model == "fake"
    res = client.embeddings.create(model="fake", input="one", encoding_format="float")
    assert len(res.data[0].embedding) == 16
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).embeddings.create(model="fake", input="x")
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions=3 is not supported"):  # our message
        client.embeddings.create(model="fake", input="x", dimensions=3)


def test_two_workers_encode_two_batches_at_once():
    started, release = [], threading.Event()
    names = set()

    def fn(texts):  # holds every call until two are running at the same time
        started.append(texts)
        names.add(threading.current_thread().name)
        assert release.wait(10), "the second batch never started beside the first"
        return ([t.upper() for t in texts],)

    async def main():
        b = MicroBatcher(fn, max_batch=2, max_wait_ms=0, workers=2)
        first = asyncio.ensure_future(b.submit(["a", "b"]))
        second = asyncio.ensure_future(b.submit(["c", "d"]))
        for _ in range(200):
            if len(started) == 2:
                release.set()
            await asyncio.sleep(0.01)
            if first.done() and second.done():
                break
        outs = [await first, await second]
        await b.aclose()
        return outs

    assert run(main()) == [(["A", "B"],), (["C", "D"],)]
    assert len(names) == 2  # two threads of the pool
    with pytest.raises(ValueError, match="workers"):
        MicroBatcher(fn, workers=0)


def test_service_encode_workers_use_their_own_copies(recording_encoder):
    from invemb.serve.app import ServeConfig, Service

    threads = torch.get_num_threads()
    service = Service(recording_encoder, cfg=ServeConfig(encode_workers=2, max_batch_texts=4, max_wait_ms=1))
    assert torch.get_num_threads() == max(1, threads // 2)  # the cores are shared out between the workers
    copies = [enc for enc, _ in service._copies]
    assert len(copies) == 2 and all(c is not recording_encoder for c in copies)
    texts = [f"text number {i}" for i in range(40)]

    async def main():
        outs = await asyncio.gather(*(service.batcher.submit(texts[i:i + 2]) for i in range(0, 40, 2)))
        await service.aclose()
        return outs

    outs = run(main())
    got = np.concatenate([o[0] for o in outs])
    assert np.allclose(got, FakeEncoder(dim=16).encode(texts).numpy(), atol=1e-6)  # every row its own text's
    assert recording_encoder.batch_sizes == []  # the workers never touch the shared model
    assert sum(len(c.batch_sizes) for c in copies) >= 10 and all(c.batch_sizes for c in copies)
    assert torch.get_num_threads() == threads  # given back on close


def test_encode_workers_need_a_copyable_encoder():
    from invemb.serve.app import ServeConfig, Service

    class Uncopyable(FakeEncoder):
        def __deepcopy__(self, memo):
            raise TypeError("an onnxruntime session")

    with pytest.raises(ValueError, match="encode_workers=2 needs an encoder that can be copied"):
        Service(Uncopyable(), cfg=ServeConfig(encode_workers=2))
    with pytest.raises(ValueError, match="encode_workers must be >= 1"):
        ServeConfig(encode_workers=0).check()
