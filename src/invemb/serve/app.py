"""HTTP service: OpenAI-compatible embeddings, inversion, health (FastAPI + uvicorn).

    POST /v1/embeddings   {"input": str | [str], "model"?, "encoding_format"?: "float"|"base64", "dimensions"?}
    POST /v1/invert       {"text": str} or {"vector": [float]}, optional "beam"
    GET  /v1/models, GET /healthz, GET /openapi.json (and /docs)

Requests to /v1/* are micro-batched (:mod:`invemb.serve.batching`): concurrent texts share one
``encode`` call in a worker thread, so the event loop keeps answering while the model runs.
Size limits, auth and input checks happen before anything reaches the model; every error is a
JSON body in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
fastapi and uvicorn are imported only here (the ``serve`` extra), never by ``import invemb``.
"""
# No `from __future__ import annotations`: FastAPI reads the route signatures below at definition
# time, and their request models are imported inside create_app (string annotations would not resolve).
import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import hmac
import ipaddress
import threading
from typing import Any, Callable

import numpy as np
import torch

from invemb.config import Config
from invemb.encoder import Encoder, check_vectors, has_content
from invemb.serve.batching import MicroBatcher, QueueFull

@dataclasses.dataclass
class ServeConfig(Config):
    host: str = "127.0.0.1"  # loopback unless told otherwise
    port: int = 8000  # 0 picks a free port
    max_batch_texts: int = 256  # texts merged into one encode call
    max_wait_ms: float = 5.0  # how long the oldest waiting request holds the batch open for others
    # A micro-batch (a few hundred texts of mixed lengths) is sorted by length and encoded in chunks
    # of at most this many texts and characters. Small chunks pad less (MiniLM, Brown sentences,
    # 131-text calls: 40.6 padded tokens a text at 64, 32.0 at 32; 22.7 vs 16.7 CPU ms a text), 16
    # is as fast as 32, and they bound the memory one encoder call holds: the EM's working memory
    # over a 143-text call, +35 MB (max 50) in chunks of 16 texts, +25 MB (max 31) with the
    # character cap too, which splits only the chunks of the longest texts; time the same.
    encode_batch_size: int = 16
    encode_batch_chars: int = 2048
    max_queued_texts: int = 65536  # beyond this the server answers 503 at once
    max_texts_per_request: int = 2048  # as OpenAI's embeddings endpoint
    max_chars_per_text: int = 16384
    max_body_bytes: int = 8 * 2**20
    max_beam: int = 16
    max_pending_inversions: int = 16  # inversions take seconds: more running or waiting than this -> 503
    # Inversions waiting together (same beam) are decoded in lockstep, up to this many at once: one
    # Selector, index, Placer and encoder call per step for all of them, each getting the result it
    # would alone (bench/inversion_speed.py: 16 in lockstep take 0.83-0.88x the time of one by one).
    invert_batch: int = 16
    access_log: bool = False  # one log line per request costs real CPU under load
    # After every chunk, hand the heap it freed back to the OS (glibc malloc_trim, ~2 ms). glibc keeps
    # freed activations in its arenas and chunks of ever-new shapes fragment them, so without it the
    # process grows for minutes, and trimming once per micro-batch still let RSS swing +30% within
    # each call (EM, 143-text calls); per chunk it stays within one chunk's activations (+7%).
    trim_heap: bool = True
    # Encoder threads. With N > 1 each thread has its own copy of the model and takes the next
    # micro-batch while the others encode theirs, and torch's intra-op threads (one count for the whole
    # process, the inversion thread included) drop to 1/N: on a CPU, a batch per core keeps going when
    # another process takes a core for a moment, where one batch over every core stalls at each of its
    # synchronisation points until the preempted thread is back (bench/serve_load.py).
    encode_workers: int = 1

    def check(self) -> "ServeConfig":
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_batch_texts", "encode_batch_size", "encode_batch_chars", "max_queued_texts",
                     "max_texts_per_request", "max_chars_per_text", "max_body_bytes", "max_beam", "max_pending_inversions",
                     "invert_batch", "encode_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = status, message, type, param, code, headers


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 501: "not_implemented_error",
          503: "server_overloaded_error"}


@dataclasses.dataclass
class InversionJob:
    """One /v1/invert request waiting for the inversion thread."""

    text: str | None  # encoded first, or
    vector: torch.Tensor | None  # (D,) a checked target
    decode: Any  # DecodeConfig | None (the controller's own)
    future: concurrent.futures.Future


class SerialEncoder:
    """The service's encoder behind one lock: the batcher thread and the inversion thread share one
    model, and HF fast tokenizers raise 'Already borrowed' when two threads call them at once."""

    def __init__(self, encoder: Encoder, lock: threading.Lock):
        self.encoder, self.lock, self.dim = encoder, lock, encoder.dim

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        with self.lock, torch.inference_mode():
            return self.encoder.encode(texts, batch_size=batch_size)

    def save(self, path) -> None:
        self.encoder.save(path)


def token_counter(encoder: Any) -> Callable[[list[str]], list[int]]:
    """Tokens per text for the response's ``usage``: the encoder's own HF tokenizer where it has
    one (a backbone, or an EM's backbone), else whitespace words."""
    tok = getattr(encoder, "tokenizer", None) or getattr(getattr(encoder, "backbone", None), "tokenizer", None)
    if tok is None or not callable(tok):
        return lambda texts: [len(t.split()) for t in texts]
    # verbose=False: counting a text longer than the model's window is fine here (no warning).
    return lambda texts: [len(ids) for ids in tok(texts, add_special_tokens=True, verbose=False)["input_ids"]]


class Service:
    """What the app serves: one encoder (micro-batched) and optionally one inversion controller."""

    def __init__(self, encoder: Encoder, controller: Any = None, cfg: ServeConfig | None = None, name: str = "invemb",
                 count_tokens: Callable[[list[str]], list[int]] | None = None):
        self.cfg = (cfg or ServeConfig()).check()
        self.encoder, self.controller, self.name, self.dim = encoder, controller, name, int(encoder.dim)
        self.lock = threading.Lock()
        self.count_tokens = count_tokens or token_counter(encoder)
        self._worker = threading.local()  # an encode worker's own model copy and lock (encode_workers > 1)
        # (model copy, its lock) per worker; a worker thread started after aclose (a new event loop) reuses them.
        self._copies = [(self._copy_encoder(), threading.Lock()) for _ in range(self.cfg.encode_workers)] \
            if self.cfg.encode_workers > 1 else []
        self._workers_started = 0
        self._threads_before = torch.get_num_threads()  # restored by aclose
        if self._copies:
            torch.set_num_threads(max(1, self._threads_before // self.cfg.encode_workers))
        self.batcher = MicroBatcher(self._encode_batch, self.cfg.max_batch_texts, self.cfg.max_wait_ms,
                                    self.cfg.max_queued_texts, workers=self.cfg.encode_workers,
                                    initializer=self._start_worker if self._copies else None)
        self._trim = malloc_trim() if self.cfg.trim_heap else None
        self._invert_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._invert_jobs: collections.deque[InversionJob] = collections.deque()
        self.inversions_pending = 0

    def _copy_encoder(self) -> Encoder:
        """A copy of the encoder for one worker thread (its own weights and tokenizer: HF fast tokenizers
        must not be shared between threads)."""
        import copy

        try:
            return copy.deepcopy(self.encoder)
        except Exception as err:
            raise ValueError(f"encode_workers={self.cfg.encode_workers} needs an encoder that can be copied "
                             f"(this one cannot: {type(err).__name__}: {err}); use encode_workers=1") from None

    def _start_worker(self) -> None:
        """Runs once in each encode worker thread: it takes its own model copy."""
        with self.lock:
            self._worker.encoder, self._worker.lock = self._copies[self._workers_started % len(self._copies)]
            self._workers_started += 1

    def _encode_batch(self, texts: list[str]) -> tuple:
        """Runs in the batcher's worker thread: (N, D) float32 vectors and N token counts."""
        size = self.cfg.encode_batch_size
        # A worker with its own copy locks only that copy; otherwise the model is shared with the inversion thread.
        encoder = getattr(self._worker, "encoder", self.encoder)
        lock = getattr(self._worker, "lock", self.lock)
        vecs = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in self._chunks(texts):
            chunk = [texts[i] for i in rows]
            # The lock is taken per chunk, so an inversion waiting for the encoder gets it between chunks.
            with lock, torch.inference_mode():
                out = encoder.encode(chunk, batch_size=size)
            vecs[rows] = check_vectors(out, len(chunk), self.dim, "encoder", "serve").detach().float().cpu().numpy()
            if self._trim is not None:
                self._trim(0)
        with self.lock:
            tokens = self.count_tokens(texts)
        return vecs, tokens

    def _chunks(self, texts: list[str]) -> list[list[int]]:
        """Indices of ``texts`` by length (chunks of similar length pad little), cut into chunks of at
        most encode_batch_size texts and encode_batch_chars characters (one text at least)."""
        chunks: list[list[int]] = [[]]
        chars = 0
        for i in sorted(range(len(texts)), key=lambda i: len(texts[i])):
            full = len(chunks[-1]) == self.cfg.encode_batch_size or chars + len(texts[i]) > self.cfg.encode_batch_chars
            if chunks[-1] and full:
                chunks.append([])
                chars = 0
            chunks[-1].append(i)
            chars += len(texts[i])
        return chunks if chunks[0] else []

    def invert_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        # Inversions run in their own thread so a seconds-long beam search never holds up embeddings.
        if self._invert_pool is None:
            self._invert_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="invemb-invert")
        return self._invert_pool

    def submit_inversion(self, text: str | None = None, vector: torch.Tensor | None = None,
                         decode: Any = None) -> concurrent.futures.Future:
        """Queue one inversion (a text, or a checked target vector) with ``decode`` (None: the
        controller's settings); the future gets the response row. Each job also schedules one drain
        of the queue, so a drain that finds the queue empty (its job went in an earlier batch) returns
        at once, and every job is decoded by some drain."""
        job = InversionJob(text, vector, decode, concurrent.futures.Future())
        self._invert_jobs.append(job)
        self.invert_pool().submit(self._drain_inversions)
        return job.future

    def _drain_inversions(self) -> None:
        """Runs in the inversion thread: the oldest waiting job and every other one with its decoding
        settings (up to invert_batch), decoded together; jobs with other settings wait for a later drain."""
        group: list[InversionJob] = []
        others: list[InversionJob] = []
        while self._invert_jobs and len(group) < self.cfg.invert_batch:
            job = self._invert_jobs.popleft()
            if group and job.decode != group[0].decode:
                others.append(job)
            elif job.future.set_running_or_notify_cancel():  # False: its request was cancelled, drop it
                group.append(job)
        self._invert_jobs.extendleft(reversed(others))  # back at the front, in their order
        if not group:
            return
        try:
            ctrl = self.controller
            texts = [j.text for j in group if j.text is not None]
            encoded = iter(ctrl.target_encoder.encode(texts)) if texts else iter(())  # (n_texts, D)
            targets = torch.stack([next(encoded) if j.text is not None else j.vector for j in group]).float()  # (G, D)
            results = ctrl.invert_vectors(targets, group[0].decode, batch=len(group))
        except Exception as err:  # every job of the batch gets the error (the app answers it as a 500)
            for j in group:
                j.future.set_exception(err)
            return
        for j, res in zip(group, results):
            j.future.set_result(res.to_dict() if j.text is None else {"text": j.text, **res.to_dict()})

    async def aclose(self) -> None:
        await self.batcher.aclose()
        if self.cfg.encode_workers > 1:
            torch.set_num_threads(self._threads_before)
        if self._invert_pool is not None:
            self._invert_pool.shutdown(wait=False, cancel_futures=True)
            self._invert_pool = None

    def check_texts(self, texts: list[str], param: str = "input") -> None:
        """Limits and emptiness, answered before anything reaches the model."""
        cfg = self.cfg
        if not texts:
            raise APIError(422, f"'{param}' is an empty list: give at least one text", param=param)
        if len(texts) > cfg.max_texts_per_request:
            raise APIError(413, f"{len(texts)} texts in one request; the limit is {cfg.max_texts_per_request}",
                           param=param, code="too_many_texts")
        for i, t in enumerate(texts):
            if len(t) > cfg.max_chars_per_text:
                raise APIError(413, f"text {i} has {len(t)} characters; the limit is {cfg.max_chars_per_text}",
                               param=param, code="text_too_long")
            if not has_content(t):  # the encoders' own rule (invemb.encoder.check_texts), answered here as a 422
                raise APIError(422, f"text {i} is empty, whitespace only or only control characters", param=param,
                               code="empty_text")


def malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (hand freed heap pages back to the OS), or None where there is none."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def load_service(model: str, controller: str | None = None, cfg: ServeConfig | None = None,
                 name: str | None = None, runtime: str = "torch", decode: dict | None = None,
                 extra_units: bool = True) -> Service:
    """Load the encoder (a run folder, an HF folder or ``backbone``, its backbone on ``runtime``:
    "torch", "onnx" or "bf16") and optionally a controller run, decoding with the run's settings and
    ``decode``'s overrides (``DecodeConfig`` keys, e.g. ``{"bag_weight": 0.5}``); ``extra_units``: the
    controller takes the words ``invemb index words`` added to its run, when it has them."""
    from pathlib import Path

    import invemb
    from invemb.api import run_kind

    if decode and not controller:  # before the encoder loads
        raise ValueError("--decode sets how the controller decodes: it needs --controller RUN")
    if run_kind(model) == "controller":
        raise ValueError(f"{model} is a controller run: pass it as --controller, and its encoder as --model")
    encoder = invemb.load(model, runtime=runtime)
    service = Service(encoder, None, cfg, name=name or _model_name(model))
    if controller:
        from invemb.inversion import load_run

        # The controller encodes through the same lock as the batcher (one model, two threads).
        # Settings that would fail mid-search are refused here (Controller checks them), not per request.
        # An order-bound view (`invemb order-bind`) is served with its EM behind the lock: its vectors are inverted.
        from invemb.em.order_bind import OrderBoundEncoder

        em = encoder.over(SerialEncoder(encoder.em, service.lock)) if isinstance(encoder, OrderBoundEncoder) \
            else SerialEncoder(encoder, service.lock)
        service.controller = load_run(Path(controller), em=em, extra_units=extra_units, **(decode or {}))
    return service


def _model_name(model: str) -> str:
    from pathlib import Path

    if str(model) in ("backbone", "default"):
        return "all-MiniLM-L6-v2"
    return Path(model).resolve().name


def create_app(service: Service, api_key: str | None = None):
    """The ASGI app over ``service`` (the FastAPI app behind a :class:`Guard`; ``.app`` reaches it).
    With ``api_key`` every /v1/* request needs ``Authorization: Bearer KEY``."""
    from fastapi import Depends, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from invemb.serve.schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse, InvertRequest, InvertResponse

    cfg = service.cfg

    errors = {s: {"model": ErrorResponse} for s in (400, 401, 413, 422, 503)}
    # The Guard enforces the key; this only declares it in the OpenAPI schema (the /docs "Authorize" button).
    if api_key:
        from fastapi.security import HTTPBearer

        v1 = {"dependencies": [Depends(HTTPBearer(auto_error=False, description="the server's --api-key"))]}
    else:
        v1 = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await service.aclose()

    # A declared oversize gets 413 from the Guard; max_body_size cuts a chunked body off as it streams in.
    app = FastAPI(title="invemb", version=_version(), lifespan=lifespan, max_body_size=cfg.max_body_bytes,
                  description="Invertible text embeddings: OpenAI-compatible /v1/embeddings and /v1/invert.")

    def reply(status: int, message: str, type: str | None = None, param=None, code=None, headers=None):
        return JSONResponse(error_body(message, type or _TYPES.get(status, "server_error"), param, code), status, headers)

    @app.exception_handler(APIError)
    async def _api_error(_req, err: APIError):
        return reply(err.status, err.message, err.type, err.param, err.code, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req, err: RequestValidationError):
        details = err.errors()
        if any(d.get("type") == "json_invalid" for d in details):
            return reply(400, "malformed JSON body: " + str(details[0].get("ctx", {}).get("error", "cannot parse")),
                         code="json_invalid")
        if details and tuple(details[0].get("loc", ())) == ("body",):
            return reply(422, "the body must be a JSON object, sent with 'Content-Type: application/json'",
                         code="invalid_body")
        parts = []
        for d in details[:3]:
            loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {d.get('msg')}")
        first = [str(x) for x in details[0].get("loc", ()) if x != "body"] if details else []
        return reply(422, "; ".join(parts), param=first[0] if first else None, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req, err: StarletteHTTPException):
        message = f"request body is over the limit of {cfg.max_body_bytes} bytes" if err.status_code == 413 else str(err.detail)
        return reply(err.status_code, message, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(_req, err: Exception):  # the request fails; the server keeps serving
        return reply(500, f"internal error ({type(err).__name__}): {err}", "server_error")

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=errors, **v1)
    async def embeddings(req: EmbeddingRequest):
        """OpenAI-compatible embeddings: the official `openai` client works with `base_url=.../v1`."""
        texts = [req.input] if isinstance(req.input, str) else req.input
        service.check_texts(texts)
        if req.dimensions is not None and req.dimensions != service.dim:
            raise APIError(422, f"dimensions={req.dimensions} is not supported: this model gives {service.dim}",
                           param="dimensions", code="unsupported_dimensions")
        try:
            vecs, tokens = await service.batcher.submit(texts)
        except QueueFull as err:
            raise APIError(503, str(err), code="queue_full", headers={"Retry-After": "1"}) from None
        if req.encoding_format == "base64":
            rows = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vecs]
        else:
            rows = vecs.tolist()
        n_tokens = int(sum(tokens))
        return JSONResponse({"object": "list", "data": [{"object": "embedding", "index": i, "embedding": r}
                                                         for i, r in enumerate(rows)],
                             "model": service.name, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})

    @app.post("/v1/invert", response_model=InvertResponse, responses={**errors, 501: {"model": ErrorResponse}}, **v1)
    async def invert(req: InvertRequest):
        """Rebuild text from a sentence vector (or from a text, encoded first): reconstruction, its
        cosine to the target, and each step (unit placed, slot, cosine)."""
        from invemb.inversion.decode import check_target

        ctrl = service.controller
        if ctrl is None:
            raise APIError(501, "no inversion controller loaded: start the server with --controller RUN",
                           code="no_controller")
        if (req.text is None) == (req.vector is None):
            raise APIError(422, "give exactly one of 'text' or 'vector'", code="invalid_value")
        if req.beam is not None and req.beam > cfg.max_beam:
            raise APIError(422, f"beam={req.beam} is over the limit {cfg.max_beam}", param="beam", code="invalid_value")
        if req.text is not None:
            service.check_texts([req.text], param="text")
            target = None
        else:
            try:
                target = check_target(torch.tensor(req.vector, dtype=torch.float32), service.dim)
            except ValueError as err:
                raise APIError(422, str(err), param="vector", code="invalid_vector") from None
        if service.inversions_pending >= cfg.max_pending_inversions:
            raise APIError(503, f"{service.inversions_pending} inversions already running or waiting; retry later",
                           code="queue_full", headers={"Retry-After": "5"})
        decode = ctrl.decode_cfg.replace(beam=req.beam) if req.beam else None
        service.inversions_pending += 1
        try:
            row = await asyncio.wrap_future(service.submit_inversion(req.text, target, decode))
        finally:
            service.inversions_pending -= 1
        return JSONResponse({"object": "inversion", "model": service.name, **row})

    @app.get("/v1/models", **v1)
    async def models():
        """The one model this server serves (OpenAI's model list shape)."""
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": 0, "owned_by": "invemb"}]}

    @app.get("/healthz")
    async def healthz():
        """Liveness and batching counters (no auth needed)."""
        return {"status": "ok", "model": service.name, "dim": service.dim, "controller": service.controller is not None,
                "decode": service.controller.decode_cfg.to_dict() if service.controller is not None else None,
                "queued_texts": service.batcher.queued_texts, "batching": service.batcher.stats.to_dict()}

    return Guard(app, api_key, cfg.max_body_bytes)


class Guard:
    """Outermost ASGI layer: the API key and a declared Content-Length are checked before the body
    is read or parsed, so a rejected request costs next to nothing. (A chunked body, which declares
    no length, is cut off by FastAPI's own ``max_body_size`` as it streams in; that layer answers a
    declared oversize in plain text, hence this JSON check in front of it.)"""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, (api_key or "").encode() or None, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"].startswith("/v1/"):
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                return await JSONResponse(error_body("missing or wrong API key: send 'Authorization: Bearer KEY'",
                                                     "authentication_error", code="invalid_api_key"), 401,
                                          {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await JSONResponse(error_body(f"request body of {int(declared)} bytes is over the limit of "
                                                 f"{self.max_body}", "invalid_request_error", code="body_too_large"),
                                      413)(scope, receive, send)
        return await self.app(scope, receive, send)


def _version() -> str:
    from invemb import __version__

    return __version__


def serve(model: str, controller: str | None = None, cfg: ServeConfig | None = None, api_key: str | None = None,
          name: str | None = None, log_level: str = "info", runtime: str = "torch", decode: dict | None = None,
          extra_units: bool = True) -> None:
    """Load the models and run uvicorn until interrupted (the ``invemb serve`` command)."""
    import uvicorn

    cfg = (cfg or ServeConfig()).check()
    service = load_service(model, controller, cfg, name, runtime, decode, extra_units)
    if service.controller is not None:
        from invemb.inversion.controller import say_pinned

        say_pinned(controller, service.controller)
    app = create_app(service, api_key)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=log_level, access_log=cfg.access_log,
                lifespan="on")
