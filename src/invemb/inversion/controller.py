"""The trained controller: Selector + Placer, the unit vectors and index, and the policy that
drives beam decoding. A controller run folder holds:

``config.json`` (kind "controller", the encoder it was trained on and its fingerprint, the vocabulary
fingerprint, the training config), ``vocab.json``, ``unit_vectors.safetensors`` (every unit's
encoder vector, computed once), ``model.safetensors`` (weights), ``bigram_lm.*`` (the decoder's
language prior, :mod:`invemb.inversion.lm`), ``sentence_memory.*`` (the training sentences' vectors and
units, :mod:`invemb.inversion.memory`), ``length_prior.*`` (the words a target's sentence has,
:mod:`invemb.inversion.length`), checkpoints, metrics, plots.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import unicodedata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from invemb.encoder import Encoder, has_content
from invemb.inversion.decode import (Action, BoundTargets, CountingEncoder, DecodeConfig, Hypothesis, InversionResult,
                                     Proposal, beam_decode_many, check_target)
from invemb.inversion.bag import UnitBag
from invemb.inversion.length import LengthPrior
from invemb.inversion.lm import BigramLM
from invemb.inversion.memory import SentenceMemory
from invemb.inversion.placer import Placer, PlacerConfig
from invemb.inversion.selector import MemoryInput, Selector, SelectorConfig
from invemb.inversion.summary import BufferSummary, summarise
from invemb.text.vocab import Vocab


class ControllerModel(nn.Module):
    """The trainable parts: one Selector and one Placer over the encoder's dim."""

    def __init__(self, dim: int, selector: SelectorConfig, placer: PlacerConfig, chunk: int = 3):
        super().__init__()
        self.dim, self.chunk = dim, chunk
        self.selector = Selector(dim, selector)
        self.placer = Placer(dim, placer)


def fold_case(text: str) -> str:
    """Case and accents aside ("Café" -> "cafe"): the forms an uncased, accent-stripping backbone
    (MiniLM's) cannot tell apart. Only units whose vectors are equal are merged."""
    folded = text.casefold()
    if folded.isascii():
        return folded
    return "".join(c for c in unicodedata.normalize("NFKD", folded) if not unicodedata.combining(c))


def stand_ins(unit_vectors: torch.Tensor, units: Sequence[str], counts: Sequence[int], atol: float = 1e-5) -> torch.Tensor:
    """(N,) for each unit, the unit it is offered as: itself, or the most frequent unit that differs
    from it in case or accents only and has the same vector (within float noise: ``atol``). An uncased backbone
    gives "Arc" and "arc" one vector, so the decoder cannot tell them apart: offering both wasted a
    candidate slot, and which one a near-tie put first changed with the shape of the search (a
    sentence alone or in a lockstep batch)."""
    groups: dict[str, list[int]] = {}
    for u, text in enumerate(units):
        groups.setdefault(fold_case(text), []).append(u)
    vectors = unit_vectors.float().numpy()
    stand_in = np.arange(len(units))
    for members in groups.values():
        if len(members) < 2:
            continue
        members = np.array(sorted(members, key=lambda u: (-counts[u], u)))  # the most frequent form leads
        group = vectors[members]  # (k, D)
        same = np.abs(group[:, None] - group[None]).max(-1) <= atol  # (k, k), true on the diagonal
        stand_in[members] = members[same.argmax(1)]  # the first member in frequency order it equals
    return torch.from_numpy(stand_in)


class ModelPolicy:
    """Selector -> unit index -> Placer, batched over the live hypotheses of one beam step."""

    def __init__(self, model: ControllerModel, unit_vectors: torch.Tensor, index, frequent: list[int] | None = None,
                 prune_placer: bool = True, stand_in: torch.Tensor | None = None,
                 memory: Callable[[], SentenceMemory] | None = None, bag: Callable[[], UnitBag] | None = None):
        """``memory``: gives the sentence memory (asked for only when ``--decode memory_weight`` is on or
        the Selector reads one); ``bag``: gives the bag of units (asked for only when ``--decode bag_weight``
        is on)."""
        self.model, self.unit_vectors, self.index = model.eval(), unit_vectors, index
        self.memory, self.bag = memory, bag
        self.pairs = None  # a PairNeighbours when the vectors inverted are a pair-bound view's (Controller sets it)
        self._read_cache: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}  # target -> its memory (ids, votes)
        self.prune_placer = prune_placer  # skip Placer pairs that cannot yield a kept action (same proposals kept)
        self.stand_in = stand_in  # (N,) see stand_ins; None: every unit offered as itself
        # Function words sit far from any sentence vector, so the index rarely returns them; the
        # most frequent units are offered to every hypothesis and the cosine re-scoring decides.
        frequent = list(frequent or [])
        if stand_in is not None:  # a twin's stand-in in its place, each unit once
            frequent = list(dict.fromkeys(int(stand_in[u]) for u in frequent))
        self.frequent = torch.tensor(frequent, dtype=torch.long)  # (F,) most frequent first

    def summary(self, targets: torch.Tensor, hyps: Sequence[Hypothesis]) -> BufferSummary:
        """What the Selector and Placer read of each hypothesis: targets (H, D), buffers, text vectors."""
        text = torch.stack([x.vector if x.vector is not None else torch.zeros(targets.shape[1]) for x in hyps])  # (H, D)
        return summarise(targets, [x.units for x in hyps], text, self.unit_vectors, self.model.chunk)

    def memory_votes(self, targets: torch.Tensor, cfg: DecodeConfig) -> torch.Tensor | None:
        """(H, N) each hypothesis's memory vote per unit (None when the memory is off): computed once per
        distinct target, so a hypothesis gets the same votes alone and in a lockstep batch."""
        if not cfg.memory_weight or self.memory is None:
            return None
        distinct, row = torch.unique(targets, dim=0, return_inverse=True)
        return self.memory().votes(distinct, cfg.memory_k, cfg.memory_temperature, remap=self.stand_in)[row]

    def bag_votes(self, targets: torch.Tensor, hyps: Sequence[Hypothesis], cfg: DecodeConfig) -> torch.Tensor | None:
        """(H, N) each hypothesis's bag-of-units vote per unit (None when the bag is off), 0 for the units its
        buffer holds: computed once per distinct target, so a hypothesis gets the same alone and in a batch."""
        if not cfg.bag_weight:
            return None
        if self.bag is None:
            raise ValueError(f"bag_weight={cfg.bag_weight} needs a bag of units: give the policy bag=, or decode with bag_weight=0")
        distinct, row = torch.unique(targets, dim=0, return_inverse=True)
        votes = self.bag().votes(distinct, cfg.bag_floor)[row]  # (H, N)
        for i, x in enumerate(hyps):  # the bag does not know what a buffer holds: a placed unit gets no more
            if x.units:
                votes[i, torch.tensor(x.units, dtype=torch.long)] = 0.0
        return votes

    def selector_memory(self, targets: torch.Tensor, hyps: Sequence[Hypothesis]) -> MemoryInput | None:
        """What a Selector trained with a memory (``selector.memory``) reads of it per hypothesis, its votes
        computed once per distinct target as ``memory_votes``; None for a Selector without one."""
        cfg = self.model.selector.cfg
        if not cfg.memory:
            return None
        from_bag = cfg.memory_source == "bag"
        source, what = ("bag", "bag of units") if from_bag else ("memory", "sentence memory")
        if getattr(self, source) is None:
            raise ValueError(f"this controller's Selector reads a {what}: give the policy {source}=")
        # A target's votes are the same at every step of its search: computed once, kept for the next steps.
        keys = [t.numpy().tobytes() for t in targets.float()]
        todo = list(dict.fromkeys(k for k in keys if k not in self._read_cache))
        if todo:
            if len(self._read_cache) + len(todo) > 4096:  # bounded: a long stream of vectors never fills memory
                self._read_cache.clear()
            rows = torch.tensor([keys.index(k) for k in todo])
            if from_bag:
                ids, votes = self.bag().top_votes(targets[rows], cfg.memory)
            else:
                ids, votes = self.memory().top_votes(targets[rows], cfg.memory, cfg.memory_k, cfg.memory_temperature,
                                                     remap=self.stand_in)
            self._read_cache.update(zip(todo, zip(ids, votes)))
        ids, votes = (torch.stack(x) for x in zip(*(self._read_cache[k] for k in keys)))
        return MemoryInput.of(ids, votes, [x.units for x in hyps], self.unit_vectors)

    def best_slots(self, s: BufferSummary, rows: list[int], units: list[int], buffer_lens: list[int], k: int):
        """The Placer on (summary row, unit) pairs: its output and, per pair, the log-probabilities and
        slots of its ``k`` best slots (fewer where the buffer has fewer: u units have u + 1 slots)."""
        out = self.model.placer(s.select(torch.tensor(rows, dtype=torch.long)), self.unit_vectors[torch.tensor(units, dtype=torch.long)])
        slot_logp = torch.log_softmax(out.slot_logits, dim=-1)  # (P, L + 1), -inf beyond each buffer's slots
        top = torch.topk(slot_logp, min(k, slot_logp.shape[1]), dim=-1)  # (P, k), finite ones first
        values, slots = top.values.tolist(), top.indices.tolist()
        best = [(v[:min(k, n + 1)], sl[:min(k, n + 1)]) for v, sl, n in zip(values, slots, buffer_lens)]
        return out, best

    def propose(self, targets: torch.Tensor, hyps: Sequence[Hypothesis], cfg: DecodeConfig,
                bound: torch.Tensor | None = None) -> list[Proposal]:
        """``bound`` (H, W): each hypothesis's target's bound part when an order-bound view's vectors are
        inverted; with a pair-bound view (``pairs``) and ``cfg.view_neighbours``, the words it says follow or
        precede the placed ones are proposed too."""
        proposals = self._propose(targets, hyps, cfg)
        if bound is not None and self.pairs is not None and cfg.view_neighbours:
            self.pairs.actions(hyps, bound, proposals, cfg.view_neighbours)
        return proposals

    def _propose(self, targets: torch.Tensor, hyps: Sequence[Hypothesis], cfg: DecodeConfig) -> list[Proposal]:
        s = self.summary(targets, hyps)
        read = self.selector_memory(targets, hyps)  # (H, M) the Selector's own memory input, or None
        sel = self.model.selector(s, read)
        stop = torch.sigmoid(sel.stop_logit).tolist()
        temp = self.model.selector.cfg.temperature
        # How many units each hypothesis fetches depends on the settings alone, never on the other
        # hypotheses of the batch, so a sentence decodes the same alone and in a lockstep batch. A
        # hypothesis considers its first units_k + len(buffer) distinct units (placed ones are
        # penalised, not dropped; a reranker's whole pool); twice the most is fetched, as case twins
        # merge into one.
        rerank = self.model.selector.cfg.rerank
        longest = min(cfg.max_words, cfg.max_steps, self.model.placer.cfg.max_len)
        _, ids = self.index.search(sel.intention, 2 * max(cfg.units_k + longest, rerank))
        ids = torch.as_tensor(ids, dtype=torch.long)  # (H, P)
        if self.stand_in is not None:  # same vector, same logit: a unit's stand-in in its place (repeats dropped below)
            ids = torch.where(ids >= 0, self.stand_in[ids.clamp_min(0)], ids)
        n_found, frequent_ids = ids.shape[1], self.frequent[: cfg.frequent_units]
        frequent = frequent_ids.tolist()
        votes = self.memory_votes(targets, cfg)  # (H, N) or None
        n_memory = 0  # candidates after the index's: the memory's, the bag's and those the Selector reads
        if votes is not None and cfg.memory_units:  # the memory's best-voted units join the retrieved ones
            voted = votes.topk(cfg.memory_units, dim=1)
            ids = torch.cat([ids, voted.indices.masked_fill(voted.values <= 0, -1)], dim=1)  # (H, P + Mu)
            n_memory = cfg.memory_units
        bag = self.bag_votes(targets, hyps, cfg)  # (H, N) or None
        if bag is not None and cfg.bag_units:  # the bag's likeliest units the buffer lacks join them too
            liked = bag.topk(cfg.bag_units, dim=1)
            ids = torch.cat([ids, liked.indices.masked_fill(liked.values <= 0, -1)], dim=1)  # (H, P + Mu + Bu)
            n_memory += cfg.bag_units
        if read is not None:  # the memory units a memory-trained Selector reads are its candidates too
            ids = torch.cat([ids, read.ids], dim=1)  # (H, P + Mu + Bu + M)
            n_memory += read.ids.shape[1]
        # Logits (cosine / temperature, or the reranker's) of each hypothesis's retrieved and frequent units.
        pool = torch.cat([ids.clamp_min(0), frequent_ids.expand(len(hyps), -1)], dim=1)  # (H, P + Mu + Bu + M + F)
        logits = self.model.selector.candidate_logits(s, sel, self.unit_vectors[pool])  # (H, P + Mu + Bu + M + F)
        logits = logits + self.model.selector.memory_logits(sel, read, pool)  # gate * vote: 0 without a memory
        n_ranked = n_found + n_memory
        logits[:, :n_ranked].masked_fill_(ids < 0, float("-inf"))  # slots the index, the memory or the bag left empty
        if votes is not None:  # retrieved and memory units get the vote; frequent ones are offered as they are
            logits[:, :n_ranked] += cfg.memory_weight * votes.gather(1, pool[:, :n_ranked])
        if bag is not None:
            logits[:, :n_ranked] += cfg.bag_weight * bag.gather(1, pool[:, :n_ranked])
        pair_hyp, pair_unit, pair_logp = [], [], []
        for i, x in enumerate(hyps):
            placed = set(x.units)
            row, units = logits[i].tolist(), pool[i].tolist()
            found, offered = [], set()
            for c in range(n_ranked):
                if c < n_found and len(found) == max(cfg.units_k + len(x.units), rerank):
                    continue  # the index's first units only; the memory's are all considered
                if row[c] > float("-inf") and units[c] not in offered:  # a stand-in found twice is offered once
                    offered.add(units[c])
                    found.append((row[c] - (cfg.repeat_penalty / temp if units[c] in placed else 0.0), units[c]))
            ranked = sorted(found, key=lambda p: (-p[0], p[1]))[: cfg.units_k]  # exact ties: by unit id
            seen = {u for _, u in ranked}
            ranked += [(row[n_ranked + c] - (cfg.repeat_penalty / temp if u in placed else 0.0), u)
                       for c, u in enumerate(frequent) if u not in seen]  # penalised like the retrieved units
            logp = torch.log_softmax(torch.tensor([p[0] for p in ranked]), 0).tolist()
            for (_, u), lp in zip(ranked, logp):
                pair_hyp.append(i)
                pair_unit.append(u)
                pair_logp.append(lp)
        slot_top: dict[int, tuple[list[float], list[int]]] = {}  # pair -> its best slots' (log-probs, slots)

        def place(pairs: list[int]):
            """The Placer over ``pairs`` (indices into pair_*), filling slot_top."""
            out, best = self.best_slots(s, [pair_hyp[p] for p in pairs], [pair_unit[p] for p in pairs],
                                        [len(hyps[pair_hyp[p]].units) for p in pairs], cfg.slots)
            slot_top.update(zip(pairs, best))
            return out

        by_hyp: dict[int, list[int]] = {}
        for p, i in enumerate(pair_hyp):
            by_hyp.setdefault(i, []).append(p)
        if self.prune_placer:
            # An action's log-probability is its unit's plus a slot's (<= 0), so a unit whose own is below a
            # hypothesis's pool-th best action (cfg.pool: the actions the decoder reads) or below its best minus
            # expand_gap cannot be among them: the Placer runs first on each hypothesis's first pair (the
            # move head reads it) and its `pool` likeliest units, then only on the other units above that bound.
            chosen = set()
            for ps in by_hyp.values():
                chosen.add(ps[0])
                chosen.update(sorted(ps, key=lambda q: -pair_logp[q])[: cfg.pool])
            first = sorted(chosen)
        else:
            first = list(range(len(pair_hyp)))
        out = place(first)
        rest = []
        for ps in by_hyp.values():
            best = sorted((pair_logp[p] + v for p in ps if p in slot_top for v in slot_top[p][0]), reverse=True)
            bound = best[cfg.pool - 1] if len(best) >= cfg.pool else float("-inf")
            if cfg.expand_gap > 0 and best:
                bound = max(bound, best[0] - cfg.expand_gap)
            rest += [p for p in ps if p not in slot_top and pair_logp[p] >= bound]
        if rest:
            place(sorted(rest))
        proposals = [Proposal([], stop_prob=p) for p in stop]
        for p in sorted(slot_top):  # pair order, so ties break as they always have
            for v, slot in zip(*slot_top[p]):
                proposals[pair_hyp[p]].actions.append(Action(pair_unit[p], slot, pair_logp[p] + v))
        pair_hyp = [pair_hyp[p] for p in first]  # the move logits' rows
        self._moves(s, hyps, out.move_logits, pair_hyp, cfg, proposals)
        return proposals

    def _moves(self, s: BufferSummary, hyps, move_logits, pair_hyp, cfg: DecodeConfig, proposals) -> None:
        """Where the move head (read on each hypothesis's first pair) is confident that a placed unit
        is misplaced, propose taking it out and re-inserting it at the Placer's best other slot."""
        first = {}
        for p, i in enumerate(pair_hyp):
            first.setdefault(i, p)
        probs = torch.softmax(move_logits, dim=-1)
        for i, p in first.items():
            units = hyps[i].units
            j = int(probs[p].argmax())
            if j == 0 or float(probs[p, j]) < cfg.move_threshold or len(units) < 2:
                continue
            rest = units[: j - 1] + units[j:]
            text = s.text[i: i + 1]
            s1 = summarise(s.target[i: i + 1], [rest], text, self.unit_vectors, self.model.chunk)
            slot_logp = torch.log_softmax(self.model.placer(s1, self.unit_vectors[units[j - 1]][None]).slot_logits[0], -1)
            slot_logp[j - 1] = float("-inf")  # the place it came from
            slot = int(slot_logp.argmax())
            if torch.isfinite(slot_logp[slot]):
                proposals[i].actions.append(Action(units[j - 1], slot, float(torch.log(probs[p, j]) + slot_logp[slot]), remove=j - 1))


def controller_info(run: str | Path) -> dict:
    """A controller run's config.json, refused in one line when the folder is not a controller run."""
    config = Path(run) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{run}: not a controller run folder (no config.json)")
    info = json.loads(config.read_text())
    if info.get("kind") != "controller":
        raise ValueError(f"{run}: not a controller run (config.json kind is {info.get('kind')!r}, not 'controller')")
    return info


def load_model(run: Path) -> tuple[ControllerModel, dict]:
    from safetensors.torch import load_file

    from invemb.inversion.train import ControllerTrainConfig

    info = controller_info(run)
    cfg = ControllerTrainConfig.from_dict(info["config"])
    model = ControllerModel(info["dim"], cfg.selector, cfg.placer, cfg.chunk)
    weights = run / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(f"{run}: no model.safetensors (training did not finish; `--resume` it)")
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), info


def pinned_settings(stored: DecodeConfig, overridden: set[str], preset: str | None = None) -> dict[str, tuple[Any, Any]]:
    """The decoding settings a run keeps (``stored``: those it was trained with) that differ from today's
    defaults and were not overridden: {name: (the run's value, the default)}. A run decodes with its own
    settings, so a default improved since it was trained does not reach it unless asked for. Today's defaults
    are those of ``preset`` (the one the run records), else of the preset the run's settings match best (runs
    trained before presets were recorded)."""
    def differences(default: DecodeConfig) -> dict[str, tuple[Any, Any]]:
        return {f.name: (getattr(stored, f.name), getattr(default, f.name)) for f in dataclasses.fields(DecodeConfig)
                if f.name not in overridden and getattr(stored, f.name) != getattr(default, f.name)}

    names = [preset] if preset in DecodeConfig.presets else list(DecodeConfig.presets)
    return min((differences(DecodeConfig.preset(name)) for name in names), key=len)


def pinned_note(run, pinned: dict[str, tuple[Any, Any]]) -> str:
    """One line naming the run's settings that differ from today's defaults (empty when none)."""
    if not pinned:
        return ""
    listed = ", ".join(f"{k}={v!r} (default {d!r})" for k, (v, d) in pinned.items())
    return (f"note: {run} decodes with the settings it was trained with, which differ from today's defaults in "
            f"{listed}; --decode KEY=VALUE changes one")


def say_pinned(run, ctrl: "Controller") -> None:
    """Write :func:`pinned_note` of a loaded controller to stderr, when it has one (invert, eval, serve)."""
    if ctrl.pinned:
        print(pinned_note(run, ctrl.pinned), file=sys.stderr)


class Controller:
    """Inverts sentence vectors of one encoder with a trained controller run; or, given an order-bound view of
    that encoder (:mod:`invemb.em.order_bind`), the view's vectors: the policy reads their EM part and beam
    decoding scores children with their bound part too (``--decode view_weight``)."""

    def __init__(self, encoder: Encoder, vocab: Vocab, unit_vectors: torch.Tensor, model: ControllerModel,
                 decode: DecodeConfig, info: dict | None = None, prior: BigramLM | None = None,
                 run: Path | None = None, memory: SentenceMemory | None = None, length_prior: LengthPrior | None = None,
                 bag: UnitBag | None = None, view=None, extra: tuple[list[str], torch.Tensor, Any] | None = None):
        """``prior``: the language prior of ``decode.lm_weight`` (default: the run's own, loaded or built
        when a decode first needs it); ``memory``: the sentence memory of ``decode.memory_weight`` (default:
        the run's own, loaded when a decode first needs it); ``length_prior``: that of ``decode.length_weight``
        (default: the run's own, loaded or fitted when a decode first needs it); ``bag``: the bag of units of
        ``decode.bag_weight`` (default: the run's own, loaded or trained when a decode first needs it);
        ``run``: the run folder it was loaded from; ``view``: an order-bound view of ``encoder`` whose vectors
        are inverted instead of the encoder's; ``extra``: units added after training (units, their vectors (E, D),
        their :class:`invemb.index.UnitIndex`; :mod:`invemb.inversion.extra`), appended to ``vocab``."""
        from invemb.index import IndexConfig, UnitIndex

        if view is not None and view.em is not encoder:
            raise ValueError("the order-bound view must be a view of the controller's encoder")
        self.encoder, self.view = CountingEncoder(encoder), view
        self.target_encoder = view if view is not None else encoder  # what the vectors inverted come from
        self.dim = self.target_encoder.dim
        self.trained_vocab, self.trained_units = vocab, len(vocab)  # ids past it are extra units (:mod:`invemb.inversion.extra`)
        self.index = UnitIndex.build(unit_vectors, vocab.units, IndexConfig(kind="flat"))
        if extra is not None:
            from invemb.index import JoinedIndex
            from invemb.inversion.extra import extended_vocab

            extra_units, extra_vectors, extra_index = extra
            vocab = extended_vocab(vocab, extra_units)
            unit_vectors = torch.cat([unit_vectors, extra_vectors.to(unit_vectors.dtype)])
            self.index = JoinedIndex(self.index, extra_index)  # the trained units searched exactly, the extra ones by theirs
        self.vocab, self.unit_vectors, self.model, self.decode_cfg = vocab, unit_vectors, model, decode
        self.settings(decode)
        self.pinned: dict[str, tuple[Any, Any]] = {}  # stored settings that differ from the defaults (``load``)
        self.info = info or {}
        self.run, self._language_prior, self._memory, self._length_prior = run, prior, memory, length_prior
        self._bag = bag
        by_count = sorted(range(len(vocab)), key=lambda u: -vocab.counts[u])
        self.policy = ModelPolicy(model, unit_vectors, self.index, by_count[:256],
                                  stand_in=stand_ins(unit_vectors, vocab.units, vocab.counts),
                                  memory=lambda: self.sentence_memory, bag=lambda: self.unit_bag)
        if view is not None:
            view.know(vocab.units, unit_vectors)  # the words of candidate texts: looked up, not encoded
        if view is not None and view.cfg.binding == "pairs":
            from invemb.inversion.view import PairNeighbours

            extra_words = (self.trained_units, extra[2]) if extra is not None else None  # (first extra id, their index)
            self.policy.pairs = PairNeighbours(view, vocab.units, unit_vectors, self.policy.stand_in, extra=extra_words)

    @classmethod
    def load(cls, run: str | Path, em: str | Path | Encoder | None = None, runtime: str = "torch",
             extra_units: bool = True, **decode_overrides) -> "Controller":
        """``em``: the EM run (default: the one it was trained on), or a loaded encoder; either may be an
        order-bound view of the EM (an ``invemb order-bind`` run), whose vectors are then inverted; ``runtime``:
        the backbone runtime of an EM loaded here ("torch", "onnx": onnxruntime on CPU, or "bf16");
        ``extra_units``: take the units ``invemb index words`` added to the run, when it has them."""
        from safetensors.torch import load_file

        import invemb
        from invemb.inversion.units import encoder_fingerprint, trained_on

        run = Path(run)
        model, info = load_model(run)
        from invemb.em.order_bind import OrderBoundEncoder

        encoder = em if em is not None and not isinstance(em, (str, Path)) else invemb.load(str(em or info["em"]), runtime=runtime)
        view = encoder if isinstance(encoder, OrderBoundEncoder) else None
        if view is not None:
            encoder = view.em
            em = view.em_path if isinstance(em, (str, Path)) else em  # the EM run's vocabulary is checked below
        if encoder.dim != info["dim"]:
            raise ValueError(f"encoder has dimension {encoder.dim}, the controller was trained on {info['dim']}")
        vocab = Vocab.load(run / "vocab.json")
        if vocab.fingerprint() != info["vocab_fingerprint"]:
            raise ValueError(f"{run}/vocab.json does not match the vocabulary the controller was trained with")
        if isinstance(em, (str, Path)) and (Path(em) / "vocab.json").exists():
            em_vocab = Vocab.load(Path(em) / "vocab.json")
            if em_vocab.fingerprint() != vocab.fingerprint():
                raise ValueError(f"the EM run {em} has a different vocabulary than controller {run}: refused")
        unit_vectors = load_file(str(run / "unit_vectors.safetensors"))["units"]
        if not trained_on(encoder, run, info, vocab.units, unit_vectors):
            raise ValueError(f"controller {run} was trained on encoder {info['em']} (fingerprint {info['encoder_fingerprint']}), "
                             f"not on this one (fingerprint {encoder_fingerprint(encoder)})")
        extra = None
        if extra_units:
            from invemb.inversion.extra import load_extra_units

            extra = load_extra_units(run, vocab, info["encoder_fingerprint"])
        stored = DecodeConfig.from_dict(info["config"]["decode"])
        ctrl = cls(encoder, vocab, unit_vectors, model, stored.replace(**decode_overrides), info, run=run, view=view,
                   extra=extra)
        ctrl.pinned = pinned_settings(stored, set(decode_overrides), info.get("preset"))
        return ctrl

    @property
    def language_prior(self) -> BigramLM:
        """The bigram prior of ``--decode lm_weight``: the one given, else the run's own, else built now
        from the text the controller was trained on (:func:`invemb.inversion.train.language_prior`)."""
        if self._language_prior is None:
            from invemb.inversion.train import ControllerTrainConfig, language_prior

            trained = self.info.get("config")
            self._language_prior = language_prior(self.run, ControllerTrainConfig.from_dict(trained) if trained else None)
        return self._language_prior

    @property
    def sentence_memory(self) -> SentenceMemory:
        """The sentence memory of ``--decode memory_weight`` and of a Selector trained to read one: the one
        given, else the run's own, else built now from the controller's training states (their vectors
        are saved; nothing is encoded)."""
        if self._memory is None:
            from invemb.inversion.train import ControllerTrainConfig, sentence_memory

            trained = self.info.get("config")
            self._memory = sentence_memory(self.run, ControllerTrainConfig.from_dict(trained) if trained else None,
                                           self.trained_vocab)
        if self._memory.n_units < len(self.vocab):  # extra units: in no memory sentence, so no votes
            self._memory = self._memory.widened(len(self.vocab))
        return self._memory

    @property
    def length_prior(self) -> LengthPrior:
        """The length prior of ``--decode length_weight``: the one given, else the run's own, else fitted now
        to the controller's saved training states (:func:`invemb.inversion.train.length_prior`)."""
        if self._length_prior is None:
            from invemb.inversion.train import length_prior

            self._length_prior = length_prior(self.run, self.trained_vocab)
        return self._length_prior

    @property
    def unit_bag(self) -> UnitBag:
        """The bag of units of ``--decode bag_weight``: the one given, else the run's own, else trained now on
        the run's sentence memory (:func:`invemb.inversion.train.unit_bag`; minutes)."""
        if self._bag is None:
            from invemb.inversion.train import ControllerTrainConfig, unit_bag

            trained = self.info.get("config")
            n = self.trained_units
            self._bag = unit_bag(self.run, ControllerTrainConfig.from_dict(trained) if trained else None, self.trained_vocab,
                                 self.unit_vectors[:n], stand_in=self.policy.stand_in[:n])
        if self._bag.n_units < len(self.vocab):  # extra units: no output, so no votes
            self._bag = self._bag.widened(len(self.vocab))
        return self._bag

    def lengths(self, decode: DecodeConfig):
        """The predicted words beam decoding's length bonus stops at for ``decode`` ((N, D) targets -> (N,),
        :meth:`LengthPrior.predict`): None when length_weight is 0."""
        return self.length_prior.predict if decode.length_weight else None

    def prior(self, decode: DecodeConfig):
        """The prior beam decoding adds to its scores for ``decode`` (text -> mean association of its
        adjacent words, :meth:`BigramLM.mean_association`): None when lm_weight is 0."""
        return self.language_prior.mean_association if decode.lm_weight else None

    @functools.cached_property
    def identity(self) -> dict:
        """What resumable outputs are keyed by: the run's config and a digest of the weights (two runs
        trained with one config differ only there)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
        extra = {"extra_units": self.vocab.fingerprint()} if len(self.vocab) > self.trained_units else {}
        return {"info": self.info, "weights": digest.hexdigest()[:16], **extra}

    def settings(self, decode: DecodeConfig | None = None) -> DecodeConfig:
        """``decode`` (default: the run's), refused before any decoding when it lets a buffer grow past
        what the Placer reads (it would fail mid-search)."""
        decode = decode or self.decode_cfg
        longest, limit = min(decode.max_words, decode.max_steps), self.model.placer.cfg.max_len
        if longest > limit:
            raise ValueError(f"max_words={decode.max_words} and max_steps={decode.max_steps} let a buffer reach "
                             f"{longest} units; this controller's Placer reads at most {limit}")
        return decode

    def invert_vector(self, vector, decode: DecodeConfig | None = None) -> InversionResult:
        """Invert one vector (D,) of the encoder, or of the view when there is one."""
        return self.invert_vectors(check_target(vector, self.dim)[None], decode, batch=1)[0]

    def split(self, vectors: torch.Tensor) -> tuple[torch.Tensor, BoundTargets | None]:
        """Checked vectors (N, self.dim) -> what the policy reads (N, encoder dim) and, for a view's vectors,
        their bound parts."""
        if self.view is None:
            return vectors, None
        main, bound = self.view.split(vectors)
        pairs = self.policy.pairs
        if pairs is None:
            return main, BoundTargets(bound, self.view.bound_texts, self.view.cfg.share)
        from functools import partial

        from invemb.inversion.view import best_moves, order_cosines

        return main, BoundTargets(bound, self.view.bound_texts, self.view.cfg.share, between=pairs.between,
                                  moves=partial(best_moves, self.view), order_cosines=partial(order_cosines, self.view),
                                  encode_edits=self.view.bound_edits)

    def invert_vectors(self, vectors, decode: DecodeConfig | None = None, progress: bool = False,
                       batch: int = 16, on_done=None) -> list[InversionResult]:
        """Invert an (N, D) matrix, ``batch`` vectors decoded in lockstep at a time (the same searches as
        one by one, in fewer and bigger index, Placer and encoder calls; 1: one by one). ``on_done(k)``
        is called as k more are finished (a progress bar of the caller's)."""
        vectors, decode = self.check_vectors(vectors), self.settings(decode)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(vectors), desc="invert", unit="vec", dynamic_ncols=True)
            on_done = bar.update
        out: list[InversionResult] = []
        step = max(1, batch)
        for start in range(0, len(vectors), step):
            targets, bound = self.split(vectors[start: start + step])
            out += beam_decode_many(targets, self.policy, self.encoder, self.vocab.units, decode, on_done=on_done,
                                    prior=self.prior(decode), length=self.lengths(decode), bound=bound)
        if bar is not None:
            bar.close()
        return out

    def check_vectors(self, vectors) -> torch.Tensor:
        """(N, D) float vectors, each finite, non-zero and of the encoder's width: checked all before any
        time is spent; the error names the first bad row."""
        vectors = torch.as_tensor(vectors)
        if vectors.is_complex() or not (vectors.is_floating_point() or vectors.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"expected real-valued vectors, got {vectors.dtype}")
        vectors = vectors.float()
        if vectors.ndim != 2:
            raise ValueError(f"expected an (N, {self.dim}) matrix of vectors, got shape {tuple(vectors.shape)}")
        for i, v in enumerate(vectors):
            try:
                check_target(v, self.dim)
            except ValueError as err:
                raise ValueError(f"vector {i}: {err}") from None
        return vectors

    def invert_texts(self, texts: Sequence[str], decode: DecodeConfig | None = None, progress: bool = False,
                     batch: int = 16, on_done=None) -> list[dict]:
        """Encode each text and invert it: rows with text, reconstruction, cosine, steps, encoder_calls,
        seconds. An empty text (or one of only whitespace / control characters) gives an empty
        reconstruction with cosine None (undefined)."""
        self.settings(decode)  # before the encoding, not after
        nonempty = [i for i, t in enumerate(texts) if isinstance(t, str) and has_content(t)]
        results = {}
        if on_done is not None and len(nonempty) < len(texts):
            on_done(len(texts) - len(nonempty))
        if nonempty:
            vecs = self.target_encoder.encode([texts[i] for i in nonempty])
            results = dict(zip(nonempty, self.invert_vectors(vecs, decode, progress, batch, on_done)))
        return [{"text": t, **results[i].to_dict()} if i in results else
                {"text": t, "reconstruction": "", "cosine": None, "steps": [], "encoder_calls": 0, "seconds": 0.0}
                for i, t in enumerate(texts)]


def invert_to_jsonl(ctrl: Controller, output: str | Path, texts: Sequence[str] | None = None, vectors=None,
                    settings: dict | None = None, progress: bool = False, chunk: int = 64, workers: int = 1,
                    loader: Callable[[], Controller] | None = None) -> list[dict]:
    """Invert ``texts`` (rows as :meth:`Controller.invert_texts`) or ``vectors`` (rows as
    :meth:`InversionResult.to_dict`) into the JSONL file ``output``; returns the rows.

    Finished chunks of rows (a multiple of the lockstep batch, so the searches are the ones one call
    would run) wait in ``output.partial/``, a :class:`invemb.io.PartialFolder` keyed by the inputs, the
    controller, its decoding settings and ``settings`` (what else the caller chose: the EM, the runtime):
    called again after a kill, it keeps them and inverts the rest.

    ``workers`` > 1: chunks are inverted by that many processes, each with its own controller from
    ``loader`` (a picklable callable, e.g. ``functools.partial(load_run, RUN, em=EM)``) and its share of
    torch's threads. Decoding is mostly single-threaded Python beside the encoder, so on 2 cores two
    one-thread workers invert more sentences a second than one two-thread process (docs/inversion.md "Speed")."""
    from invemb.io import PartialFolder, check_output_file, content_key, read_jsonl, write_jsonl

    if (texts is None) == (vectors is None):
        raise ValueError("give exactly one of texts or vectors")
    check_workers(workers, loader)
    output = check_output_file(output, ".jsonl file")
    items = list(texts) if texts is not None else ctrl.check_vectors(vectors)
    inputs = items if texts is not None else hashlib.sha256(items.numpy().tobytes()).hexdigest()
    partial = PartialFolder(output.with_name(output.name + ".partial"),
                            content_key(inputs, ctrl.identity, ctrl.decode_cfg.to_dict(), settings or {}, chunk))
    starts = range(0, len(items), chunk)
    names = [f"chunk_{k:06d}.jsonl" for k in range(len(starts))]
    kept = sum(min(chunk, len(items) - start) for start, name in zip(starts, names) if partial.has(name))
    if kept:
        print(f"{output}: continuing an interrupted run, {kept} of {len(items)} rows kept", file=sys.stderr)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=kept, desc="invert", unit="text" if texts is not None else "vec",
                   dynamic_ncols=True)
    on_done = bar.update if bar is not None else None
    todo = [(name, items[start: start + chunk]) for start, name in zip(starts, names) if not partial.has(name)]
    if workers == 1 or len(todo) < 2:
        for name, part in todo:
            write_jsonl(partial.slot(name), _invert_part(ctrl, part, texts is not None, on_done))
    else:
        from concurrent.futures import as_completed

        with worker_pool(loader, min(workers, len(todo))) as pool:
            # the folder is claimed here, once, not by racing workers
            jobs = [pool.submit(_worker_part, str(partial.slot(name)), part.numpy() if texts is None else part,
                                texts is not None) for name, part in todo]
            for job in as_completed(jobs):
                done = job.result()  # a worker's error is raised here
                if on_done is not None:
                    on_done(done)
    if bar is not None:
        bar.close()
    rows = [row for name in names for row in read_jsonl(partial.path(name))]
    write_jsonl(output, rows)
    partial.discard()
    return rows


def invert_vectors_in_workers(vectors, pool, decode: DecodeConfig | None = None, progress: bool = False,
                              chunk: int = 16) -> list[InversionResult]:
    """:meth:`Controller.invert_vectors` of ``vectors`` (N, D) by the processes of ``pool`` (:func:`worker_pool`:
    each holds its own controller), ``chunk`` vectors (a multiple of the lockstep batch: the searches one call would
    run) at a time; results in input order.

    Each result's ``seconds`` is rescaled so that they sum to the wall time of the whole call: per sentence they
    then read as the time the caller waited, as one process's do, not as the time each worker spent."""
    import time
    from concurrent.futures import as_completed

    vectors = torch.as_tensor(vectors).float()
    starts = list(range(0, len(vectors), chunk))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(vectors), desc="invert", unit="vec", dynamic_ncols=True)
    t0 = time.perf_counter()
    parts: dict[int, list[dict]] = {}
    jobs = {pool.submit(_worker_vectors, vectors[a: a + chunk].numpy(), decode.to_dict() if decode else None): a
            for a in starts}
    for job in as_completed(jobs):
        parts[jobs[job]] = job.result()  # a worker's error is raised here
        if bar is not None:
            bar.update(len(parts[jobs[job]]))
    if bar is not None:
        bar.close()
    rows = [row for a in starts for row in parts[a]]
    scale = (time.perf_counter() - t0) / max(1e-9, sum(r["seconds"] for r in rows))
    return [InversionResult(r["reconstruction"], r["cosine"], r["steps"], r["encoder_calls"], r["seconds"] * scale)
            for r in rows]


def worker_pool(loader: Callable[[], Controller], workers: int):
    """A pool of ``workers`` spawned processes (a context manager), each holding a controller from ``loader`` (a
    picklable callable, e.g. ``functools.partial(load_run, RUN, em=EM)``) and 1/workers of torch's threads:
    decoding is mostly single-threaded Python beside the encoder."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    check_workers(workers, loader)
    threads = max(1, torch.get_num_threads() // workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(loader, threads))


def check_workers(workers: int, loader: Callable[[], Controller] | None) -> None:
    """Refuse, before any work, a worker count below 1, or workers with no loader to build their controllers."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers > 1 and loader is None:
        raise ValueError("workers > 1 needs a loader that rebuilds the controller in each worker")


def _worker_vectors(part, decode: dict | None) -> list[dict]:
    """Invert one chunk of vectors (numpy) in a worker: the rows of :meth:`InversionResult.to_dict`."""
    cfg = DecodeConfig.from_dict(decode) if decode is not None else None
    return [r.to_dict() for r in _WORKER["ctrl"].invert_vectors(torch.from_numpy(part), cfg)]


def _invert_part(ctrl: Controller, part, is_texts: bool, on_done=None) -> list[dict]:
    return ctrl.invert_texts(part, on_done=on_done) if is_texts else [r.to_dict() for r in ctrl.invert_vectors(part, on_done=on_done)]


_WORKER: dict[str, Controller] = {}  # the controller of a worker_pool process


def _start_worker(loader: Callable[[], Controller], threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["ctrl"] = loader()


def _worker_part(path: str, part, is_texts: bool) -> int:
    """Invert one chunk in a worker and write its rows (atomically) where the main process said."""
    from invemb.io import write_jsonl

    write_jsonl(Path(path), _invert_part(_WORKER["ctrl"], part if is_texts else torch.from_numpy(part), is_texts))
    return len(part)
