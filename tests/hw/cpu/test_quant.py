"""Model conversion (llmos.hw.cpu.quant): loadable, cached once, rebuilt when corrupt, clear
errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmos.errors import LlmosError
from llmos.hw.cpu.engine import GGUF_MAGIC, Engine
from llmos.hw.cpu.llama import embedded_model_path
from llmos.hw.cpu.quant import cached_path, prepared_model


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    cache = tmp_path_factory.mktemp("models")
    return cache, prepared_model(embedded_model_path(), cache, "q8_0")


def test_conversion_is_a_loadable_gguf(converted: tuple[Path, Path]) -> None:
    cache, path = converted
    assert path == cache / "SmolLM2-135M-Instruct.q8_0.gguf"
    assert path.read_bytes()[:4] == GGUF_MAGIC
    assert not list(cache.glob("*.tmp"))
    engine = Engine(path, n_ctx=512, n_seq_max=1)
    try:
        seq = engine.new_sequence(engine.tokenize("The capital of France is"), temperature=0.0)
        engine.admit(seq)
        out: list[int] = []
        while len(out) < 4:
            out.extend(engine.step([seq]).get(seq) or [])
        assert len(out) == 4
        engine.finish(seq)
    finally:
        engine.close()


def test_second_call_uses_the_cache(converted: tuple[Path, Path]) -> None:
    cache, path = converted
    before = path.stat().st_mtime_ns
    assert prepared_model(embedded_model_path(), cache, "Q8_0") == path
    assert path.stat().st_mtime_ns == before


def test_shipped_format_is_the_shipped_file(tmp_path: Path) -> None:
    shipped = embedded_model_path()
    assert prepared_model(shipped, tmp_path, "q4_1") == shipped
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", [b"", b"NOPE" + b"\0" * 4096])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, damage: bytes) -> None:
    shipped = embedded_model_path()
    target = cached_path(shipped, tmp_path, "q4_0")
    target.write_bytes(damage)
    path = prepared_model(shipped, tmp_path, "q4_0")
    assert path == target
    assert path.stat().st_size > 1_000_000
    assert path.read_bytes()[:4] == GGUF_MAGIC


def test_unknown_ftype_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlmosError, match=r"unknown model quantization 'q3_k'.*q8_0"):
        prepared_model(embedded_model_path(), tmp_path, "q3_k")
