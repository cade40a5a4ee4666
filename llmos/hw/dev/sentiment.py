"""The `sentiment` device: a text's sentiment by VADER, a lexicon-and-rules analyser.

VADER (vaderSentiment) scores each sentiment-bearing word of its lexicon, adjusted by rules
(negation, "but", intensifiers, capitals, exclamation marks), into `positive`, `negative` and
`neutral` proportions and a normalised `compound` score in [-1, 1]. The label uses VADER's own
thresholds (params.SENTIMENT_LABEL_THRESHOLD): compound >= 0.05 positive, <= -0.05 negative,
else neutral.

`confident` says when the label can be taken without the model's judgement:
- positive or negative: |compound| >= params.SENTIMENT_CONFIDENT_COMPOUND (a clear lean, not
  a mixed text where praise and complaint nearly cancel);
- neutral: the text has no sentiment-bearing word at all (positive and negative both 0), not
  words whose scores cancel out.

Invariants: the result is a pure function of the text; the text is bounded
(params.SENTIMENT_MAX_TEXT_CHARS); bad arguments are a failed `DeviceResult`, never an
exception. VADER is imported on the first call, not when llmos starts.
What this module does not do: languages other than English, sarcasm, or aspects (one label
for the whole text).
"""

from __future__ import annotations

import threading
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult

_lock = threading.Lock()
_analyzer: Any = None  # VADER's analyser, built once (it reads its lexicon file)


def _vader() -> Any:
    global _analyzer
    with _lock:
        if _analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            _analyzer = SentimentIntensityAnalyzer()
        return _analyzer


def analyse(text: str) -> dict[str, Any]:
    """The device's result for `text` (see the module note)."""
    scores = _vader().polarity_scores(text)
    compound = float(scores["compound"])
    positive, negative = float(scores["pos"]), float(scores["neg"])
    threshold = params.SENTIMENT_LABEL_THRESHOLD
    if compound >= threshold:
        label = "positive"
    elif compound <= -threshold:
        label = "negative"
    else:
        label = "neutral"
    if label == "neutral":
        confident = positive == 0 and negative == 0
    else:
        confident = abs(compound) >= params.SENTIMENT_CONFIDENT_COMPOUND
    return {
        "label": label,
        "compound": compound,
        "positive": positive,
        "negative": negative,
        "neutral": float(scores["neu"]),
        "confident": confident,
    }


class SentimentDevice(Device):
    name = "sentiment"
    description = (
        "Sentiment of an English text by VADER (a lexicon and rules, no model). Returns "
        '{"label": "positive"|"negative"|"neutral", "compound": number from -1 to 1, '
        '"positive", "negative", "neutral": proportions, "confident": bool}; confident is '
        "false for a mixed or weak text."
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "text": {
                "type": "string",
                "description": "The text to classify.",
                "maxLength": params.SENTIMENT_MAX_TEXT_CHARS,
            }
        },
        "required": ["text"],
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        text = args.get("text")
        if not isinstance(text, str):
            return DeviceResult.failure("sentiment: 'text' must be a string")
        if len(text) > params.SENTIMENT_MAX_TEXT_CHARS:
            return DeviceResult.failure(
                f"sentiment: the text is {len(text)} characters (limit "
                f"{params.SENTIMENT_MAX_TEXT_CHARS})"
            )
        return DeviceResult.success(analyse(text))
