"""invemb.scratch: a transformer sentence encoder trained from random weights, dense or MoE.

>>> from invemb.scratch import make_config, train_scratch
>>> summary = train_scratch(make_config("tiny", moe=True), "runs/scratch-tiny")
>>> enc = invemb.load("runs/scratch-tiny")   # dispatches to load_run below
"""
from invemb.scratch.train import ScratchConfig, ScratchEncoder, compare_moe, load_run, make_config, train_scratch

__all__ = ["ScratchConfig", "ScratchEncoder", "compare_moe", "load_run", "make_config", "train_scratch"]
