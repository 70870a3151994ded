"""invemb: invertible text embeddings.

Word, multi-word phrase and sentence vectors in one space, and a controller that rebuilds text
from a sentence vector by retrieving and placing word and phrase vectors.

>>> import invemb
>>> vecs = invemb.encode(["bank", "New York", "the bank raised rates"], model="runs/em-default")
"""
from invemb.api import encode, invert, load
from invemb.encoder import Encoder

__all__ = ["Encoder", "encode", "invert", "load"]
__version__ = "0.1.0"
