"""Hugging Face hub ids (``org/name``): whatever the hub, or its local cache, provides."""
from __future__ import annotations

import logging
from typing import Any

from kedsl.plugin import LoadedModel, ModelError, load_pretrained

log = logging.getLogger(__name__)

OFFLINE_HINT = (
    'without hub access, use a local model directory (`model "/path/to/dir";`) '
    'or the embedded default (`model "smollm2-135m";`)'
)


def _fetch_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'could not get the files', whatever HTTP stack is installed."""
    errors: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    try:
        from huggingface_hub import errors as hf_errors

        errors += [
            getattr(hf_errors, n)
            for n in ("HfHubHTTPError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "RepositoryNotFoundError")
            if hasattr(hf_errors, n)
        ]
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        pass
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    try:
        import requests

        errors.append(requests.RequestException)
    except ImportError:
        pass
    return tuple(errors)


def load(ref: str, settings: dict[str, Any]) -> LoadedModel:
    from transformers import AutoConfig

    try:
        # The config first: the cheap call that tells whether the model is reachable.
        AutoConfig.from_pretrained(ref)
        return load_pretrained(ref, settings, source="hub", meta={"hub_id": ref}, local_only=False)
    except _fetch_errors() as exc:
        log.debug("fetching %s failed: %r", ref, exc)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"could not fetch `{ref}` from the Hugging Face hub ({reason})", OFFLINE_HINT) from None
