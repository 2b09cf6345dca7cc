"""Names that end up in file names: one rule for study names, one way to make a stored name safe."""

from __future__ import annotations

import re

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STUDY_NAME_RULE = "1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


def bad_study_name(name: object) -> str | None:
    """Why ``name`` cannot be a study name (it names files: no '/', '..' or NUL), or None."""
    if isinstance(name, str) and STUDY_NAME.fullmatch(name):
        return None
    return f"study name {name!r} should be {STUDY_NAME_RULE}"


def file_stem(name: str) -> str:
    """A study name, possibly stored by someone else, made safe as a file name in the current folder."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")[:100] or "study"


def derived_study_name(dataset: str, model: str) -> str:
    """A study's name from its data and network when nothing else names it: DATASET-FACTORY
    (``imagefolder-small_resnet`` for ``nets.py:small_resnet``), a valid study name."""
    factory = model.rpartition(":")[2] or model
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{dataset}-{factory}").strip("-.")[:100]
    return name if not bad_study_name(name) else "study"
