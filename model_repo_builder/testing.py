"""Tiny random-weight checkpoints with a locally trained tokenizer, for tests and benchmarks.

Nothing here touches the network: the tokenizer is a byte-level BPE trained on the evaluation text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .eval_text import EVAL_TEXT

ARCHITECTURES = ("llama", "gpt2")
EOS = "<|endoftext|>"
PAD = "<pad>"


def train_tokenizer(vocab_size: int = 384) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(EVAL_TEXT.splitlines(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def make_tiny_checkpoint(
    out_dir: str | Path,
    architecture: str = "llama",
    *,
    hidden_size: int = 64,
    layers: int = 2,
    tie_embeddings: bool = True,
    seed: int = 0,
) -> Path:
    """Saves a randomly initialised causal LM (safetensors) and its tokenizer into `out_dir`.

    Sizes are multiples of 64, so every mode (int4 group sizes up to 64 included) applies to all layers.
    A larger-than-default init spread gives peaked next-token distributions, so that the quality
    figures of a random model mean something.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {ARCHITECTURES}")
    out = Path(out_dir)
    tokenizer = train_tokenizer()
    vocab_size = -(-len(tokenizer) // 64) * 64
    common = {
        "vocab_size": vocab_size,
        "tie_word_embeddings": tie_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "initializer_range": 0.2,
    }
    config: Any
    if architecture == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            **common,
        )
    else:
        config = GPT2Config(n_embd=hidden_size, n_layer=layers, n_head=4, n_positions=512, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# A ChatML-like template for the tiny tokenizer (real checkpoints bring their own).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def add_chat_template(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """A copy of `checkpoint` whose tokenizer has CHAT_TEMPLATE."""
    import shutil

    from transformers import AutoTokenizer

    out = Path(out_dir)
    shutil.copytree(checkpoint, out, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out
