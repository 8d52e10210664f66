"""The cost model of a generate request: input tokens x beams x new tokens, capped by ``max_request_cost``.

Decoding time grows with all three (each new token attends over the input, once per beam), so one number
bounds how long a single request can hold the model. Input tokens are counted with the backbone's own
tokenizer (a private copy behind a lock: tokenizers are not safe to share across threads); the task's
prompt template and soft tokens are not counted.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Cost:
    input_tokens: int  # tokens of the request's input text
    beams: int  # beam search width (1 = greedy)
    new_tokens: int  # the cap on generated tokens

    @property
    def total(self) -> int:
        return self.input_tokens * self.beams * self.new_tokens

    def explain(self, limit: int) -> str:
        return (f"request cost {self.total:,} = {self.input_tokens} input tokens x {self.beams} beams x "
                f"{self.new_tokens} new tokens; the limit is {limit:,} (max_request_cost): shorten the input, "
                "or lower num_beams or max_new_tokens")


class TokenCounter:
    """Counts tokens of text with a private copy of ``tokenizer`` (about 4 characters a token without one)."""

    def __init__(self, tokenizer: Any | None):
        self._tok = copy.deepcopy(tokenizer) if tokenizer is not None else None
        self._lock = threading.Lock()

    def __call__(self, text: str) -> int:
        if self._tok is None:
            return max(1, -(-len(text) // 4))
        with self._lock:
            return max(1, len(self._tok(text, add_special_tokens=False)["input_ids"]))
