"""Whether a resumed study still has its data: the stored fingerprint against today's.

Torch-free: the fingerprint is computed on the PyTorch side
(:func:`objectives.fingerprint.data_fingerprint`) and stored with the study at creation as
the attribute :data:`FINGERPRINT_ATTR`; this module compares two of them.

Example:
    >>> old = {"version": 1, "splits": {"train": {"size": 1078, "sha256": "a"},
    ...                                 "val": {"size": 359, "sha256": "b"}}}
    >>> new = {"version": 1, "splits": {"train": {"size": 900, "sha256": "c"},
    ...                                 "val": {"size": 359, "sha256": "d"}}}
    >>> data_changes(old, new)
    ['train size 1078 -> 900', 'val: content of sampled items differs']
"""

from __future__ import annotations

#: The study attribute that holds the data's fingerprint.
FINGERPRINT_ATTR = "data_fingerprint"


def data_changes(stored: dict | None, now: dict) -> list[str]:
    """What differs between the stored fingerprint and ``now``, split by split.

    Nothing is compared when the study stores no fingerprint (made before fingerprints were
    stored) or one of another version (hashed another way).
    """
    if not isinstance(stored, dict) or stored.get("version") != now.get("version"):
        return []
    changes = []
    for split, before in stored.get("splits", {}).items():
        after = now.get("splits", {}).get(split)
        if after is None:
            changes.append(f"{split}: missing")
        elif before.get("size") != after.get("size"):
            changes.append(f"{split} size {before.get('size')} -> {after.get('size')}")
        elif before.get("sha256") != after.get("sha256"):
            changes.append(f"{split}: content of sampled items differs")
    return changes


def data_changed_message(study_name: str, changes: list[str]) -> str:
    """The one line that refuses a resume on changed data."""
    return (
        f"study {study_name!r} was created on other data: {'; '.join(changes)}. Rerun with "
        "the data it was made on, or choose another --study-name (a task that draws its data "
        "at random needs a fixed seed)"
    )
