"""FAISS indexes over unit vectors."""
from invemb.index.faiss_index import IndexConfig, JoinedIndex, UnitIndex

__all__ = ["IndexConfig", "JoinedIndex", "UnitIndex"]
