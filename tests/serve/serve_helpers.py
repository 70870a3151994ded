"""Helpers shared by the service tests (imported by name; tests/serve is put on sys.path by conftest)."""
import threading
import time

from tests.conftest import FakeEncoder

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class RecordingEncoder(FakeEncoder):
    """The deterministic fake encoder that also records the size of every encode call, can be made
    slow (so concurrent requests pile up and get merged), and fails on a chosen text."""

    def __init__(self, dim: int = 16, delay: float = 0.0, fail_on: str | None = None):
        super().__init__(dim=dim)
        self.delay, self.fail_on, self.batch_sizes, self.seen = delay, fail_on, [], []
        self.lock = threading.Lock()

    def __deepcopy__(self, memo):  # a worker's copy: same behaviour, its own records and lock
        return RecordingEncoder(self.dim, self.delay, self.fail_on)

    def encode(self, texts, batch_size: int = 64):
        with self.lock:
            self.batch_sizes.append(len(texts))
            self.seen.append(list(texts))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError(f"boom on {self.fail_on!r}")
        return super().encode(texts, batch_size)


def make_client(encoder, controller=None, api_key=None, raise_server_exceptions=True, **cfg):
    from fastapi.testclient import TestClient

    from invemb.serve.app import ServeConfig, Service, create_app

    service = Service(encoder, controller, ServeConfig(**cfg), name="fake-model")
    return TestClient(create_app(service, api_key=api_key), raise_server_exceptions=raise_server_exceptions), service
