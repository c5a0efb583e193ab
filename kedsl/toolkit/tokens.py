"""Tokenization rules shared by methods and metrics.

Targets are scored after the prompt tokenized **jointly** with it: we tokenize
``prompt + sep + target`` and locate the target's tokens from the offset mapping, never by
tokenizing the target alone (BPE merges across the boundary would shift tokens).

The separator rule: a single space is inserted between prompt and target unless the
prompt already ends with whitespace or the target starts with whitespace or punctuation
that attaches to the previous word (``,.;:!?)``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ATTACHING = tuple(",.;:!?)'")


def join(prompt: str, target: str) -> tuple[str, int]:
    """Return ``(text, target_start)``: the joined string and where the target begins."""
    if not target or prompt == "" or prompt[-1].isspace() or target[0].isspace() or target.startswith(_ATTACHING):
        sep = ""
    else:
        sep = " "
    text = prompt + sep + target
    return text, len(prompt) + len(sep)


@dataclass
class Encoded:
    """A prompt+target pair tokenized jointly."""

    input_ids: list[int]
    prompt_len: int  # number of tokens before the first target token
    target_ids: list[int]

    @property
    def target_positions(self) -> range:
        """Indices in ``input_ids`` of the target tokens."""
        return range(self.prompt_len, self.prompt_len + len(self.target_ids))


def bos_ids(tokenizer: Any) -> list[int]:
    """The BOS token to prepend, if the tokenizer adds one by itself (no-op otherwise)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    return ids[: len(ids) - len(bare)] if ids[-len(bare):] == bare else []


def encode_pair(tokenizer: Any, prompt: str, target: str) -> Encoded:
    """Tokenize ``prompt`` and ``target`` jointly; the target span comes from offsets.

    A token that straddles the prompt/target boundary counts as a target token (the
    model must produce it to produce the target).
    """
    text, start = join(prompt, target)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    first = None
    for i, (s, e) in enumerate(offsets):
        if e > s and e > start:  # first real token that reaches into the target
            first = i
            break
    if first is None:
        raise ValueError(f"target {target!r} produced no tokens after prompt {prompt!r}")
    if first == 0:
        raise ValueError(f"prompt {prompt!r} produced no tokens before the target")
    # Special tokens at the end (EOS added by some tokenizers) are not part of the target.
    last = len(ids)
    while last > first and offsets[last - 1][1] <= offsets[last - 1][0]:
        last -= 1
    return Encoded(input_ids=ids[:last], prompt_len=first, target_ids=ids[first:last])


def subject_token_span(tokenizer: Any, prompt: str, subject: str, occurrence: int = -1) -> tuple[list[int], range]:
    """Tokenize ``prompt``; return its ids and the token range covering ``subject``.

    Uses character offsets, so it works for any fast tokenizer. ``occurrence`` picks which
    occurrence of the subject (default: the last). Raises ValueError if absent.
    """
    starts = []
    i = prompt.find(subject)
    while i != -1:
        starts.append(i)
        i = prompt.find(subject, i + 1)
    if not subject or not starts:
        raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    cs = starts[occurrence]
    ce = cs + len(subject)
    enc = tokenizer(prompt, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    toks = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < ce and e > cs]
    if not toks:
        raise ValueError(f"subject {subject!r} maps to no tokens in {prompt!r}")
    return ids, range(toks[0], toks[-1] + 1)


@dataclass
class SubjectEncoded:
    """``prefix + prompt`` (optionally joined with a target) tokenized once, with the
    subject's token span and the target's positions located by character offsets."""

    input_ids: list[int]
    subject: range  # token indices covering the subject
    prompt_len: int  # tokens before the first target token (== len(input_ids) without target)
    target_ids: list[int]

    @property
    def subject_last(self) -> int:
        return self.subject[-1]

    @property
    def target_positions(self) -> range:
        return range(self.prompt_len, self.prompt_len + len(self.target_ids))


def encode_with_subject(
    tokenizer: Any, prompt: str, subject: str, target: str | None = None, prefix: str = ""
) -> SubjectEncoded:
    """Tokenize ``prefix + prompt`` (+ target, joined by :func:`join`) in one pass.

    The subject is the last occurrence of ``subject`` inside ``prompt`` (never inside the
    prefix or the target); the target span follows :func:`encode_pair`'s rule. Works for
    any fast tokenizer (offsets), so BPE merges across boundaries are accounted for.
    """
    cs = prompt.rfind(subject)
    if not subject or cs < 0:
        raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    cs += len(prefix)
    ce = cs + len(subject)
    full_prompt = prefix + prompt
    if target:
        text, tstart = join(full_prompt, target)
    else:
        text, tstart = full_prompt, len(full_prompt)
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = enc["offset_mapping"]
    real = [(k, s, e) for k, (s, e) in enumerate(offsets) if e > s]
    subj = [k for k, s, e in real if s < ce and e > cs]
    if not subj:
        raise ValueError(f"subject {subject!r} maps to no tokens in {text!r}")
    first = next((k for k, s, e in real if e > tstart), None) if target else None
    if target:
        if first is None:
            raise ValueError(f"target {target!r} produced no tokens after prompt {full_prompt!r}")
        last = len(ids)
        while last > first and offsets[last - 1][1] <= offsets[last - 1][0]:
            last -= 1
        if subj[-1] >= first:
            raise ValueError(f"subject {subject!r} ends inside the target's first token in {text!r}")
        return SubjectEncoded(ids[:last], range(subj[0], subj[-1] + 1), first, ids[first:last])
    # no target: drop trailing special tokens (EOS added by some tokenizers)
    last = len(ids)
    while last > 0 and offsets[last - 1][1] <= offsets[last - 1][0] and last - 1 > subj[-1]:
        last -= 1
    return SubjectEncoded(ids[:last], range(subj[0], subj[-1] + 1), last, [])
