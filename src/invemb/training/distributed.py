"""torch.distributed plumbing for runs launched with ``torchrun`` (nothing home-made: the process
group, DDP and the collectives are PyTorch's own).

- :func:`dist_info` reads rank and world size from torchrun's environment (``RANK``, ``WORLD_SIZE``);
  a plain ``python`` / ``invemb`` process is rank 0 of 1 and every helper here is then a no-op.
- :func:`init_distributed` creates the process group once (gloo on CPU, nccl on CUDA).
- :func:`main_first` runs a block on rank 0 first and on the other ranks after it, for steps that
  build and cache files (corpus, vocabulary, tokenizer, states): rank 0 writes, the others read
  what it wrote.
- :func:`all_gather_json` / :func:`all_gather_tensors` gather small JSON values and variable-length
  tensors from every rank without pickle (``all_gather_object`` pickles).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
from typing import Any, Iterator

import torch


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment, (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return dist_info()[0] == 0


def active() -> bool:
    """True in a process group of more than one process."""
    import torch.distributed as dist

    return dist_info()[1] > 1 and dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device | str | None = None) -> bool:
    """Join the process group when launched by torchrun with WORLD_SIZE > 1 (idempotent).

    Backend: nccl when ``device`` is CUDA (each process then uses ``cuda:LOCAL_RANK``), else gloo.
    The timeout (``INVEMB_DIST_TIMEOUT_MIN``, default 60 minutes) bounds how long ranks wait at a
    barrier while rank 0 evaluates, plots or writes checkpoints alone.
    """
    import torch.distributed as dist

    if dist_info()[1] <= 1:
        return False
    if dist.is_initialized():
        return True
    device = torch.device(device) if device is not None else torch.device("cpu")
    backend = "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    timeout = datetime.timedelta(minutes=float(os.environ.get("INVEMB_DIST_TIMEOUT_MIN", 60)))
    dist.init_process_group(backend, timeout=timeout)
    return True


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first; the other ranks wait, then run it (and find rank 0's files)."""
    if not active():
        yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same dtype and trailing shape, any first dimension), in rank order."""
    if not active():
        return [tensor]
    import torch.distributed as dist

    world = dist_info()[1]
    dev = _comm_device()
    local = tensor.detach().to(dev).contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=dev) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=dev))
    longest = max(int(s) for s in sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[: local.shape[0]] = local
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return [o[: int(n)].to(tensor.device) for o, n in zip(out, sizes)]


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-serialisable ``obj``, in rank order (floats round-trip exactly)."""
    if not active():
        return [obj]
    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    return [json.loads(t.cpu().numpy().tobytes().decode()) for t in all_gather_tensors(data)]
