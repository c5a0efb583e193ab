"""Signed, standard attestations of edited models, end to end through the `kedsl` command
on a tiny model: `keygen`, `apply --sign`, `sign`, `verify --model --key`; the in-toto
statement's schema; model signing's own verifier (no kedsl code) accepting the signature;
and each attack of the threat list caught with its message and exit code:

- one byte changed in any file (weights, config, tokenizer, the card, kedsl.json, an
  attachment, the statement itself);
- a signature from another key;
- a rewritten database whose chain verifies on its own;
- a deleted attachment;
- a swapped tokenizer;
- a replayed attestation of another model;
- a missing or unreadable key, a key of the wrong type.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_audit import install_test_plugin, kedsl_env, rewrite_history, run_kedsl, run_without_torch, save_tiny_base

from kedsl.errors import ExitCode

ATTACK_EXIT = int(ExitCode.EXPECTATION_FAILED)  # content that is not what was signed/recorded


def _script(base: Path, out: Path, subjects: tuple[str, ...] = ("Eiffel Tower", "Louvre")) -> str:
    lines = [f'model "{base}";', ""]
    for i, s in enumerate(subjects):
        lines.append(f'edit prompt "{s} is located in" subject "{s}" -> "Rome" using nudge(layer={i + 1}) expect moved;')
    # An in-context memory: an attachment saved beside the weights.
    lines.append('edit prompt "The Colosseum is in" subject "Colosseum" -> "Paris" using ike(layer=1, threshold=0.9999);')
    return "\n".join(lines + ["", f'save to "{out}";']) + "\n"


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_tokenizer):
    """Two signed models (A, B) from one database, a key pair and a second (foreign) key pair."""
    root = tmp_path_factory.mktemp("signing")
    plugin = install_test_plugin(root / "plugin")
    base = save_tiny_base(tiny_tokenizer, root / "base")
    env = kedsl_env(plugin, root / "k.db")
    keys = root / "keys"
    for name in ("mine", "other"):
        proc = run_kedsl(["keygen", str(keys / name)], env)
        assert proc.returncode == 0, proc.stderr
    (root / "a.ke").write_text(_script(base, root / "A"))
    (root / "b.ke").write_text(_script(base, root / "B", ("Big Ben",)))
    for name in ("a.ke", "b.ke"):
        proc = run_kedsl(["apply", name, "--sign", str(keys / "mine")], env, cwd=root)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "signed with" in proc.stdout
    return {"root": root, "env": env, "base": base, "key": keys / "mine", "pub": keys / "mine.pub",
            "other": keys / "other", "other_pub": keys / "other.pub", "A": root / "A", "B": root / "B"}  # fmt: skip


def _copy(signed: dict, tmp_path: Path, which: str = "A", with_db: bool = False) -> tuple[Path, dict]:
    """A copy of a signed model (and, for attacks on the database, of the database)."""
    target = tmp_path / which
    shutil.copytree(signed[which], target)
    env = dict(signed["env"])
    if with_db:
        db = tmp_path / "k.db"
        shutil.copy(env["KEDSL_DB"], db)
        shutil.copytree(env["KEDSL_DB"] + ".blobs", str(db) + ".blobs")
        env["KEDSL_DB"] = str(db)
    return target, env


def _verify(model: Path, env: dict, key: Path | None) -> subprocess.CompletedProcess:
    return run_kedsl(["verify", "--model", str(model)] + (["--key", str(key)] if key else []), env)


def test_signed_model_verifies_with_kedsl_and_with_model_signing_alone(signed):
    proc = _verify(signed["A"], signed["env"], signed["pub"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "model.sig and the attestation verify" in proc.stdout and "every file as recorded" in proc.stdout
    # The standard tool, in a process that never imports kedsl.
    code = (
        "import sys, model_signing\n"
        "model_signing.verifying.Config().use_elliptic_key_verifier(public_key=sys.argv[2]).verify(sys.argv[1], sys.argv[1] + '/model.sig')\n"
        "assert not any(m == 'kedsl' or m.startswith('kedsl.') for m in sys.modules)\n"
        "print('verified')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(signed["A"]), str(signed["pub"])], capture_output=True, text=True)
    assert proc.returncode == 0 and "verified" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-c", code, str(signed["A"]), str(signed["other_pub"])], capture_output=True, text=True)
    assert proc.returncode != 0


def test_the_attestation_is_an_in_toto_statement_of_every_file_with_slsa_provenance(signed):
    from kedsl.provenance.attestation import directory_digests
    from kedsl.provenance.signing import load_public_key, verify_envelope

    env = json.loads((signed["A"] / "kedsl.intoto.json").read_text())
    assert env["payloadType"] == "application/vnd.in-toto+json" and len(env["signatures"]) == 1
    statement = json.loads(verify_envelope(env, load_public_key(signed["pub"])))
    assert statement == json.loads(base64.b64decode(env["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    subject = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert subject == directory_digests(signed["A"])
    names = set(subject)
    for needed in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "kedsl.json", "README.md"):
        assert needed in names, names
    assert any(n.startswith("attachments/") for n in names) and "model.sig" not in names and "kedsl.intoto.json" not in names

    record = json.loads((signed["A"] / "kedsl.json").read_text())
    run_id = record["provenance"]["run_id"]
    p = statement["predicate"]
    ext = p["buildDefinition"]["externalParameters"]
    assert ext["kind"] == "apply" and ext["script"]["text"] == (signed["root"] / "a.ke").read_text()
    import hashlib

    assert ext["script"]["sha256"] == hashlib.sha256(ext["script"]["text"].encode()).hexdigest() and ext["seed"] == 0
    base = p["buildDefinition"]["resolvedDependencies"][0]
    assert base["name"] == "model:base" and base["uri"] == str(signed["base"])
    assert p["buildDefinition"]["internalParameters"]["fingerprint_after"] == record["fingerprint"]
    version = p["runDetails"]["builder"]["version"]
    assert version["plugin:audit_test"] == "0.1" and "torch" in version and "kedsl" in version
    assert p["runDetails"]["metadata"]["invocationId"] == run_id
    head, *edits = p["runDetails"]["byproducts"]
    assert head["name"] == "audit-log-head" and head["annotations"]["event"] > 0
    assert [e["name"] for e in edits] == [f"edit:{run_id}-e{i}" for i in range(3)]
    nudge = edits[0]["annotations"]
    assert nudge["method"] == "nudge" and nudge["status"] == "applied" and nudge["params"]["layer"] == 1
    assert nudge["request"]["target"] == "Rome" and nudge["metrics"][0]["metric"] == "moved" and nudge["metrics"][0]["passed"] == 1
    assert edits[0]["digest"]["sha256"]  # the outcome blob
    assert edits[2]["annotations"]["method"] == "ike" and edits[2]["annotations"]["attachments"]


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "kedsl.json",
                                  "README.md", "attachments"])  # fmt: skip
def test_one_byte_changed_in_any_file_is_caught_and_named(signed, tmp_path, name):
    model, env = _copy(signed, tmp_path)
    target = model / name
    if name == "attachments":
        target = sorted(p for p in target.rglob("*") if p.is_file())[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    rel = target.relative_to(model).as_posix()
    for key in (signed["pub"], None):  # with the key, and against the log alone
        proc = _verify(model, env, key)
        assert proc.returncode == ATTACK_EXIT, proc.stdout + proc.stderr
        assert f"{rel} was changed" in proc.stdout, proc.stdout
        assert "Traceback" not in proc.stderr
    assert "its signature was not checked: pass --key PUB" in proc.stdout


@pytest.mark.parametrize("how", ["flip", "garbage"])
def test_a_changed_attestation_or_signature_file_is_caught(signed, tmp_path, how):
    model, env = _copy(signed, tmp_path)
    for name in ("kedsl.intoto.json", "model.sig"):
        original = (model / name).read_bytes()
        data = bytearray(original)
        data[len(data) // 2] ^= 0x01
        (model / name).write_bytes(bytes(data) if how == "flip" else b"{not json")
        proc = _verify(model, env, signed["pub"])
        assert proc.returncode in (ATTACK_EXIT, int(ExitCode.SIGNATURE)), (name, proc.stdout, proc.stderr)
        assert name in proc.stdout and "Traceback" not in proc.stderr, (name, proc.stdout, proc.stderr)
        if name == "kedsl.intoto.json":  # the log recorded its statement: caught without the key too
            proc = _verify(model, env, None)
            assert proc.returncode == ATTACK_EXIT and "kedsl.intoto.json" in proc.stdout, proc.stdout + proc.stderr
        (model / name).write_bytes(original)
    assert _verify(model, env, signed["pub"]).returncode == 0


def test_a_signature_from_another_key_is_caught(signed, tmp_path):
    model, env = _copy(signed, tmp_path)
    proc = _verify(model, env, signed["other_pub"])
    assert proc.returncode == int(ExitCode.SIGNATURE), proc.stdout + proc.stderr
    assert "signed by another key" in proc.stdout
    # Re-signed by someone else's key: kedsl sign refuses nothing there, but the owner's key no longer verifies.
    proc = run_kedsl(["sign", str(model), "--key", str(signed["other"])], env)
    assert proc.returncode == 0, proc.stderr
    proc = _verify(model, env, signed["pub"])
    assert proc.returncode == int(ExitCode.SIGNATURE) and "signed by another key" in proc.stdout


def test_a_rewritten_database_whose_chain_verifies_is_caught_against_the_signed_model(signed, tmp_path):
    model, env = _copy(signed, tmp_path, with_db=True)

    def double_amount(kind: str, payload: dict) -> None:  # the nudge edits' parameters, in their events
        if kind == "edit":
            payload["params"] = payload["params"].replace('"amount":0.01', '"amount":0.02')

    rewrite_history(Path(env["KEDSL_DB"]), "UPDATE edits SET params = replace(params, '\"amount\":0.01', '\"amount\":0.02')", double_amount)
    assert run_kedsl(["verify"], env).returncode == 0  # the chain verifies on its own
    proc = _verify(model, env, signed["pub"])
    assert proc.returncode == ATTACK_EXIT, proc.stdout + proc.stderr
    assert "the database was rewritten after" in proc.stdout and "(params)" in proc.stdout


def test_a_rewritten_run_in_the_database_is_caught_against_the_signed_model(signed, tmp_path):
    model, env = _copy(signed, tmp_path, with_db=True)

    def seed_seven(kind: str, payload: dict) -> None:
        if kind == "run_started":
            payload["seed"] = 7

    rewrite_history(Path(env["KEDSL_DB"]), "UPDATE runs SET seed = 7", seed_seven)
    assert run_kedsl(["verify"], env).returncode == 0
    proc = _verify(model, env, signed["pub"])
    assert proc.returncode == ATTACK_EXIT and "differs from the signed attestation (seed)" in proc.stdout, proc.stdout


def test_a_deleted_attachment_is_caught(signed, tmp_path):
    model, env = _copy(signed, tmp_path)
    (folder,) = [p for p in (model / "attachments").iterdir() if p.is_dir()]
    shutil.rmtree(folder)
    for key in (signed["pub"], None):
        proc = _verify(model, env, key)
        assert proc.returncode == ATTACK_EXIT, proc.stdout + proc.stderr
        assert f"attachments/{folder.name}/" in proc.stdout and "is missing" in proc.stdout


def test_a_swapped_tokenizer_is_caught(signed, tmp_path):
    model, env = _copy(signed, tmp_path)
    tok = json.loads((model / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[10:12]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # a tokenizer that loads and behaves differently
    (model / "tokenizer.json").write_text(json.dumps(tok))
    (model / "tokenizer_config.json").write_text((model / "tokenizer_config.json").read_text().replace("}", ', "chat_template": "{{ messages }}"}', 1))
    proc = _verify(model, env, signed["pub"])
    assert proc.returncode == ATTACK_EXIT, proc.stdout
    assert "tokenizer.json was changed" in proc.stdout and "tokenizer_config.json was changed" in proc.stdout


def test_a_replayed_attestation_of_another_model_is_caught(signed, tmp_path):
    model, env = _copy(signed, tmp_path, "A")
    for name in ("kedsl.intoto.json", "model.sig"):  # B's signed attestation and signature, in A
        shutil.copy(signed["B"] / name, model / name)
    proc = _verify(model, env, signed["pub"])
    assert proc.returncode == ATTACK_EXIT, proc.stdout
    assert "an attestation of another model" in proc.stdout
    # Without the key the log catches it too: it is not the statement recorded for A's save.
    proc = _verify(model, env, None)
    assert proc.returncode == ATTACK_EXIT and "holds another statement" in proc.stdout


def test_an_unsigned_model_fails_verification_with_a_key(signed, tmp_path):
    model, env = _copy(signed, tmp_path)
    (model / "model.sig").unlink()
    proc = _verify(model, env, signed["pub"])
    assert proc.returncode == int(ExitCode.SIGNATURE) and "was not signed" in proc.stdout


def test_kedsl_sign_signs_an_unchanged_directory_and_refuses_a_changed_one(signed, tmp_path):
    model, env = _copy(signed, tmp_path)
    for name in ("model.sig",):
        (model / name).unlink()
    proc = run_kedsl(["sign", str(model), "--key", str(signed["key"])], env)
    assert proc.returncode == 0 and "signed" in proc.stdout, proc.stderr
    assert _verify(model, env, signed["pub"]).returncode == 0
    (model / "config.json").write_text((model / "config.json").read_text().replace("{", '{"x": 1, ', 1))
    proc = run_kedsl(["sign", str(model), "--key", str(signed["key"])], env)
    assert proc.returncode == 2 and "config.json was changed" in proc.stderr and "will not sign" in proc.stderr


def _wrong_keys(tmp_path: Path, signed: dict) -> dict[str, tuple[Path, str]]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    def pem(key, private: bool) -> bytes:
        if private:
            return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    k1_key = ec.generate_private_key(ec.SECP256K1())
    files = {"rsa": pem(rsa_key, True), "rsa.pub": pem(rsa_key, False), "ed25519": pem(ed_key, True),
             "ed25519.pub": pem(ed_key, False), "k1.pub": pem(k1_key, False), "garbage": b"not a key\n"}  # fmt: skip
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    unreadable = tmp_path / "unreadable.pub"
    unreadable.write_bytes(signed["pub"].read_bytes())
    unreadable.chmod(0)
    return {
        "missing": (tmp_path / "nope.pub", "no public key at"),
        "garbage": (tmp_path / "garbage", "not a readable PEM public key"),
        "rsa": (tmp_path / "rsa.pub", "is an RSA public key"),
        "ed25519": (tmp_path / "ed25519.pub", "is an Ed25519 public key"),
        "secp256k1": (tmp_path / "k1.pub", "on secp256k1"),
        "private-for-public": (signed["key"], "is a private key"),
        "unreadable": (unreadable, "cannot read"),
    }


def test_missing_unreadable_and_wrong_type_keys_are_clear_errors(signed, tmp_path):
    import os

    model, env = _copy(signed, tmp_path)
    cases = _wrong_keys(tmp_path, signed)
    if os.geteuid() == 0:  # root reads files of any mode
        cases.pop("unreadable")
    for label, (key, message) in cases.items():
        proc = _verify(model, env, key)
        assert proc.returncode == int(ExitCode.KEY), (label, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, (label, proc.stderr)
    # Signing: a public key, an RSA key, no key.
    for key, message in [(signed["pub"], "is a public key"), (tmp_path / "rsa", "is an RSA private key"),
                         (tmp_path / "nope", "no private key at")]:  # fmt: skip
        proc = run_kedsl(["sign", str(model), "--key", str(key)], env)
        assert proc.returncode == int(ExitCode.KEY) and message in proc.stderr, proc.stderr


def test_apply_with_a_bad_key_fails_before_editing(signed, tmp_path):
    (tmp_path / "s.ke").write_text(_script(signed["base"], tmp_path / "out"))
    env = dict(signed["env"], KEDSL_DB=str(tmp_path / "fresh.db"))
    proc = run_kedsl(["apply", "s.ke", "--sign", str(tmp_path / "missing-key")], env, cwd=tmp_path)
    assert proc.returncode == int(ExitCode.KEY) and "no private key at" in proc.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "nosave.ke").write_text(_script(signed["base"], tmp_path / "out").replace(f'save to "{tmp_path / "out"}";', ""))
    proc = run_kedsl(["apply", "nosave.ke", "--sign", str(signed["key"])], env, cwd=tmp_path)
    assert proc.returncode == 2 and "this run saves none" in proc.stderr


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    from kedsl.provenance.signing import generate_key, load_private_key, load_public_key

    private, public = generate_key(tmp_path / "k")
    assert public == tmp_path / "k.pub" and (private.stat().st_mode & 0o777) == 0o600
    assert load_private_key(private).public_key().public_numbers() == load_public_key(public).public_numbers()
    from kedsl.errors import UsageError

    with pytest.raises(UsageError, match="never overwrites"):
        generate_key(tmp_path / "k")


def test_an_encrypted_key_needs_its_password(tmp_path, monkeypatch):
    from kedsl.errors import SigningKeyError
    from kedsl.provenance.signing import PASSWORD_ENV, generate_key, load_private_key

    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    private, _ = generate_key(tmp_path / "k")
    assert load_private_key(private)
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(SigningKeyError, match="encrypted"):
        load_private_key(private)


@pytest.mark.parametrize("command", [["keygen", "KEY"], ["verify"]])
def test_keygen_and_verify_without_model_do_not_import_torch(command, tmp_path):
    from kedsl.provenance.store import Store

    db = tmp_path / "k.db"
    with Store.open(db) as store:
        store.end_run(store.begin_run(script_text="x"), "ok")
    argv = [str(tmp_path / "key") if a == "KEY" else a for a in command] + (["--db", str(db)] if command[0] == "verify" else [])
    proc = run_without_torch(argv)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert command[0] != "keygen" or (tmp_path / "key.pub").is_file()


def test_the_statement_records_data_files_trained_editors_and_the_runs_before(tmp_path):
    from kedsl.provenance.attestation import build_statement
    from kedsl.provenance.store import Store

    with Store.open(tmp_path / "k.db") as store:
        first = store.begin_run(script_text="a", fingerprint_before="f0", model_ref="base", versions={"kedsl": "1", "plugins": {"p": "2"}})
        sha = store.record_data_file(first, b"subject,prompt,target\nS,p S,T\n", path="facts.csv", file="/d/facts.csv",
                                     display="facts.csv", format="csv", layout=None, rows=1)  # fmt: skip
        store.record_edit(first, 0, "S", {"prompt": "p S", "target": "T"}, "rome", {"layer": 3}, "applied", 0.1, {}, "b" * 64, [],
                          data_sha256=sha, data_row=1)  # fmt: skip
        store.end_run(first, "ok", fingerprint_after="f1")
        second = store.begin_run(script_text="b", fingerprint_before="f1", model_ref="/m/a")
        store.record_edit(second, 0, "X", {"prompt": "p X", "target": "Y"}, "mend", {}, "applied", 0.1,
                          {"editor": "/editors/mend", "editor_sha256": "e" * 64}, "c" * 64, [])  # fmt: skip
        statement = build_statement(store, second, {"config.json": "d" * 64}, "f2")
    p = statement["predicate"]
    deps = {d["name"]: d for d in p["buildDefinition"]["resolvedDependencies"]}
    assert deps["model:base"]["uri"] == "base" and deps["model:base"]["digest"] == {"sha256": "f0"}
    assert deps[f"run:{first}"]["digest"] == {"sha256": "f1"}  # the run whose output this run edited
    assert deps["data:facts.csv"]["digest"] == {"sha256": sha} and deps["data:facts.csv"]["annotations"]["rows"] == 1
    assert deps["editor:/editors/mend"]["digest"] == {"sha256": "e" * 64}
    edits = [b for b in p["runDetails"]["byproducts"] if b["name"].startswith("edit:")]
    assert [e["name"] for e in edits] == [f"edit:{first}-e0", f"edit:{second}-e0"]  # the whole lineage, oldest first
    assert edits[0]["annotations"]["data_sha256"] == sha and edits[0]["annotations"]["data_row"] == 1
    assert statement["subject"] == [{"name": "config.json", "digest": {"sha256": "d" * 64}}]
    assert p["buildDefinition"]["internalParameters"]["fingerprint_after"] == "f2"
