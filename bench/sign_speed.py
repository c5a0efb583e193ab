"""Time to sign and verify a saved SmolLM2-135M model directory (OpenSSF Model Signing,
private-key mode, plus kedsl's signed in-toto attestation).

    .venv/bin/python bench/sign_speed.py [--json-out bench/results/sign_speed.json]

Saves the embedded SmolLM2-135M-Instruct once through `kedsl apply` (a script without
edits), then times, each `--repeat` times (the median is reported):

- sign: what `kedsl sign DIR --key KEY` does (check every file against the log, sign the
  attestation, model_signing over every file);
- verify (model_signing): the standard verifier alone, with the public key;
- verify (kedsl): what `kedsl verify --model DIR --key PUB` does (the log, every file
  against the log, the signature, the signed attestation and lineage, and loading the
  weights to recompute their fingerprint).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def _median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    from model_signing import verifying

    from kedsl import api
    from kedsl.provenance.attestation import sign_saved
    from kedsl.provenance.signing import Signer, generate_key
    from kedsl.provenance.store import Store
    from kedsl.provenance.verify import verify_log, verify_model

    with tempfile.TemporaryDirectory(prefix="kedsl-sign-speed-") as tmp:
        root = Path(tmp)
        script = root / "save.ke"
        script.write_text(f'model "{args.model}";\nsave to "{root / "model"}";\n')
        t = time.perf_counter()
        api.apply(script, db=root / "k.db", argv=["bench/sign_speed.py"])
        save_s = time.perf_counter() - t
        model_dir = root / "model"
        files = [p for p in model_dir.rglob("*") if p.is_file()]
        size_mib = sum(p.stat().st_size for p in files) / 2**20
        private, public = generate_key(root / "key")
        signer = Signer.from_file(private)

        with Store.open(root / "k.db") as store:
            sign_s = _median_seconds(lambda: sign_saved(store, model_dir, signer), args.repeat)

        def standard() -> None:
            verifying.Config().use_elliptic_key_verifier(public_key=public).verify(model_dir, model_dir / "model.sig")

        def kedsl_verify() -> None:
            with Store.open(root / "k.db", readonly=True) as store:
                result = verify_log(store)
                verify_model(store, model_dir, result, public_key=public)
                assert result.ok, result.findings

        verify_ms_s = _median_seconds(standard, args.repeat)
        verify_kedsl_s = _median_seconds(kedsl_verify, args.repeat)

    result = {
        "model": args.model, "files": len(files), "size_mib": round(size_mib, 1), "repeat": args.repeat,
        "save_seconds": round(save_s, 2), "sign_seconds": round(sign_s, 3),
        "verify_model_signing_seconds": round(verify_ms_s, 3), "verify_kedsl_seconds": round(verify_kedsl_s, 3),
    }  # fmt: skip
    print(f"{args.model}: {len(files)} files, {size_mib:.1f} MiB (median of {args.repeat})")
    print(f"  sign (kedsl sign: file check, attestation, model_signing): {sign_s:.2f} s")
    print(f"  verify with model_signing alone:                         {verify_ms_s:.2f} s")
    print(f"  verify with kedsl verify --model --key (loads weights):  {verify_kedsl_s:.2f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
