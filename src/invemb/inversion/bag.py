"""A bag-of-units prior for selection: which units the sentence behind a vector holds, in any order.

The Selector retrieves units with one intention vector, so every unit is scored by a dot product
with the unit's own EM vector: it finds the few units a sentence vector plainly holds, and a unit
whose EM vector sits away from the sentence's (a name, a number, a word whose meaning the sentence
vector blurs) is never reached. A classifier with a free output vector and bias per unit, trained
on the sentence memory (sentence vectors and the units each holds) to put its softmax mass on a
sentence's units, reaches many more of them. On 400 held-out sentences the share of a sentence's
content units (the 20 most frequent units left out: decoding offers those to every hypothesis) in
the first 32 is, for the default EM: its vector's nearest units 26.9 (Wikipedia) / 49.9 (WordNet
examples), the 245k-sentence memory's votes 34.8 / 48.2, this bag trained on that memory 46.0 /
70.6 (``bench/inversion_bag_recall.py``). It needs that much text: bags of 30k-52k sentences
decode worse on WordNet than none (docs/inversion.md "Bag of units"), so decoding leaves it off by default.

Decoding (``--decode bag_weight=W``) adds ``W * max(0, log p(u | target) + bag_floor)`` to the
Selector's logit of every candidate unit the hypothesis does not hold yet (a unit placed gets no
more bonus: the bag does not know what the buffer holds, and without this it proposed the same
likely units again), and offers the ``bag_units`` likeliest units the buffer lacks as candidates.

Outputs exist for the units at least ``min_count`` memory sentences hold (case twins counted as
the unit that stands in for them); the output vectors start as those units' EM vectors. Stored
as ``unit_bag.json`` (settings, training statistics) and ``unit_bag.safetensors``: no pickle.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from invemb.config import Config
from invemb.io import atomic_save_file, atomic_write_json
from invemb.inversion.memory import SentenceMemory

BAG_FILES = ("unit_bag.json", "unit_bag.safetensors")


@dataclasses.dataclass
class BagConfig(Config):
    hidden: int = 1024
    min_count: int = 3  # memory sentences that must hold a unit for it to get an output
    # Passes over the memory. 245k sentences, 3 epochs: 19-32 minutes on 2 cores (bfloat16 where the CPU has it)
    epochs: float = 3.0
    batch_size: int = 1024
    lr: float = 2e-3
    dev: float = 0.02  # share of memory sentences held out for the training statistics
    seed: int = 0

    presets = {"tiny": {"hidden": 32, "min_count": 1, "epochs": 2.0, "batch_size": 64, "lr": 5e-3}, "default": {},
               "full": {"hidden": 2048}}

    def __post_init__(self) -> None:
        bad = [f"bag.{k}={getattr(self, k)} (at least {least})"
               for k, least in (("hidden", 1), ("min_count", 1), ("batch_size", 2))
               if getattr(self, k) < least]
        bad += [f"bag.{k}={getattr(self, k)} (above 0)" for k in ("epochs", "lr") if not getattr(self, k) > 0]
        if not 0 <= self.dev < 1:
            bad.append(f"bag.dev={self.dev} (in [0, 1))")
        if bad:
            raise ValueError(f"bad bag-of-units settings: {', '.join(bad)}")


class UnitBag(nn.Module):
    """Sentence vector (Q, D) -> a softmax over V output units (Q, V), each a free vector and bias."""

    def __init__(self, dim: int, unit_ids: torch.Tensor, n_units: int, cfg: BagConfig,
                 init_vectors: torch.Tensor | None = None, stats: dict | None = None):
        """``unit_ids`` (V,): the vocabulary id of each output; ``n_units``: the vocabulary's size;
        ``init_vectors`` (V, D): the outputs' starting vectors (random without)."""
        super().__init__()
        self.dim, self.n_units, self.cfg = dim, int(n_units), cfg
        self.register_buffer("unit_ids", unit_ids.long().clone())  # (V,)
        self.stats = dict(stats or {})
        self.mlp = nn.Sequential(nn.Linear(dim, cfg.hidden), nn.GELU(), nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, dim))
        nn.init.zeros_(self.mlp[-1].weight)  # start as the target itself: the units nearest to it lead
        nn.init.zeros_(self.mlp[-1].bias)
        start = init_vectors if init_vectors is not None else torch.randn(len(unit_ids), dim)
        self.outputs = nn.Parameter(F.normalize(start.float(), dim=1).clone())  # (V, D)
        self.bias = nn.Parameter(torch.zeros(len(unit_ids)))  # (V,)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def widened(self, n_units: int) -> "UnitBag":
        """This bag over a vocabulary grown to ``n_units`` (units added past the old ones have no output: their
        votes are 0); the weights are shared, not copied."""
        if n_units < self.n_units:
            raise ValueError(f"a bag of {self.n_units} units cannot narrow to {n_units}")
        wide = copy.copy(self)  # a shallow copy: the same parameters and buffers
        wide.n_units = int(n_units)
        return wide

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """(Q, D) sentence vectors -> (Q, V) logits."""
        x = F.normalize(vectors.float(), dim=-1)
        h = F.normalize(x + self.mlp(x), dim=-1)  # (Q, D)
        return self.log_scale.exp() * h @ F.normalize(self.outputs, dim=1).T + self.bias  # (Q, V)

    @torch.no_grad()
    def votes(self, vectors: torch.Tensor, floor: float) -> torch.Tensor:
        """(Q, n_units): ``max(0, log p(u | vector) + floor)`` per vocabulary unit, 0 for units without an output."""
        vectors = torch.as_tensor(vectors).float()
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"bag of units of dimension {self.dim} got vectors of shape {tuple(vectors.shape)}")
        was = self.training
        self.eval()
        logp = torch.log_softmax(self(vectors), dim=1)  # (Q, V)
        self.train(was)
        out = torch.zeros(vectors.shape[0], self.n_units)
        out[:, self.unit_ids] = (logp + floor).clamp_min(0.0)
        return out

    @torch.no_grad()
    def top_votes(self, vectors: torch.Tensor, units: int, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """What a Selector reading the bag (``selector.memory_source="bag"``) gets per vector (Q, D): the
        ``units`` likeliest vocabulary ids (Q, units) and their votes (Q, units), ``log p(u) - log p`` of the
        next likeliest unit, so a vote falls to 0 at the cut: no unit's vote jumps from high to nothing."""
        vectors = torch.as_tensor(vectors).float()
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"bag of units of dimension {self.dim} got vectors of shape {tuple(vectors.shape)}")
        units = min(units, len(self.unit_ids) - 1)
        was = self.training
        self.eval()
        ids, votes = [], []
        for part in vectors.split(chunk):  # (q, V) logits at a time
            top = torch.log_softmax(self(part), dim=1).topk(units + 1, dim=1)  # (q, units + 1)
            ids.append(self.unit_ids[top.indices[:, :units]])
            votes.append(top.values[:, :units] - top.values[:, units:])
        self.train(was)
        return torch.cat(ids), torch.cat(votes)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_save_file(folder / BAG_FILES[1], lambda p: save_file(tensors, p))
        atomic_write_json(folder / BAG_FILES[0], {"kind": "unit_bag", "dim": self.dim, "n_units": self.n_units,
                                                  "config": self.cfg.to_dict(), "stats": self.stats})

    @classmethod
    def load(cls, folder: str | Path) -> "UnitBag":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / BAG_FILES[0]).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / BAG_FILES[1]))
        bag = cls(meta["dim"], tensors["unit_ids"], meta["n_units"], BagConfig.from_dict(meta["config"]),
                  stats=meta.get("stats"))
        bag.load_state_dict(tensors)
        return bag.eval()

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return all((Path(folder) / name).exists() for name in BAG_FILES)


def fit_bag(memory: SentenceMemory, unit_vectors: torch.Tensor, cfg: BagConfig | None = None,
            stand_in: torch.Tensor | None = None, progress: bool = True) -> UnitBag:
    """Train a bag of units on ``memory``'s sentences: each sentence's vector should put its softmax
    mass evenly on the distinct units it holds (a unit counted as its ``stand_in`` (N,), when given).
    ``stats`` reports the held-out sentences' loss and recall of their units in the first 32: a random
    share of the memory, so they share documents with training sentences: an optimistic figure
    (``bench/inversion_bag_recall.py`` measures test sentences)."""
    from invemb.encoder import bf16_is_fast

    cfg = cfg or BagConfig()
    if len(memory) < 2:
        raise ValueError(f"a bag of units needs at least 2 memory sentences, this memory has {len(memory)}")
    if unit_vectors.shape[0] != memory.n_units:
        raise ValueError(f"{unit_vectors.shape[0]} unit vectors for a memory of {memory.n_units} units")
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    units = memory.units if stand_in is None else stand_in[memory.units]  # (T,) each entry's unit
    lengths = memory.offsets.diff()  # (M,)
    sentence = torch.arange(len(memory)).repeat_interleave(lengths)  # (T,) each entry's sentence
    pairs = torch.unique(sentence * memory.n_units + units)  # distinct (sentence, unit), sorted by sentence
    sentence, units = pairs // memory.n_units, pairs % memory.n_units
    counts = torch.bincount(units, minlength=memory.n_units)
    unit_ids = (counts >= cfg.min_count).nonzero().squeeze(1)  # (V,)
    if not len(unit_ids):
        raise ValueError(f"no unit is held by {cfg.min_count} memory sentences (bag.min_count)")
    column = torch.full((memory.n_units,), -1, dtype=torch.long)
    column[unit_ids] = torch.arange(len(unit_ids))
    keep = column[units] >= 0
    sentence, cols = sentence[keep], column[units[keep]]
    starts = torch.searchsorted(sentence, torch.arange(len(memory) + 1))  # (M + 1,) each sentence's entries

    def targets(rows: torch.Tensor) -> torch.Tensor:  # (b,) sentence ids -> (b, V) 0/1
        t = torch.zeros(len(rows), len(unit_ids))
        for i, r in enumerate(rows.tolist()):
            t[i, cols[starts[r]: starts[r + 1]]] = 1.0
        return t

    order = torch.randperm(len(memory), generator=gen)
    n_dev = min(len(memory) - 1, int(round(len(memory) * cfg.dev)))
    dev, train = order[:n_dev], order[n_dev:]
    train = train[starts[train + 1] > starts[train]]  # sentences holding at least one output unit
    if not len(train):
        raise ValueError("no memory sentence holds a unit with a bag output")
    with torch.random.fork_rng():  # a seeded init that leaves the caller's RNG (a decode's, on first use) alone
        torch.manual_seed(cfg.seed)
        model = UnitBag(memory.vectors.shape[1], unit_ids, memory.n_units, cfg, init_vectors=unit_vectors[unit_ids])
    batch = min(cfg.batch_size, len(train))
    steps = max(1, math.ceil(cfg.epochs * len(train) / batch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.05)
    low_precision = bf16_is_fast(torch.device("cpu"))

    def loss_of(rows: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low_precision):
            logits = model(memory.vectors[rows])  # (b, V)
        t = targets(rows)
        return -((t * torch.log_softmax(logits.float(), dim=1)).sum(1) / t.sum(1).clamp_min(1.0)).mean()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="bag of units", unit="step", dynamic_ncols=True, mininterval=1.0)
    model.train()
    perm = train[torch.randperm(len(train), generator=gen)]
    at, losses = 0, []
    with torch.enable_grad():  # also when a decode (under no_grad) trains a run's bag on first use
        for _ in range(steps):
            if at + batch > len(perm):
                perm, at = train[torch.randperm(len(train), generator=gen)], 0
            loss = loss_of(perm[at: at + batch])
            at += batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    if bar is not None:
        bar.close()
    model.eval()
    stats = {"sentences": len(memory), "outputs": len(unit_ids), "steps": steps,
             "train_loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 4), "seconds": round(time.perf_counter() - t0, 1)}
    dev = dev[starts[dev + 1] > starts[dev]]
    if len(dev):
        dev_loss, recall = 0.0, 0.0
        with torch.no_grad():
            for part in dev.split(512):  # (d, V) at a time: all held-out rows at once can take gigabytes
                dev_loss += float(loss_of(part)) * len(part)
                top = model(memory.vectors[part]).topk(min(32, len(unit_ids)), dim=1).indices  # (d, 32) columns
                held = targets(part)
                recall += float((held.gather(1, top).sum(1) / held.sum(1)).sum())
        stats.update(dev_sentences=len(dev), dev_loss=round(dev_loss / len(dev), 4),
                     dev_recall_at_32=round(recall / len(dev), 4))
    model.stats = stats
    return model
