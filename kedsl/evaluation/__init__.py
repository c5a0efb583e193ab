"""Evaluation and benchmarking: the cases metrics judge (:mod:`.cases`), the metric
contract (:mod:`.metric`), the benchmark readers (:mod:`.datasets`), the benchmark runner
(:mod:`.runner`) and its table (:mod:`.table`)."""
