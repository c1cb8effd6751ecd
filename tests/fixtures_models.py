"""Shared, session-scoped tiny models and GGUFs, and a fake Ollama (``pytest_plugins``).

Building the tiny model and converting it cost seconds each, so every test module that needs
them shares one build; the two GGUFs are converted side by side.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from lorainbox.export.gguf import GGUFInfo, convert_to_gguf

from tests.fake_ollama import FakeOllama


@dataclass
class Exported:
    info: GGUFInfo
    progress: list[tuple[str, float | None]] = field(default_factory=list)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lorainbox.models.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """The tiny model as f16 and as q8_0, converted concurrently (each is its own process)."""
    out = tmp_path_factory.mktemp("gguf")

    def convert(outtype: str) -> Exported:
        events: list[tuple[str, float | None]] = []
        info = convert_to_gguf(
            tiny_hf,
            out / outtype / "model.gguf",
            outtype,  # type: ignore[arg-type]
            on_progress=lambda stage, frac: events.append((stage, frac)),
        )
        return Exported(info, events)

    with ThreadPoolExecutor(2) as pool:
        f16, q8 = pool.map(convert, ["f16", "q8_0"])
    return {"f16": f16, "q8_0": q8}


@pytest.fixture(scope="session")
def tiny_wide_ggufs(tiny_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model as f32 and bf16, the sources Ollama quantizes only sometimes."""
    out = tmp_path_factory.mktemp("gguf-wide")

    def convert(outtype: str) -> Path:
        return convert_to_gguf(tiny_hf, out / outtype / "model.gguf", outtype).path  # type: ignore[arg-type]

    with ThreadPoolExecutor(2) as pool:
        f32, bf16 = pool.map(convert, ["f32", "bf16"])
    return {"f32": f32, "bf16": bf16}


@pytest.fixture
def tiny_gguf(tiny_ggufs: dict[str, Exported]) -> Path:
    return tiny_ggufs["f16"].info.path


@pytest.fixture
def fake_ollama(tmp_path: Path) -> Iterator[FakeOllama]:
    with FakeOllama(tmp_path / "ollama-models") as fake:
        yield fake
