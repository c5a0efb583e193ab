"""The HTML audit report (`kedsl export --format html`) read as a person reads it: parsed
into its headings, lists and table rows, and checked for the verification status, the
failures, each saved model's lineage and signing state, the edits with their metrics."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from kedsl.provenance.export import export
from kedsl.provenance.store import Store


class _Page(HTMLParser):
    """Headings, list items, table rows (as cell texts) and the banner of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.items: list[str] = []
        self.rows: list[list[str]] = []
        self.banners: list[str] = []
        self._stack: list[tuple[str, list[str]]] = []
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag in ("h1", "h2", "h3", "li", "td", "th") or "banner" in cls:
            self._stack.append((tag if "banner" not in cls else "banner", []))
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag):
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
            return
        if not self._stack or (self._stack[-1][0] != tag and not (tag == "div" and self._stack[-1][0] == "banner")):
            return
        kind, parts = self._stack.pop()
        text = " ".join("".join(parts).split())
        if self._stack:
            self._stack[-1][1].append(text + " ")
        {"h1": self.headings, "h2": self.headings, "h3": self.headings, "li": self.items, "banner": self.banners}.get(
            kind, []).append(text)  # fmt: skip
        if kind in ("td", "th") and self._row is not None:
            self._row.append(text)

    def handle_data(self, data):
        if self._stack:
            self._stack[-1][1].append(data)


def _history(db: Path) -> dict[str, str]:
    """Two runs: an apply that saved a signed model (one edit passed, one failed its
    expectation and was rolled back), and a second apply on top of that model."""
    with Store.open(db) as store:
        first = store.begin_run(script_text="edit ...;", script_path="/scripts/a.ke", script_sha256="ab" * 32,
                                model_ref="smollm2-135m", fingerprint_before="f0" * 32)  # fmt: skip
        passed = {"metric": "efficacy", "value": 1.0, "op": ">=", "threshold": 0.9, "passed": 1, "n": 1}
        failed = {"metric": "locality", "value": 0.42, "op": ">=", "threshold": 0.9, "passed": 0, "n": 1}
        store.record_edit(first, 0, "Eiffel Tower <Paris>", {"prompt": "The Eiffel Tower is in", "target": "Rome"}, "rome",
                          {"layer": 4}, "applied", 1.5, {}, None, [passed])  # fmt: skip
        store.record_edit(first, 1, "Louvre", {"prompt": "The Louvre is in", "target": "Berlin"}, "rome", {"layer": 4},
                          "rolled_back", 1.2, {}, None, [failed])  # fmt: skip
        store.record_saving(first, "/models/a", "f1" * 32)
        store.record_saved_files(first, "/models/a", {"config.json": "c" * 64, "model.safetensors": "d" * 64}, "e" * 64)
        store.record_signed("/models/a", "9" * 64, first)
        store.end_run(first, "expectations_failed", fingerprint_after="f1" * 32, saved_to="/models/a")
        second = store.begin_run(script_text="edit ...;", model_ref="/models/a", fingerprint_before="f1" * 32)
        store.record_edit(second, 0, "Big Ben", {"prompt": "Big Ben is in", "target": "Oslo"}, "memit", {}, "applied", 2.0,
                          {}, None, [passed])  # fmt: skip
        store.end_run(second, "ok", fingerprint_after="f2" * 32, saved_to="/models/b")
    return {"first": first, "second": second}


def test_the_html_report_shows_status_failures_lineage_signing_and_edits(tmp_path):
    runs = _history(tmp_path / "k.db")
    with Store.open(tmp_path / "k.db", readonly=True) as store:
        text = export(store, "html")
    page = _Page()
    page.feed(text)

    assert any(b.startswith("Log verified:") and "hash chain intact" in b for b in page.banners)
    assert "Failures" in page.headings and "Lineage of the saved models" in page.headings
    # failures: the rolled-back edit, its failed expectation, the run that did not end ok
    failures = [r for r in page.rows if len(r) == 4 and r[2] in ("rolled_back", "expectation FAILED", "expectations_failed")]
    assert [r[2] for r in failures] == ["expectations_failed", "rolled_back", "expectation FAILED"]
    assert failures[2][3] == "locality = 0.42 (>= 0.9)" and failures[1][1] == "edit 'Louvre'"
    # lineage of /models/b (the newest run first): base -> first -> second
    assert "/models/b" in page.headings
    chain = [i for i in page.items if i.startswith(("base model", "run-"))]
    b_chain = chain[chain.index(next(i for i in chain if i.startswith("base model"))):][:3]
    assert b_chain[0] == f"base model smollm2-135m, fingerprint {'f0' * 8}"
    assert b_chain[1] == f"{runs['first']} (apply, 1 edit(s) applied) \u2192 fingerprint {'f1' * 8}"
    assert b_chain[2] == f"{runs['second']} (apply, 1 edit(s) applied) \u2192 fingerprint {'f2' * 8}"
    # the saved model's signing state and recorded files
    assert "Saved model /models/a" in page.headings
    assert "Signed with key(s): <b>" + "9" * 16 + "</b>" in text and ["model.safetensors", "d" * 64] in page.rows
    # the edits with their metrics, escaped
    edit_rows = [r for r in page.rows if r and r[0] == f"{runs['first']}-e0"]
    assert edit_rows and edit_rows[0][1] == "Eiffel Tower <Paris>" and "efficacy = 1 (>= 0.9) pass" in edit_rows[0][-1]
    assert "Eiffel Tower &lt;Paris&gt;" in text


def test_a_clean_history_says_there_are_no_failures(tmp_path):
    with Store.open(tmp_path / "k.db") as store:
        run = store.begin_run(script_text="x", fingerprint_before="f0")
        store.end_run(run, "ok", fingerprint_after="f1")
    with Store.open(tmp_path / "k.db", readonly=True) as store:
        text = export(store, "html")
    assert "<p class=ok>No failed runs, edits or expectations.</p>" in text and "<p>No run saved a model.</p>" in text
