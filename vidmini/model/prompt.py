"""The prompt exactly as the reference builds it (docs/llava-mini.md §5.2, conv mode llava_llama_3_1)."""

from __future__ import annotations

from vidmini.model.prefusion import IMAGE_TOKEN_INDEX

SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)
IMAGE_PLACEHOLDER = "<image>"


def prompt_text(tokenizer, question: str, system: str = SYSTEM_PROMPT) -> str:
    """The checkpoint's chat template over [system, user = "<image>\\n" + question], with no assistant header:
    the model writes the header itself, as it did in training."""
    question = question.replace(IMAGE_PLACEHOLDER, "image")  # one placeholder only, the one we put first
    messages = [{"role": "system", "content": system}, {"role": "user", "content": IMAGE_PLACEHOLDER + "\n" + question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def tokenize_with_placeholder(tokenizer, text: str) -> list[int]:
    """Tokenize each chunk around "<image>" with special tokens and join with -200.

    As the reference: when the first chunk starts with BOS, that BOS is kept once and the first token of every
    chunk is dropped (the BOS each chunk gets). The template already holds BOS, so the prompt starts with two.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in text.split(IMAGE_PLACEHOLDER)]
    skip = 1 if chunks[0][:1] == [tokenizer.bos_token_id] and tokenizer.bos_token_id is not None else 0
    ids = chunks[0][:skip]
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[skip:])
    return ids


def build_prompt_ids(tokenizer, question: str, system: str = SYSTEM_PROMPT) -> list[int]:
    return tokenize_with_placeholder(tokenizer, prompt_text(tokenizer, question, system))
