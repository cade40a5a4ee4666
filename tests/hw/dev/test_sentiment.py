"""The sentiment device: VADER's labels and thresholds, the confidence rule, the text limit,
bad arguments as failed results, and VADER loaded only when the device is first used."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmos import params
from llmos.hw.dev.base import CallContext, DeviceResult
from llmos.hw.dev.sentiment import SentimentDevice


def classify(text: object) -> DeviceResult:
    return SentimentDevice().call({"text": text}, CallContext())


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I loved this film, the acting was wonderful.", "positive"),
        ("The hotel room was dirty and smelled bad.", "negative"),
        ("The museum is closed on Mondays.", "neutral"),
        ("The food was not good.", "negative"),  # VADER's negation rule
    ],
)
def test_clear_texts_get_a_confident_label(text: str, label: str) -> None:
    result = classify(text)
    assert result.ok and result.output["label"] == label
    assert result.output["confident"] is True
    out = result.output
    assert set(out) == {"label", "compound", "positive", "negative", "neutral", "confident"}
    assert -1 <= out["compound"] <= 1
    assert abs(out["positive"] + out["negative"] + out["neutral"] - 1) < 0.01


def test_a_mixed_text_is_labelled_but_not_confident() -> None:
    out = classify("Awful customer support, nobody answered my emails.").output
    assert out["label"] == "negative"  # compound just below -0.05
    assert abs(out["compound"]) < params.SENTIMENT_CONFIDENT_COMPOUND
    assert out["confident"] is False


def test_cancelling_words_are_neutral_but_not_confident() -> None:
    out = classify("The good part and the bad part.").output
    assert out["positive"] > 0 and out["negative"] > 0
    assert out["confident"] is False


def test_the_label_follows_vaders_thresholds() -> None:
    for text in ("great", "terrible", "okay then", "not bad", "a table"):
        out = classify(text).output
        c = out["compound"]
        expected = "positive" if c >= 0.05 else "negative" if c <= -0.05 else "neutral"
        assert out["label"] == expected


def test_the_text_limit() -> None:
    at_limit = classify("good " * (params.SENTIMENT_MAX_TEXT_CHARS // 5))
    assert at_limit.ok
    over = classify("x" * (params.SENTIMENT_MAX_TEXT_CHARS + 1))
    assert not over.ok and "limit" in str(over.error) and "\n" not in str(over.error)
    schema = SentimentDevice.schema["properties"]["text"]
    assert schema["maxLength"] == params.SENTIMENT_MAX_TEXT_CHARS


@pytest.mark.parametrize("bad", [None, 3, ["good"]])
def test_bad_arguments_are_a_failed_result(bad: object) -> None:
    result = SentimentDevice().call({} if bad is None else {"text": bad}, CallContext())
    assert not result.ok and result.error == "sentiment: 'text' must be a string"


def test_vader_is_imported_on_first_use_only() -> None:
    probe = (
        "import sys\n"
        "from llmos.kernel.plugins import devices\n"
        "found = devices()\n"
        "assert 'sentiment' in found\n"
        "print('vaderSentiment' in sys.modules)\n"
        "from llmos.hw.dev.base import CallContext\n"
        "found['sentiment'].call({'text': 'fine'}, CallContext())\n"
        "print('vaderSentiment' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.split() == ["False", "True"]
