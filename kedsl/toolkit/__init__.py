"""The shared editing toolkit: the pieces every locate-then-edit method needs, written
once, public for method authors (see docs/plugins.md):

- :mod:`.tokens`: prompt + target tokenized jointly (the leading-space rule), subject spans;
- :mod:`.activations`: batches, reading, patching and replaying module outputs;
- :mod:`.scoring` and :mod:`.generation`: batched teacher forcing and greedy decoding;
- :mod:`.context`: context templates; :mod:`.stats`: second-moment statistics, cached;
- :mod:`.optimize`: the value search; :mod:`.multilayer` and :mod:`.multilayer_config`:
  MEMIT-style updates over several layers; :mod:`.objectives`: fine-tuning losses;
- :mod:`.precision`: bf16 only where the CPU has it natively;
- :mod:`.tracing`: causal tracing and ``layer=auto``.

Importing this package imports nothing; its modules import torch (all but
``multilayer_config``, which descriptor modules use)."""
