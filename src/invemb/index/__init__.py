"""FAISS indexes over unit vectors."""
from invemb.index.faiss_index import IndexConfig, UnitIndex

__all__ = ["IndexConfig", "UnitIndex"]
