"""A loaded model: the handle methods and metrics work on (:mod:`.handle`), weight
fingerprints (:mod:`.fingerprint`), the weight journal that makes every change exactly
undoable (:mod:`.journal`), attachments (:mod:`.attachments`: outcomes that are not weight
changes), loading (:mod:`.loading`), atomic saving (:mod:`.saving`) and the model card
(:mod:`.card`).

Importing this package imports torch; the torch-free parts of kedsl never import it.
"""
from .handle import LoadedModel

__all__ = ["LoadedModel"]
