"""Channel dependency analysis: which channels of which tensors must be removed together.

Every output channel of a producer (Conv, ConvTranspose, Gemm/MatMul with constant weights) is
an *atom*. Each channel-carrying tensor gets an *atom array*: an integer array with the tensor's
rank whose non-channel axes have size 1 and whose entries name the atom living at that position
(``FIXED`` = -1 for positions that can never be removed, e.g. channels that came from a graph
input). Per-op handlers (``handlers.py``, ``handlers_shape.py``; registered here by op type with
:func:`handles`) compute output atom arrays from input ones, in graph order: an element-wise Add
unifies the atoms of its two inputs (union-find), Concat concatenates arrays, Slice/Split cut
segments, Flatten repeats each channel over its H*W block, a channel shuffle permutes. Atoms that
end up in one union-find set form a *class*: one unit of removal. Producers sharing classes form
a *group* (the report's unit).

Anything a handler cannot prove safe *pins* the atoms it sees, with a reason: pinned classes are
never removed. Handlers also record :class:`ConstCut` (slice this constant input of this node
along this axis by these atoms) and fix-ups (rewrite a Reshape shape, a Split size, a group
count), so cutting is data, decided at analysis time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FIXED = -1


@dataclass
class ConstCut:
    """Slice constant input ``index`` of ``node`` along ``axis``: keep positions whose atom survives.

    ``role`` tells scorers what the slice is: "out" (a producer's filters), "in" (a consumer's
    input columns), "bn" (a BatchNormalization scale) or "param" (other per-channel constants).
    """

    node: Any
    index: int
    axis: int
    atoms: np.ndarray  # 1-D, one atom per position along ``axis``
    role: str = "param"


@dataclass
class MacNode:
    """A compute node's channel axes, to estimate its MACs after a cut."""

    node: Any
    in_atoms: np.ndarray | None
    out_atoms: np.ndarray | None
    depthwise: bool = False


@dataclass
class Group:
    """Producers whose channels are coupled, with their removal classes and why some are pinned."""

    gid: int
    producers: list[str]
    classes: list[int]  # class ids (canonical atom ids), sorted
    pinned: list[int]
    reasons: list[str]
    channels: int  # channels of the group (= classes)
    macs: int = 0

    @property
    def prunable(self) -> bool:
        return len(self.pinned) < len(self.classes)


@dataclass
class Analysis:
    """The state handlers read and write; see the module docstring."""

    graph: Any
    dims: dict[str, tuple | None]
    parent: list[int] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)  # producer index of each atom
    producers: list[Any] = field(default_factory=list)
    atoms: dict[str, np.ndarray] = field(default_factory=dict)
    pin_reasons: dict[int, str] = field(default_factory=dict)  # atom -> first reason
    cuts: list[ConstCut] = field(default_factory=list)
    fixups: list[Callable[[Any], None]] = field(default_factory=list)
    macs: list[MacNode] = field(default_factory=list)

    # ------------------------------------------------------------ atoms and union-find

    def new_atoms(self, node, count: int) -> np.ndarray:
        base = len(self.parent)
        self.parent.extend(range(base, base + count))
        self.owner.extend([len(self.producers)] * count)
        self.producers.append(node)
        return np.arange(base, base + count, dtype=np.int64)

    def find(self, atom: int) -> int:
        parent = self.parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:  # path compression
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:  # the smaller id is the root: canonical, deterministic class ids
            self.parent[max(ra, rb)] = min(ra, rb)

    def union_arrays(self, a: np.ndarray, b: np.ndarray, node) -> np.ndarray:
        """Tie positions of two equal-shape atom arrays; FIXED on one side pins the other."""
        flat_a, flat_b = a.reshape(-1), b.reshape(-1)
        for x, y in zip(flat_a.tolist(), flat_b.tolist(), strict=True):
            if x >= 0 and y >= 0:
                self.union(x, y)
            elif x >= 0 or y >= 0:
                self.pin_atoms(np.array([max(x, y)]), f"{node.op} {node.name!r} combines it with a fixed channel")
        return np.maximum(a, b)

    # ------------------------------------------------------------ tensors

    def get(self, tensor) -> np.ndarray | None:
        return self.atoms.get(tensor.name) if tensor is not None and tensor.name else None

    def set(self, tensor, arr: np.ndarray | None, node=None) -> None:
        if arr is None or not np.any(arr >= 0):
            return
        if arr.size == 1 or self.rank(tensor) not in (None, arr.ndim):
            self.pin_atoms(arr, f"{node.op if node else '?'} {getattr(node, 'name', '')!r} leaves a single channel")
            return
        self.atoms[tensor.name] = arr

    def shape(self, tensor) -> tuple | None:
        import onnx_graphsurgeon as gs

        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.dims.get(tensor.name)

    def rank(self, tensor) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def known_shape(self, tensor) -> tuple[int, ...] | None:
        shape = self.shape(tensor)
        if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
            return None
        return tuple(int(d) for d in shape)

    # ------------------------------------------------------------ pins

    def pin_atoms(self, arr: np.ndarray | None, reason: str) -> None:
        if arr is None:
            return
        for atom in np.unique(arr[arr >= 0]).tolist():
            self.pin_reasons.setdefault(int(atom), reason)

    def pin(self, tensor, reason: str) -> None:
        self.pin_atoms(self.get(tensor), reason)

    def pin_inputs(self, node, reason: str) -> None:
        for tensor in node.inputs:
            self.pin(tensor, reason)

    @property
    def opset(self) -> int:
        """The default-domain opset handlers read attribute defaults by (13 when the graph says none)."""
        return int(self.graph.opset or 13)


# ---------------------------------------------------------------- the handler registry
# here, below both handler modules, so each registers itself without importing the other

Handler = Callable[[Any, Analysis], None]
HANDLERS: dict[str, Handler] = {}


def handles(*ops: str) -> Callable[[Handler], Handler]:
    """Register a handler for op types; registering an op type twice is an error."""

    def deco(fn: Handler) -> Handler:
        for op in ops:
            if op in HANDLERS:
                raise ValueError(f"op {op!r} already has a pruning handler ({HANDLERS[op].__name__})")
            HANDLERS[op] = fn
        return fn

    return deco


def unknown(node, an: Analysis) -> None:
    """The handler of an op type nobody registered: its channel-carrying inputs are pinned."""
    if any(an.get(t) is not None for t in node.inputs):
        an.pin_inputs(node, f"{node.op} is not known to the analysis")


def is_empty(tensor) -> bool:
    """An omitted optional input (graphsurgeon gives it an empty name)."""
    return tensor is None or not tensor.name


def channel_axes(arr: np.ndarray) -> list[int]:
    return [i for i, size in enumerate(arr.shape) if size > 1]


def along(vec: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """A 1-D atom vector as an atom array of ``rank`` with the channels on ``axis``."""
    shape = [1] * rank
    shape[axis] = vec.size
    return vec.reshape(shape)


def vector(arr: np.ndarray, axis: int) -> np.ndarray | None:
    """The 1-D atoms of an array whose only channel axis is ``axis`` (else None)."""
    axes = channel_axes(arr)
    if axes != [axis]:
        return None
    return arr.reshape(-1)


# ---------------------------------------------------------------- classes and groups


def classes_of(an: Analysis) -> np.ndarray:
    """Class id (canonical root atom) of every atom."""
    return np.array([an.find(a) for a in range(len(an.parent))], dtype=np.int64)


def build_groups(an: Analysis, node_macs: dict[str, int]) -> tuple[list[Group], np.ndarray]:
    """Groups (connected producers), deterministic order; also returns the class of every atom."""
    cls = classes_of(an)
    # producers sharing a class are one group: a second union-find, over producers
    parent = list(range(len(an.producers)))

    def find(p: int) -> int:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    first_owner: dict[int, int] = {}
    for atom, c in enumerate(cls.tolist()):
        owner = an.owner[atom]
        if c in first_owner:
            ra, rb = find(first_owner[c]), find(owner)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        else:
            first_owner[c] = owner
    members: dict[int, list[int]] = {}
    for p in range(len(an.producers)):
        members.setdefault(find(p), []).append(p)
    group_of_class = {c: find(o) for c, o in first_owner.items()}
    by_group: dict[int, list[int]] = {}
    for c in sorted(first_owner):
        by_group.setdefault(group_of_class[c], []).append(c)
    pinned_class: dict[int, str] = {}
    for atom, reason in sorted(an.pin_reasons.items()):
        pinned_class.setdefault(int(cls[atom]), reason)
    groups = []
    for gid, (root, classes) in enumerate(sorted(by_group.items())):
        names = [_node_name(an.producers[p]) for p in members[root]]
        pinned = [c for c in classes if c in pinned_class]
        reasons = sorted({pinned_class[c] for c in pinned})
        macs = sum(node_macs.get(n, 0) for n in names)
        groups.append(Group(gid, names, classes, pinned, reasons, len(classes), macs))
    return groups, cls


def _node_name(node) -> str:
    return node.name or node.outputs[0].name
