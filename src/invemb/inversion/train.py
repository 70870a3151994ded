"""Training the controller on the shared loop.

Data: sentences are segmented into units; for each, a few random *states* are drawn (a random
subset of its units already placed, in gold relative order = a prefix of a random insertion
order). Each state's buffer text is encoded once and cached in the run folder, with the targets and
the hard negatives (units the index returns for the target that are not in the sentence). With
``noise_share`` a share of the states also holds a few wrong units (hard negatives, the kind of unit
the Selector picks by mistake) at random places, so the Selector learns to go on from a buffer the
decoder itself has spoiled rather than only from gold prefixes.

Per micro-batch of states:
- Selector: multi-positive InfoNCE of the intention against the batch's gold units plus the hard
  negatives (plus each gold unit's nearest units with ``neighbour_negatives``), every unit still
  missing from the buffer being a positive, pooled or each on its own (``selector.positives``);
  stop head: BCE on "nothing is missing". With ``selector.memory`` the Selector also reads the
  sentence memory of the training states (each sentence left out of its own neighbours, as a test
  sentence is not in the memory), and the memory's units join the candidates; with
  ``selector.memory_source="bag"`` it reads a bag of units trained on the other half of the memory's
  documents instead (``bag_top_votes``).
- Reranker (``selector.rerank`` > 0): the same loss over the ``rerank`` units the intention
  retrieves from all units (the pool decoding reranks), on the reranked logits.
- Placer: a random missing unit as candidate, cross-entropy on its gold slot (the number of placed
  units that precede it in the sentence); for a share of states one placed unit is first moved to a
  wrong place and the move head learns to point at it (the slot loss is skipped there).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from invemb.config import Config
from invemb.encoder import Encoder
from invemb.io import PartialFolder
from invemb.inversion.bag import BagConfig, UnitBag, fit_bag
from invemb.inversion.controller import ControllerModel, stand_ins
from invemb.inversion.decode import DecodeConfig, render
from invemb.inversion.length import LengthPrior
from invemb.inversion.lm import BigramLM
from invemb.inversion.memory import SentenceMemory, text_hash
from invemb.inversion.placer import PlacerConfig
from invemb.inversion.segment import Segmenter
from invemb.inversion.selector import MemoryInput, SelectorConfig
from invemb.inversion.summary import summarise
from invemb.training import distributed
from invemb.training.loop import StepContext, TrainConfig, Trainer, TrainTask, iterate_minibatches, resolve_device
from invemb.text.vocab import Vocab, tokenize


@dataclasses.dataclass
class ControllerTrainConfig(Config):
    corpus: str = "data/built/corpus"
    sources: list[str] = dataclasses.field(default_factory=lambda: ["wiki", "wordnet", "brown", "nlp"])
    train_file: str = ""  # a .jsonl of {"text": ...} lines instead of the corpus's train split
    vocab: str = ""  # "" = the EM run's vocab.json if it has one, else data/built/vocab.json
    max_sentences: int = 3000
    dev_sentences: int = 200
    min_words: int = 5
    max_words: int = 32
    min_coverage: float = 0.9
    states_per_sentence: int = 2
    hard_negatives: int = 16
    # Each gold unit's nearest units (by the encoder's unit vectors) as extra negatives: the near neighbours
    # ("threaded" for "threads") that the intention mistakes for the unit the sentence holds.
    neighbour_negatives: int = 0
    batch_size: int = 64
    chunk: int = 3  # local-chunk window of the buffer summary
    move_share: float = 0.2  # states whose buffer gets one misplaced unit for the move head
    noise_share: float = 0.0  # training states whose buffer also holds wrong units (hard negatives); dev states never
    noise_units: int = 2  # at most this many wrong units in such a buffer
    stop_weight: float = 0.5
    move_weight: float = 0.2
    # Corpus sources whose train split (min_words-max_words) joins the sentence memory before training
    # (with selector.memory): encoded once, saved with the run, read in training and decoding.
    memory_sources: list[str] = dataclasses.field(default_factory=list)
    threads: int = 1  # torch CPU threads of the training loop (0: torch's default; encoding uses all); 1 wins on 2 shared cores
    selector: SelectorConfig = dataclasses.field(default_factory=SelectorConfig)
    placer: PlacerConfig = dataclasses.field(default_factory=PlacerConfig)
    decode: DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
    bag: BagConfig = dataclasses.field(default_factory=BagConfig)  # the bag of units of --decode bag_weight
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    presets = {
        "tiny": {"max_sentences": 48, "dev_sentences": 8, "min_words": 3, "states_per_sentence": 2, "hard_negatives": 4,
                 "batch_size": 16, "train": {"epochs": 2, "lr": 3e-3, "warmup_steps": 2, "progress": False}},
        "default": {"max_sentences": 32000, "states_per_sentence": 3, "train": {"epochs": 5, "lr": 1e-3, "warmup_steps": 100}},
        "full": {"max_sentences": 200000, "dev_sentences": 2000, "states_per_sentence": 4, "batch_size": 256,
                 "hard_negatives": 64, "train": {"epochs": 10, "lr": 5e-4, "warmup_steps": 500}},
    }

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> "ControllerTrainConfig":
        base = super().preset(name)
        nested = {"selector": SelectorConfig.preset(name).to_dict(), "placer": PlacerConfig.preset(name).to_dict(),
                  "decode": DecodeConfig.preset(name).to_dict(), "bag": BagConfig.preset(name).to_dict(),
                  "train": {**TrainConfig().to_dict(), **cls.presets.get(name, {}).get("train", {})}}
        return cls.from_dict({**base.to_dict(), **nested, **overrides})


@dataclasses.dataclass
class StateSet:
    """Sentences as unit-id lists, their targets, sampled states and their buffer vectors."""

    units: list[list[int]]  # per sentence, gold units in order
    targets: torch.Tensor  # (N, D)
    states: list[tuple[int, list[int]]]  # (sentence, placed positions in increasing order)
    buffer_vecs: torch.Tensor  # (S, D), zeros for empty buffers
    hard: torch.Tensor  # (N, h) unit ids
    noise: list[list[tuple[int, int]]] = dataclasses.field(default_factory=list)  # per state: (buffer index, wrong unit id)

    def __post_init__(self) -> None:
        if not self.noise:
            self.noise = [[] for _ in self.states]

    def buffer(self, j: int) -> list[int]:
        """Unit ids of state ``j``'s buffer: its placed gold units, with its wrong units inserted."""
        sent, placed = self.states[j]
        buf = [self.units[sent][p] for p in placed]
        for at, unit in self.noise[j]:
            buf.insert(at, unit)
        return buf

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from invemb.io import atomic_save_file, atomic_write_json

        atomic_save_file(path.with_suffix(".safetensors"), lambda p: save_file(
            {"targets": self.targets.contiguous(), "buffer_vecs": self.buffer_vecs.contiguous(), "hard": self.hard.contiguous()}, p))
        atomic_write_json(path.with_suffix(".json"), {"units": self.units, "states": self.states, "noise": self.noise})

    @classmethod
    def load(cls, path: Path) -> "StateSet":
        from safetensors.torch import load_file

        t = load_file(str(path.with_suffix(".safetensors")))
        j = json.loads(path.with_suffix(".json").read_text())
        noise = [[(int(a), int(u)) for a, u in row] for row in j.get("noise", [])]  # runs before noise_share: none
        return cls(j["units"], t["targets"], [(s, list(p)) for s, p in j["states"]], t["buffer_vecs"], t["hard"], noise)


def covered(sentences: list[str], segmenter: Segmenter, cfg: ControllerTrainConfig) -> tuple[list[str], list[list[int]]]:
    """The sentences a controller trains on (covered by the vocabulary, 2 to max_len units) and their unit ids."""
    kept, units = [], []
    for s in sentences:
        seg = segmenter.segment(s)
        ids = seg.unit_ids
        if seg.coverage >= cfg.min_coverage and 2 <= len(ids) < cfg.placer.max_len:
            kept.append(s)
            units.append(ids)
    return kept, units


def build_states(sentences: list[str], segmenter: Segmenter, encoder: Encoder, index, cfg: ControllerTrainConfig,
                 seed: int, progress: bool = True, spill: PartialFolder | None = None) -> StateSet:
    """Sample training states of ``sentences``. ``spill``: keeps each finished chunk of encodings, so
    a run killed while encoding re-encodes only the chunks it had not finished."""
    vocab = segmenter.vocab
    kept, units = covered(sentences, segmenter, cfg)
    if not kept:
        raise ValueError("no training sentence is covered by the vocabulary (check --vocab and the sentences)")
    targets = encode_chunked(encoder, kept, "targets", progress, spill=spill)
    _, found = index.search(targets, cfg.hard_negatives + max(len(u) for u in units))
    hard = torch.zeros(len(kept), cfg.hard_negatives, dtype=torch.long)
    n_hard = []
    for i, row in enumerate(found):
        gold = set(units[i])
        negs = [int(u) for u in row if u >= 0 and int(u) not in gold][: cfg.hard_negatives]
        hard[i, : len(negs)] = torch.tensor(negs, dtype=torch.long)
        n_hard.append(len(negs))
    g = torch.Generator().manual_seed(seed)
    states: list[tuple[int, list[int]]] = []
    noise: list[list[tuple[int, int]]] = []
    for i, ids in enumerate(units):
        for _ in range(cfg.states_per_sentence):
            k = int(torch.randint(0, len(ids) + 1, (1,), generator=g))
            states.append((i, sorted(torch.randperm(len(ids), generator=g)[:k].tolist())))
            wrong: list[tuple[int, int]] = []
            # Draws only when noise is on, so noise_share 0 samples exactly the states it always did.
            if cfg.noise_share > 0 and n_hard[i] and float(torch.rand((), generator=g)) < cfg.noise_share:
                n = int(torch.randint(1, min(cfg.noise_units, n_hard[i]) + 1, (1,), generator=g))
                for c, u in enumerate(torch.randperm(n_hard[i], generator=g)[:n].tolist()):
                    wrong.append((int(torch.randint(0, k + c + 1, (1,), generator=g)), int(hard[i, u])))
            noise.append(wrong)
    data = StateSet(units, targets, states, torch.zeros(len(states), encoder.dim), hard, noise)
    texts = [render([vocab.units[u] for u in data.buffer(j)]) for j in range(len(states))]
    todo = [j for j, t in enumerate(texts) if t]
    data.buffer_vecs[todo] = encode_chunked(encoder, [texts[j] for j in todo], "buffer texts", progress, spill=spill)
    return data


def encode_chunked(encoder: Encoder, texts: list[str], what: str, progress: bool, chunk: int = 512,
                   spill: PartialFolder | None = None) -> torch.Tensor:
    """Vectors (N, D) of ``texts``, ``chunk`` at a time; with ``spill``, each chunk is a piece there
    named by a hash of its texts (its key names the encoder)."""
    from safetensors.torch import load_file, save_file

    from invemb.encoder import check_vectors
    from invemb.io import atomic_save_file, content_key

    out = torch.empty(len(texts), encoder.dim)
    starts = range(0, len(texts), chunk)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"encode {what}", unit="chunk", dynamic_ncols=True, mininterval=1.0)
    for i in starts:
        part = texts[i:i + chunk]
        name = f"{content_key(part)[:24]}.safetensors"
        if spill is not None and spill.has(name):
            out[i:i + len(part)] = load_file(str(spill.path(name)))["vectors"]
            continue
        vecs = check_vectors(encoder.encode(part), len(part), encoder.dim, "encoder", what).float()
        out[i:i + len(part)] = vecs
        if spill is not None:
            atomic_save_file(spill.slot(name), lambda p: save_file({"vectors": vecs.contiguous()}, p))
    return out


def unit_neighbours(unit_vectors: torch.Tensor, ids: list[int], k: int, chunk: int = 1024) -> torch.Tensor:
    """(V, k) ids of the ``k`` units nearest to each unit of ``ids`` by inner product (itself left out);
    rows of other units are -1."""
    out = torch.full((len(unit_vectors), k), -1, dtype=torch.long)
    ids_t = torch.tensor(ids, dtype=torch.long)
    for i in range(0, len(ids_t), chunk):
        rows = ids_t[i:i + chunk]
        sims = unit_vectors[rows] @ unit_vectors.T  # (c, V)
        sims[torch.arange(len(rows)), rows] = float("-inf")
        out[rows] = sims.topk(k, dim=1).indices
    return out


def memory_top_votes(data: StateSet, dev: StateSet, cfg: SelectorConfig, memory: SentenceMemory,
                     groups: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per sentence of ``data`` and of ``dev``, the ``cfg.memory`` units of ``memory`` best voted for its
    target and their votes, keyed by ``id()`` of the state set. ``groups``: a document id per training
    sentence (N,) and per memory sentence (M,); a training sentence does not hear from its own
    document (a test sentence's document is never in the memory, and sentences of one Wikipedia
    summary share names a test sentence's neighbours would not give). None: only from itself, the
    memory being the training sentences."""
    if groups is None:
        own = torch.arange(len(data.units))
        groups = (own, own)
    return {id(data): memory.top_votes(data.targets, cfg.memory, cfg.memory_k, cfg.memory_temperature, groups=groups),
            id(dev): memory.top_votes(dev.targets, cfg.memory, cfg.memory_k, cfg.memory_temperature)}


def bag_top_votes(data: StateSet, dev: StateSet, cfg: ControllerTrainConfig, memory: SentenceMemory,
                  groups: tuple[torch.Tensor, torch.Tensor], whole: UnitBag, unit_vectors: torch.Tensor,
                  stand_in: torch.Tensor, cache: Path | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """What a Selector with ``selector.memory_source="bag"`` reads, as ``memory_top_votes``: per sentence
    of ``data`` the likeliest units of a bag trained on the other half of the memory's documents (a
    bag trained on a sentence knows its units, as a test sentence's bag does not), per sentence of
    ``dev`` those of ``whole``, the bag decoding reads. ``groups``: see ``memory_top_votes``; documents
    fall into halves by the parity of their id. ``cache``: a safetensors file keeping the votes, so
    ``--resume`` does not train the two half bags again."""
    from safetensors.torch import load_file, save_file

    from invemb.io import atomic_save_file

    m = cfg.selector.memory
    if cache is not None and cache.exists():
        t = load_file(str(cache))
        if t["train_ids"].shape == (len(data.units), m) and t["dev_ids"].shape == (len(dev.units), m):
            return {id(data): (t["train_ids"], t["train_votes"]), id(dev): (t["dev_ids"], t["dev_votes"])}
    ids = torch.full((len(data.units), m), -1, dtype=torch.long)
    votes = torch.zeros(len(data.units), m)
    for half in (0, 1):
        rows = (groups[1] % 2 == half).nonzero().squeeze(1)
        print(f"training the Selector's cross-fitted bag of units {half + 1}/2 on {len(rows)} memory sentences",
              file=sys.stderr)
        bag = fit_bag(memory.subset(rows), unit_vectors, cfg.bag, stand_in=stand_in, progress=cfg.train.progress)
        readers = (groups[0] % 2 != half).nonzero().squeeze(1)  # the training sentences of the other half
        ids[readers], votes[readers] = bag.top_votes(data.targets[readers], m)
    dev_ids, dev_votes = whole.top_votes(dev.targets, m)
    if cache is not None:
        tensors = {"train_ids": ids, "train_votes": votes, "dev_ids": dev_ids, "dev_votes": dev_votes}
        atomic_save_file(cache, lambda p: save_file(tensors, p))
    return {id(data): (ids, votes), id(dev): (dev_ids, dev_votes)}


def memory_groups(cfg: ControllerTrainConfig, data: StateSet, memory: SentenceMemory) -> tuple[torch.Tensor, torch.Tensor]:
    """A document id per training sentence of ``data`` (N,) and per sentence of ``memory`` (M,), whose
    first N sentences are ``data``'s (``sentence_memory`` builds it so, with their text hashes): found
    by text hash in the corpus's train split. A ``train_file`` line is its own document; a memory
    without text hashes (the corpus changed since the states were drawn) makes each sentence its own."""
    n = len(data.units)
    if len(memory.texts_hash) != len(memory) or len(memory) < n:
        return torch.arange(n), torch.arange(len(memory))  # rows past the states are other sentences, never the same
    doc_of: dict[str, tuple[str, str]] = {}
    if not cfg.train_file:
        from invemb.text.corpus import Corpus

        doc_of = {text_hash(r["text"]): (r["source"], r["doc"]) for r in Corpus(cfg.corpus).rows if r["split"] == "train"}
    numbers: dict[object, int] = {}
    groups = torch.tensor([numbers.setdefault(doc_of.get(h, h), len(numbers)) for h in memory.texts_hash], dtype=torch.long)
    return groups[:n], groups


def _missing(units: list[int], placed: list[int]) -> list[int]:
    placed_set = set(placed)
    return [p for p in range(len(units)) if p not in placed_set]


class ControllerTask(TrainTask):
    """TrainTask for the shared loop."""

    def __init__(self, model: ControllerModel, data: StateSet, dev: StateSet, unit_vectors: torch.Tensor,
                 cfg: ControllerTrainConfig, search_threads: int = 0, memory: SentenceMemory | None = None,
                 groups: tuple[torch.Tensor, torch.Tensor] | None = None,
                 memory_top: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None):
        """``memory``: the sentence memory a Selector with ``selector.memory`` reads (default: the training
        states' sentences); ``groups``: see ``memory_top_votes``; ``memory_top``: what the Selector reads
        per sentence when the caller has it (``bag_top_votes``), else the memory's votes."""
        self.model, self.data, self.dev, self.unit_vectors, self.cfg = model, data, dev, unit_vectors, cfg
        self._units_on: torch.Tensor | None = None  # unit_vectors on the model's device, for the reranker's pool
        self.search_threads = search_threads  # CPU threads of the reranker's pool search (0: the loop's own)
        self.neighbours: torch.Tensor | None = None  # (V, k) nearest units of every gold unit, -1 elsewhere
        if cfg.neighbour_negatives:
            golds = sorted({u for d in (data, dev) for ids in d.units for u in ids})
            self.neighbours = unit_neighbours(unit_vectors, golds, cfg.neighbour_negatives)
        # Per sentence of each state set, the memory's best-voted units and votes (selector.memory).
        self.memory_top: dict[int, tuple[torch.Tensor, torch.Tensor]] = memory_top or {}
        if cfg.selector.memory and not self.memory_top:
            memory = memory or SentenceMemory.from_lists(data.targets, data.units, len(unit_vectors))
            self.memory_top = memory_top_votes(data, dev, cfg.selector, memory, groups)

    def batch_plan(self, epoch: int, generator: torch.Generator) -> list[list[int]]:
        return list(iterate_minibatches(len(self.data.states), self.cfg.batch_size, generator))

    def _losses(self, model: ControllerModel, data: StateSet, batch: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """Summaries are built on the CPU (where the states live) and moved to the model's device."""
        cfg, uv = self.cfg, self.unit_vectors
        dev = next(model.parameters()).device
        to = lambda summary: type(summary)(*(t.to(dev) for t in summary))  # noqa: E731
        sents = [data.states[j][0] for j in batch]
        placed = [data.states[j][1] for j in batch]
        targets = data.targets[sents]  # (B, D)
        buffers = [data.buffer(j) for j in batch]
        s = to(summarise(targets, buffers, data.buffer_vecs[batch], uv, cfg.chunk))
        mem = self.memory_input(data, sents, buffers)
        mem = mem.to(dev) if mem is not None else None
        sel = model.selector(s, mem)
        # Candidates: every gold unit of the batch's sentences, their hard negatives, their units' neighbours
        # and the memory's units.
        golds = torch.tensor([u for i in sents for u in data.units[i]])
        cand = torch.cat([golds, data.hard[sents].flatten()])
        if self.neighbours is not None:
            cand = torch.cat([cand, self.neighbours[golds].flatten()])
        if mem is not None:
            cand = torch.cat([cand, mem.ids[mem.ids >= 0].cpu()])
        cand = torch.unique(cand)
        col = {int(u): c for c, u in enumerate(cand)}
        positive = torch.zeros(len(batch), len(cand), dtype=torch.bool)
        missing = [_missing(data.units[si], pos) for si, pos in zip(sents, placed)]
        for b, (si, miss) in enumerate(zip(sents, missing)):
            for p in miss:
                positive[b, col[data.units[si][p]]] = True
        logits = sel.intention @ uv[cand].to(dev).T / model.selector.cfg.temperature  # (B, C)
        logits = logits + model.selector.memory_logits(sel, mem, cand.to(dev))
        loss_sel = model.selector.selection_loss(logits, positive.to(dev))
        done = torch.tensor([float(not m) for m in missing], device=dev)
        loss_stop = F.binary_cross_entropy_with_logits(sel.stop_logit, done)
        terms = {"loss_select": loss_sel.item(), "loss_stop": loss_stop.item()}
        head = loss_sel + cfg.stop_weight * loss_stop
        if model.selector.reranker is not None:
            # The reranker re-scores what the intention retrieves from all units, as in decoding.
            missing_units = [{data.units[si][p] for p in miss} for si, miss in zip(sents, missing)]
            pool, logits = self._reranked_pool(model, s, sel, model.selector.cfg.rerank, mem)
            pool_positive = torch.tensor([[u in m for u in row] for row, m in zip(pool.tolist(), missing_units)], device=dev)
            loss_rerank = model.selector.selection_loss(logits, pool_positive)
            head = head + loss_rerank
            terms["loss_rerank"] = loss_rerank.item()

        # Placer on the states with something missing and no wrong unit (a gold slot among wrong units is ill-defined).
        rows = [b for b, m in enumerate(missing) if m and not data.noise[batch[b]]]
        if not rows:
            return head, terms
        cand_units, gold_slot, move_gold, moved_bufs = [], [], [], []
        for b in rows:
            si, pos, miss = sents[b], placed[b], missing[b]
            m = miss[int(torch.randint(len(miss), (1,)))]
            cand_units.append(data.units[si][m])
            buf = list(buffers[b])
            if len(buf) >= 2 and float(torch.rand(())) < cfg.move_share:
                j = int(torch.randint(len(buf), (1,)))
                unit = buf.pop(j)
                r = int(torch.randint(len(buf), (1,)))
                r = r + 1 if r >= j else r  # a different place
                buf.insert(r, unit)
                move_gold.append(r + 1)
                gold_slot.append(-100)  # the gold slot is ill-defined in a corrupted buffer
            else:
                move_gold.append(0)
                gold_slot.append(sum(1 for p in pos if p < m))
            moved_bufs.append(buf)
        rows_t = torch.tensor(rows)
        sp = to(summarise(targets[rows_t], moved_bufs, data.buffer_vecs[[batch[b] for b in rows]], uv, cfg.chunk))
        out = model.placer(sp, uv[torch.tensor(cand_units)].to(dev))
        gold = torch.tensor(gold_slot, device=dev)
        loss_place = F.cross_entropy(out.slot_logits.masked_fill(torch.isinf(out.slot_logits), -1e4), gold, ignore_index=-100)
        loss_move = F.cross_entropy(out.move_logits.masked_fill(torch.isinf(out.move_logits), -1e4),
                                    torch.tensor(move_gold, device=dev))
        valid = gold >= 0
        acc = (out.slot_logits.argmax(-1)[valid] == gold[valid]).float().mean().item() if valid.any() else float("nan")
        total = head + loss_place + cfg.move_weight * loss_move
        return total, {**terms, "loss_place": loss_place.item(), "loss_move": loss_move.item(), "place_acc": acc}

    def _all_units(self, device: torch.device) -> torch.Tensor:
        if self._units_on is None or self._units_on.device != device:
            self._units_on = self.unit_vectors.to(device)  # (V, D), moved once
        return self._units_on

    def memory_input(self, data: StateSet, sents: list[int], buffers: list[list[int]]) -> MemoryInput | None:
        """The Selector's memory input (on the CPU) for states of ``sents`` with ``buffers``; None without one."""
        if not self.memory_top:
            return None
        ids, votes = self.memory_top[id(data)]
        return MemoryInput.of(ids[sents], votes[sents], buffers, self.unit_vectors)

    def _reranked_pool(self, model: ControllerModel, s, sel, size: int,
                       mem: MemoryInput | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``size`` units (B, P) the intention retrieves from all units (gradient-free, as the
        index search) and their reranked logits (B, P)."""
        units = self._all_units(sel.intention.device)
        loop_threads = torch.get_num_threads()
        if self.search_threads and units.device.type == "cpu":
            torch.set_num_threads(self.search_threads)
        try:
            with torch.no_grad():
                pool = (sel.intention @ units.T).topk(min(size, len(units)), dim=-1).indices  # (B, P)
        finally:
            torch.set_num_threads(loop_threads)
        logits = model.selector.candidate_logits(s, sel, units[pool]) + model.selector.memory_logits(sel, mem, pool)
        return pool.cpu(), logits

    def loss(self, model, batch, ctx: StepContext):
        return self._losses(getattr(model, "module", model), self.data, batch)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Held-out states: losses, slot accuracy, stop accuracy, and the Selector's hit@k (a missing unit
        among the top k over all units) and precision@k (the share of the top k that are missing), next
        to the untrained bag-of-units query (the target), with a reranker after reranking, and with a
        memory over the intention's 64 units and the memory's, ranked by their logits as decoding does."""
        torch.manual_seed(0)  # the same dev candidates every epoch; four draws of them, averaged
        dev, k = self.dev, self.cfg.decode.units_k
        batch = list(range(len(dev.states)))
        draws = [self._losses(self.model, dev, batch)[1] for _ in range(4)]
        terms = {key: sum(d[key] for d in draws) / len(draws) for key in draws[0]}
        sents = [dev.states[j][0] for j in batch]
        buffers = [dev.buffer(j) for j in batch]
        s = summarise(dev.targets[sents], buffers, dev.buffer_vecs, self.unit_vectors, self.cfg.chunk)
        dev_ = next(self.model.parameters()).device
        s_on = type(s)(*(t.to(dev_) for t in s))
        mem = self.memory_input(dev, sents, buffers)  # on the CPU, or None
        with torch.no_grad():
            sel_on = self.model.selector(s_on, mem.to(dev_) if mem is not None else None)
        sel = type(sel_on)(*(t.float().cpu() for t in sel_on))
        missing = [{dev.units[si][p] for p in _missing(dev.units[si], pos)} for si, (_, pos) in zip(sents, dev.states)]
        rows = [i for i, m in enumerate(missing) if m]

        def scores(top: list[list[int]]) -> tuple[float, float]:
            """hit@k (a missing unit among the top k) and precision@k (the share of them that are missing)."""
            hits = sum(bool(set(t[:k]) & missing[r]) for t, r in zip(top, rows))
            right = sum(len(set(t[:k]) & missing[r]) for t, r in zip(top, rows))
            return hits / max(1, len(rows)), right / max(1, k * len(rows))

        def ranked(query: torch.Tensor) -> list[list[int]]:
            return (query[rows] @ self.unit_vectors.T).topk(k, dim=-1).indices.tolist()  # (R, k)

        out = {f"dev_{k_}": v for k_, v in terms.items()}
        for name, top in (("select", ranked(sel.intention)), ("bag", ranked(F.normalize(dev.targets[sents], dim=-1)))):
            out[f"dev_{name}_hit@{k}"], out[f"dev_{name}_prec@{k}"] = scores(top)
        if self.model.selector.reranker is not None and rows:
            rows_t = torch.tensor(rows, device=dev_)
            with torch.no_grad():
                pool, logits = self._reranked_pool(self.model, type(s_on)(*(t[rows_t] for t in s_on)),
                                                   type(sel_on)(*(t[rows_t] for t in sel_on)), self.model.selector.cfg.rerank,
                                                   type(mem)(*(t[rows].to(dev_) for t in mem)) if mem is not None else None)
            top = pool.gather(1, logits.float().cpu().argsort(dim=-1, descending=True)).tolist()  # (R, P) best first
            out[f"dev_rerank_hit@{k}"], out[f"dev_rerank_prec@{k}"] = scores(top)
        if mem is not None and rows:
            found = (sel.intention[rows] @ self.unit_vectors.T).topk(min(64, len(self.unit_vectors)), dim=-1).indices  # (R, 64)
            voted = mem.ids[rows]  # (R, M)
            pool = torch.cat([found, voted.clamp_min(0)], dim=1)  # (R, 64 + M)
            logits = torch.einsum("rd,rcd->rc", sel.intention[rows], self.unit_vectors[pool]) / self.model.selector.cfg.temperature
            logits = logits + self.model.selector.memory_logits(
                type(sel)(*(t[rows] for t in sel)), type(mem)(*(t[rows] for t in mem)), pool)
            repeat = (voted[:, :, None] == found[:, None, :]).any(-1) | (voted < 0)  # (R, M) empty or found already
            logits[:, found.shape[1]:] = logits[:, found.shape[1]:].masked_fill(repeat, float("-inf"))
            top = pool.gather(1, logits.argsort(dim=-1, descending=True)).tolist()
            out[f"dev_memory_hit@{k}"], out[f"dev_memory_prec@{k}"] = scores(top)
        stop_pred = (sel.stop_logit > 0).tolist()
        out["dev_stop_acc"] = sum(p == (not m) for p, m in zip(stop_pred, missing)) / max(1, len(missing))
        return out


def split_sentences(cfg: ControllerTrainConfig, split: str) -> list[str]:
    """Every sentence of ``split`` ("train" or "dev") the controller may learn from: ``cfg.train_file``'s
    (its first lines are dev), else the corpus's split of ``cfg.sources``."""
    from invemb.io import read_jsonl_texts

    if cfg.train_file:
        texts = read_jsonl_texts(cfg.train_file)
        n_dev = min(cfg.dev_sentences, max(1, len(texts) // 5))
        return texts[n_dev:] if split == "train" else texts[:n_dev]
    from invemb.text.corpus import Corpus

    return Corpus(cfg.corpus).sentences(split, cfg.sources)


def _keep_in_run(built, run: Path, what: str) -> None:
    """Save what a decode built on first use into its run; a read-only run keeps working without it."""
    try:
        built.save(run)
    except OSError as err:
        print(f"{what} not saved in {run}: {err}", file=sys.stderr)


def language_prior(run: Path | None, cfg: ControllerTrainConfig | None, progress: bool = False) -> BigramLM:
    """The decoder's language prior (``--decode lm_weight``) for a controller trained with ``cfg``: the
    run folder's own, else built from the same training text (seconds) and saved into the run (a
    read-only folder: used, not kept)."""
    if run is not None and BigramLM.exists(run):
        return BigramLM.load(run)
    if cfg is None:
        raise ValueError("lm_weight needs a language prior: this controller has no run folder or training "
                         "config to build one from (give Controller a prior=, or decode with lm_weight=0)")
    print("building the decoder's language prior from the controller's training text", file=sys.stderr)
    lm = BigramLM.build(split_sentences(cfg, "train"), progress=progress)
    if run is not None:
        _keep_in_run(lm, run, "language prior")
    return lm


def sentence_memory(run: Path | None, cfg: ControllerTrainConfig | None, vocab: Vocab) -> SentenceMemory:
    """The sentence memory (read by the Selector with ``selector.memory``, and by ``--decode memory_weight``)
    of a controller run: its own, else one built from its saved training states (their targets and gold
    units: nothing to encode, seconds) and saved into the run (a read-only folder: used, not kept)."""
    if run is not None and SentenceMemory.exists(run):
        return SentenceMemory.load(run)
    if run is None or not (run / "states_train.json").exists():
        raise ValueError("memory_weight or a memory-reading Selector needs a sentence memory: this controller has no "
                         "run folder with training states to build one from (give Controller a memory=, or decode with "
                         "memory_weight=0)")
    print("building the decoder's sentence memory from the controller's training states", file=sys.stderr)
    data = StateSet.load(run / "states_train")
    hashes = []  # the states keep no texts: the same draw again gives them, and their hashes
    if cfg is not None:
        texts, units = covered(_sentences(cfg, "train", cfg.max_sentences, cfg.train.seed), Segmenter(vocab), cfg)
        if units == data.units:  # else the corpus changed since training: no hashes to skip repeats by
            hashes = [text_hash(t) for t in texts]
    memory = SentenceMemory.from_lists(data.targets, data.units, len(vocab), hashes)
    _keep_in_run(memory, run, "sentence memory")
    return memory


def length_prior(run: Path | None, vocab: Vocab, data: StateSet | None = None) -> LengthPrior:
    """The decoder's length prior (``--decode length_weight``) of a controller run: its own, else one fitted
    to its training states (``data`` when the caller has them loaded, else the saved ones: their targets
    and the words of their gold units, a second) and saved into the run (a read-only folder: used, not kept)."""
    if run is not None and LengthPrior.exists(run):
        return LengthPrior.load(run)
    if data is None:
        if run is None or not (run / "states_train.json").exists():
            raise ValueError("length_weight needs a length prior: this controller has no run folder with training "
                             "states to fit one to (give Controller a length_prior=, or decode with length_weight=0)")
        data = StateSet.load(run / "states_train")
    unit_words: dict[int, int] = {}
    words = [sum(unit_words.setdefault(u, len(tokenize(vocab.units[u]))) for u in units) for units in data.units]
    prior = LengthPrior.fit(data.targets, torch.tensor(words).clamp_min(1))
    _keep_in_run(prior, run, "length prior")
    return prior


def unit_bag(run: Path | None, cfg: ControllerTrainConfig | None, vocab: Vocab, unit_vectors: torch.Tensor,
             memory: SentenceMemory | None = None, progress: bool = True, refit: bool = False,
             stand_in: torch.Tensor | None = None) -> UnitBag:
    """The decoder's bag of units (``--decode bag_weight``) of a controller run: its own (unless ``refit``),
    else one trained on its sentence memory (``memory``, default the run's: minutes, 19 for 245k
    sentences on 2 cores) and saved into the run (a read-only folder: used, not kept). ``stand_in``:
    the vocabulary's case-twin stand-ins when the caller has them (else computed here)."""
    if run is not None and UnitBag.exists(run) and not refit:
        return UnitBag.load(run)
    if memory is None:
        if run is None or not (SentenceMemory.exists(run) or (run / "states_train.json").exists()):
            raise ValueError("bag_weight needs a bag of units: this controller has no run folder with a sentence memory "
                             "or training states to train one on (give Controller a bag=, or decode with bag_weight=0)")
        memory = sentence_memory(run, cfg, vocab)
    print(f"training the decoder's bag of units on {len(memory)} memory sentences", file=sys.stderr)
    bag = fit_bag(memory, unit_vectors, cfg.bag if cfg is not None else BagConfig(),
                  stand_in=stand_ins(unit_vectors, vocab.units, vocab.counts) if stand_in is None else stand_in,
                  progress=progress)
    if run is not None:
        _keep_in_run(bag, run, "bag of units")
    return bag


def extend_memory(run: str | Path, sources: list[str] | None = None, max_sentences: int = 0, encoder: Encoder | None = None,
                  progress: bool = True, bag: bool = True) -> dict:
    """Add the controller's training text (``sources`` of its corpus, default all it trained on; at most
    ``max_sentences``, 0: every one) to its sentence memory, encoding each sentence the memory lacks
    (10-20 minutes for the default corpus's 310k on 2 cores). Killed, the same call again keeps the
    chunks it had encoded (``memory_encoded/`` in the run). ``bag``: then train the run's bag of units
    again on the grown memory (minutes: 19 for 245k sentences)."""
    import invemb
    from invemb.io import content_key
    from invemb.inversion.controller import controller_info

    run = Path(run)
    info = controller_info(run)
    cfg = trained = ControllerTrainConfig.from_dict(info["config"])
    if max_sentences < 0:
        raise ValueError(f"--max-sentences must be 0 (every sentence) or more, got {max_sentences}")
    if sources:
        if cfg.train_file:
            raise ValueError(f"{run} was trained on --set train_file={cfg.train_file}, which has no sources to pick")
        from invemb.text.corpus import Corpus

        present = sorted({r["source"] for r in Corpus(cfg.corpus).rows})
        unknown = [x for x in sources if x not in present]
        if unknown:
            raise ValueError(f"unknown source {', '.join(unknown)}: the corpus {cfg.corpus} has {', '.join(present)}")
        cfg = cfg.replace(sources=list(sources))
    vocab = Vocab.load(run / "vocab.json")
    memory = sentence_memory(run, trained, vocab)  # the states' own draw, whatever sources are added
    known = set(memory.texts_hash)
    texts = [t for t in dict.fromkeys(_fitting(cfg, "train")) if text_hash(t) not in known]
    if max_sentences:
        g = torch.Generator().manual_seed(cfg.train.seed)
        texts = [texts[i] for i in sorted(torch.randperm(len(texts), generator=g)[:max_sentences].tolist())]
    texts, units = covered(texts, Segmenter(vocab), cfg)
    before = len(memory)
    if texts:
        from invemb.inversion.units import encoder_fingerprint

        encoder = encoder or invemb.load(info["em"])
        fp = encoder_fingerprint(encoder)
        if fp != info["encoder_fingerprint"]:
            raise ValueError(f"encoder {info['em']} is not the one controller {run} was trained on")
        spill = PartialFolder(run / "memory_encoded", content_key("sentence memory", fp))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths batch together
        vectors = torch.empty(len(texts), encoder.dim)
        vectors[order] = encode_chunked(encoder, [texts[i] for i in order], "memory sentences", progress, spill=spill)
        memory = memory.extend(SentenceMemory.from_lists(vectors, units, len(vocab), [text_hash(t) for t in texts]))
        memory.save(run)
        spill.discard()
    out = {"run": str(run), "sentences_before": before, "sentences_added": len(memory) - before, "sentences": len(memory)}
    if bag and (len(memory) > before or not UnitBag.exists(run)):
        from safetensors.torch import load_file

        unit_vectors = load_file(str(run / "unit_vectors.safetensors"))["units"]
        fitted = unit_bag(run, trained, vocab, unit_vectors, memory, progress=progress, refit=True)
        out["bag_dev_recall_at_32"] = fitted.stats.get("dev_recall_at_32")
    return out


def _fitting(cfg: ControllerTrainConfig, split: str) -> list[str]:
    """The sentences of ``split`` of ``cfg.min_words``-``cfg.max_words`` tokens."""
    return [t for t in split_sentences(cfg, split) if cfg.min_words <= len(tokenize(t)) <= cfg.max_words]


def _sentences(cfg: ControllerTrainConfig, split: str, limit: int, seed: int) -> list[str]:
    texts = _fitting(cfg, split)
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(texts), generator=g)[:limit].tolist()
    return [texts[i] for i in order]


def resolve_vocab(cfg: ControllerTrainConfig, em: str) -> Path:
    if cfg.vocab:
        return Path(cfg.vocab)
    if em not in ("backbone", "default") and (Path(em) / "vocab.json").exists():
        return Path(em) / "vocab.json"
    return Path("data/built/vocab.json")


def train_controller(em: str, cfg: ControllerTrainConfig, out: str | Path, resume: bool = False,
                     encoder: Encoder | None = None, unit_cache: str | Path | None = None,
                     preset: str | None = None) -> dict:
    """Train a controller for the encoder ``em`` (a run folder, HF folder or "backbone") into ``out``.
    Sentences come from ``cfg.train_file``, else ``cfg.corpus``, else the EM run's own corpus.
    ``resume`` continues the run in ``out`` with its own config (the run's, not ``cfg``: only the
    device and the progress bars come from ``cfg``), as the EM, scratch and tiered trainers do.
    ``preset``: the preset ``cfg`` was made from, recorded in the run (its decoding settings are later
    compared with that preset's defaults of the day: :func:`invemb.inversion.controller.pinned_settings`)."""
    import invemb
    from invemb.inversion.harness import resolve_corpus
    from invemb.index import IndexConfig, UnitIndex
    from invemb.io import atomic_write_json, atomic_write_text, content_key
    from invemb.inversion.units import cached_unit_vectors, encoder_fingerprint

    out = Path(out)
    started = json.loads((out / "config.json").read_text()) if resume and (out / "config.json").exists() else None
    if started is not None:
        cfg = ControllerTrainConfig.from_dict(started["config"]).replace(
            **{"train.device": cfg.train.device, "train.progress": cfg.train.progress})
    distributed.init_distributed(resolve_device(cfg.train.device))  # under torchrun: join the process group
    if not resume and out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pass --resume to continue it or pick a new --out")
    if cfg.memory_sources and cfg.train_file:
        raise ValueError(f"memory_sources picks corpus sources; this run trains on train_file={cfg.train_file}, which has none")
    if encoder is None and str(em) not in ("backbone", "default") and not Path(em).exists():
        raise FileNotFoundError(f"{em}: no such run or model folder (--em)")  # not reported as a missing corpus
    if not cfg.train_file:
        cfg = cfg.replace(corpus=str(resolve_corpus(cfg.corpus, em)))
    distributed.barrier()  # every rank checked before rank 0 writes
    main = distributed.is_main()
    if main:
        out.mkdir(parents=True, exist_ok=True)
    encoder = encoder or invemb.load(em)
    fp = encoder_fingerprint(encoder)
    vocab_path = resolve_vocab(cfg, em)
    vocab = Vocab.load(vocab_path)
    info = {"kind": "controller", "em": str(em), "encoder_fingerprint": fp, "vocab_fingerprint": vocab.fingerprint(),
            "dim": encoder.dim, "units": len(vocab), "vocab_source": str(vocab_path), "config": cfg.to_dict()}
    preset = started.get("preset") if started is not None else preset
    if preset is not None:
        info["preset"] = preset
    if started is not None:
        if (started["encoder_fingerprint"], started["vocab_fingerprint"]) != (fp, vocab.fingerprint()):
            raise ValueError(f"{out} was started with another encoder or vocabulary; refusing to resume")
    seed = cfg.train.seed
    data_path, dev_path = out / "states_train", out / "states_dev"
    # Under torchrun rank 0 encodes the units and builds the states; the others load its files.
    with distributed.main_first():
        if main:
            atomic_write_json(out / "config.json", info)
            if not (out / "vocab.json").exists():
                vocab.save(out / "vocab.json")
        vec_path = out / "unit_vectors.safetensors"
        if unit_cache is None and (Path(em) / "unit_vectors.safetensors").exists():
            unit_cache = Path(em) / "unit_vectors.safetensors"  # an EM run's own, written when it finished
        if main and unit_cache and Path(unit_cache).exists() and not vec_path.exists():
            shutil.copyfile(unit_cache, vec_path)  # checked against encoder + vocab just below
        unit_vectors = cached_unit_vectors(encoder, vocab, vec_path, fp, progress=cfg.train.progress and main)
        if data_path.with_suffix(".json").exists() and dev_path.with_suffix(".json").exists():
            data, dev = StateSet.load(data_path), StateSet.load(dev_path)
        else:
            index = UnitIndex.build(unit_vectors, vocab.units, IndexConfig(kind="flat"))
            segmenter = Segmenter(vocab)
            # Finished chunks of encodings wait in the run folder until both state sets are saved:
            # --resume after a kill during the encoding (minutes at the default size) reuses them.
            spill = PartialFolder(out / "states_encoded", content_key("controller states", fp)) if main else None
            dev = build_states(_sentences(cfg, "dev", cfg.dev_sentences, seed), segmenter, encoder, index,
                               cfg.replace(noise_share=0.0), seed + 1, cfg.train.progress, spill)  # dev: gold prefixes
            data = build_states(_sentences(cfg, "train", cfg.max_sentences, seed), segmenter, encoder, index, cfg, seed,
                                cfg.train.progress, spill)
            dev.save(dev_path)
            data.save(data_path)
            if spill is not None:
                spill.discard()
        if main and cfg.selector.memory and cfg.memory_sources and not SentenceMemory.exists(out):
            # Saved as the run's memory: the Selector learns from the memory it will decode with.
            extend_memory(out, cfg.memory_sources, encoder=encoder, progress=cfg.train.progress)
    torch.manual_seed(seed)
    model = ControllerModel(encoder.dim, cfg.selector, cfg.placer, cfg.chunk)
    encode_threads = torch.get_num_threads()  # encoding above used every core; the loop's small ops may want fewer
    # The reranker's pool search is one big matrix product: it gets every core.
    memory, groups, memory_top = None, None, None
    if cfg.selector.memory:
        memory = sentence_memory(out, cfg, vocab)  # the states' sentences, and memory_sources' added above
        groups = memory_groups(cfg, data, memory)
        if cfg.selector.memory_source == "bag":
            with distributed.main_first():  # rank 0 trains the bags and keeps their votes; the others read them
                stand_in = stand_ins(unit_vectors, vocab.units, vocab.counts)
                whole = unit_bag(out, cfg, vocab, unit_vectors, memory, progress=cfg.train.progress and main,
                                 stand_in=stand_in)  # saved in the run: decoding reads it
                memory_top = bag_top_votes(data, dev, cfg, memory, groups, whole, unit_vectors, stand_in,
                                           cache=out / "selector_bag_votes.safetensors")
    task = ControllerTask(model, data, dev, unit_vectors, cfg, search_threads=encode_threads, memory=memory,
                          groups=groups, memory_top=memory_top)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        # A run killed before its first checkpoint still has its built states: --resume reuses them
        # and starts the loop from step 0.
        final = Trainer(task, cfg.train, out).fit(resume=resume, require_checkpoint=False)
    finally:
        torch.set_num_threads(encode_threads)
    if not main:
        return {"run": str(out), "rank": distributed.dist_info()[0]}
    from safetensors.torch import save_file

    from invemb.io import atomic_save_file

    atomic_save_file(out / "model.safetensors", lambda p: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, p))
    language_prior(out, cfg, progress=cfg.train.progress)  # built and saved once, beside the weights
    lengths = length_prior(out, vocab, data)
    summary = {"run": str(out), "sentences": len(data.units), "states": len(data.states), **final,
               "length_prior_dev_mae_words": lengths.stats.get("dev_mae_words")}
    atomic_write_text(out / "report.md", "# controller run\n\n" + "\n".join(f"- {k}: {v}" for k, v in summary.items()) + "\n")
    return summary
