"""Model quantization: convert the shipped GGUF once to a faster weight format, and cache it.

Design note. The embedded model ships as Q4_1. On CPUs llama.cpp has faster kernels for other
formats (IQ4_NL, Q4_0 and Q8_0 have repacked and wider SIMD paths), so converting the weights can
be the largest single speed lever; it costs some quality (IQ4_NL and Q4_0 re-encode Q4_1's 4-bit
weights on another grid; Q8_0 re-encodes them almost losslessly but is twice the size).
`bench/quant.py` measures both sides; `llmos.hw.cpu.weights` chooses per kind of CPU.

`prepared_model(shipped, cache_dir, ftype)` returns the file to load: the shipped file itself
for the shipped format, else `<cache_dir>/<model>.<ftype>.gguf`, converted on first use with
llama.cpp's quantizer (`llama_model_quantize`, `allow_requantize` since the source is already
quantized). A conversion of the 135M model takes a few seconds, so it is done at first boot
rather than at install time and kept.

Invariants:
- The cached file is complete or absent: the quantizer writes a temporary file in the same
  directory, which is checked (GGUF magic, plausible size) and then renamed over the target
  with `os.replace` (atomic on POSIX).
- Two processes booting at once convert once: an exclusive `flock` on `<target>.lock` is held
  around the check-and-convert, and the second one finds the finished file.
- A cached file that is not a GGUF (bad magic), too small to be one (size 0, truncated), or
  older than the shipped file is rebuilt.

What this module does not do: choose the format (`llmos.hw.cpu.weights` does) or
load the model (see `llmos.hw.cpu.engine`).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import llama_cpp as ll

from llmos import params
from llmos.errors import LlmosError, ModelError
from llmos.hw.cpu.engine import GGUF_MAGIC, init_backend

# llama.cpp's file types for the formats we convert to.
_FTYPES: dict[str, int] = {
    "iq4_nl": ll.LLAMA_FTYPE_MOSTLY_IQ4_NL,
    "q4_0": ll.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q8_0": ll.LLAMA_FTYPE_MOSTLY_Q8_0,
}


def model_stem(shipped: Path) -> str:
    """`SmolLM2-135M-Instruct` for `SmolLM2-135M-Instruct.Q4_1.gguf` (name without the
    quantization tag and the suffix)."""
    name = shipped.name.removesuffix(".gguf")
    base, dot, tag = name.rpartition(".")
    return base if dot and tag.lower() in params.QUANT_FTYPES else name


def cached_path(shipped: Path, cache_dir: Path, ftype: str) -> Path:
    return cache_dir / f"{model_stem(shipped)}.{ftype}.gguf"


def is_valid(path: Path, shipped: Path | None = None) -> bool:
    """Whether `path` looks like a complete converted GGUF (and is not older than `shipped`)."""
    try:
        st = path.stat()
        if st.st_size < params.QUANT_MIN_BYTES:
            return False
        if shipped is not None and st.st_mtime < shipped.stat().st_mtime:
            return False
        with path.open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


def prepared_model(shipped: Path, cache_dir: Path, ftype: str) -> Path:
    """The GGUF to load for weight format `ftype` (see the module note); converts on first use.

    Raises LlmosError for an unknown `ftype`, ModelError if the conversion fails."""
    key = ftype.strip().lower()
    if key == params.QUANT_SHIPPED:
        return shipped
    if key not in _FTYPES:
        known = ", ".join(params.QUANT_FTYPES)
        raise LlmosError(f"unknown model quantization '{ftype}': use one of {known}")
    target = cached_path(shipped, cache_dir, key)
    if is_valid(target, shipped):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create model cache {cache_dir}: {exc.strerror}") from exc
    with _locked(target.with_name(target.name + ".lock")):
        if is_valid(target, shipped):  # another process converted it while we waited
            return target
        _convert(shipped, target, _FTYPES[key])
    return target


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ModelError(f"cannot create lock file {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _convert(shipped: Path, target: Path, ftype: int) -> None:
    if not shipped.is_file():
        raise ModelError(f"{shipped}: model file does not exist")
    init_backend()
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    qparams = ll.llama_model_quantize_default_params()
    qparams.ftype = ftype
    qparams.allow_requantize = True
    qparams.nthread = params.EMBEDDED_N_THREADS or (os.cpu_count() or 1)
    try:
        rc = ll.llama_model_quantize(
            str(shipped).encode(), str(tmp).encode(), ctypes.byref(qparams)
        )
        if rc != 0 or not is_valid(tmp):
            raise ModelError(f"{shipped}: converting to {target.name} failed (llama.cpp rc {rc})")
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
