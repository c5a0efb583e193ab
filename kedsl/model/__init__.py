"""Loaded models: the handle methods and metrics work on, loading, fingerprints, saving.

Importing this package imports torch; the torch-free parts of kedsl never import it.
"""
from .handle import LoadedModel

__all__ = ["LoadedModel"]
