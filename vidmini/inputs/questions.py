"""Questions as the user gives them (arguments or stdin), checked before any work: text that can be tokenized,
not blank, not so long that pre-fusion would run for an hour.

Every question goes through pre-fusion with every frame (docs/llava-mini.md §1.4), so a question of T tokens over
F frames costs T x F token-positions of pre-fusion: a 20,000-character question took 268 s where a short one took
12 s. Long questions are refused above a limit the user can raise, and their cost is stated before the work.
"""

from __future__ import annotations

from vidmini.errors import UsageError

DEFAULT_MAX_QUESTION_TOKENS = 1024
COSTLY_TOKENS = 256  # above this, the cost of a question is stated before the work


def check_text(questions: list[str]) -> list[str]:
    """The questions, refused (exit 2) when one is blank or is not valid text (bytes that are not UTF-8 reach
    Python as lone surrogates, which no tokenizer can encode)."""
    for number, question in enumerate(questions, 1):
        try:
            question.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError(f"question {number} is not valid UTF-8 text; give it as UTF-8") from None
        if not question.strip():
            raise UsageError(f"question {number} is empty; ask something")
    return questions


def read_stdin(stdin) -> list[str]:
    """One question per non-blank line of standard input, which must be UTF-8."""
    raw = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"standard input is not valid UTF-8 text (byte {err.start}); give the questions as "
                             "UTF-8") from None
    return [line.strip() for line in raw.splitlines() if line.strip()]


def check_length(tokenizer, questions: list[str], max_tokens: int) -> list[int]:
    """Each question's token count; a question over `max_tokens` is refused with what it would cost."""
    counts = [len(tokenizer(q, add_special_tokens=False).input_ids) for q in questions]
    for number, count in enumerate(counts, 1):
        if count > max_tokens:
            raise UsageError(
                f"question {number} has {count} tokens, over --max-question-tokens {max_tokens}: every question "
                "runs through pre-fusion with every frame, so its length multiplies the work; shorten it or raise "
                "the limit")
    return counts


def cost_note(counts: list[int], frames: int) -> str | None:
    """A line stating the pre-fusion cost of long questions, before the work starts (None when all are short)."""
    longest = max(counts, default=0)
    if longest <= COSTLY_TOKENS:
        return None
    total = sum(counts) * frames
    return (f"the longest question has {longest} tokens; pre-fusion runs {sum(counts)} question tokens with each of "
            f"{frames} frames ({total:,} token-frames): expect it to take longer than a short question")
