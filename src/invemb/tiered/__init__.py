"""invemb.tiered: a character encoder (E1) feeding a semantic encoder (E2) through a chunk bridge.

>>> from invemb.tiered import TieredConfig, train_tiered
>>> summary = train_tiered(TieredConfig.preset("tiny"), "runs/tiered-tiny")
>>> enc = invemb.load("runs/tiered-tiny")   # dispatches to load_run below
"""
from invemb.tiered.model import TieredEncoder, TieredModel, TieredModelConfig
from invemb.tiered.train import TieredConfig, lexname_probe, load_run, train_tiered

__all__ = ["TieredConfig", "TieredEncoder", "TieredModel", "TieredModelConfig", "lexname_probe", "load_run", "train_tiered"]
