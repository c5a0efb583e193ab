"""The public Python API: run a script, edit interactively, revert and replay history.
The CLI is a thin layer over these functions::

    import kedsl

    report = kedsl.apply("examples/eiffel.ke")          # a whole script, as `kedsl apply`

    ed = kedsl.Editor("smollm2-135m")                   # or edit interactively
    ed.edit("Eiffel Tower", "located_in", "Rome", method="rome",
            expect=[kedsl.Expect("efficacy", op=">=", threshold=1.0)])
    print(ed.generate("The Eiffel Tower is located in the city of"))
    ed.save("out/eiffel-rome")

- :mod:`.scripts`: :func:`apply`, :func:`plan`, :func:`plan_report`, :func:`load_checked`;
- :mod:`.editor`: :class:`Editor`;
- :mod:`.history`: :func:`revert`, :func:`replay`;
- :mod:`.training`: :func:`train` (a MEND or SERAC editor).

Importing it imports no torch; the operations do.
"""
from ..lang import read_script
from .editor import Editor
from .history import replay, revert
from .scripts import DEFAULT_DB, apply, default_db_path, load_checked, model_settings, plan, plan_report, script_on_fail
from .training import parse_trainer_params, train

__all__ = [
    "DEFAULT_DB", "Editor", "apply", "default_db_path", "load_checked", "model_settings", "plan", "plan_report",
    "parse_trainer_params", "read_script", "replay", "revert", "script_on_fail", "train",
]  # fmt: skip
