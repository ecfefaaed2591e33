"""The prompt exactly as the reference builds it (docs/llava-mini.md §5.2, conv mode llava_llama_3_1)."""

from __future__ import annotations

from vidmini.families.llava_mini.prefusion import IMAGE_TOKEN_INDEX

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

    As the reference: when the tokenizer adds a BOS to every chunk and the first chunk starts with BOS, that BOS is
    kept once and the BOS every later chunk got is dropped. The Llama-3 template already holds BOS, so that prompt
    starts with two. A tokenizer that adds no BOS (SmolLM2: its template merely starts with the BOS text) keeps
    every token: dropping "the first token" there cut a real token off the question.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in text.split(IMAGE_PLACEHOLDER)]
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("a").input_ids[:1] == [bos]
    skip = 1 if adds_bos and chunks[0][:1] == [bos] else 0
    ids = chunks[0][:skip]
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[skip:])
    return ids


def build_prompt_ids(tokenizer, question: str, system: str = SYSTEM_PROMPT) -> list[int]:
    return tokenize_with_placeholder(tokenizer, prompt_text(tokenizer, question, system))
