"""Signing keys and signatures: the OpenSSF Model Signing signature of a model directory
(``model.sig``, a sigstore bundle made by the ``model-signing`` package) and the DSSE
envelope of kedsl's in-toto provenance statement, both with the same key.

No cryptography is written here: ``cryptography`` makes and reads the keys and computes
the ECDSA signatures, ``model-signing`` hashes and signs the directory. kedsl only picks
the key, the files and the envelope format (DSSE: the payload type and body joined by
their lengths, the encoding the in-toto tools verify).

Keys are elliptic-curve keys (P-256, P-384, P-521) in PEM, the kind ``model-signing``'s
private-key mode accepts; ``kedsl keygen`` writes a P-256 pair. A password-protected
private key is read with the password in ``$KEDSL_KEY_PASSWORD``. Keyless signing
(sigstore, an OIDC identity, needs network) is :func:`sign_directory_keyless`.
Torch-free.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SigningKeyError, UsageError

log = logging.getLogger(__name__)

#: The model signature's file inside the model directory (the name `model_signing` uses).
SIGNATURE_FILE = "model.sig"
#: The payload type of an in-toto statement in a DSSE envelope.
INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: The curves `model-signing` signs with (and the hash each one signs with).
SUPPORTED_CURVES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}
PASSWORD_ENV = "KEDSL_KEY_PASSWORD"

_KEY_HINT = "create a key pair with `kedsl keygen`, or pass an elliptic-curve (P-256, P-384 or P-521) key in PEM"


class SignatureInvalid(Exception):
    """A signature does not verify (another key, or changed after signing)."""


def _read_key_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    p = Path(path).expanduser()
    if not p.exists():
        raise SigningKeyError(f"no {what} at {p}", _KEY_HINT)
    if p.is_dir():
        raise SigningKeyError(f"{p} is a directory, not a {what} file", _KEY_HINT)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the {what} {p}: {exc.strerror}", "check the file's permissions") from None


def _key_type(key: Any) -> str:
    name = type(key).__name__.lstrip("_")
    for kind in ("RSA", "Ed25519", "Ed448", "DSA", "X25519", "X448"):
        if name.startswith(kind):
            return kind
    return name


def _check_curve(key: Any, path: Path, what: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise SigningKeyError(f"{path} is an {_key_type(key)} {what}; kedsl signs with elliptic-curve keys", _KEY_HINT)
    if key.curve.name not in SUPPORTED_CURVES:
        raise SigningKeyError(f"{path} is an elliptic-curve {what} on {key.curve.name}, which model signing does not support",
                              _KEY_HINT)  # fmt: skip


def load_private_key(path: str | os.PathLike[str]) -> Any:
    """The elliptic-curve private key in the PEM file ``path`` (a :class:`SigningKeyError`
    when it is missing, unreadable, public, encrypted without a password, or of another type)."""
    from cryptography.hazmat.primitives import serialization

    p = Path(path).expanduser()
    data = _read_key_bytes(p, "private key")
    if b"PUBLIC KEY-----" in data:
        raise SigningKeyError(f"{p} is a public key; signing needs the private key", "pass the private key (kedsl keygen writes KEY and KEY.pub)")
    password = os.environ.get(PASSWORD_ENV)
    try:
        key = serialization.load_pem_private_key(data, password.encode() if password else None)
    except TypeError:
        raise SigningKeyError(f"{p} is encrypted", f"set ${PASSWORD_ENV} to its password") from None
    except Exception as exc:  # cryptography raises several types for a bad PEM file
        raise SigningKeyError(f"{p} is not a readable PEM private key ({exc})", _KEY_HINT) from None
    _check_curve(key, p, "private key")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """The elliptic-curve public key in the PEM file ``path`` (a :class:`SigningKeyError`
    when it is missing, unreadable, a private key, or of another type)."""
    from cryptography.hazmat.primitives import serialization

    p = Path(path).expanduser()
    data = _read_key_bytes(p, "public key")
    if b"PRIVATE KEY-----" in data:
        raise SigningKeyError(f"{p} is a private key; verifying takes the public key", "pass KEY.pub (kedsl keygen writes it)")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as exc:  # cryptography raises several types for a bad PEM file
        raise SigningKeyError(f"{p} is not a readable PEM public key ({exc})", _KEY_HINT) from None
    _check_curve(key, p, "public key")
    return key


def key_id(public_key: Any) -> str:
    """The SHA-256 of the public key's DER encoding, as hex: names the key in envelopes."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def generate_key(private_path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new P-256 key pair: the private key to ``private_path`` (mode 0600) and the
    public key beside it with ``.pub`` appended. Refuses to overwrite either."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = Path(private_path).expanduser()
    public = private.with_name(private.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise UsageError(f"{p} exists; kedsl keygen never overwrites a key", "choose another path")
    key = ec.generate_private_key(ec.SECP256R1())
    password = os.environ.get(PASSWORD_ENV)
    encryption = serialization.BestAvailableEncryption(password.encode()) if password else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    private.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@dataclass
class Signer:
    """A private key read once, to sign a statement and then the directory holding it."""

    path: Path
    key: Any

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "Signer":
        return cls(Path(path).expanduser(), load_private_key(path))

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())


# -- DSSE envelopes (the in-toto provenance statement) ---------------------------------------
def _pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what the signature covers."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def _ecdsa(key: Any) -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.ECDSA(getattr(hashes, SUPPORTED_CURVES[key.curve.name])())


def envelope(payload: bytes, private_key: Any | None = None) -> dict[str, Any]:
    """A DSSE envelope of an in-toto statement; signed with ``private_key`` when given."""
    signatures = []
    if private_key is not None:
        sig = private_key.sign(_pae(INTOTO_PAYLOAD_TYPE, payload), _ecdsa(private_key))
        signatures.append({"keyid": key_id(private_key.public_key()), "sig": base64.b64encode(sig).decode()})
    return {"payloadType": INTOTO_PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(), "signatures": signatures}


def envelope_payload(env: dict[str, Any]) -> bytes:
    """The statement bytes of a DSSE envelope (not checked: see :func:`verify_envelope`)."""
    if env.get("payloadType") != INTOTO_PAYLOAD_TYPE or not isinstance(env.get("payload"), str):
        raise ValueError(f"not a DSSE envelope of an in-toto statement (payloadType {env.get('payloadType')!r})")
    return base64.b64decode(env["payload"], validate=True)


def verify_envelope(env: dict[str, Any], public_key: Any) -> bytes:
    """The payload of ``env`` after checking that ``public_key`` signed it; raises
    :class:`SignatureInvalid` saying which key did, when another one did."""
    from cryptography.exceptions import InvalidSignature

    payload = envelope_payload(env)
    signatures = env.get("signatures") or []
    if not signatures:
        raise SignatureInvalid("the attestation is not signed")
    mine = key_id(public_key)
    for s in signatures:
        try:
            public_key.verify(base64.b64decode(s.get("sig", "")), _pae(INTOTO_PAYLOAD_TYPE, payload), _ecdsa(public_key))
            return payload
        except (InvalidSignature, ValueError):
            continue
    others = ", ".join(str(s.get("keyid", "?"))[:16] for s in signatures)
    if any(s.get("keyid") == mine for s in signatures):
        raise SignatureInvalid(f"the attestation's signature by this key ({mine[:16]}) does not verify: the attestation was changed after signing")
    raise SignatureInvalid(f"the attestation was signed by another key ({others}), not by this one ({mine[:16]})")


# -- the model directory's signature (model-signing) -------------------------------------------
def _hashing_config() -> Any:
    from model_signing import hashing

    # The signature file is inside the directory it signs: leave it out (the verifier reads
    # the ignored paths from the signature itself).
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE])


def sign_directory(model_dir: str | os.PathLike[str], private_key_path: str | os.PathLike[str]) -> Path:
    """Sign every file of ``model_dir`` with the elliptic-curve key at ``private_key_path``
    (OpenSSF Model Signing, private-key mode, offline); write ``model.sig`` into it."""
    from model_signing import signing

    load_private_key(private_key_path)  # a clear error before model_signing's own
    d = Path(model_dir)
    password = os.environ.get(PASSWORD_ENV)
    config = signing.Config().set_hashing_config(_hashing_config())
    config.use_elliptic_key_signer(private_key=Path(private_key_path).expanduser(), password=password)
    config.sign(d, d / SIGNATURE_FILE)
    return d / SIGNATURE_FILE


def sign_directory_keyless(model_dir: str | os.PathLike[str], *, use_staging: bool = False) -> Path:
    """Sign ``model_dir`` with sigstore's keyless mode (an OIDC identity, a Fulcio
    certificate, a Rekor entry: needs network access and a browser or ambient credentials)."""
    from model_signing import signing

    d = Path(model_dir)
    config = signing.Config().set_hashing_config(_hashing_config())
    try:
        config.use_sigstore_signer(use_staging=use_staging, use_ambient_credentials=True)
        config.sign(d, d / SIGNATURE_FILE)
    except Exception as exc:  # no network, no identity, a refused token: sigstore's own errors
        raise UsageError(f"keyless signing with sigstore failed: {type(exc).__name__}: {exc}",
                         "keyless signing needs network access to sigstore and an OIDC identity; offline, sign with --key KEY") from None  # fmt: skip
    return d / SIGNATURE_FILE


def verify_directory(
    model_dir: str | os.PathLike[str],
    public_key_path: str | os.PathLike[str] | None = None,
    *,
    identity: str | None = None,
    oidc_issuer: str | None = None,
) -> None:
    """Check ``model.sig`` against every file of ``model_dir``: with a public key
    (private-key mode) or a sigstore identity and issuer (keyless mode). Raises
    :class:`SignatureInvalid` when the signature is not by that key or identity, and
    ``ValueError`` naming the files when the directory differs from what was signed."""
    from model_signing import verifying

    d = Path(model_dir)
    config = verifying.Config()
    if public_key_path is not None:
        config.use_elliptic_key_verifier(public_key=Path(public_key_path).expanduser())
    elif identity and oidc_issuer:
        config.use_sigstore_verifier(identity=identity, oidc_issuer=oidc_issuer)
    else:
        raise UsageError("verifying a model signature needs --key PUB, or --identity and --issuer for a keyless signature")
    try:
        config.verify(d, d / SIGNATURE_FILE)
    except ValueError as exc:
        if str(exc).startswith("Signature mismatch"):
            raise  # the files differ from the signed manifest
        raise SignatureInvalid(f"{SIGNATURE_FILE} does not verify with this key: {exc}") from None
    except Exception as exc:  # malformed bundle, wrong key type inside model_signing
        raise SignatureInvalid(f"{SIGNATURE_FILE} does not verify: {type(exc).__name__}: {exc}") from None
