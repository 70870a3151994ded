"""Training the EM head on cached backbone features with the shared loop.

A batch is ``batch_sentences`` corpus sentences plus ``batch_units`` vocabulary units; the units a
batch's sentences contain, and the synonyms/antonyms of its units, join the batch as candidates,
so the unit-recall, synonym and antonym terms always have their partners in the same forward.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from invemb.backbone.cache import FeatureCache, LiveFeatures
from invemb.backbone.hf import HFBackbone
from invemb.em import losses
from invemb.em.config import EMConfig
from invemb.em.data import EMData, built_dir, prepare
from invemb.em.model import (HeadOutput, TokenEmbeddingModel, TokenHead, check_backbone_identity, load_head, save_head,
                             build_head)
from invemb.io import atomic_write_json, atomic_write_text
from invemb.training import distributed
from invemb.training.loop import StepContext, Trainer, TrainTask, resolve_device
from invemb.training.schedules import cosine_between


class CachedHeadEncoder:
    """The EM during training as an :class:`Encoder`: features from the cache (computed once for
    texts it has not seen), the head applied on top. Used by the per-epoch evaluators."""

    def __init__(self, cache: FeatureCache, head: TokenHead, name: str = "em"):
        self.cache, self.head, self.name = cache, head, name
        self.dim = head.cfg.output_dim

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        from invemb.encoder import check_texts

        check_texts(texts)
        rows = self.cache.ensure(texts, progress=False)
        was_training = self.head.training
        self.head.eval()
        out = torch.empty(len(texts), self.dim)
        order = np.argsort(self.cache.lengths(rows), kind="stable")
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            out[idx] = head_forward(self.head, self.cache, rows[idx]).embedding.float().cpu()
        self.head.train(was_training)
        return out

    def save(self, path) -> None:
        save_head(self.head, Path(path))


def head_forward(head: TokenHead, cache: FeatureCache, rows: np.ndarray, jitter: float = 0.0) -> HeadOutput:
    """Run the head on cached features of ``rows`` (optionally with Gaussian feature jitter).

    A token head runs once per length bucket (1-2, 3-4, 5-8, ... tokens) and the rows are put back
    in order: a batch of short words and long sentences then pads each group to its own length,
    not to the longest text (the aggregator's cost grows with the padded length)."""
    rows = np.asarray(rows, dtype=np.int64)
    if not head.uses_tokens or len(rows) < 2:
        return _head_forward(head, cache, rows, jitter)
    lengths = np.minimum(cache.lengths(rows), head.cfg.max_tokens)
    buckets = np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64)  # (B,)
    groups = [np.flatnonzero(buckets == b) for b in np.unique(buckets)]
    if len(groups) == 1:
        return _head_forward(head, cache, rows, jitter)
    parts = [_head_forward(head, cache, rows[g], jitter) for g in groups]
    inverse = torch.from_numpy(np.argsort(np.concatenate(groups), kind="stable"))
    dev = parts[0].embedding.device
    return HeadOutput(*(torch.cat(fields)[inverse.to(dev)] for fields in zip(*parts)))


def _head_forward(head: TokenHead, cache: FeatureCache, rows: np.ndarray, jitter: float = 0.0) -> HeadOutput:
    pooled = cache.pooled(rows)  # (B, H)
    states = mask = ids = None
    if head.uses_tokens:
        states, mask = cache.tokens(rows, head.cfg.max_tokens)  # (B, T, H), (B, T)
        if head.cfg.positions == "words":
            ids = cache.token_ids(rows, head.cfg.max_tokens)  # (B, T)
    if jitter:
        scale = pooled.pow(2).mean().sqrt() * jitter
        pooled = pooled + torch.randn_like(pooled) * scale
        if states is not None:
            states = states + torch.randn_like(states) * scale * mask.unsqueeze(-1)
    dev = next(head.parameters()).device
    return head(pooled.to(dev), None if states is None else states.to(dev), None if mask is None else mask.to(dev),
                None if ids is None else ids.to(dev))


class EMTrainable(nn.Module):
    """Head plus the unfrozen backbone layers as one module for the loop (optimizer, checkpoints);
    called like the head."""

    def __init__(self, head: TokenHead, backbone: HFBackbone):
        super().__init__()
        self.head, self.backbone = head, backbone

    def forward(self, *args, **kwargs) -> HeadOutput:
        return self.head(*args, **kwargs)

    @property
    def cfg(self):
        return self.head.cfg

    @property
    def uses_tokens(self) -> bool:
        return self.head.uses_tokens

    @property
    def last_projection(self) -> nn.Linear:
        return self.head.last_projection


class EMTask(TrainTask):
    """The EM objectives as a :class:`invemb.training.loop.TrainTask`."""

    def __init__(self, cfg: EMConfig, data: EMData, cache: FeatureCache, head: TokenHead, unit_rows: np.ndarray,
                 sent_rows: dict[str, np.ndarray], progress: bool = True):
        self.cfg, self.data, self.cache, self.model = cfg, data, cache, head
        self.unit_rows, self.sent_rows = unit_rows, sent_rows
        self.progress = progress
        D = head.cfg.output_dim
        self.queue = torch.zeros(0, D)
        self.queue_ids = torch.zeros(0, dtype=torch.long)
        self._pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # this step's keys, queued after it
        self.evaluators = None

    # -- data plan ---------------------------------------------------------------------------
    def batch_plan(self, epoch: int, generator: torch.Generator) -> list[dict[str, list[int]]]:
        cfg = self.cfg
        units = torch.from_numpy(self.data.train_units)[torch.randperm(len(self.data.train_units), generator=generator)].tolist()
        sents = torch.randperm(len(self.data.train_sentences), generator=generator).tolist()
        n = max(math.ceil(len(units) / cfg.batch_units), math.ceil(len(sents) / max(1, cfg.batch_sentences)))
        plan = []
        for b in range(n):
            u = [units[(b * cfg.batch_units + i) % len(units)] for i in range(cfg.batch_units)]
            s = [sents[(b * cfg.batch_sentences + i) % len(sents)] for i in range(cfg.batch_sentences)] if sents else []
            plan.append({"units": list(dict.fromkeys(u)), "sentences": list(dict.fromkeys(s))})
        return plan

    # -- loss --------------------------------------------------------------------------------
    def loss(self, model: TokenHead, batch: dict[str, list[int]], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, L, data = self.cfg, self.cfg.loss, self.data
        tau = cosine_between(ctx.step, ctx.total_steps, L.temperature_start, L.temperature_end)
        w = {name: L.weight(name, ctx.step, ctx.total_steps) for name in ("contrastive", "synonym", "recon", "anchor", "ortho", "order", "unit")}
        rng = torch.Generator().manual_seed(ctx.micro_index + 1)
        anchors = batch["units"]
        sentences = [data.train_sentences[i] for i in batch["sentences"]]
        # The unit pool: anchors, then their synonym/antonym partners, then the sentences' units.
        pool = list(anchors)
        syn_of, ant_of = {}, {}
        for u in anchors:
            if L.synonym and data.synonyms[u]:
                syn_of[u] = data.synonyms[u][int(torch.randint(len(data.synonyms[u]), (1,), generator=rng))]
            if L.antonym and data.antonyms[u]:
                ant_of[u] = data.antonyms[u][int(torch.randint(len(data.antonyms[u]), (1,), generator=rng))]
        sent_units = []
        for s in sentences:
            units = s.units
            if len(units) > cfg.units_per_sentence:
                pick = torch.randperm(len(units), generator=rng)[: cfg.units_per_sentence].tolist()
                units = [units[i] for i in sorted(pick)]
            sent_units.append(units)
        pool_index = {u: i for i, u in enumerate(pool)}
        for u in list(syn_of.values()) + list(ant_of.values()) + [x for us in sent_units for x in us]:
            if u not in pool_index:
                pool_index[u] = len(pool)
                pool.append(u)
        pool_t = torch.tensor(pool)
        out = head_forward(model, self.cache, self.unit_rows[pool_t.numpy()])
        z = out.embedding  # (P, D)
        target = self.cache.pooled(self.unit_rows[pool_t.numpy()]).detach().to(z.device)  # (P, H)
        A = len(anchors)
        terms: dict[str, torch.Tensor] = {}
        total = z.sum() * 0.0
        # (i) + (ii) + (vii): contrastive with jittered self-positive, hard negatives, antonyms, queue
        if w["contrastive"]:
            z_pos = head_forward(model, self.cache, self.unit_rows[np.array(anchors)], jitter=L.jitter).embedding  # (A, D)
            extra = mask = log_w = None
            if L.antonym:
                ant_idx = torch.tensor([pool_index[ant_of[u]] if u in ant_of else -1 for u in anchors], device=z.device)
                cand = torch.cat([z_pos, z[A:]], dim=0)  # antonyms are looked up among the pool rows
                extra, mask = losses.antonym_negatives(z[:A], cand, ant_idx, L.hard_k)
                log_w = ((ant_idx >= 0).float() * math.log(L.antonym)).unsqueeze(1)  # (A, 1): real antonyms weigh more
            qmask = None
            if L.queue and len(self.queue):
                qmask = (self.queue_ids.unsqueeze(0) == torch.tensor(anchors).unsqueeze(1)).to(z.device)  # (A, Q)
            terms["contrastive"] = losses.hard_negative_infonce(z[:A], z_pos, tau, L.hard_k, extra, mask,
                                                                self.queue.to(z.device) if L.queue else None, qmask,
                                                                extra_log_weight=log_w)
            total = total + w["contrastive"] * terms["contrastive"]
            if L.queue and ctx.micro_index >= 0:  # -1: a rank's filler pass in a short last DDP step
                self._pending.append((ctx.micro_index, z_pos.detach().float().cpu(), torch.tensor(anchors)))
        # (iii) synonym attraction
        if w["synonym"] and syn_of:
            a = torch.tensor([i for i, u in enumerate(anchors) if u in syn_of])
            b = torch.tensor([pool_index[syn_of[anchors[i]]] for i in a.tolist()])
            terms["synonym"] = losses.synonym_attraction(z[a], z[b], L.synonym_margin)
            total = total + w["synonym"] * terms["synonym"]
        # (iv) reconstruction, with the mean cosine logged
        terms["recon"] = losses.reconstruction_mse(out.reconstruction, target)
        if w["recon"]:
            total = total + w["recon"] * terms["recon"]
        recon_cos = F.cosine_similarity(out.reconstruction.detach(), target, dim=-1).mean()
        # (v) semantic anchor on the anchor units
        if w["anchor"]:
            terms["anchor"] = losses.semantic_anchor(z[:A], target[:A])
            total = total + w["anchor"] * terms["anchor"]
        # (vi) orthogonality
        if w["ortho"]:
            terms["ortho"] = losses.orthogonality(model.last_projection.weight)
            total = total + w["ortho"] * terms["ortho"]
        # Sentences: (viii) order and (ix) unit recall
        if sentences and (w["order"] or w["unit"]):
            idx = np.array(batch["sentences"])
            S = len(idx)
            kinds = ("text", "synonym", "swapped") if w["order"] else ("text",)
            z_all = head_forward(model, self.cache, np.concatenate([self.sent_rows[k][idx].reshape(-1) for k in kinds])).embedding
            zs = z_all[:S]  # (S, D)
            if w["order"]:
                z_syn = z_all[S:2 * S]  # (S, D)
                z_swap = z_all[2 * S:].reshape(S, -1, zs.shape[-1])  # (S, M, D)
                swap_mask = torch.as_tensor(self.sent_rows["swapped_mask"][idx], device=zs.device)  # (S, M)
                terms["order"] = losses.order_contrast(zs, z_syn, z_swap, swap_mask, tau, L.order_margin)
                total = total + w["order"] * terms["order"]
                terms["order_gap"] = ((zs * z_syn).sum(-1) - (zs * z_swap[:, 0]).sum(-1)).mean().detach()
            if w["unit"]:
                member = torch.zeros(len(sentences), len(pool), dtype=torch.bool)
                for r, units in enumerate(sent_units):
                    member[r, [pool_index[u] for u in units]] = True
                terms["unit"] = losses.unit_recall(zs, z, member.to(zs.device), tau)
                total = total + w["unit"] * terms["unit"]
            if w["anchor"]:
                s_target = self.cache.pooled(self.sent_rows["text"][idx]).detach().to(zs.device)
                terms["anchor_sent"] = losses.semantic_anchor(zs, s_target)
                total = total + w["anchor"] * terms["anchor_sent"]
        logged = {f"loss_{k}": float(v.detach()) for k, v in terms.items() if not k.endswith("gap")}
        logged.update({"loss": float(total.detach()), "temperature": tau, "recon_cos": float(recon_cos)})
        if "order_gap" in terms:
            logged["order_gap"] = float(terms["order_gap"])
        for name, value in w.items():
            if name in ("recon", "anchor") and value:
                logged[f"w_{name}"] = value
        return total, logged

    def _enqueue(self, vecs: torch.Tensor, ids: torch.Tensor) -> None:
        self.queue = torch.cat([vecs, self.queue])[: self.cfg.loss.queue]
        self.queue_ids = torch.cat([ids, self.queue_ids])[: self.cfg.loss.queue]

    def after_step(self, step: int) -> None:
        """Queue the keys of every micro-batch of the step just taken, gathered from every rank, in
        micro-batch order (MoCo's per-step enqueue): W processes and one process with W-times the
        accumulation see the same queue."""
        pending, self._pending = self._pending, []
        if distributed.active():
            micros = torch.tensor([m for m, _, _ in pending], dtype=torch.long)
            sizes = torch.tensor([len(i) for _, _, i in pending], dtype=torch.long)
            D = self.head.cfg.output_dim
            vecs = torch.cat([v for _, v, _ in pending]) if pending else torch.zeros(0, D)
            ids = torch.cat([i for _, _, i in pending]) if pending else torch.zeros(0, dtype=torch.long)
            parts = zip(*(distributed.all_gather_tensors(t) for t in (micros, sizes, vecs, ids)))
            pending = []
            for m, n, v, i in parts:
                pending += [(int(a), b, c) for a, b, c in zip(m, v.split(n.tolist()), i.split(n.tolist()))]
            pending.sort(key=lambda row: row[0])
        for _, vecs, ids in pending:
            self._enqueue(vecs, ids)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, epoch: int) -> dict[str, float]:
        return head_dev_metrics(self.head, self.data, self.cache, self.unit_rows)

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "queue_ids": self.queue_ids}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "queue" in state:
            self.queue, self.queue_ids = state["queue"], state["queue_ids"]

    def param_groups(self) -> list[dict[str, Any]]:
        if isinstance(self.model, EMTrainable):
            return [{"params": list(self.model.head.parameters())},
                    {"params": [p for p in self.model.backbone.parameters() if p.requires_grad],
                     "lr_scale": self.cfg.backbone_lr_scale}]
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    @property
    def head(self) -> TokenHead:
        return self.model.head if isinstance(self.model, EMTrainable) else self.model


@torch.no_grad()
def all_unit_vectors(head: TokenHead, cache: FeatureCache, unit_rows: np.ndarray, batch_size: int = 1024) -> torch.Tensor:
    """EM vectors of every vocabulary unit (V, D), from cached features."""
    was = head.training
    head.eval()
    out = torch.cat([head_forward(head, cache, unit_rows[i:i + batch_size]).embedding.cpu()
                     for i in range(0, len(unit_rows), batch_size)])
    head.train(was)
    return out


def dev_evaluators(data: EMData):
    """The suite's order and relation evaluators on the dev data, built once per data (their
    probes are reused every epoch). Relations need at least two held-out synonym pairs."""
    from invemb.eval.order import OrderEvaluator
    from invemb.eval.relations import RelationEvaluator

    if "order" not in data.evaluators:
        pairs = {"synonym": data.lexicon.pairs("synonym", "dev"), "antonym": data.lexicon.pairs("antonym", "dev")}
        data.evaluators["order"] = OrderEvaluator([s.text for s in data.dev_sentences], seed=0)
        data.evaluators["relations"] = RelationEvaluator(pairs) if len(pairs["synonym"]) >= 2 else None
    return data.evaluators["order"], data.evaluators["relations"]


@torch.no_grad()
def dev_metrics(encoder, data: EMData, unit_vectors: torch.Tensor) -> dict[str, float]:
    """Held-out metrics of any encoder: synonym-vs-antonym margin on dev pairs, unit recall@10 on
    dev sentences (against ``unit_vectors`` of the whole vocabulary), order discrimination."""
    sents = encoder.encode([s.text for s in data.dev_sentences])  # (S, D)
    top = (sents @ unit_vectors.T).topk(10, dim=1).indices  # (S, 10)
    recalls = [len(set(top[i].tolist()) & set(s.units)) / min(10, len(s.units))
               for i, s in enumerate(data.dev_sentences) if s.units]
    order_eval, relation_eval = dev_evaluators(data)
    rel = relation_eval(encoder) if relation_eval is not None else {}
    order = order_eval(encoder)
    metrics = {"dev_unit_recall@10": float(np.mean(recalls)) if recalls else float("nan")}
    metrics.update({f"dev_{k}": v for k, v in rel.items()})
    metrics.update({f"dev_{k}": v for k, v in order.items()})
    return metrics


@torch.no_grad()
def head_dev_metrics(head: TokenHead, data: EMData, cache: FeatureCache, unit_rows: np.ndarray) -> dict[str, float]:
    """The EM's dev metrics: reconstruction cosine on held-out units plus :func:`dev_metrics`."""
    was = head.training
    head.eval()
    dev_rows = unit_rows[data.dev_units]
    out = head_forward(head, cache, dev_rows)
    recon_cos = F.cosine_similarity(out.reconstruction.float().cpu(), cache.pooled(dev_rows), dim=-1).mean().item()
    metrics = {"dev_recon_cos": recon_cos, **dev_metrics(CachedHeadEncoder(cache, head), data, all_unit_vectors(head, cache, unit_rows))}
    head.train(was)
    return metrics


class CachedBackboneEncoder:
    """The raw backbone (normalised pooled features) from the same cache: the EM's reference."""

    def __init__(self, cache: FeatureCache, name: str = "backbone"):
        self.cache, self.name, self.dim = cache, name, cache.hidden

    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        return F.normalize(self.cache.pooled(self.cache.ensure(texts, progress=False)), dim=-1)

    def save(self, path) -> None:  # pragma: no cover - nothing trained
        raise NotImplementedError("the raw backbone has nothing to save; use the backbone folder")


def backbone_dev_metrics(data: EMData, cache: FeatureCache, unit_rows: np.ndarray) -> dict[str, float]:
    enc = CachedBackboneEncoder(cache)
    return dev_metrics(enc, data, F.normalize(cache.pooled(unit_rows), dim=-1))


# -- the run ---------------------------------------------------------------------------------
def build_cache(cfg: EMConfig, backbone: HFBackbone, data: EMData, progress: bool = True) -> tuple[FeatureCache, np.ndarray, dict[str, np.ndarray]]:
    """The feature source with rows for every unit and training sentence: the on-disk cache for a
    frozen backbone, live backbone passes (with gradients) when top layers are unfrozen."""
    if cfg.backbone.unfreeze_layers:
        cache = LiveFeatures(backbone, grad=True)
    else:
        with distributed.main_first():  # under torchrun: rank 0 creates the folder, the others open it
            cache = FeatureCache(built_dir(cfg) / "features", backbone, with_tokens=True)
    # shard=True: under torchrun every rank computes its share of the missing features (a no-op alone)
    kw = {"batch_size": cfg.feature_batch_size, "progress": progress, "shard": True}
    unit_rows = cache.ensure(data.vocab.units, **kw)
    texts = [s.text for s in data.train_sentences]
    sent_rows = {
        "text": cache.ensure(texts, **kw),
        "synonym": cache.ensure([s.synonym for s in data.train_sentences], **kw),
    }
    # (N, M) rows of each sentence's M swapped copies; a sentence with fewer pairs repeats its first
    # swap in the spare columns, which "swapped_mask" (N, M) masks out of the order term.
    M = max(1, cfg.loss.order_swaps)
    swaps = [([s.swapped] + s.more_swaps[: M - 1]) for s in data.train_sentences]
    padded = [w + [w[0]] * (M - len(w)) for w in swaps]
    sent_rows["swapped"] = cache.ensure([t for w in padded for t in w], **kw).reshape(len(swaps), M)
    sent_rows["swapped_mask"] = np.arange(M) < np.array([len(w) for w in swaps], dtype=int)[:, None]
    return cache, unit_rows, sent_rows


def run_config_dict(cfg: EMConfig, backbone: HFBackbone, vocab_fingerprint: str) -> dict:
    from invemb.em.data import corpus_dir

    # corpus_dir: where the run's corpus is (its test split is what inversion and the demo hold out),
    # so that later code finds it also after the built-data keys change
    return {"kind": "em", "em": cfg.to_dict(), "backbone_identity": backbone.identity(), "vocab_fingerprint": vocab_fingerprint,
            "corpus_dir": str(corpus_dir(cfg).absolute())}  # absolute: read from any working folder


def train_em(cfg: EMConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict[str, float]:
    """Build data, cache features, train the head, write the run folder; returns the final dev metrics.
    ``resume`` continues the run in ``out`` with its own config (the run's, not ``cfg``: only where the
    backbone is and which device runs it come from ``cfg``)."""
    out = Path(out)
    if resume:
        if not (out / "config.json").exists():
            raise FileNotFoundError(f"--resume: {out} has no config.json")
        own = EMConfig.from_dict(json.loads((out / "config.json").read_text())["em"])
        cfg = own.replace(**{"backbone.path": cfg.backbone.path, "backbone.device": cfg.backbone.device,
                             "train.device": cfg.train.device})
    distributed.init_distributed(resolve_device(cfg.train.device))  # under torchrun: join the process group
    if out.exists() and (out / "metrics.jsonl").exists() and not resume:
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    distributed.barrier()  # every rank checked before rank 0 writes
    main = distributed.is_main()
    torch.manual_seed(cfg.train.seed)
    t0 = time.perf_counter()
    backbone = HFBackbone(cfg.backbone).to_device()  # backbone.device: "auto" = CUDA when there is one
    cfg = cfg.replace(**{"head.hidden": backbone.hidden, "head.vocab_size": len(backbone.tokenizer)})
    if resume:
        saved = json.loads((out / "config.json").read_text())
        check_backbone_identity(saved["backbone_identity"], backbone.identity())
    with distributed.main_first():  # rank 0 builds and caches corpus, vocabulary, lexicon; the others read them
        data = prepare(cfg, progress and main)
    t_data = time.perf_counter()
    cache, unit_rows, sent_rows = build_cache(cfg, backbone, data, progress and main)
    t_feat = time.perf_counter()
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", run_config_dict(cfg, backbone, data.vocab.fingerprint()))
        data.vocab.save(out / "vocab.json")
        data.lexicon.save(out / "lexicon.json")
    head = build_head(cfg.head, backbone)
    task = EMTask(cfg, data, cache, head, unit_rows, sent_rows, progress)
    if cfg.backbone.unfreeze_layers:  # the loop then trains (and checkpoints) the top layers too
        task.model = EMTrainable(head, backbone)
    trainer = Trainer(task, cfg.train.replace(progress=progress), out)
    if main and not (out / "untrained_metrics.json").exists():  # references: the raw backbone, the untrained head
        atomic_write_json(out / "backbone_metrics.json", backbone_dev_metrics(data, cache, unit_rows))
        atomic_write_json(out / "untrained_metrics.json", task.evaluate(-1))
    # A run killed before its first checkpoint has its data and features cached: it starts its loop again.
    final = trainer.fit(resume=resume, require_checkpoint=False)
    t_train = time.perf_counter()
    if not main:  # under torchrun only rank 0 writes the run's final files
        return final
    head.eval().cpu()
    backbone.to_device("cpu")
    save_head(head, out)
    if cfg.backbone.unfreeze_layers:  # the run carries its fine-tuned backbone
        backbone.model.eval()
        backbone.save(out / "backbone")
        cfg = cfg.replace(**{"backbone.path": str((out / "backbone").resolve()), "backbone.unfreeze_layers": 0})
        atomic_write_json(out / "config.json", run_config_dict(cfg, HFBackbone(cfg.backbone), data.vocab.fingerprint()))
    units = all_unit_vectors(head, cache, unit_rows)
    build_unit_index(units, data.vocab.units, cfg, out)
    model = TokenEmbeddingModel(backbone, head)
    save_unit_vectors(units, model, data.vocab, out / "unit_vectors.safetensors")
    export_sentence_transformers(model, out / "st")
    timings = {"data_s": t_data - t0, "features_s": t_feat - t_data, "train_s": t_train - t_feat,
               "total_s": time.perf_counter() - t0}
    atomic_write_json(out / "final_metrics.json", {**final, **timings})
    write_report(out)
    return {**final, **timings}


def build_unit_index(units: torch.Tensor, names: list[str], cfg: EMConfig, out: Path):
    from invemb.index.faiss_index import UnitIndex

    index = UnitIndex.build(units, names, cfg.index)
    index.save(out / "index")
    return index


def save_unit_vectors(units: torch.Tensor, model: TokenEmbeddingModel, vocab, path: Path) -> None:
    """Every unit's EM vector, tagged with the encoder's fingerprint and the vocabulary's, in the
    form a controller run reuses instead of encoding the whole vocabulary again."""
    from safetensors.torch import save_file

    from invemb.inversion.units import encoder_fingerprint
    from invemb.io import atomic_save_file

    meta = {"encoder": encoder_fingerprint(model), "vocab": vocab.fingerprint()}
    atomic_save_file(path, lambda p: save_file({"units": units.contiguous()}, p, metadata=meta))


def export_sentence_transformers(model: TokenEmbeddingModel, path: Path) -> None:
    from invemb.em.st_export import export

    export(model, path)


def load_run(run: str | Path, backbone: str | None = None, runtime: str = "torch") -> TokenEmbeddingModel:
    """A trained EM run folder as an :class:`invemb.Encoder`. ``backbone`` points at a copy of the
    backbone folder elsewhere; a different backbone is refused with a message naming both.
    ``runtime``: the backbone's (``"torch"``, ``"onnx"`` or ``"bf16"``, see :meth:`HFBackbone.use_runtime`)."""
    run = Path(run)
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run}: not an EM run folder (no config.json)")
    saved = json.loads((run / "config.json").read_text())
    if saved.get("kind") != "em":
        raise ValueError(f"{run}: not an EM run (kind={saved.get('kind')!r})")
    cfg = EMConfig.from_dict(saved["em"])
    bcfg = cfg.backbone.replace(path=backbone) if backbone else cfg.backbone
    model_backbone = HFBackbone(bcfg)
    check_backbone_identity(saved["backbone_identity"], model_backbone.identity())
    if not (run / "head.safetensors").exists():
        raise FileNotFoundError(f"{run}: the run has no final weights yet (head.safetensors); finish or --resume it")
    return TokenEmbeddingModel(model_backbone.use_runtime(runtime), load_head(run)).eval()


def write_report(run_dir: Path) -> Path:
    """report.md of a run: final dev metrics against the untrained head, and the plots."""
    run_dir = Path(run_dir)
    final = json.loads((run_dir / "final_metrics.json").read_text())
    refs = {}
    for name in ("backbone", "untrained"):
        p = run_dir / f"{name}_metrics.json"
        refs[name] = json.loads(p.read_text()) if p.exists() else {}
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))
    lines = ["# EM run report", "", "Held-out (dev) metrics of the trained EM beside the raw backbone and the untrained head.",
             "", "| metric | raw backbone | untrained head | trained EM |", "|---|---|---|---|"]
    for k, v in final.items():
        lines.append(f"| {k} | {fmt(refs['backbone'].get(k))} | {fmt(refs['untrained'].get(k))} | {fmt(v)} |")
    lines += ["", "![training curves](plots/train_curves.png)", "", "![dev metrics](plots/epoch_metrics.png)", ""]
    atomic_write_text(run_dir / "report.md", "\n".join(lines))
    return run_dir / "report.md"
