"""The built-in ``charlm`` task: a tiny character-level transformer language model.

The corpus ships with the package (``objectives/assets/charlm_corpus.txt``): the first
200,000 characters of the English help topics of Python 3.11's :mod:`pydoc_data.topics` (what
``help("if")`` prints; Python Software Foundation License), joined in sorted topic order, so
every Python version trains on the same text. Characters map to a fixed vocabulary of
:data:`VOCAB_SIZE` ids: an unknown-char bucket (id 0), newline, and the 95 printable ASCII
characters; anything else (tabs, curly quotes) becomes the unknown id. The text is cut into
disjoint windows of ``context + 1`` characters (a window's first ``context`` characters are
the input, the same shifted by one the next-character targets), the first :data:`WINDOWS`
windows are grouped into contiguous blocks of :data:`BLOCK_WINDOWS` windows (about 1 KiB of
text each), and the seed deals the blocks to train/val/test: no character appears in two
splits.

Loss: the mean cross-entropy over a sequence's tokens (per sequence,
:func:`objectives.metrics.token_cross_entropy`). Metric: ``bits_per_char``
(:data:`objectives.metrics.BITS_PER_CHAR`), the same in bits (divided by ln 2), averaged per
sequence, minimised.
Unit: tokens, so throughput is tokens per second.

``task.info["corpus_sha256"]`` names the exact text a study trained on.

Example:
    >>> task = charlm_task()
    >>> x, y = task.train[0]
    >>> x.shape, y.shape, len(task.train), len(task.val), len(task.test)
    (torch.Size([64]), torch.Size([64]), 1024, 256, 256)
    >>> bool((x[1:] == y[:-1]).all())
    True
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources

import torch
from torch.utils.data import Dataset, TensorDataset

from objectives.contract import Task, TaskError
from objectives.metrics import BITS_PER_CHAR, IGNORE_INDEX, token_cross_entropy
from objectives.models import char_transformer_factory

#: Characters with their own id (id 0 is the unknown-char bucket).
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
#: Number of token ids: the unknown bucket plus :data:`ALPHABET`.
VOCAB_SIZE = len(ALPHABET) + 1
#: Id of any character outside :data:`ALPHABET`.
UNKNOWN_ID = 0
#: Target id that the loss and the metric skip (padding of variable-length batches).
PAD_TARGET = IGNORE_INDEX
#: Characters of input per sequence.
CONTEXT = 64
#: Sequences per split: train, val, test.
SPLIT_SEQUENCES = (1024, 256, 256)
#: Disjoint windows of ``CONTEXT + 1`` characters taken from the start of the corpus.
WINDOWS = sum(SPLIT_SEQUENCES)
#: Consecutive windows dealt to one split together (a contiguous chunk of the corpus).
BLOCK_WINDOWS = 16

#: The corpus, relative to the ``objectives`` package.
CORPUS_FILE = "assets/charlm_corpus.txt"

_IDS = {char: i + 1 for i, char in enumerate(ALPHABET)}


def corpus_text() -> str:
    """The shipped corpus (see the module docstring), exactly as stored (UTF-8)."""
    path = resources.files("objectives").joinpath(CORPUS_FILE)
    with path.open("r", encoding="utf-8", newline="") as file:
        return file.read()


def encode(text: str) -> torch.Tensor:
    """Token ids (int64) of ``text``; characters outside :data:`ALPHABET` get id 0."""
    return torch.tensor([_IDS.get(char, UNKNOWN_ID) for char in text], dtype=torch.long)


def decode(ids: Sequence[int] | torch.Tensor) -> str:
    """The text of token ids; the unknown id reads as ``"?"``, padding as nothing."""
    chars = [ALPHABET[i - 1] if i > 0 else "?" for i in (int(i) for i in ids) if i >= 0]
    return "".join(chars)


def split_blocks(blocks: int, seed: int, fractions: Sequence[int]) -> list[torch.Tensor]:
    """Deal ``blocks`` block indices to the splits, ``fractions[k]`` blocks each, by ``seed``.

    Returns one sorted index tensor per split; together they are a partition of the blocks.
    """
    if sum(fractions) != blocks:
        raise ValueError(f"{sum(fractions)} blocks asked for, {blocks} available")
    order = torch.randperm(blocks, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in fractions:
        parts.append(order[start : start + size].sort().values)
        start += size
    return parts


def window_starts(seed: int, context: int = CONTEXT) -> list[torch.Tensor]:
    """Corpus offsets of each split's windows (of ``context + 1`` characters), by ``seed``.

    The corpus's first :data:`WINDOWS` disjoint windows, in blocks of :data:`BLOCK_WINDOWS`
    consecutive windows, each block dealt whole to one split.
    """
    counts = [n // BLOCK_WINDOWS for n in SPLIT_SEQUENCES]
    block_ids = split_blocks(sum(counts), seed, counts)
    within = torch.arange(BLOCK_WINDOWS)
    return [
        ((ids[:, None] * BLOCK_WINDOWS + within).reshape(-1)) * (context + 1) for ids in block_ids
    ]


def sequence_tokens(inputs: object, targets: torch.Tensor) -> int:
    """Predicted tokens in a batch of equal-length sequences: every target."""
    return targets.numel()


def count_tokens(inputs: object, targets: torch.Tensor) -> torch.Tensor:
    """Predicted tokens in a padded batch: the targets that are not padding (a 0-dim tensor
    on the batch's device, so counting needs no synchronisation)."""
    return (targets != PAD_TARGET).sum()


class VariableWindows(Dataset):
    """Sequences of different lengths: item ``i`` is ``(ids[s : s + n], ids[s + 1 : s + n + 1])``.

    Args:
        ids: The encoded corpus.
        starts: Offset of each sequence.
        lengths: Length of each sequence's input (and target).
    """

    def __init__(self, ids: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> None:
        self.ids, self.starts, self.lengths = ids, starts.tolist(), lengths.tolist()

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, length = self.starts[index], self.lengths[index]
        window = self.ids[start : start + length + 1].clone()  # not a view of the corpus
        return window[:-1], window[1:]


def pad_collate(
    items: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a list of ``(ids, targets)`` to the longest: inputs with the unknown id,
    targets with :data:`PAD_TARGET` (skipped by the loss, the metric and the token count)."""
    length = max(len(x) for x, _ in items)
    inputs = torch.full((len(items), length), UNKNOWN_ID, dtype=torch.long)
    targets = torch.full((len(items), length), PAD_TARGET, dtype=torch.long)
    for row, (x, y) in enumerate(items):
        inputs[row, : len(x)] = x
        targets[row, : len(y)] = y
    return inputs, targets


def _corpus(context: int) -> tuple[torch.Tensor, str]:
    """The encoded corpus and its SHA-256; raise if it is too short for the windows."""
    text = corpus_text()
    needed = WINDOWS * (context + 1)
    if len(text) < needed:
        raise TaskError(
            f"--task charlm: a context of {context} needs {needed} characters of corpus, more "
            f"than the {len(text)} shipped: use a context of at most "
            f"{len(text) // WINDOWS - 1}"
        )
    text = text[:needed]
    return encode(text), hashlib.sha256(text.encode("utf-8")).hexdigest()


def _task_info(digest: str, context: int) -> dict:
    return {
        "corpus": f"{CORPUS_FILE} (pydoc_data.topics of Python 3.11)",
        "corpus_sha256": digest,
        "vocab_size": VOCAB_SIZE,
        "context": context,
        "model": "transformer (2 layers, d_model 64, 4 heads)",
    }


def charlm_task(model: str = "transformer", seed: int = 0, context: int = CONTEXT) -> Task:
    """The ``charlm`` task: fixed-length sequences of ``context`` characters.

    Args:
        model: Ignored (``--model`` names the image tasks' model): charlm always trains its
            :class:`~objectives.models.CharTransformer`; ``info["model"]`` says so.
        seed: Chooses which corpus blocks go to train, val and test.
        context: Characters per sequence.

    Raises:
        TaskError: the corpus is unavailable or too short.
    """
    ids, digest = _corpus(context)
    splits = []
    for starts in window_starts(seed, context):
        windows = ids[starts[:, None] + torch.arange(context + 1)]
        splits.append(TensorDataset(windows[:, :-1].contiguous(), windows[:, 1:].contiguous()))
    return Task(
        "charlm",
        char_transformer_factory(VOCAB_SIZE, context),
        *splits,
        loss=token_cross_entropy,
        metric=BITS_PER_CHAR,
        unit="tokens",
        count=sequence_tokens,
        info=_task_info(digest, context),
    )


def charlm_variable_task(
    model: str = "transformer", seed: int = 0, context: int = CONTEXT, shortest: int = 8
) -> Task:
    """``charlm`` with sequences of ``shortest`` to ``context`` characters, padded per batch.

    The same windows as :func:`charlm_task`, each cut to a seeded random length; batches are
    right-padded by :func:`pad_collate`, and padding counts in neither the loss, the metric
    nor the tokens. Run it with ``--task objectives.text:charlm_variable_task``.
    """
    ids, digest = _corpus(context)
    generator = torch.Generator().manual_seed(20_011 + seed)
    splits = []
    for starts in window_starts(seed, context):
        lengths = torch.randint(shortest, context + 1, (len(starts),), generator=generator)
        lengths[0] = context  # every split has a longest sequence
        splits.append(VariableWindows(ids, starts, lengths))
    info = _task_info(digest, context) | {"shortest": shortest}
    return Task(
        "charlm-variable",
        char_transformer_factory(VOCAB_SIZE, context),
        *splits,
        loss=token_cross_entropy,
        metric=BITS_PER_CHAR,
        collate=pad_collate,
        unit="tokens",
        count=count_tokens,
        info=info,
    )
