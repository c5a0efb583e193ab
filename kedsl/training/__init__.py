"""Training editors: ``kedsl train METHOD`` for the methods whose editor learns from edit
data (MEND, SERAC). :mod:`.trainer` is what a method provides (a :class:`Trainer`);
:mod:`.loop` is the loop every trainer shares (data order, validation, early stopping,
budgets, checkpoints and resumption, provenance); :mod:`.editors` reads and writes trained
editors (safetensors and JSON, never pickle)."""
