"""What the emulated model says: a pure function of the prompt, before any wire format.

- Code execution runs once: a python call and an ``OUTCOME_OK`` result. A
  prompt asking for the sum of the first N primes gets code that computes it
  (N = 50 gives 5117) and an answer that states it; other prompts get code
  that counts their words.
- Thinking: models named ``gemini-2.5*`` or ``gemini-3*``, or a request that
  sets a thinking level (or a positive ``thinkingBudget``), think;
  ``thinkingBudget: 0`` turns it off. Thought tokens depend only on the level:
  minimal 16, low 64, medium 128 (the default), high 256, xhigh 512; a
  positive budget caps the default.
- Google Search adds one search query built from the prompt.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .usage import MODALITIES, Tokens, text_tokens

THOUGHT_TOKENS: Final[Mapping[str, int]] = {
    "minimal": 16,
    "low": 64,
    "medium": 128,
    "high": 256,
    "xhigh": 512,
}


_DEFAULT_THINKING_LEVEL: Final = "medium"


_THINKING_MODEL = re.compile(r"^(?:models/)?gemini-(?:2\.5|3)")


_PRIMES_PROMPT = re.compile(r"first\s+(\d+)\s+prime", re.IGNORECASE)


# Bounds the work a prompt can ask of the emulator's own prime computation.
_MAX_PRIMES: Final = 10_000


_EXCERPT_CHARS: Final = 80


@dataclass(frozen=True, slots=True)
class Reply:
    """What the emulated model produces for one prompt, before any wire format."""

    thought_tokens: int
    thought_summary: str | None
    search_query: str | None
    code: str | None
    code_output: str | None
    answer: str

    @property
    def usage_parts(self) -> tuple[Tokens, Tokens, Tokens]:
        """Output tokens of the code, of its result, and of the answer."""
        code = {"text": text_tokens(len(self.code))} if self.code is not None else {}
        result = {"text": text_tokens(len(self.code_output or ""))} if self.code is not None else {}
        return code, result, {"text": text_tokens(len(self.answer))}


def _sum_of_first_primes(count: int) -> int:
    """The emulator's own answer, by a sieve: fast enough to run on the event loop."""
    # Rosser's theorem: the n-th prime is below n (ln n + ln ln n) for n >= 6.
    limit = 13 if count < 6 else int(count * (math.log(count) + math.log(math.log(count))))
    sieve = bytearray([1]) * (limit + 1)
    sieve[:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return sum([n for n, prime in enumerate(sieve) if prime][:count])


_PRIMES_CODE = """\
def is_prime(n):
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n ** 0.5) + 1))


primes = []
candidate = 2
while len(primes) < {count}:
    if is_prime(candidate):
        primes.append(candidate)
    candidate += 1
print(sum(primes))
"""


_COUNT_CODE = """\
text = {text!r}
words = text.split()
print(f"{{len(words)}} words, {{len(text)}} characters")
"""


def _excerpt(prompt: str) -> str:
    return " ".join(prompt.split())[:_EXCERPT_CHARS]


def plan_reply(
    *,
    model: str,
    prompt: str,
    media: Mapping[str, int],
    thought_tokens: int,
    summaries: bool,
    code_execution: bool,
    google_search: bool,
) -> Reply:
    """The emulated model's reply: a pure function of the request."""
    excerpt = _excerpt(prompt)
    code = code_output = None
    primes = _PRIMES_PROMPT.search(prompt)
    count = int(primes.group(1)) if primes else 0
    if primes and 0 < count <= _MAX_PRIMES:
        total = _sum_of_first_primes(count)
        if code_execution:
            code = _PRIMES_CODE.format(count=count)
            code_output = f"{total}\n"
            answer = f"The code ran: the sum of the first {count} prime numbers is {total}."
        else:
            answer = f"The sum of the first {count} prime numbers is {total}."
    elif code_execution:
        text = prompt[:200]
        code = _COUNT_CODE.format(text=text)
        code_output = f"{len(text.split())} words, {len(text)} characters\n"
        answer = f"The code counted your prompt: {code_output.strip()}."
    else:
        answer = f"Emulated reply from {model}."
        if media:
            blocks = ", ".join(f"{media[name]} {name}" for name in MODALITIES if media.get(name))
            answer += f" Received media blocks: {blocks}."
        if excerpt:
            answer += f' You said: "{excerpt}".'
    return Reply(
        thought_tokens=thought_tokens,
        thought_summary=(
            f"Working out a reply to a {len(prompt.split())}-word prompt."
            if thought_tokens and summaries
            else None
        ),
        search_query=(excerpt or model) if google_search else None,
        code=code,
        code_output=code_output,
        answer=answer,
    )


def signature(*parts: str) -> str:
    """A stand-in thought signature: opaque base64, stable for the same reply."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return base64.b64encode(digest[:24]).decode()


def split_text(text: str, pieces: int = 3) -> list[str]:
    """``text`` cut at spaces into about ``pieces`` parts that join back to it."""
    size = max(1, len(text) // pieces)
    parts: list[str] = []
    start = 0
    while start < len(text):
        cut = text.find(" ", start + size)
        end = len(text) if cut == -1 or len(parts) == pieces - 1 else cut + 1
        parts.append(text[start:end])
        start = end
    return parts or [text]


def thinking_tokens(model: str, level: object, budget: object = None) -> int:
    """Thought tokens for a request, by its thinking level and budget (see the docstring)."""
    if budget == 0:
        return 0
    if isinstance(level, str) and level.lower() in THOUGHT_TOKENS:
        return THOUGHT_TOKENS[level.lower()]
    default = THOUGHT_TOKENS[_DEFAULT_THINKING_LEVEL]
    if isinstance(budget, int) and budget > 0:
        return min(budget, default)
    if _THINKING_MODEL.match(model) or budget == -1:
        return default
    return 0


def answer_pieces(answer: str, count: int) -> tuple[str, ...]:
    """``answer`` cut into ``count`` non-empty pieces that join back to it."""
    count = min(count, len(answer))
    cuts = [len(answer) * number // count for number in range(count + 1)]
    return tuple(answer[a:b] for a, b in zip(cuts, cuts[1:], strict=False))
