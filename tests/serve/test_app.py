"""Endpoints through FastAPI's TestClient: the OpenAI shape, every error case, auth, inversion."""
import base64
from pathlib import Path

import numpy as np
import pytest
import torch

from serve_helpers import API_KEY, AUTH, RecordingEncoder, make_client
from tests.conftest import FakeEncoder


def test_embeddings_list_matches_direct_encode(client, recording_encoder):
    texts = ["the cat sat", "a dog", "bank"]
    r = client.post("/v1/embeddings", json={"input": texts, "model": "anything"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "fake-model"
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {d["object"] for d in body["data"]} == {"embedding"}
    got = torch.tensor([d["embedding"] for d in body["data"]])
    assert torch.allclose(got, FakeEncoder().encode(texts), atol=1e-6)
    # the fake encoder has no tokenizer: usage counts whitespace words
    assert body["usage"] == {"prompt_tokens": 6, "total_tokens": 6}


def test_single_string_and_base64(client):
    r = client.post("/v1/embeddings", json={"input": "hello world", "encoding_format": "base64", "dimensions": 16},
                    headers=AUTH)
    assert r.status_code == 200, r.text
    (row,) = r.json()["data"]
    vec = np.frombuffer(base64.b64decode(row["embedding"]), dtype="<f4")
    assert vec.shape == (16,) and np.allclose(vec, FakeEncoder().encode(["hello world"])[0].numpy(), atol=1e-7)


@pytest.mark.parametrize("body, status, needle", [
    ('{"input": ["a", ', 400, "malformed JSON"),
    ("not json at all", 400, "malformed JSON"),
    ('{"input": 5}', 422, "input"),
    ('{"input": [1, 2, 3]}', 422, "token-id input is not supported"),
    ('{"input": [[1, 2]]}', 422, "token-id input is not supported"),
    ('{"input": ["ok", 7]}', 422, "input"),
    ('{"input": []}', 422, "empty list"),
    ('{"input": ["fine", "   "]}', 422, "text 1 is empty"),
    ('{"input": ["a cat", "\\u0000", "ok"]}', 422, "text 1 is empty, whitespace only or only control characters"),
    ('{"input": ["\\u200b\\ufeff"]}', 422, "text 0 is empty"),
    ('{"model": "x"}', 422, "input: Field required"),
    ('{"input": "a", "encoding_format": "int8"}', 422, "encoding_format"),
    ('{"input": "a", "dimensions": 8}', 422, "dimensions=8 is not supported"),
    ('{"input": "a", "dimensions": "16"}', 422, "dimensions"),
    ('[1, 2]', 422, "JSON object"),
    ('{"input": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]}', 413, "9 texts in one request; the limit is 8"),
    ('{"input": ["short", "' + "x" * 51 + '"]}', 413, "text 1 has 51 characters; the limit is 50"),
])
def test_bad_embedding_requests_never_reach_the_model(client, recording_encoder, body, status, needle):
    r = client.post("/v1/embeddings", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["type"] == "invalid_request_error"
    assert recording_encoder.batch_sizes == []
    # the server keeps serving
    assert client.post("/v1/embeddings", json={"input": "still here"}, headers=AUTH).status_code == 200


def test_body_size_limit_declared_and_chunked(client, recording_encoder):
    big = b'{"input": "' + b"a" * 5000 + b'"}'
    r = client.post("/v1/embeddings", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit of 4096" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the body is cut off as it streams in
        yield b'{"input": "'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"}'

    r = client.post("/v1/embeddings", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "error" in r.json()
    assert recording_encoder.batch_sizes == []


def test_wrong_content_type_is_explained(client):
    r = client.post("/v1/embeddings", content=b'{"input": "a"}', headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status_code == 422 and "application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY},
                                     {"Authorization": f"Basic {API_KEY}"}])
def test_auth_required_on_v1(client, recording_encoder, headers):
    for path, body in (("/v1/embeddings", {"input": "a"}), ("/v1/invert", {"text": "a"})):
        r = client.post(path, json=body, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["type"] == "authentication_error"
    # auth is checked before the body is even parsed
    r = client.post("/v1/embeddings", content=b"{broken", headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 401
    assert client.get("/v1/models", headers=headers).status_code == 401
    assert recording_encoder.batch_sizes == []


def test_open_endpoints_and_schema(client):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["dim"] == 16 and h["controller"] is False and h["decode"] is None
    models = client.get("/v1/models", headers=AUTH).json()
    assert models["data"][0]["id"] == "fake-model"
    schema = client.get("/openapi.json").json()
    assert {"/v1/embeddings", "/v1/invert", "/healthz"} <= set(schema["paths"])
    assert "EmbeddingRequest" in schema["components"]["schemas"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert client.get("/docs").status_code == 200


def test_unknown_route_and_method_are_json(client):
    r = client.get("/v1/nothing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get("/v1/embeddings", headers=AUTH)
    assert r.status_code == 405 and "error" in r.json()


def test_no_api_key_means_open(recording_encoder):
    c, _ = make_client(recording_encoder)
    with c:
        assert c.post("/v1/embeddings", json={"input": "a"}).status_code == 200


def test_encoder_failure_is_a_json_500_and_the_server_goes_on():
    enc = RecordingEncoder(fail_on="explode")
    c, _ = make_client(enc, raise_server_exceptions=False)  # the app answers 500 and uvicorn logs the error
    with c:
        r = c.post("/v1/embeddings", json={"input": ["fine", "explode"]})
        assert r.status_code == 500 and "boom" in r.json()["error"]["message"]
        assert c.post("/v1/embeddings", json={"input": ["fine"]}).status_code == 200


def test_invert_without_controller_is_501(client):
    r = client.post("/v1/invert", json={"text": "The cat sat."}, headers=AUTH)
    assert r.status_code == 501 and "--controller" in r.json()["error"]["message"]


@pytest.fixture
def invert_client(toy_controller):
    c, service = make_client(toy_controller.encoder.encoder, toy_controller, api_key=API_KEY, max_beam=4)
    with c:
        yield c


def test_invert_text_and_vector(invert_client, toy_controller):
    r = invert_client.post("/v1/invert", json={"text": "The big cat sat on the mat."}, headers=AUTH)
    assert r.status_code == 200, r.text
    row = r.json()
    assert row["object"] == "inversion" and row["text"] == "The big cat sat on the mat."
    assert isinstance(row["reconstruction"], str) and row["steps"] and row["encoder_calls"] > 0
    assert -1 <= row["cosine"] <= 1 and {"unit", "slot", "cosine"} <= set(row["steps"][0])

    vec = toy_controller.encoder.encoder.encode(["A red fox ran."])[0].tolist()
    r = invert_client.post("/v1/invert", json={"vector": vec, "beam": 2}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert "text" not in r.json() and r.json()["reconstruction"]
    # integer components are numbers too
    r = invert_client.post("/v1/invert", json={"vector": [1] + [0] * 31}, headers=AUTH)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body, status, needle", [
    ({"vector": [0.1] * 5}, 422, "shape (5,)"),
    ({"vector": []}, 422, "shape (0,)"),
    ({"vector": [0.0] * 32}, 422, "all zeros"),
    ({"vector": ["a"] * 32}, 422, "vector"),
    ({"text": "a", "vector": [0.1] * 32}, 422, "exactly one"),
    ({}, 422, "exactly one"),
    ({"text": "   "}, 422, "empty"),
    ({"text": 12}, 422, "text"),
    ({"text": "a", "beam": 9}, 422, "over the limit 4"),
    ({"text": "a", "beam": 0}, 422, "beam"),
    ({"text": "a", "extra": 1}, 422, "extra"),
])
def test_bad_invert_requests(invert_client, body, status, needle):
    r = invert_client.post("/v1/invert", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_invert_nan_vector(invert_client):
    # JSON has no NaN, but Python's parser (and many clients) accept the bare token
    body = "{\"vector\": [NaN" + ", 0.1" * 31 + "]}"
    r = invert_client.post("/v1/invert", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and "NaN" in r.json()["error"]["message"]
    assert invert_client.post("/v1/invert", json={"text": "The dog ran."}, headers=AUTH).status_code == 200


def test_usage_counts_tokens_with_a_hf_tokenizer(tiny_bert_dir):
    from invemb.serve.app import load_service

    service = load_service(tiny_bert_dir)
    assert service.name == Path(tiny_bert_dir).name
    assert service.count_tokens(["the cat", "the cat sat on the mat"]) == [4, 8]  # with [CLS] and [SEP]


def test_a_micro_batch_is_encoded_in_length_sorted_chunks_with_a_trim_after_each(recording_encoder):
    from invemb.serve.app import ServeConfig, Service, malloc_trim

    assert malloc_trim() is None or callable(malloc_trim())
    service = Service(recording_encoder, cfg=ServeConfig(encode_batch_size=4))
    trims = []
    service._trim = trims.append
    texts = [("w " * n).strip() for n in (9, 1, 5, 3, 8, 2, 7, 4, 6, 10)]
    vecs, tokens = service._encode_batch(texts)
    assert recording_encoder.batch_sizes == [4, 4, 2]
    assert recording_encoder.seen[0] == [("w " * n).strip() for n in (1, 2, 3, 4)]  # shortest first
    assert trims == [0, 0, 0]  # one trim per chunk
    assert np.allclose(vecs, FakeEncoder(dim=16).encode(texts).numpy(), atol=1e-6)  # rows back in request order
    assert tokens == [len(t.split()) for t in texts]
    assert Service(recording_encoder, cfg=ServeConfig(trim_heap=False))._trim is None


def test_chunks_are_capped_in_characters_too_but_hold_at_least_one_text(recording_encoder):
    from invemb.serve.app import ServeConfig, Service

    service = Service(recording_encoder, cfg=ServeConfig(encode_batch_size=4, encode_batch_chars=9))
    texts = ["aaaa", "b", "cc", "d" * 30, "eee"]  # sorted: b cc eee aaaa d*30
    assert service._chunks(texts) == [[1, 2, 4], [0], [3]]  # 1+2+3 chars, +4 would pass 9; 30 alone
    assert Service(recording_encoder, cfg=ServeConfig(encode_batch_size=2))._chunks(texts) == [[1, 2], [4, 0], [3]]
    assert service._chunks([]) == []


def test_waiting_inversions_are_decoded_together_and_as_alone(toy_controller, monkeypatch):
    import threading

    from invemb.serve.app import ServeConfig, Service

    service = Service(toy_controller.encoder.encoder, toy_controller, ServeConfig(invert_batch=4))
    batches = []
    alone = toy_controller.invert_vectors

    def recording(vectors, decode=None, progress=False, batch=16):
        batches.append((len(vectors), decode.beam if decode else None))
        return alone(vectors, decode, progress, batch)

    monkeypatch.setattr(toy_controller, "invert_vectors", recording)
    gate = threading.Event()
    service.invert_pool().submit(gate.wait)  # the inversion thread is busy while the jobs queue up
    texts = ["The big cat sat on the mat.", "A red fox ran.", "The dog sat.", "A cat ran near the fox."]
    vec = toy_controller.encoder.encoder.encode(["The red dog ran."])[0]
    beam2 = toy_controller.decode_cfg.replace(beam=2)
    futures = [service.submit_inversion(text=texts[0]), service.submit_inversion(vector=vec),
               service.submit_inversion(text=texts[1], decode=beam2), service.submit_inversion(text=texts[2])]
    cancelled = service.submit_inversion(text="The cat.")
    assert cancelled.cancel()  # its client went away: never decoded
    futures.append(service.submit_inversion(text=texts[3]))
    gate.set()
    rows = [f.result(timeout=120) for f in futures]
    # the beam-2 job waits for the next batch instead of splitting the first
    assert batches == [(4, None), (1, 2)]
    monkeypatch.setattr(toy_controller, "invert_vectors", alone)
    expected = [toy_controller.invert_texts([texts[0]])[0], toy_controller.invert_vector(vec).to_dict(),
                toy_controller.invert_texts([texts[1]], beam2)[0], toy_controller.invert_texts([texts[2]])[0],
                toy_controller.invert_texts([texts[3]])[0]]
    for got, want in zip(rows, expected):
        assert got.get("text") == want.get("text")
        assert got["reconstruction"] == want["reconstruction"] and got["encoder_calls"] == want["encoder_calls"]
        assert got["cosine"] == pytest.approx(want["cosine"], abs=1e-5)
    service.invert_pool().shutdown(wait=True)


def test_a_failed_inversion_batch_fails_each_of_its_requests_and_the_next_batch_runs(toy_controller, monkeypatch):
    from invemb.serve.app import Service

    service = Service(toy_controller.encoder.encoder, toy_controller)
    alone = toy_controller.invert_vectors

    def broken(*args, **kwargs):
        raise RuntimeError("decoder fell over")

    monkeypatch.setattr(toy_controller, "invert_vectors", broken)
    futures = [service.submit_inversion(text=t) for t in ("A red fox ran.", "The dog sat.")]
    for f in futures:
        with pytest.raises(RuntimeError, match="decoder fell over"):
            f.result(timeout=60)
    monkeypatch.setattr(toy_controller, "invert_vectors", alone)
    assert service.submit_inversion(text="The cat sat.").result(timeout=60)["reconstruction"]
    service.invert_pool().shutdown(wait=True)
