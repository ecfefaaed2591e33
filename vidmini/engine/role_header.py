"""The role header a chat template puts before an answer: never part of an answer, whatever the family."""

from __future__ import annotations

from collections.abc import Callable

# Blank tokens a model may write between its role header and its answer (ChatML's line break), not counted as answer.
LEADING_BLANKS = 2


def role_header_ids(tokenizer) -> list[int]:
    """The ids of the role header the chat template puts before an answer (its generation prompt without trailing
    whitespace: "<|start_header_id|>assistant<|end_header_id|>" for Llama-3, "<|im_start|>assistant" for ChatML);
    [] when it has none. LLaVA-Mini's prompt stops before it, as in training, so the model writes it itself, and
    skip_special_tokens leaves its role word ("assistant") in the text: the engine drops it from every answer."""
    import jinja2

    if not hasattr(tokenizer, "apply_chat_template"):  # no tokenizer (tests of the frame path): no header either
        return []
    for content in ("x", [{"type": "text", "text": "x"}]):  # plain text, or the content list of VLM templates
        messages = [{"role": "user", "content": content}]
        try:
            bare = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            full = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except (ValueError, TypeError, KeyError, jinja2.TemplateError):
            continue
        header = full[len(bare):].rstrip() if full.startswith(bare) else ""
        return tokenizer(header, add_special_tokens=False).input_ids if header else []
    return []


def without_role_header(tokens: list[int], header: list[int]) -> list[int] | None:
    """`tokens` without the role header (role_header_ids) they start with; None while they are still a beginning
    of it (a streamer waits for the next token)."""
    if header and tokens[: len(header)] == header:
        return tokens[len(header) :]
    if header and len(tokens) < len(header) and tokens == header[: len(tokens)]:
        return None
    return tokens


def tokens_before_answer(tokens: list[int], header: list[int], is_blank: Callable[[int], bool]) -> int:
    """How many of `tokens` come before the answer: the role header, when the model writes it (LLaVA-Mini's prompt
    stops before it; other families' prompts end with it), then up to LEADING_BLANKS blank tokens. What a model
    writes after a header it was given counts as answer, as in transformers' generate."""
    visible = without_role_header(tokens, header)
    if visible is None:
        return len(tokens)
    if len(visible) == len(tokens):  # no header written
        return 0
    blank = 0
    while blank < min(LEADING_BLANKS, len(visible)) and is_blank(visible[blank]):
        blank += 1
    return len(tokens) - len(visible) + blank
