"""float32 -> float16 with onnxconverter-common, made safe: out-of-range constants, fidelity check.

onnxconverter-common's ``convert_float_to_float16`` clamps constants to +-``max_finite_val``, which
silently changes a model whose constants leave fp16's range (PP-OCRv4 det has a BatchNormalization
variance of 9.79e7: fp16 tops out at 65504). So nodes that read such a constant stay in float32 and
the report names them; after conversion both models run on the same data and a model whose outputs
drift below the target is refused (or, with ``auto``, more nodes are kept in fp32).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.passes.base import Choice, Pass, PassConfig, PassContext, StrList, register

FP16_MAX = 65504.0
FP16_TINY = 6.1e-5  # smallest normal; smaller non-zero magnitudes lose precision as subnormals
# ops with no float16 meaning, or whose fp16 results are routinely wrong (range-sensitive reductions)
DEFAULT_BLOCK = ("Range", "NonMaxSuppression", "TopK", "RoiAlign", "Resize", "Upsample", "CumSum",
                 "RandomNormalLike", "RandomUniformLike", "Multinomial", "Einsum")


def _cosine_target(min_cosine: float | str) -> str:
    return f"cosine>={float(min_cosine)}"


class Fp16Config(PassConfig):
    """Options of ``fp16``; ``min_cosine=X`` is the old way to write ``target=cosine>=X`` (still accepted)."""

    aliases = {"min_cosine": ("target", _cosine_target)}

    keep_io_types: bool = True
    block_ops: StrList = DEFAULT_BLOCK
    block_nodes: StrList = ()
    auto: bool = False
    # refuse (or, with auto, keep more nodes in fp32) when the outputs miss this, e.g. "cosine>=0.999"
    target: str = "cosine>=0.99"


def out_of_range_nodes(model: onnx.ModelProto) -> dict[str, float]:
    """Nodes reading a float constant (initializer or Constant) whose magnitude exceeds fp16's max."""
    big: dict[str, float] = {}
    for t in model.graph.initializer:
        if t.data_type == onnx.TensorProto.FLOAT:
            peak = float(np.abs(numpy_helper.to_array(t)).max(initial=0.0))
            if peak > FP16_MAX:
                big[t.name] = peak
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == onnx.TensorProto.FLOAT:
                    peak = float(np.abs(numpy_helper.to_array(attr.t)).max(initial=0.0))
                    if peak > FP16_MAX:
                        big[node.output[0]] = peak
    return {n.name or n.output[0]: big[i] for n in model.graph.node for i in n.input if i in big}


def ensure_names(model: onnx.ModelProto) -> None:
    """Give unnamed nodes stable names, in place: block lists and reports refer to nodes by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def convert(model: onnx.ModelProto, *, keep_io_types: bool, block_ops, block_nodes) -> onnx.ModelProto:
    """onnxconverter-common's conversion with our block lists (constants clamped, never inf)."""
    import warnings

    from onnxconverter_common import float16

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with warnings.catch_warnings():  # one warning per clamped number; out-of-range nodes are reported instead
        warnings.simplefilter("ignore")
        return float16.convert_float_to_float16(
            copy, min_positive_val=FP16_TINY, max_finite_val=FP16_MAX, keep_io_types=keep_io_types,
            disable_shape_infer=False, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(block_ops),
            node_block_list=list(block_nodes))


def restore_fp32_constants(converted: onnx.ModelProto, original: onnx.ModelProto, names: set[str]) -> int:
    """Give the readers of the float initializers ``names`` their exact fp32 values back, in place.

    onnxconverter-common converts *every* float initializer to fp16 (clamped to 65504) and casts it
    back to fp32 in front of a blocked node, so blocking the reader alone does not save an
    out-of-range constant: PP-OCRv4 det stayed at cosine 0.54 with every node blocked. Each such
    ``Cast(fp16 copy)`` input is rewired to an fp32 copy of the original; orphans are removed."""
    fp32 = {t.name: t for t in original.graph.initializer if t.name in names}
    graph = converted.graph
    casts = {n.output[0]: n for n in graph.node if n.op_type == "Cast" and n.input and n.input[0] in fp32}
    restored = 0
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in casts:
                node.input[index] = casts[name].input[0] + "_fp32"
                restored += 1
    for source in {c.input[0] for c in casts.values()}:
        copy = onnx.TensorProto()
        copy.CopyFrom(fp32[source])
        copy.name = source + "_fp32"
        graph.initializer.append(copy)
    used = {i for n in graph.node for i in n.input}
    keep = [n for n in graph.node if not (n.op_type == "Cast" and n.output[0] in casts and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name in fp32 and t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return restored


def big_initializers(model: onnx.ModelProto) -> set[str]:
    """Float initializers with a magnitude beyond fp16's max."""
    return {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
            and float(np.abs(numpy_helper.to_array(t)).max(initial=0.0)) > FP16_MAX}


def check_data(model: onnx.ModelProto, data, shapes, notes: list[str]):
    """The data to check fidelity on: the user's, else synthetic (said so); None if neither works."""
    from onnxopt.data import load_data
    from onnxopt.errors import DataError

    if data is not None:
        return data.take(min(len(data), 32))
    try:
        synthetic = load_data("synthetic:n=8", model, shapes=shapes)
    except DataError as exc:
        notes.append(f"WARNING: fidelity NOT checked (no data, and synthetic inputs impossible: {exc.message})")
        return None
    notes.append("fidelity checked on SYNTHETIC random inputs (pass --calib for real data)")
    return synthetic


def _group_ranking(model, candidates: list[str], build, judge, groups: int = 8) -> list[str]:
    """Rank nodes by measuring groups: convert one contiguous group at a time, most damaging first."""
    size = max(1, -(-len(candidates) // groups))
    chunks = [candidates[i:i + size] for i in range(0, len(candidates), size)]
    damage = []
    everything = set(candidates)
    for chunk in chunks:
        scores = judge.score(build(everything - set(chunk)))  # only this chunk in fp16
        damage.append(1.0 - (scores["cosine"] or 0.0))
    order = sorted(range(len(chunks)), key=lambda i: -damage[i])
    return [name for i in order for name in chunks[i]]


def to_fp16(model: onnx.ModelProto, cfg: Fp16Config, data, shapes, notes: list[str], details: dict) -> onnx.ModelProto:
    from onnxopt.errors import PassError
    from onnxopt.passes.quant.prepare import constants_to_initializers, refuse_if_quantized
    from onnxopt.passes.quant.search import bisect_fallback
    from onnxopt.targets import Judge, parse_target

    refuse_if_quantized(model, "fp16 conversion")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    ensure_names(work)
    # onnxconverter-common converts a Constant *node* to fp16 even when its only reader is blocked
    # (and clamps it: PP-OCRv4 det's BN variance 9.79e7 became 65504, output cosine 0.36 even with
    # every node blocked); an initializer read only by blocked nodes stays fp32
    moved = constants_to_initializers(work)
    if moved:
        notes.append(f"moved {moved} Constant-node tensor(s) to initializers (so blocked nodes keep fp32 constants)")
    big = out_of_range_nodes(work)
    if big:
        notes.append("kept in fp32 (constants beyond fp16's 65504): "
                     + ", ".join(f"{n} ({v:.3g})" for n, v in list(big.items())[:10]))
    blocked = set(cfg.block_nodes) | set(big)

    big_inits = big_initializers(work)

    def build(keep: set[str]) -> onnx.ModelProto:
        out = convert(work, keep_io_types=cfg.keep_io_types, block_ops=cfg.block_ops, block_nodes=blocked | keep)
        if big_inits:
            restore_fp32_constants(out, work, big_inits)
        return out

    converted = build(set())
    checked = check_data(work, data, shapes, notes)
    if checked is None:
        return converted
    criteria = parse_target(cfg.target)
    judge = Judge(work, checked, criteria)
    scores = judge.score(converted)
    details["fp16_scores"] = scores
    if judge.holds(scores):
        notes.append(f"fp16 fidelity: {judge.describe(scores)}")
        return converted
    if not cfg.auto:
        raise PassError(f"fp16 breaks this model ({judge.describe(scores)}; target {', '.join(map(str, criteria))});"
                        " nothing written", "use fp16:auto=true to keep the sensitive nodes in fp32")
    skip = set(cfg.block_ops) | {"Constant"}
    candidates = [n.name for n in work.graph.node if n.name not in blocked and n.op_type not in skip]
    ranked = _group_ranking(work, candidates, build, judge)
    result = bisect_fallback(ranked, build, judge, "fp16 auto")
    details["fp16_kept"] = result.kept
    details["fp16_trail"] = result.trail
    notes.append(f"fp16 auto: {len(result.kept)} of {len(candidates)} node(s) kept in fp32 to meet "
                 f"{', '.join(map(str, criteria))}; {judge.describe(result.scores)}")
    return result.model


@register
class Fp16(Pass):
    """float32 -> float16 (inputs/outputs stay float32), refused if it breaks the outputs."""

    name = "fp16"
    Config = Fp16Config
    tunable = {"auto": Choice((False, True))}

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
        notes: list[str] = []
        try:
            return to_fp16(model, self.config, ctx.data, ctx.shapes, notes, ctx.details)  # type: ignore[arg-type]
        finally:  # what was kept and why reaches the report even when the pass refuses
            for note in notes:
                ctx.note(note)
