"""Frozen pretrained encoders from local Hugging Face folders, and their feature cache."""
from invemb.backbone.hf import BackboneConfig, HFBackbone, default_backbone_path

__all__ = ["BackboneConfig", "HFBackbone", "default_backbone_path"]
