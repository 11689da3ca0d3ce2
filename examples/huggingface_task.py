"""Hugging Face models through a study: a sequence classifier and a causal language model.

Both models are built from tiny configs (no download, no internet) and trained on made-up
token data, so the example runs in seconds on a CPU; swap in your own config or
``from_pretrained`` and your own datasets. The tool's default loss reads the models'
``.logits`` and computes one loss per sample (per sequence: the mean over its tokens), so
gradient accumulation stays exact; the models' own ``.loss`` (a batch mean) is never used,
so no ``labels`` are passed to them.

Needs the ``huggingface`` extra (``pip install -e '.[huggingface]'``)::

    batchsize-study run --task examples/huggingface_task.py:classifier --epochs 3 --trials 8
    batchsize-study run --task examples/huggingface_task.py:causal_lm --epochs 3 --trials 8
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from objectives import Task

VOCAB = 32
LENGTH = 16


class TokenDataset(Dataset):
    """Items ``({"input_ids", "attention_mask"}, targets)``: what a tokenizer's output looks
    like, one sequence per item."""

    def __init__(self, ids: torch.Tensor, targets: torch.Tensor) -> None:
        self.ids, self.targets = ids, targets

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, self.targets[i]


def _sequences(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(1, VOCAB, (n, LENGTH), generator=generator)


def classifier(samples: int = 512, seed: int = 0) -> Task:
    """Sequence classification: is token 1 in the sequence? A 2-layer BERT of width 32."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> TokenDataset:
        ids = _sequences(n, generator)
        ids[: n // 2, 0] = 1  # half the sequences hold token 1, somewhere
        ids = ids[:, torch.randperm(LENGTH, generator=generator)]
        ids = ids[torch.randperm(n, generator=generator)]
        return TokenDataset(ids, (ids == 1).any(dim=1).long())

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=2,
    )
    return Task(
        "hf-classifier",
        lambda: BertForSequenceClassification(config),
        split(samples),
        split(samples // 4),
        split(samples // 4),
    )


def causal_lm(samples: int = 512, seed: int = 0) -> Task:
    """Next-token prediction on counting sequences (each token is the last plus a step), a
    2-layer GPT-2 of width 32; the throughput counts tokens."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> TokenDataset:
        start = torch.randint(0, VOCAB, (n, 1), generator=generator)
        step = torch.randint(1, 4, (n, 1), generator=generator)
        tokens = (start + step * torch.arange(LENGTH + 1)) % VOCAB
        return TokenDataset(tokens[:, :-1], tokens[:, 1:])  # targets: the next token

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=LENGTH,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Task(
        "hf-causal-lm",
        lambda: GPT2LMHeadModel(config),
        split(samples),
        split(samples // 4),
        split(samples // 4),
        unit="tokens",
        count=lambda inputs, targets: targets.numel(),
    )
