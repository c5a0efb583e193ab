"""Provenance: the audit trail of every run.

- :mod:`.schema`: the tables, their migrations and how a log event is hashed;
- :mod:`.store`: the SQLite store (every SQL statement of kedsl) and its content-addressed blobs;
- :mod:`.verify`: checking the log, the tables, the blobs and saved model directories;
- :mod:`.queries`: reading runs, edits and a model's lineage;
- :mod:`.export`: audit reports (JSON lines, CSV, HTML).

Reverting an edit and replaying a run change models: they are API operations
(:mod:`kedsl.api.history`) that record themselves here.
"""
