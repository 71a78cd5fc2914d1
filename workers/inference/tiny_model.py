"""Build a Z-Image pipeline of the real architecture with tiny random weights.

No model hub is reachable from CI and there is no GPU there, yet the ``zimage``
backend must be exercised end to end. This module saves a ~2 MB pipeline with the
same component classes as Tongyi-MAI/Z-Image-Turbo (``ZImageTransformer2DModel``,
``Qwen3Model``, ``Qwen2Tokenizer`` with a chat template, a 4-block ``AutoencoderKL``,
``FlowMatchEulerDiscreteScheduler``), so the backend loads it through the very same
``ZImagePipeline.from_pretrained`` path as the real 20 GB weights. The images are noise,
but their sizes, batching and seeding behave exactly like the real model's.

Sizes must divide by 16 (``vae_scale_factor`` 8 for the 4-block VAE, times the
transformer's patch size 2), as with the real model; 64x64 is the smallest size the
project's request schema allows and works.

Usage: ``zimg make-tiny-model DIR`` or ``python -m workers.inference.tiny_model DIR``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

#: A ChatML template, the shape of Qwen3's: the pipeline wraps every prompt with it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _byte_level_vocab() -> dict[str, int]:
    """GPT-2's byte-to-unicode table: every byte is one symbol, so any text tokenizes without merges."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    vocab = {symbols[b]: b for b in range(256)}
    for i, token in enumerate(SPECIAL_TOKENS):
        vocab[token] = 256 + i
    return vocab


def _make_tokenizer(work: Path):  # -> transformers.Qwen2Tokenizer
    """Load a Qwen2Tokenizer from a local byte-level vocabulary (the real one is 151k tokens, 11 MB)."""
    from transformers import Qwen2Tokenizer

    (work / "vocab.json").write_text(json.dumps(_byte_level_vocab(), ensure_ascii=False), encoding="utf-8")
    (work / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = Qwen2Tokenizer.from_pretrained(str(work), additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    # from_pretrained records where it loaded from; the saved model should not claim a temp folder's traits.
    for key in ("is_local", "local_files_only", "name_or_path"):
        tokenizer.init_kwargs.pop(key, None)
    return tokenizer


def make_tiny_model(directory: str | Path) -> Path:
    """Build the tiny pipeline (seeded, so the same bytes each time) and ``save_pretrained`` it."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        tokenizer = _make_tokenizer(Path(work))

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=16,
        axes_dims=[8, 4, 4],
        axes_lens=[1024, 512, 512],
    )
    # The pad tokens may be uninitialised memory in some diffusers versions; NaNs would make black images.
    with torch.no_grad():
        transformer.x_pad_token.fill_(1.0)  # type: ignore[attr-defined]
        transformer.cap_pad_token.fill_(1.0)  # type: ignore[attr-defined]

    torch.manual_seed(0)
    text_encoder = Qwen3Model(
        Qwen3Config(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
        )
    )

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)

    pipe = ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )
    pipe.save_pretrained(out)  # type: ignore[attr-defined]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Save a tiny random-weight Z-Image pipeline (a few MB).")
    parser.add_argument("directory", help="folder to write; load it with ZIMG_MODEL=DIR")
    args = parser.parse_args(argv)
    path = make_tiny_model(args.directory)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
