"""Words read off a pair-bound target: what inverting an order-bound view's vector adds to the policy.

An order-bound view with binding "pairs" (:mod:`invemb.em.order_bind`) holds, beside the EM vector,
the sum over a text's adjacent words of ``permuted(v_a) * v_b``. Unbinding it with a placed word
gives an estimate of the word that follows it, or precedes it (:meth:`OrderBoundEncoder.unbind`); the
vocabulary word nearest that estimate is proposed in the slot after, or before, the placed word. So
the order comes from the vector itself, one placed word at a time, and a right word brings its
neighbours in (README "Inverting an order-bound view").
"""
from __future__ import annotations

from typing import Sequence

import torch

from invemb.text.vocab import tokenize


class PairNeighbours:
    """The best ``k`` vocabulary words to follow or precede a word in the text behind a pair-bound target."""

    def __init__(self, view, units: Sequence[str], unit_vectors: torch.Tensor, stand_in: torch.Tensor | None = None,
                 extra: tuple[int, object] | None = None, extra_pool: int = 32):
        """``view``: an :class:`invemb.em.order_bind.OrderBoundEncoder` with binding "pairs" over the EM that
        gave ``unit_vectors`` (V, D) for ``units``; ``stand_in``: the units offered in place of case twins
        (:func:`invemb.inversion.controller.stand_ins`), proposed once. ``extra``: (the first extra unit's id,
        the :class:`invemb.index.UnitIndex` of the extra units, one word each, no twins) when units were added
        after training (:mod:`invemb.inversion.extra`): the trained words are scored exhaustively, the extra
        ones are the ``extra_pool`` (at least; 4 per word asked) their index finds, scored the same way."""
        view.check_readable()
        self.view, self.unit_vectors, self.extra, self.extra_pool = view, unit_vectors, extra, extra_pool
        tokens = [tokenize(text) for text in units]  # once: 84k units are past tokenize's cache
        trained = extra[0] if extra is not None else len(units)
        ids = [u for u, words in enumerate(tokens[:trained]) if len(words) == 1 and (stand_in is None or int(stand_in[u]) == u)]
        self.word_ids = torch.tensor(ids, dtype=torch.long)  # (V1,) one-word units, each vector once
        self.keys = self._keys(self.word_ids)  # (V1, D)
        self.ends = [(t[0].lower(), t[-1].lower()) if t else None for t in tokens]  # (first, last) word
        self._cache: dict[tuple[bytes, int], dict[tuple[str, bool], list[int]]] = {}  # (target, k) -> (word, after) -> units

    def _keys(self, ids: torch.Tensor) -> torch.Tensor:
        """(..., D) the units' vectors centred as the view binds them, unit length (a projection keeps norms, on
        average)."""
        keys = self.unit_vectors[ids].float() - self.view.center
        return keys / keys.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def _best(self, estimates: torch.Tensor, k: int) -> torch.Tensor:
        """(n, k) the one-word units whose keys score highest against ``estimates`` (n, D). The extra units'
        index ranks by the raw vectors (the centring and the norm aside), so a wider pool of it is rescored."""
        scores = estimates @ self.keys.T  # (n, V1)
        top = scores.topk(min(k, len(self.word_ids)), dim=1)
        if self.extra is None:
            return self.word_ids[top.indices]
        first, index = self.extra
        _, found = index.search(estimates, max(self.extra_pool, 4 * k))
        found = torch.as_tensor(found, dtype=torch.long)  # (n, P), -1 where the index found fewer
        ids = found.clamp_min(0) + first
        extra_scores = (self._keys(ids) @ estimates[:, :, None]).squeeze(-1).masked_fill(found < 0, float("-inf"))
        values = torch.cat([top.values, extra_scores], dim=1)  # (n, k + P)
        best = values.topk(min(k, values.shape[1]), dim=1).indices
        return torch.cat([self.word_ids[top.indices], ids], dim=1).gather(1, best)

    def __call__(self, bound: torch.Tensor, key: bytes, words: list[tuple[str, bool]], k: int) -> dict[tuple[str, bool], list[int]]:
        """For each (word, after) the ``k`` likeliest units to follow (after) or precede it in the text whose
        bound part is ``bound`` (W,); ``key`` names that target (the answers are kept per target)."""
        if (key, k) not in self._cache and len(self._cache) >= 4096:  # bounded: a long stream of vectors never fills memory
            self._cache.clear()
        known = self._cache.setdefault((key, k), {})
        for after in (True, False):
            todo = list(dict.fromkeys(w for w, a in words if a == after and (w, a) not in known))
            if todo:
                top = self._best(self.view.unbind(bound, todo, after), k)  # (n, k)
                known.update(((w, after), row) for w, row in zip(todo, top.tolist()))
        return {q: known[q][:k] for q in words}

    def actions(self, hyps, bound: torch.Tensor, proposals, k: int) -> None:
        """Add to each hypothesis's proposal, for each placed unit, the ``k`` words likeliest to follow its last
        word (in the slot after it) and to precede its first (in the slot before), read off its target's bound
        part (``bound`` (H, W), zeros where there is none), each as likely as the proposal's best action: the
        beam's scores (the cosine with the bound part, the language prior) choose among them."""
        from invemb.inversion.decode import Action

        distinct, row = torch.unique(bound, dim=0, return_inverse=True)
        keys = [t.numpy().tobytes() for t in distinct]
        for i, (h, prop) in enumerate(zip(hyps, proposals)):
            b = distinct[row[i]]
            if not h.units or not prop.actions or not b.any():
                continue
            ends = [self.ends[u] for u in h.units]
            asked = [(e[1], True) for e in ends if e] + [(e[0], False) for e in ends if e]
            found = self(b, keys[row[i]], asked, k)
            best = max(a.logp for a in prop.actions)
            offered = {(a.unit, a.slot) for a in prop.actions if a.remove < 0}
            for j, (u, e) in enumerate(zip(h.units, ends)):
                if e is None:
                    continue
                for slot, words, beside in ((j + 1, found[(e[1], True)], j + 1), (j, found[(e[0], False)], j - 1)):
                    for w in words:
                        if 0 <= beside < len(h.units) and h.units[beside] == w or (w, slot) in offered:
                            continue  # already there, or already proposed
                        offered.add((w, slot))
                        prop.actions.append(Action(w, slot, best))

    def between(self, bound: torch.Tensor, sides: Sequence[tuple[int | None, int | None]], k: int) -> list[list[int]]:
        """For each (left unit, right unit) the ``k`` words likeliest to stand between them in the text whose
        bound part is ``bound`` (W,): the unbound estimates of the left unit's follower and the right unit's
        predecessor, summed (None: a text's end, that side left out)."""
        lefts = list(dict.fromkeys(self.ends[u][1] for u, _ in sides if u is not None and self.ends[u]))
        rights = list(dict.fromkeys(self.ends[u][0] for _, u in sides if u is not None and self.ends[u]))
        dim = self.keys.shape[1]
        estimates = torch.cat([self.view.unbind(bound, lefts, True) if lefts else torch.zeros(0, dim),
                               self.view.unbind(bound, rights, False) if rights else torch.zeros(0, dim),
                               torch.zeros(1, dim)])  # (L + R + 1, D): followers, predecessors, none
        row = {(w, True): i for i, w in enumerate(lefts)} | {(w, False): len(lefts) + i for i, w in enumerate(rights)}
        none = len(estimates) - 1
        left = [row[self.ends[a][1], True] if a is not None and self.ends[a] else none for a, _ in sides]
        right = [row[self.ends[b][0], False] if b is not None and self.ends[b] else none for _, b in sides]
        # one product for all places: a sum of estimates scores as the sum of their scores
        return self._best(estimates[left] + estimates[right], k).tolist()


def _runs(orders: Sequence[Sequence[int]], n: int):
    """Each order as runs of consecutive buffer indices: (M, R) starts and ends (end exclusive; a = b past a
    row's last run) and (M, R - 1) the junction row ``last * n + first`` between runs p and p + 1 (-1: none)."""
    from itertools import chain

    import numpy as np

    lengths = np.fromiter(map(len, orders), dtype=np.int64, count=len(orders))
    flat = np.fromiter(chain.from_iterable(orders), dtype=np.int64, count=int(lengths.sum()))
    row = np.repeat(np.arange(len(orders)), lengths)  # (T,) the order of each position
    first = np.ones(len(flat), dtype=bool)
    first[1:] = (row[1:] != row[:-1]) | (flat[1:] != flat[:-1] + 1)  # a run opens here
    run_row = row[first]  # (runs,) the order of each run
    opened = np.concatenate([[0], np.cumsum(np.bincount(run_row, minlength=len(orders)))[:-1]])
    slot = np.arange(len(run_row)) - opened[run_row]  # (runs,) the run's place in its order
    width = int(slot.max()) + 1 if len(slot) else 1
    starts, ends = np.zeros((len(orders), width), dtype=np.int64), np.zeros((len(orders), width), dtype=np.int64)
    starts[run_row, slot] = flat[first]
    last = np.ones(len(flat), dtype=bool)
    last[:-1] = first[1:]
    ends[run_row, slot] = flat[last] + 1
    joins = np.full((len(orders), max(1, width - 1)), -1, dtype=np.int64)
    inside = slot[1:] > 0  # run k + 1 follows run k in the same order
    left_last = ends[run_row[:-1], slot[:-1]][inside] - 1  # the unit ending the earlier run
    right_first = starts[run_row[1:], slot[1:]][inside]  # the unit opening the later one
    joins[run_row[1:][inside], slot[1:][inside] - 1] = left_last * n + right_first
    return starts, ends, joins


def order_cosines(view, target: torch.Tensor, texts: Sequence[str], orders: Sequence[Sequence[int]]):
    """(M,) numpy: for each order (the indices of some of a buffer's unit ``texts``, in a new order: a span deleted,
    one kept, one moved), the cosine of that text's pair-bound part with ``target`` (W,). Exact without binding any
    text, up to the case of the first word: a text's bound part is its units' own (inner) pair terms plus one term
    at each junction of two units. An order is a few runs of consecutive buffer units, and a run's terms are a
    contiguous block of the buffer's own rows (inner 0, junction 0->1, inner 1, ...), so its dot with the target
    and the Gram sums its norm needs are read off prefix sums; only the junctions between runs are new rows."""
    import numpy as np

    n = len(texts)
    if not orders:
        return np.zeros(0)
    tokens = [view.words(t) or [t] for t in texts]
    inner = torch.zeros(n, view.cfg.width)  # (n, W) each unit's own pair terms, summed
    pairs = [(u, a, b) for u, words in enumerate(tokens) for a, b in zip(words, words[1:])]
    if pairs:
        unit, firsts, seconds = zip(*pairs)
        inner.index_add_(0, torch.tensor(unit), view.pair_terms(list(firsts), list(seconds)))
    lasts = view.permuted_words([t[-1] for t in tokens])  # (n, W) each unit's last word, as a pair's first
    heads = view.word_vectors([t[0] for t in tokens])  # (n, W) each unit's first word, as a pair's second
    own = torch.zeros(2 * n - 1, view.cfg.width)  # (2n - 1, W) the buffer's rows: inner 0, junction 0->1, inner 1, ...
    own[0::2], own[1::2] = inner, lasts[:-1] * heads[1:]
    starts, ends, joins = _runs(orders, n)  # (M, R), (M, R), (M, R - 1)
    used, local = np.unique(joins, return_inverse=True)  # -1 (none) sorts first when present
    local = local.reshape(joins.shape)
    new = lasts[torch.from_numpy(np.maximum(used, 0) // n)] * heads[torch.from_numpy(np.maximum(used, 0) % n)]  # (U, W)
    new[torch.from_numpy(used < 0)] = 0.0
    t = target.float()

    def prefix(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:  # a leading zero and cumulative sums on axes
        for a in axes:
            x = np.concatenate([np.zeros_like(x.take([0], axis=a)), x.cumsum(a)], axis=a)
        return x

    own_dot = prefix((own @ t).double().numpy(), (0,))  # (2n,)
    own_gram = prefix((own @ own.T).double().numpy(), (0, 1))  # (2n, 2n)
    new_own = prefix((new @ own.T).double().numpy(), (1,))  # (U, 2n)
    # rows of run p: [r0, r1) of the buffer's; runs past an order's last are empty (r0 = r1)
    r0 = 2 * starts
    r1 = np.where(ends > starts, 2 * ends - 1, r0)
    dot = (own_dot[r1] - own_dot[r0]).sum(1) + (new @ t).double().numpy()[local].sum(1)
    a0, a1, b0, b1 = r0[:, :, None], r1[:, :, None], r0[:, None, :], r1[:, None, :]
    blocks = own_gram[a1, b1] - own_gram[a0, b1] - own_gram[a1, b0] + own_gram[a0, b0]  # (M, R, R)
    cross = new_own[local[:, :, None], r1[:, None, :]] - new_own[local[:, :, None], r0[:, None, :]]  # (M, R - 1, R)
    among = (new @ new.T).double().numpy()[local[:, :, None], local[:, None, :]].sum((1, 2))  # the new rows' Gram sums
    norm2 = blocks.sum((1, 2)) + 2 * cross.sum((1, 2)) + among
    return dot / np.sqrt(np.maximum(norm2, 1e-12))


def best_moves(view, target: torch.Tensor, texts: Sequence[str], k: int, max_span: int = 8) -> list[tuple[list[int], tuple[int, int, int]]]:
    """The ``k`` moves of one span of a buffer (unit ``texts`` in order) that leave its bound part nearest the
    pair-bound ``target`` (W,), nearest first (:func:`order_cosines`): (the new order of the buffer's indices,
    (start, end, slot): the span ``start:end`` taken out and put back at ``slot`` of what is left)."""
    import numpy as np

    n = len(texts)
    if n < 2 or k < 1:
        return []
    orders, moves, seen = [], [], set()
    for start in range(n):
        for end in range(start + 1, min(n, start + max_span) + 1):
            if end - start == n:
                continue
            rest = list(range(start)) + list(range(end, n))
            span = list(range(start, end))
            for slot in range(len(rest) + 1):
                order = rest[:slot] + span + rest[slot:]
                if slot != start and tuple(order) not in seen:  # a swap of two spans is two moves: kept once
                    seen.add(tuple(order))
                    orders.append(order)
                    moves.append((start, end, slot))
    if not orders:
        return []
    best = np.argsort(-order_cosines(view, target, texts, orders), kind="stable")[:k]
    return [(orders[i], moves[i]) for i in best.tolist()]
