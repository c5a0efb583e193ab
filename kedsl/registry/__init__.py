"""The plugin registry: the hooks a plugin implements (:mod:`.hookspecs`), the
descriptors it returns (:mod:`.specs`), declared parameters and method configurations
(:mod:`.params`), and the loader that indexes every installed plugin (:mod:`.loader`).

Torch-free: ``kedsl check``, ``fmt`` and ``plugins`` work from here alone. Plugin authors
import these names from :mod:`kedsl.plugin`, the one face that also carries what methods
and metrics receive at run time.
"""
from .loader import ENTRY_POINT_GROUP, Registry, get_registry

__all__ = ["ENTRY_POINT_GROUP", "Registry", "get_registry"]
