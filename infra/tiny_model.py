"""Generate a tiny random-weight Llama model with a tokenizer and chat template.

Nothing is downloaded: the byte-level BPE tokenizer is trained here on a generated corpus and
the weights are random. The shape is the smallest that vLLM's CPU attention accepts
(head_dim 64: hidden 128 with 2 heads; head_dim 16 is rejected).

    python -m infra.tiny_model DIR
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '</s>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
MAX_POSITIONS = 2048
# The KV cache the tiny model's workers get (KV_CACHE_MEMORY_BYTES). A token takes 2 layers x
# (K, V) x 1 KV head x 64 x 2 bytes = 512 bytes, so 256 MiB holds 512K tokens: 1,024 sequences of
# 512 tokens, more than the CPU scheduler runs at once.
KV_CACHE_BYTES = "256M"
# The KV cache of its embedding workers (RUNNER=pooling): a pooled request holds its blocks only
# for its prefill, so 64 MiB (128K tokens) keeps 256 requests of 512 tokens in flight.
EMBED_KV_CACHE_BYTES = "64M"

_WORDS = (
    "the a batch request model token worker chunk engine answer question json score candidate "
    "evaluate summary output input yes no true false one two three four five six seven eight "
    "nine ten hello world system user assistant role content name value key list item data"
).split()


def _corpus() -> list[str]:
    lines = []
    for i, word in enumerate(_WORDS):
        for j, other in enumerate(_WORDS):
            if (i + j) % 3 == 0:
                lines.append(f'{word} {other} {{"{word}": {i * j}, "{other}": [{i}, {j}]}}')
    return lines


def generate(directory: Path, *, seed: int = 0) -> Path:
    """Write the model into `directory` (created) and return it. Idempotent."""
    # Heavy imports stay inside: this module is imported by tooling that must start fast.
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "config.json").exists() and (directory / "model.safetensors").exists():
        return directory

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus(),
        vocab_size=512,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,  # its bar writes blank lines to stdout, among `local run`'s
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(directory))

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(directory), safe_serialization=True)
    # A chat template file as well: some loaders read it from here rather than the tokenizer.
    (directory / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    log.info("tiny model written", extra={"path": str(directory)})
    return directory


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = generate(args.directory, seed=args.seed)
    print(json.dumps({"model": str(path)}))  # noqa: T201 - the command's output


if __name__ == "__main__":
    main()
