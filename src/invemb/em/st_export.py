"""Export an EM as a folder that ``sentence_transformers.SentenceTransformer(path)`` loads.

- ``mlp`` head without ``skip``: only stock sentence-transformers modules (Transformer, Pooling, Dense with GELU,
  LayerNorm, Dense without bias, Normalize), so ``SentenceTransformer(path)`` loads it as is.
- order-aware heads (``attention``, ``transformer``, ``bind``) and heads with a skip path: the backbone as ``Transformer``, then
  :class:`EMHeadModule`, which applies the backbone's pooling and the EM head to
  ``token_embeddings``. sentence-transformers treats any class outside its own package as custom
  code, so these load with ``SentenceTransformer(path, trust_remote_code=True)`` (the class comes
  from the installed ``invemb`` package, nothing is downloaded).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch
from sentence_transformers.base.modules import Module

from invemb.em.model import HeadConfig, TokenHead


class EMHeadModule(Module):
    config_keys = ["head_config", "pooling"]

    def __init__(self, head_config: dict, pooling: str = "mean"):
        super().__init__()
        self.head_config, self.pooling = head_config, pooling
        self.head = TokenHead(HeadConfig.from_dict(head_config))

    def forward(self, features: dict, **kwargs) -> dict:
        states = features["token_embeddings"].float()  # (B, T, H)
        mask = features["attention_mask"].bool()  # (B, T)
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            m = mask.unsqueeze(-1).float()
            pooled = (states * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (B, H)
        features["sentence_embedding"] = self.head(pooled, states, mask, features.get("input_ids")).embedding
        return features

    def get_embedding_dimension(self) -> int:
        return HeadConfig.from_dict(self.head_config).output_dim

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=True)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs) -> "EMHeadModule":
        config = cls.load_config(model_name_or_path, subfolder=subfolder)
        module = cls(**config)
        cls.load_torch_weights(model_name_or_path, subfolder=subfolder, model=module)
        return module


def export(model, path: str | Path) -> Path:
    """Write ``path`` as a sentence-transformers folder giving the same vectors as ``model.encode``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Transformer

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    backbone = model.backbone
    transformer = Transformer(backbone.path, max_seq_length=backbone.cfg.max_length)
    if model.head.cfg.head == "mlp" and not model.head.cfg.skip:
        modules = [transformer, *_stock_head_modules(model.head, backbone.cfg.pooling)]
    else:
        head_module = EMHeadModule(model.head.cfg.to_dict(), backbone.cfg.pooling)
        head_module.head.load_state_dict(model.head.state_dict())
        modules = [transformer, head_module]
    st = SentenceTransformer(modules=modules, device="cpu")
    if backbone.cfg.prompt:
        st.prompts = {"default": backbone.cfg.prompt}
        st.default_prompt_name = "default"
    st.save(str(tmp))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def _stock_head_modules(head: TokenHead, pooling: str) -> list:
    """The mlp head as stock modules: Pooling -> Dense(GELU) -> LayerNorm -> Dense(no bias) -> Normalize."""
    from sentence_transformers.sentence_transformer.modules import Dense, LayerNorm, Normalize, Pooling

    first, _, norm, _, last = head.proj
    dense1 = Dense(first.in_features, first.out_features, activation_function=torch.nn.GELU(),
                   init_weight=first.weight.data.clone(), init_bias=first.bias.data.clone())
    layer_norm = LayerNorm(norm.normalized_shape[0])
    layer_norm.norm.load_state_dict(norm.state_dict())
    dense2 = Dense(last.in_features, last.out_features, bias=False, activation_function=torch.nn.Identity(),
                   init_weight=last.weight.data.clone())
    return [Pooling(first.in_features, pooling_mode=pooling), dense1, layer_norm, dense2, Normalize()]
