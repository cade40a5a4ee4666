"""The embedded model's weight format per machine (llmos.hw.cpu.weights): the rule, the record
made at first boot and reused, a damaged record made again, the override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmos import params
from llmos.errors import LlmosError
from llmos.hw.cpu import weights
from tests.conftest import RunCli

FAST = {"speedup_prefill": 2.0, "speedup_n1": 1.3, "speedup_n16": 1.5}
GOOD = {"agreement": 0.97, "ppl_ratio": 1.01}
TABLE = {
    "x86-avx2": {
        "q8_0": {**FAST, **GOOD},
        "q4_0": {**FAST, "speedup_n16": 1.9, "agreement": 0.70, "ppl_ratio": 1.20},
        "iq4_nl": {**FAST, "speedup_n16": 1.8, "agreement": 0.85, "ppl_ratio": 1.04},
    },
    "no-repack": {"q8_0": {**GOOD, "speedup_prefill": 2.1, "speedup_n1": 0.8, "speedup_n16": 1.07}},
}


def test_cpu_kind_from_llama_cpp_features() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | FMA = 1 | REPACK = 1 | "
    features = weights.parse_system_info(info)
    assert {"AVX2", "FMA", "REPACK"} <= features and "AVX512" not in features
    assert weights.cpu_kind(features, extra_buffers=True) == "x86-avx2"
    assert weights.cpu_kind(features | {"AVX512"}, extra_buffers=True) == "x86-avx512"
    assert weights.cpu_kind(features, extra_buffers=False) == "no-repack"  # AMX machines
    assert weights.cpu_kind({"NEON", "MATMUL_INT8"}, extra_buffers=True) == "arm-i8mm"
    assert weights.cpu_kind({"NEON"}, extra_buffers=True) == "arm-neon"
    assert weights.cpu_kind(set(), extra_buffers=True) == "other"


def test_this_machine_has_a_kind() -> None:
    assert weights.this_cpu_kind() in {
        "x86-avx512",
        "x86-avx2",
        "arm-i8mm",
        "arm-neon",
        "no-repack",
        "other",
    }


def test_choice_takes_the_fastest_format_that_passes_the_quality_gate() -> None:
    ftype, reason = weights.choose("x86-avx2", TABLE)
    # q4_0 and iq4_nl are faster at N=16 but fail agreement (and q4_0 perplexity).
    assert ftype == "q8_0"
    assert "1.50x" in reason and "x86-avx2" in reason
    # On a CPU whose conversions are slower for one process, the shipped file stays.
    assert weights.choose("no-repack", TABLE)[0] == params.QUANT_SHIPPED
    assert "no conversion" in weights.choose("no-repack", TABLE)[1]
    # A kind never measured keeps the default.
    assert weights.choose("arm-neon", TABLE) == (
        params.EMBEDDED_QUANT,
        f"{params.EMBEDDED_QUANT}: the default (no measurement on a arm-neon CPU)",
    )
    loose = {"x86-avx2": {**TABLE["x86-avx2"], "iq4_nl": {**FAST, "speedup_n16": 1.8, **GOOD}}}
    assert weights.choose("x86-avx2", loose)[0] == "iq4_nl"
    slow = {"x86-avx2": {"q8_0": {**GOOD, **FAST, "speedup_n16": params.QUANT_MIN_SPEEDUP - 0.01}}}
    assert weights.choose("x86-avx2", slow)[0] == params.QUANT_SHIPPED


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params, "QUANT_MEASURED", TABLE)
    monkeypatch.delenv(params.ENV_EMBEDDED_QUANT, raising=False)


@pytest.mark.usefixtures("table")
def test_first_boot_records_the_choice_and_later_boots_reuse_it(tmp_path: Path) -> None:
    models = tmp_path / "models"
    first = weights.embedded_format(models, kind="x86-avx2")
    assert (first.ftype, first.source) == ("q8_0", "chosen")
    record = json.loads((models / weights.RECORD_NAME).read_text())
    assert record["ftype"] == "q8_0" and record["cpu"] == "x86-avx2"
    assert record["table"] == params.QUANT_TABLE_VERSION
    assert not list(models.glob(".*.tmp"))
    # The record is what later boots go by (not the table again).
    record["ftype"], record["reason"] = "q4_0", "q4_0: as recorded"
    (models / weights.RECORD_NAME).write_text(json.dumps(record))
    again = weights.embedded_format(models, kind="x86-avx2")
    assert (again.ftype, again.reason, again.source) == ("q4_0", "q4_0: as recorded", "recorded")


@pytest.mark.usefixtures("table")
@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"\xff\xfe not json",
        b'{"ftype": "q8_0", "reason": "x"',
        b'["q8_0"]',
        b'{"ftype": "q9_9", "reason": "x", "cpu": "x86-avx2", "table": 2}',
        b'{"ftype": "q4_0", "reason": "x", "cpu": "arm-neon", "table": 2}',
        b'{"ftype": "q4_0", "reason": "x", "cpu": "x86-avx2", "table": -1}',
    ],
)
def test_a_damaged_or_outdated_record_is_made_again(tmp_path: Path, damage: bytes) -> None:
    (tmp_path / weights.RECORD_NAME).write_bytes(damage)
    choice = weights.embedded_format(tmp_path, kind="x86-avx2")
    assert (choice.ftype, choice.source) == ("q8_0", "chosen")
    assert json.loads((tmp_path / weights.RECORD_NAME).read_text())["ftype"] == "q8_0"


@pytest.mark.usefixtures("table")
def test_the_override_wins_and_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights.embedded_format(tmp_path, kind="x86-avx2")
    before = (tmp_path / weights.RECORD_NAME).read_bytes()
    monkeypatch.setenv(params.ENV_EMBEDDED_QUANT, " IQ4_NL ")
    choice = weights.embedded_format(tmp_path, kind="x86-avx2")
    assert (choice.ftype, choice.source) == ("iq4_nl", "env")
    assert (tmp_path / weights.RECORD_NAME).read_bytes() == before
    monkeypatch.setenv(params.ENV_EMBEDDED_QUANT, "q3_k")
    with pytest.raises(LlmosError, match="unknown model quantization 'q3_k'"):
        weights.embedded_format(tmp_path, kind="x86-avx2")


@pytest.mark.usefixtures("table")
def test_an_unwritable_home_still_gets_a_choice(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    choice = weights.embedded_format(blocked / "models", kind="x86-avx2")
    assert (choice.ftype, choice.source) == ("q8_0", "chosen")


def test_models_shows_the_weight_format_and_why(run_cli: RunCli, home: Path) -> None:
    unset = {params.ENV_EMBEDDED_QUANT: ""}  # the suite sets it; empty is unset
    rows = json.loads(run_cli("models", "--json", env=unset).stdout)
    embedded = next(r for r in rows if r["name"] == "embedded")
    assert embedded["weights"] in params.QUANT_FTYPES
    assert embedded["weights_source"] == "chosen"
    record = json.loads((home / "models" / weights.RECORD_NAME).read_text())
    assert record["ftype"] == embedded["weights"]
    assert embedded["weights_reason"] == record["reason"]
    shown = run_cli("models", env=unset).stdout
    assert f"weights {record['reason']} (recorded)" in shown
    forced = run_cli("models", "--json", env={params.ENV_EMBEDDED_QUANT: "q8_0"})
    embedded = next(r for r in json.loads(forced.stdout) if r["name"] == "embedded")
    assert (embedded["weights"], embedded["weights_source"]) == ("q8_0", "env")
