"""A sentence memory for selection: the units of the training sentences nearest to a target.

The Selector maps a target vector to one intention vector and retrieves the units nearest to it,
so it finds the few units a sentence vector plainly holds and then guesses. Sentences near the
target in the encoder's space (other sentences of the same topic) hold many of the units it
misses: names, topic words, their phrases. The memory keeps training sentences as (encoder
vector, distinct unit ids); for a target it takes the ``k`` nearest sentences, weights them by
``softmax(cos / temperature)`` and gives each unit the summed weight of the sentences holding it
(a vote in [0, 1]). Decoding (``--decode memory_weight=W``) adds ``W * vote`` to the Selector's
logit of every retrieved unit and offers the memory's best-voted units as extra candidates.

Stored as ``sentence_memory.json`` (settings) and ``sentence_memory.safetensors`` (vectors in
fp16, a CSR table of unit ids): no pickle. The controller's own training states give one for free
(their targets are encoded anyway); ``invemb index memory`` adds more sentences of the training text.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from invemb.io import atomic_save_file, atomic_write_json

MEMORY_FILES = ("sentence_memory.json", "sentence_memory.safetensors")


class SentenceMemory:
    def __init__(self, vectors: torch.Tensor, offsets: torch.Tensor, units: torch.Tensor, n_units: int,
                 texts_hash: Sequence[str] = ()):
        """``vectors`` (M, D) encoder vectors; sentence i holds the distinct unit ids
        ``units[offsets[i]:offsets[i + 1]]``; ``n_units``: the vocabulary's size."""
        if vectors.ndim != 2 or offsets.shape != (vectors.shape[0] + 1,):
            raise ValueError(f"bad sentence memory: vectors {tuple(vectors.shape)}, offsets {tuple(offsets.shape)}")
        self.vectors = F.normalize(vectors.float(), dim=1)  # (M, D) fp32: CPU matmuls in fp16 are slow
        self.offsets, self.units = offsets.long(), units.long()  # (M + 1,), (T,)
        self.n_units = int(n_units)
        self.texts_hash = list(texts_hash)  # per sentence, a short hash of its text: extend() skips known ones
        # (n_units,) share of all sentences holding each unit: what any k sentences would vote for it
        self.base_rate = torch.bincount(self.units, minlength=self.n_units).float() / max(1, len(self))

    @classmethod
    def from_lists(cls, vectors: torch.Tensor, unit_lists: Sequence[Sequence[int]], n_units: int,
                   texts_hash: Sequence[str] = ()) -> "SentenceMemory":
        distinct = [sorted(set(int(u) for u in ids)) for ids in unit_lists]
        lengths = torch.tensor([len(d) for d in distinct], dtype=torch.long)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        units = torch.tensor([u for d in distinct for u in d], dtype=torch.long)
        return cls(vectors, offsets, units, n_units, texts_hash)

    def __len__(self) -> int:
        return self.vectors.shape[0]

    def widened(self, n_units: int) -> "SentenceMemory":
        """The same memory over a vocabulary grown to ``n_units`` (units added past the old ones, in no sentence:
        their votes are 0)."""
        if n_units < self.n_units:
            raise ValueError(f"a memory of {self.n_units} units cannot narrow to {n_units}")
        return SentenceMemory(self.vectors, self.offsets, self.units, n_units, self.texts_hash)

    def extend(self, other: "SentenceMemory") -> "SentenceMemory":
        """This memory with ``other``'s sentences after its own (sentences whose text hash it holds skipped)."""
        if other.n_units != self.n_units or other.vectors.shape[1] != self.vectors.shape[1]:
            raise ValueError("sentence memories of different vocabularies or encoders cannot be merged")
        known = set(self.texts_hash)
        keep = (torch.tensor([h not in known for h in other.texts_hash], dtype=torch.bool) if other.texts_hash
                else torch.ones(len(other), dtype=torch.bool))  # (M_other,)
        lengths = other.offsets.diff()  # (M_other,) units per sentence
        entry_kept = keep.repeat_interleave(lengths)  # (T_other,) each unit entry: is its sentence kept
        offsets = torch.cat([self.offsets, self.offsets[-1] + lengths[keep].cumsum(0)])
        hashes = self.texts_hash + [h for h, k in zip(other.texts_hash, keep.tolist()) if k] \
            if self.texts_hash and other.texts_hash else []
        return SentenceMemory(torch.cat([self.vectors, other.vectors[keep]]), offsets,
                              torch.cat([self.units, other.units[entry_kept]]), self.n_units, hashes)

    def subset(self, rows: torch.Tensor) -> "SentenceMemory":
        """The memory of sentences ``rows`` (R,) only, in that order."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        entries, lengths = self._entries(rows)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        hashes = [self.texts_hash[i] for i in rows.tolist()] if self.texts_hash else []
        return SentenceMemory(self.vectors[rows], offsets, self.units[entries], self.n_units, hashes)

    def _entries(self, sentences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the units of ``sentences`` (S,) sit in ``self.units`` (T,), sentence after sentence, and
        how many each holds (S,)."""
        starts, lengths = self.offsets[sentences], self.offsets[sentences + 1] - self.offsets[sentences]
        within = torch.arange(int(lengths.sum())) - (lengths.cumsum(0) - lengths).repeat_interleave(lengths)
        return starts.repeat_interleave(lengths) + within, lengths

    def sentence_units(self, i: int) -> list[int]:
        return self.units[self.offsets[i]: self.offsets[i + 1]].tolist()

    def votes(self, targets: torch.Tensor, k: int, temperature: float, remap: torch.Tensor | None = None,
              exclude: torch.Tensor | None = None) -> torch.Tensor:
        """(Q, n_units): per target (Q, D), each unit's summed softmax weight over the ``k`` nearest
        sentences that hold it, less its base rate (the share of all sentences holding it), floored
        at 0: what the neighbours say beyond any sentence, so "." and "the" get nothing.
        ``remap`` (n_units,): a unit id to count each unit as (case twins). ``exclude`` (Q, M) bool: memory
        sentences a target may not hear from (its own, when the targets are in the memory)."""
        sims = F.normalize(targets.float(), dim=1) @ self.vectors.T  # (Q, M)
        if exclude is not None:
            sims.masked_fill_(exclude, float("-inf"))
        top = sims.topk(min(k, len(self)), dim=1)
        weight = torch.softmax(top.values / temperature, dim=1)  # (Q, k)
        entries, lengths = self._entries(top.indices.reshape(-1))  # the (Q * k) sentences' units
        rows = torch.arange(targets.shape[0]).repeat_interleave(top.indices.shape[1]).repeat_interleave(lengths)
        w = weight.reshape(-1).repeat_interleave(lengths)
        units = self.units[entries]
        out = torch.zeros(targets.shape[0], self.n_units)
        out.index_put_((rows, units), w, accumulate=True)
        out = (out - self.base_rate).clamp_min_(0.0)
        if remap is not None:  # twins: a stand-in gets the best vote of the units it stands for
            out = torch.zeros_like(out).scatter_reduce_(1, remap.expand_as(out), out, reduce="amax")
        return out

    def top_votes(self, targets: torch.Tensor, units: int, k: int, temperature: float, remap: torch.Tensor | None = None,
                  groups: tuple[torch.Tensor, torch.Tensor] | None = None, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``units`` best-voted unit ids (Q, units) per target and their votes (Q, units) (see
        ``votes``; ids of zero votes are -1), ``chunk`` targets at a time. ``groups``: a group id per
        target (Q,) and per memory sentence (M,); a target does not hear from sentences of its own
        group (its own document, when the targets are training sentences)."""
        ids = torch.full((targets.shape[0], units), -1, dtype=torch.long)
        values = torch.zeros(targets.shape[0], units)
        for i in range(0, targets.shape[0], chunk):
            part = slice(i, i + chunk)
            exclude = None if groups is None else groups[0][part, None] == groups[1][None, :]  # (q, M)
            v = self.votes(targets[part], k, temperature, remap, exclude)
            top = v.topk(min(units, v.shape[1]), dim=1)
            n = top.indices.shape[1]
            ids[part, :n] = top.indices.masked_fill(top.values <= 0, -1)
            values[part, :n] = top.values.clamp_min(0.0)
        return ids, values

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        tensors = {"vectors": self.vectors.half().contiguous(), "offsets": self.offsets, "units": self.units.int()}
        atomic_save_file(folder / MEMORY_FILES[1], lambda p: save_file(tensors, p))
        atomic_write_json(folder / MEMORY_FILES[0], {"kind": "sentence_memory", "sentences": len(self),
                                                     "n_units": self.n_units, "texts_hash": self.texts_hash})

    @classmethod
    def load(cls, folder: str | Path) -> "SentenceMemory":
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / MEMORY_FILES[0]).read_text(encoding="utf-8"))
        t = load_file(str(folder / MEMORY_FILES[1]))
        return cls(t["vectors"], t["offsets"], t["units"], meta["n_units"], meta.get("texts_hash", []))

    @staticmethod
    def exists(folder: str | Path) -> bool:
        return all((Path(folder) / name).exists() for name in MEMORY_FILES)


def text_hash(text: str) -> str:
    import hashlib

    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()
