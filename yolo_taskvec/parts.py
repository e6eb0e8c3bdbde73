"""Model parts derived from an Ultralytics model yaml: backbone, neck and the head's branches.

Keys look like ``model.<layer>.<...>``. The yaml's ``backbone`` list gives the backbone layers, the ``head``
list the rest; its last layer is the task head, whose branches are named after the submodule:

=============  ================================================================
part           tensors
=============  ================================================================
``backbone``   layers of the yaml ``backbone`` section
``neck``       layers of the yaml ``head`` section before the last one
``head.box``   ``cv2``, ``one2one_cv2`` (and ``dfl``) of the last layer
``head.cls``   ``cv3``, ``one2one_cv3`` of the last layer
``head.mask``  ``cv4``, ``one2one_cv4``, ``proto`` of a segment head
``head.kpt``   ``cv4*`` of a pose head; ``head.angle``: ``cv4`` of an OBB head
``head.other`` anything else in the last layer
=============  ================================================================

A selection is a list of part names (``head`` covers every ``head.*``) and key globs (``model.23.cv2.*``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import TaskVecError

PARTS = ("backbone", "neck", "head.box", "head.cls", "head.mask", "head.kpt", "head.angle", "head.other")
_BRANCH_PARTS = {
    "cv2": "head.box",
    "one2one_cv2": "head.box",
    "dfl": "head.box",
    "cv3": "head.cls",
    "one2one_cv3": "head.cls",
}
_FOURTH_BRANCH = {"segment": "head.mask", "pose": "head.kpt", "obb": "head.angle"}


def head_task(head_module_name: str) -> str:
    """Task of a head from its yaml module name: Segment26 -> segment, Pose -> pose, Detect -> detect."""
    name = head_module_name.lower()
    for task in ("segment", "pose", "obb", "classify"):
        if task in name:
            return task
    return "detect"


@dataclass(frozen=True)
class Layout:
    """Layer ranges of one architecture, read from its yaml."""

    n_backbone: int
    n_layers: int
    task: str

    @classmethod
    def from_yaml(cls, yaml: Mapping) -> Layout:
        """Read the layout from a model yaml dict (``model.yaml``)."""
        try:
            backbone, head = yaml["backbone"], yaml["head"]
        except (KeyError, TypeError) as e:
            raise TaskVecError("the model yaml has no 'backbone'/'head' sections, so its parts are unknown.") from e
        return cls(len(backbone), len(backbone) + len(head), head_task(str(head[-1][2])) if head else "detect")

    @property
    def head_index(self) -> int:
        return self.n_layers - 1

    def part_of(self, key: str) -> str:
        """Part name of a state-dict key such as ``model.23.cv3.0.2.weight``."""
        fields = key.split(".")
        if len(fields) < 3 or fields[0] != "model" or not fields[1].isdigit():
            return "head.other" if key.startswith("model.") else "other"
        layer = int(fields[1])
        if layer < self.n_backbone:
            return "backbone"
        if layer < self.head_index:
            return "neck"
        branch = fields[2]
        if branch in _BRANCH_PARTS:
            return _BRANCH_PARTS[branch]
        if branch.startswith(("cv4", "one2one_cv4")) or branch in ("proto", "cv5", "one2one_cv5"):
            return _FOURTH_BRANCH.get(self.task, "head.other")
        return "head.other"


def is_glob(item: str) -> bool:
    """True for a key pattern (``model.23.cv2.*``) rather than a part name."""
    return item.startswith("model.") or any(c in item for c in "*?[")


def check_selection(items: Iterable[str]) -> list[str]:
    """Validate part names in a selection; globs pass through. Raises with the valid names on a typo."""
    items = [str(i).strip() for i in items if str(i).strip()]
    valid = ("head", *PARTS)
    for item in items:
        if not is_glob(item) and item not in valid:
            raise TaskVecError(f"unknown part '{item}'; valid parts are {', '.join(valid)} or key globs like 'model.23.cv2.*'.")
    return items


def matches(key: str, part: str, selection: Iterable[str] | None) -> bool:
    """Whether a key (in ``part``) is selected. ``None`` selects everything."""
    if selection is None:
        return True
    for item in selection:
        if is_glob(item):
            if fnmatch.fnmatchcase(key, item):
                return True
        elif part == item or part.startswith(item + "."):
            return True
    return False


def resolve_part_value(part: str, mapping: Mapping[str, float], what: str = "scale") -> float:
    """Value for ``part`` from a per-part mapping; the most specific entry wins, ``*`` is the default."""
    probe = part
    while True:
        if probe in mapping:
            return float(mapping[probe])
        if "." not in probe:
            break
        probe = probe.rsplit(".", 1)[0]
    if "*" in mapping:
        return float(mapping["*"])
    raise TaskVecError(f"the per-part {what} has no entry for part '{part}' (give it, its parent, or '*').")


def check_part_mapping(mapping: Mapping[str, float]) -> dict[str, float]:
    """Validate the keys of a per-part mapping (part names or ``*``)."""
    for key in mapping:
        if key != "*" and key not in ("head", *PARTS):
            raise TaskVecError(f"unknown part '{key}' in per-part values; valid: *, head, {', '.join(PARTS)}.")
    return {str(k): float(v) for k, v in mapping.items()}
