"""The embedding model: loading it leaves the process's logging as it was."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap


def test_loading_the_embedding_model_turns_on_no_logging() -> None:
    # A fresh interpreter: the model loads once per process, so this must not share ours.
    script = textwrap.dedent(
        """
        import logging
        from llmos.store import embed
        vectors = embed.embed(["hello world"])
        assert vectors.shape[0] == 1
        logging.getLogger("httpx").info("HTTP Request: POST http://x/v1 200 OK")
        root = logging.getLogger()
        print(root.level, len(root.handlers))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert "HTTP Request" not in done.stderr
    assert done.stdout.split() == [str(logging.WARNING), "0"]
