"""Training, saving and loading the scratch encoder, and the fair dense-vs-MoE comparison.

A run folder holds ``config.json`` (``"kind": "scratch"``, the full :class:`ScratchConfig` and the
tokenizer's sha256), ``tokenizer.json``, ``model.safetensors``, ``metrics.jsonl``,
``checkpoints/``, ``plots/`` (training curves and the expert-load heatmap) and ``report.md``.
"""
from __future__ import annotations

import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from invemb.config import Config
from invemb.encoder import check_batch_size, check_texts, check_vectors, use_own_runtime
from invemb.io import atomic_save_file, atomic_write_json, atomic_write_text, save_figure
from invemb.scratch.data import DataConfig, Pair, PairDataset, TripletDataset, build_pairs, in_batch_negative_batches
from invemb.scratch.losses import contrastive_loss, multiple_negatives_ranking_loss, triplet_loss
from invemb.scratch.tokenizer import ScratchTokenizer, TokenizerConfig
from invemb.scratch.transformer import MoEAux, SentenceEncoderModel, TransformerConfig, count_params
from invemb.training import distributed
from invemb.training.loop import StepContext, TrainConfig, Trainer, TrainTask, resolve_device

LOSSES = ("mnrl", "triplet", "contrastive")


@dataclasses.dataclass
class ScratchConfig(Config):
    tokenizer: TokenizerConfig = dataclasses.field(default_factory=TokenizerConfig)
    model: TransformerConfig = dataclasses.field(default_factory=TransformerConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    loss: str = "mnrl"  # "mnrl" (symmetric InfoNCE, in-batch negatives), "triplet", "contrastive"
    batch_size: int = 64
    scale: float = 20.0  # InfoNCE logit scale (1 / temperature)
    margin: float = 0.3  # triplet / contrastive margin
    threads: int = 0  # torch CPU threads for training (0: torch's default); 1 is fastest on a busy shared machine

    # Dense and MoE presets share everything; ``--moe`` only flips model.use_moe, and every
    # preset sets moe.expert_hidden = ffn_hidden / top_k, so active parameters per token match.
    presets = {
        "tiny": {
            "tokenizer": {"vocab_size": 600, "max_length": 32},
            "model": {"dim": 32, "depth": 2, "heads": 2, "ffn_hidden": 64, "dropout": 0.0,
                      "moe": {"num_experts": 4, "expert_hidden": 64, "every": 1, "expert_dropout": 0.0}},
            "data": {"sources": ["title", "adjacent", "simcse"], "max_articles": 400, "eval_pairs": 40},
            "train": {"epochs": 2, "lr": 3e-3, "warmup_steps": 4, "checkpoint_every": 0},
            "batch_size": 16,
        },
        "default": {
            "tokenizer": {"vocab_size": 8000, "max_length": 56},
            "model": {"dim": 128, "depth": 4, "heads": 4, "ffn_hidden": 384,
                      "moe": {"num_experts": 4, "expert_hidden": 384, "every": 2}},
            "data": {"max_train_pairs": 20000, "eval_pairs": 400},
            "train": {"epochs": 2, "lr": 1.5e-3, "warmup_steps": 30, "checkpoint_every": 100},
            "batch_size": 64,
        },
        "full": {
            "tokenizer": {"vocab_size": 32000, "max_length": 128},
            "model": {"dim": 512, "depth": 8, "heads": 8, "ffn_hidden": 2048,
                      "moe": {"num_experts": 8, "expert_hidden": 2048, "every": 2}},
            "data": {"max_wordnet": 0, "eval_pairs": 1000},
            "train": {"epochs": 10, "lr": 5e-4, "warmup_steps": 500, "checkpoint_every": 500},
            "batch_size": 256,
        },
    }

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")


# -- the Encoder ----------------------------------------------------------------------------
class ScratchEncoder:
    """A trained scratch model + its tokenizer, as an :class:`invemb.Encoder`."""

    def __init__(self, model: SentenceEncoderModel, tokenizer: ScratchTokenizer, cfg: ScratchConfig):
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.dim = model.dim

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        texts = check_texts(texts)
        check_batch_size(batch_size)
        if not texts:
            return torch.empty(0, self.dim)
        self.model.eval()
        device = next(self.model.parameters()).device
        before = self.tokenizer.take_stats()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch: less padding
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = self.tokenizer.encode([texts[i] for i in idx])
            out[idx] = self.model(ids.to(device), mask.to(device)).embedding.float().cpu()
        stats = self.tokenizer.take_stats()
        self.tokenizer.stats.update(before)
        if stats.get("truncated"):
            warnings.warn(f"{stats['truncated']} of {len(texts)} texts truncated to {self.tokenizer.max_length} tokens")
        if stats.get("unknown"):
            warnings.warn(f"{stats['unknown']} unknown token(s) mapped to [UNK] in {len(texts)} texts")
        return check_vectors(out, len(texts), self.dim, who="scratch encoder", task="encode")

    def save(self, path: str | Path) -> None:
        save_model(Path(path), self.model, self.tokenizer, self.cfg)


def _run_config(cfg: ScratchConfig, tokenizer: ScratchTokenizer) -> dict[str, Any]:
    return {"kind": "scratch", "config": cfg.to_dict(), "tokenizer_sha256": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size}


def save_model(path: Path, model: SentenceEncoderModel, tokenizer: ScratchTokenizer, cfg: ScratchConfig) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path / "tokenizer.json")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save_file(path / "model.safetensors", lambda p: save_file(state, p))
    atomic_write_json(path / "config.json", _run_config(cfg, tokenizer))


def build_model(cfg: ScratchConfig, tokenizer: ScratchTokenizer) -> SentenceEncoderModel:
    if tokenizer.vocab_size != cfg.model.vocab_size or tokenizer.pad_id != cfg.model.pad_id:
        raise ValueError(f"tokenizer (vocab {tokenizer.vocab_size}, pad {tokenizer.pad_id}) does not match the model "
                         f"config (vocab {cfg.model.vocab_size}, pad {cfg.model.pad_id})")
    return SentenceEncoderModel(cfg.model)


def load_run(path: str | Path, runtime: str = "torch", **_: Any) -> ScratchEncoder:
    """Load a scratch run folder; refuses a tokenizer.json that is not the one it was trained with.
    ``runtime="bf16"``: inference in bfloat16 (:func:`invemb.encoder.use_own_runtime`)."""
    from safetensors.torch import load_file

    from invemb.training.checkpoint import latest_checkpoint

    path = Path(path)
    meta = json.loads((path / "config.json").read_text())
    if meta.get("kind") != "scratch":
        raise ValueError(f"{path}: not a scratch run (kind={meta.get('kind')!r})")
    cfg = ScratchConfig.from_dict(meta["config"])
    tokenizer = ScratchTokenizer.load(path / "tokenizer.json")
    if tokenizer.fingerprint() != meta.get("tokenizer_sha256"):
        raise ValueError(f"{path / 'tokenizer.json'} does not match the checkpoint (sha256 differs from the one "
                         "recorded in config.json); refusing to load")
    model = build_model(cfg, tokenizer)
    weights = path / "model.safetensors"
    if not weights.exists():  # a run still training (or killed): its latest checkpoint
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"{path}: no model.safetensors and no checkpoint")
        weights = ckpt / "model.safetensors"
    model.load_state_dict(load_file(str(weights)))
    use_own_runtime(model.eval(), runtime, f"a scratch run ({path})")
    return ScratchEncoder(model, tokenizer, cfg)


# -- retrieval on held-out pairs ------------------------------------------------------------
def ranking_metrics(scores: torch.Tensor) -> dict[str, float]:
    """scores (N, N), query i's answer is doc i: MRR and recall@1.

    Ties count against the answer (rank = 1 + number of other docs scoring at least as high), so
    a scorer that gives every doc 0 (BM25 with no shared word) ranks its answer last, not first.
    """
    true = scores.diagonal().unsqueeze(1)  # (N, 1)
    rank = (scores >= true).sum(1)  # (N,) includes the answer itself: 1 = best
    return {"mrr": float((1.0 / rank.float()).mean()), "recall@1": float((rank == 1).float().mean())}


def retrieval_metrics(queries: torch.Tensor, docs: torch.Tensor) -> dict[str, float]:
    """Query i's answer is doc i, among all docs. queries, docs (N, P) L2-normalised."""
    return ranking_metrics(queries @ docs.t())


def bm25_retrieval(pairs: list[Pair]) -> dict[str, float]:
    """The lexical baseline on the same task: BM25 (rank_bm25) over lower-cased word tokens."""
    import re

    import numpy as np
    from rank_bm25 import BM25Okapi

    tok = lambda s: re.findall(r"\w+", s.lower()) or ["_"]
    bm25 = BM25Okapi([tok(p.b) for p in pairs])
    return ranking_metrics(torch.from_numpy(np.stack([bm25.get_scores(tok(p.a)) for p in pairs])))  # (N, N)


def evaluate_encoder(encoder, dev: dict[str, list[Pair]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for task, pairs in dev.items():
        if len(pairs) < 2:
            continue
        q = encoder.encode([p.a for p in pairs])
        d = encoder.encode([p.b for p in pairs])
        out.update({f"{task}/{k}": v for k, v in retrieval_metrics(q, d).items()})
    return out


# -- the TrainTask --------------------------------------------------------------------------
def routing_terms(aux: MoEAux, prefix: str = "moe") -> dict[str, float]:
    terms: dict[str, float] = {}
    for layer, st in aux.layers:
        key = f"{prefix}/l{layer}"
        terms[f"{key}/drop_rate"] = float(st.drop_rate)
        terms[f"{key}/entropy"] = float(st.entropy)
        terms[f"{key}/load_max_over_mean"] = float(st.load.max() / st.load.mean())
        terms.update({f"{key}/load_e{e}": float(v) for e, v in enumerate(st.load.tolist())})
        terms.update({f"{key}/tokens_e{e}": float(v) for e, v in enumerate(st.kept.tolist())})  # after capacity
    return terms


class ScratchTask(TrainTask):
    """The scratch encoder on the shared loop: in-batch-negative batches of pairs."""

    def __init__(self, cfg: ScratchConfig, tokenizer: ScratchTokenizer, pairs: dict[str, list[Pair]]):
        self.cfg, self.tokenizer = cfg, tokenizer
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg, tokenizer)
        self.train = TripletDataset(pairs["train"], cfg.data.seed) if cfg.loss == "triplet" else PairDataset(pairs["train"])
        self.dev = {k: v for k, v in pairs.items() if k.startswith("dev_")}
        self.eval_seconds = self.eval_cpu_seconds = 0.0

    def batch_plan(self, epoch: int, generator: torch.Generator) -> list[list[int]]:
        return in_batch_negative_batches(self.train, self.cfg.batch_size, generator)

    def loss(self, model, batch: list[int], ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        if cfg.loss == "triplet":
            a, p, n = self.train.triplets(batch)
            texts = a + p + n
        else:
            a, p = self.train.texts(batch)
            texts = a + p
        ids, mask = self.tokenizer.encode(texts)
        stats = self.tokenizer.take_stats()
        out = model(ids.to(ctx.device), mask.to(ctx.device))
        emb = out.embedding.float()
        b = len(batch)
        if cfg.loss == "mnrl":
            main = multiple_negatives_ranking_loss(emb[:b], emb[b:], scale=cfg.scale, symmetric=True)
        elif cfg.loss == "triplet":
            main = triplet_loss(emb[:b], emb[b:2 * b], emb[2 * b:], margin=cfg.margin)
        else:  # contrastive: each pair is a positive, and the next pair's positive a negative
            neg = emb[b:].roll(1, dims=0)
            labels = torch.cat([torch.ones(b), torch.zeros(b)]).to(emb.device)
            main = contrastive_loss(torch.cat([emb[:b], emb[:b]]), torch.cat([emb[b:], neg]), labels, cfg.margin)
        moe = cfg.model.moe
        total = main + moe.balance_weight * out.aux.balance_loss + moe.z_loss_weight * out.aux.z_loss
        terms = {"loss": total.item(), "loss_main": main.item(), "tokens": float(stats["tokens"]),
                 "data/truncated": stats["truncated"] / stats["texts"], "data/unknown": stats["unknown"] / stats["tokens"]}
        if out.aux.layers:
            terms.update({"loss_balance": out.aux.balance_loss.item(), "loss_z": out.aux.z_loss.item()})
            terms.update(routing_terms(out.aux))
        return total, terms

    def evaluate(self, epoch: int) -> dict[str, float]:
        t0, cpu0 = time.perf_counter(), time.process_time()
        encoder = ScratchEncoder(self.model, self.tokenizer, self.cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation counts are logged per step already
            metrics = evaluate_encoder(encoder, self.dev)
            texts = [p.b for pairs in self.dev.values() for p in pairs]
            if self.cfg.model.use_moe and texts:
                metrics.update(self.dev_routing(texts))
        self.eval_seconds += time.perf_counter() - t0
        self.eval_cpu_seconds += time.process_time() - cpu0
        return metrics

    @torch.no_grad()
    def dev_routing(self, texts: list[str]) -> dict[str, float]:
        """Routing on held-out text in eval mode: the load balance the trained router delivers."""
        device = next(self.model.parameters()).device
        ids, mask = self.tokenizer.encode(texts)
        self.tokenizer.take_stats()
        aux = self.model(ids.to(device), mask.to(device)).aux
        return {k.replace("moe/", "dev_moe/"): v for k, v in routing_terms(aux).items() if not k.split("/")[-1].startswith(("load_e", "tokens_e"))}

    def on_epoch_end(self, run_dir: Path, epoch: int) -> None:
        super().on_epoch_end(run_dir, epoch)
        if self.cfg.model.use_moe:
            plot_expert_load(run_dir)


def plot_expert_load(run_dir: str | Path) -> Path | None:
    """``plots/moe_expert_load.png``: per MoE layer, a heatmap of expert load (experts x steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from invemb.training.metrics_log import read_metrics

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl", "step")
    layers = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("moe/") and "/load_e" in k}, key=lambda s: int(s[1:]))
    if not layers:
        return None
    grids = {}
    for layer in layers:
        experts = sorted({int(k.rsplit("_e", 1)[1]) for r in rows for k in r if k.startswith(f"moe/{layer}/load_e")})
        grids[layer] = torch.tensor([[r.get(f"moe/{layer}/load_e{e}", float("nan")) for r in rows] for e in experts])  # (E, steps)
    top = max(float(g.nan_to_num(0).max()) for g in grids.values())  # one colour scale for every layer
    fig, axes = plt.subplots(len(layers), 1, figsize=(9, 1.6 + 1.2 * len(layers)), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        experts = range(grids[layer].shape[0])
        im = ax.imshow(grids[layer].numpy(), aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=top,
                       extent=(rows[0]["step"], rows[-1]["step"], len(experts) - 0.5, -0.5))
        ax.set_ylabel(f"block {layer[1:]}\nexpert", fontsize=8)
        ax.set_yticks(range(len(experts)))
        fig.colorbar(im, ax=ax, label="share of tokens")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"expert load per MoE layer (uniform = {1 / len(experts):.2f})", fontsize=9)
    fig.tight_layout()
    path = run_dir / "plots" / "moe_expert_load.png"
    return save_figure(fig, path)


# -- training entry points ------------------------------------------------------------------
def make_config(preset: str = "default", moe: bool = False, tokenizer: str | None = None,
                overrides: dict[str, Any] | None = None) -> ScratchConfig:
    cfg = ScratchConfig.preset(preset)
    extra: dict[str, Any] = {"model.use_moe": moe}
    if tokenizer:
        extra["tokenizer.kind"] = tokenizer
    return cfg.replace(**extra, **(overrides or {}))


def train_tokenizer(cfg: ScratchConfig, pairs: dict[str, list[Pair]]) -> ScratchTokenizer:
    texts = sorted({t for p in pairs["train"] for t in (p.a, p.b)})
    return ScratchTokenizer.train(texts, cfg.tokenizer)


def _fit_config(cfg: ScratchConfig, tokenizer: ScratchTokenizer) -> ScratchConfig:
    return cfg.replace(**{"model.vocab_size": tokenizer.vocab_size, "model.pad_id": tokenizer.pad_id,
                          "model.max_len": tokenizer.max_length})


def train_scratch(cfg: ScratchConfig, out: str | Path, resume: bool = False, pairs: dict[str, list[Pair]] | None = None,
                  tokenizer: ScratchTokenizer | None = None) -> dict[str, Any]:
    """Train into run folder ``out``; returns eval metrics, parameter counts and throughput.

    Under ``torchrun`` rank 0 builds the pairs and trains the tokenizer, the other ranks load its
    tokenizer.json; only rank 0 writes the run folder (the others return ``{"run", "rank"}``)."""
    out = Path(out)
    distributed.init_distributed(resolve_device(cfg.train.device))  # under torchrun: join the process group
    if resume:
        meta_path = out / "config.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"--resume: {out} has no config.json")
        meta = json.loads(meta_path.read_text())
        cfg = ScratchConfig.from_dict(meta["config"])  # the run's own config, not the command line's
        tokenizer = ScratchTokenizer.load(out / "tokenizer.json")
        if tokenizer.fingerprint() != meta["tokenizer_sha256"]:
            raise ValueError(f"{out / 'tokenizer.json'} does not match the run's config.json; refusing to resume")
    elif (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a run; pass --resume or another --out")
    distributed.barrier()  # every rank checked before rank 0 writes
    main = distributed.is_main()
    with distributed.main_first():
        pairs = pairs or build_pairs(cfg.data)
        if tokenizer is None:
            tokenizer = train_tokenizer(cfg, pairs) if main else ScratchTokenizer.load(out / "tokenizer.json")
        cfg = _fit_config(cfg, tokenizer)
        if main:
            out.mkdir(parents=True, exist_ok=True)
            if not resume:
                tokenizer.save(out / "tokenizer.json")
                atomic_write_json(out / "config.json", _run_config(cfg, tokenizer))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = ScratchTask(cfg, tokenizer, pairs)
    trainer = Trainer(task, cfg.train, out)
    t0, cpu0 = time.perf_counter(), time.process_time()
    final = trainer.fit(resume=resume, require_checkpoint=False)
    start_step = trainer.start_step  # timings and tokens/s cover the steps this call trained
    train_seconds = time.perf_counter() - t0 - task.eval_seconds
    # CPU seconds of this process: on a machine shared with other jobs, wall time overstates
    # cost; CPU time (at threads=1) is close to what an idle core would take.
    train_cpu_seconds = time.process_time() - cpu0 - task.eval_cpu_seconds
    if not main:
        return {"run": str(out), "rank": distributed.dist_info()[0]}
    task.model.cpu()
    save_model(out, task.model, tokenizer, cfg)
    from invemb.training.metrics_log import read_metrics

    steps = read_metrics(out / "metrics.jsonl", "step")
    summary = {"run": str(out), "moe": cfg.model.use_moe, "steps": len(steps), "train_pairs": len(pairs["train"]),
               "params": count_params(task.model), "train_seconds": round(train_seconds, 1),
               "train_cpu_seconds": round(train_cpu_seconds, 1),
               "train_tokens_per_s": round(sum(r.get("tokens", 0) for r in steps if r["step"] > start_step)
                                           / max(train_seconds, 1e-9), 1),
               "resumed_from_step": start_step, "eval": final}
    atomic_write_text(out / "report.md", _run_report(summary))
    atomic_write_json(out / "summary.json", summary)
    return summary


def _run_report(s: dict[str, Any]) -> str:
    lines = [f"# scratch run ({'MoE' if s['moe'] else 'dense'})", "",
             f"- steps: {s['steps']}, training pairs: {s['train_pairs']}",
             f"- parameters: {s['params']['total']:,} total, {s['params']['active']:,} active per token",
             f"- training: {s['train_seconds']} s wall, {s['train_cpu_seconds']} s CPU "
             f"({s['train_tokens_per_s']} tokens/s, evaluation excluded"
             + (f"; steps after {s['resumed_from_step']} only, resumed there" if s.get("resumed_from_step") else "") + ")", "",
             "| held-out metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in s["eval"].items()]
    lines += ["", "Plots: plots/train_curves.png, plots/epoch_metrics.png" + (", plots/moe_expert_load.png" if s["moe"] else "")]
    return "\n".join(lines) + "\n"


# -- dense vs MoE ---------------------------------------------------------------------------
def inference_tokens_per_s(encoders: dict[str, ScratchEncoder], texts: list[str], batch_size: int = 64,
                           repeats: int = 3) -> dict[str, float]:
    """Encoding throughput of each encoder on the same texts, runs interleaved (best of ``repeats``)
    so a busy shared machine slows every encoder alike."""
    any_encoder = next(iter(encoders.values()))
    n_tokens = sum(int(any_encoder.tokenizer.encode(texts[i:i + batch_size])[1].sum()) for i in range(0, len(texts), batch_size))
    any_encoder.tokenizer.take_stats()
    best = {name: float("inf") for name in encoders}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            for name, encoder in encoders.items():
                t0 = time.perf_counter()
                encoder.encode(texts, batch_size)
                best[name] = min(best[name], time.perf_counter() - t0)
    return {name: round(n_tokens / t, 1) for name, t in best.items()}


def compare_moe(preset: str, out: str | Path, overrides: dict[str, Any] | None = None,
                tokenizer_kind: str | None = None, reference: bool = True) -> dict[str, Any]:
    """Train dense and MoE (same data, tokenizer, steps, active params); write report.md.

    Killed part-way, the same call again continues: a finished run is kept, a started one resumes
    (from step 0 if it had no checkpoint yet), and both use the tokenizer saved at the start."""
    out = Path(out)
    if (out / "compare.json").exists():
        raise FileExistsError(f"{out} already holds a comparison; pick another --out")
    base = make_config(preset, False, tokenizer_kind, overrides)
    moe_cfg = base.model.moe
    if moe_cfg.expert_hidden * moe_cfg.top_k != base.model.ffn_hidden:
        raise ValueError(f"not a fair comparison: top-{moe_cfg.top_k} experts of width {moe_cfg.expert_hidden} give "
                         f"{moe_cfg.expert_hidden * moe_cfg.top_k} active FFN units per token against the dense "
                         f"{base.model.ffn_hidden}; set model.moe.expert_hidden={base.model.ffn_hidden // moe_cfg.top_k}")
    settings = {"preset": preset, "config": base.to_dict()}
    settings_path, tokenizer_path = out / "compare_config.json", out / "tokenizer.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != json.loads(json.dumps(settings)):
        raise FileExistsError(f"{out} holds a comparison started with other settings (its compare_config.json); "
                              f"run it again with those or pick another --out")
    pairs = build_pairs(base.data)
    if tokenizer_path.exists():
        tokenizer = ScratchTokenizer.load(tokenizer_path)
    else:
        tokenizer = train_tokenizer(base, pairs)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(settings_path, settings)
        tokenizer.save(tokenizer_path)
    results: dict[str, Any] = {"preset": preset, "models": {}}
    dev = {k: v for k, v in pairs.items() if k.startswith("dev_")}
    for name, use_moe in (("dense", False), ("moe", True)):
        cfg = base.replace(**{"model.use_moe": use_moe})
        run = out / name
        if (run / "summary.json").exists():
            summary = json.loads((run / "summary.json").read_text())  # finished before a kill
        else:
            summary = train_scratch(cfg, run, resume=(run / "config.json").exists(), pairs=pairs, tokenizer=tokenizer)
        encoder = load_run(out / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # truncation is reported in the run's metrics (data/truncated)
            summary["retrieval"] = evaluate_encoder(encoder, dev)
        results["models"][name] = summary
    results["models"]["bm25"] = {"retrieval": {f"{k}/{m}": v for k, ps in dev.items() for m, v in bm25_retrieval(ps).items()}}
    if reference:
        from invemb.backbone.hf import BackboneConfig, HFBackbone

        results["models"]["minilm"] = {"retrieval": evaluate_encoder(HFBackbone(BackboneConfig()), dev)}
    atomic_write_json(out / "compare.json", results)
    return finish_comparison(out, reference)


def suite_retrieval(encoders: dict[str, Any], preset: str) -> dict[str, dict[str, dict[str, float]]]:
    """The shared suite's retrieval tasks (``invemb.eval``, test split) -> task -> model -> metrics, BM25 included."""
    from invemb.eval.suite import EvalConfig, run_suite

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long summaries are truncated to the model's max length
        res = run_suite(encoders, "retrieval", EvalConfig.preset(preset), progress=False)
    return {task: {name: {k: m[k] for k in ("mrr", "r@1", "ndcg@10") if k in m} for name, m in by_model.items()}
            for task, by_model in res["results"].items()}


def finish_comparison(out: str | Path, reference: bool = True) -> dict[str, Any]:
    """Measure inference throughput (interleaved) and the shared evaluation suite's retrieval for
    the two trained runs in ``out``; update ``out/compare.json`` and write ``out/report.md``."""
    from invemb.eval.data import wiki_sentences

    out = Path(out)
    results = json.loads((out / "compare.json").read_text())
    encoders: dict[str, Any] = {name: load_run(out / name) for name in ("dense", "moe")}
    if encoders["moe"].cfg.threads:
        torch.set_num_threads(encoders["moe"].cfg.threads)
    texts = wiki_sentences(400 if results["preset"] != "tiny" else 100, seed=0)
    for name, tps in inference_tokens_per_s(encoders, texts).items():
        results["models"][name]["infer_tokens_per_s"] = tps
    if reference:
        from invemb.backbone.hf import BackboneConfig, HFBackbone

        encoders["minilm"] = HFBackbone(BackboneConfig())
    results["suite"] = suite_retrieval(encoders, results["preset"])
    atomic_write_json(out / "compare.json", results)
    atomic_write_text(out / "report.md", _compare_report(results, ScratchConfig.from_dict(
        json.loads((out / "moe" / "config.json").read_text())["config"])))
    return results


def _compare_report(r: dict[str, Any], cfg: ScratchConfig) -> str:
    models = r["models"]
    dense, moe = models["dense"], models["moe"]
    keys = list(dense["retrieval"])
    gap = moe["params"]["active"] - dense["params"]["active"]
    lines = [f"# dense vs MoE (preset {r['preset']})", "",
             "Same tokenizer, training pairs, batch plan and number of steps; MoE experts have "
             f"hidden width {cfg.model.moe.expert_hidden} with top-{cfg.model.moe.top_k} routing against a dense FFN of "
             f"{cfg.model.ffn_hidden}. Active parameters per token: dense {dense['params']['active']:,}, "
             f"MoE {moe['params']['active']:,} ({gap:+,}: the routers).", ""]
    suite = r.get("suite", {})
    if suite:
        names = list(dict.fromkeys(n for by_model in suite.values() for n in by_model))
        lines += ["## Retrieval, shared evaluation suite (`invemb.eval`, held-out test split), MRR", "",
                  "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for task, by_model in suite.items():
            lines.append(f"| {task} | " + " | ".join(f"{by_model[n]['mrr']:.4f}" if n in by_model else "-" for n in names) + " |")
        for name in ("dense", "moe"):
            wins = [t for t, m in suite.items() if name in m and "bm25" in m and m[name]["mrr"] > m["bm25"]["mrr"]]
            lines.append(f"\n{name} beats BM25 on: {', '.join(wins) if wins else 'none of the tasks'}")
        lines.append("")
    lines += ["## Retrieval on the scratch package's dev pairs", "",
              "Each query against all dev documents (title -> first summary sentence; sentence -> next "
              "sentence; WordNet gloss -> lemma). MRR and recall@1; ties count against the answer.", "",
              "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in models.items():
        lines.append(f"| {name} | " + " | ".join(f"{m['retrieval'].get(k, float('nan')):.4f}" for k in keys) + " |")
    lines += ["", "## Cost", "", "| | dense | MoE |", "|---|---|---|"]
    for label, get in [("total params", lambda m: f"{m['params']['total']:,}"),
                       ("active params / token", lambda m: f"{m['params']['active']:,}"),
                       ("optimizer steps", lambda m: m["steps"]),
                       ("training seconds, wall (evaluation excluded)", lambda m: m["train_seconds"]),
                       ("training seconds, CPU", lambda m: m.get("train_cpu_seconds", "n/a")),
                       ("training tokens/s", lambda m: m["train_tokens_per_s"]),
                       ("inference tokens/s", lambda m: m["infer_tokens_per_s"])]:
        lines.append(f"| {label} | {get(dense)} | {get(moe)} |")
    resumed = [f"{name} at step {m['resumed_from_step']}" for name, m in (("dense", dense), ("moe", moe)) if m.get("resumed_from_step")]
    if resumed:
        lines.append(f"\nResumed after a kill ({', '.join(resumed)}): its training seconds and tokens/s cover the steps after that only.")
    balance = {k: v for k, v in moe["eval"].items() if k.startswith("dev_moe/")}
    lines += ["", "## Expert load balance after training", "",
              "Router on held-out text in eval mode; load_max_over_mean = share of the most-loaded expert / "
              "mean share (target <= 1.5):", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in balance.items()]
    lines += ["", "Curves: dense/plots/, moe/plots/ (moe_expert_load.png is the expert-load heatmap over training)."]
    return "\n".join(lines) + "\n"
