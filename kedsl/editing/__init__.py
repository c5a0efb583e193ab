"""Editing: what a method receives and returns.

- :mod:`.request`: :class:`EditRequest`, one fact to write (torch-free);
- :mod:`.method`: :class:`Method`, the base class of a method's implementation (torch-free);
- :mod:`.outcome`: :class:`EditContext` (the weight journal, the seed, method state,
  attachments) and :class:`EditOutcome` (exact weight changes and attachments, undo/redo).

Plugin authors import all of these from :mod:`kedsl.plugin`.
"""
