"""Latency-aware partial quantization: the decision logic on a fake timing table, the kernel ->
node mapping on real onnxruntime profiles, and the pass end to end on digits and a light zoo model.
Timing goes through the pass context's measurer: the profiling service on a fast CPU profile."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest

from onnxopt.data import load_data
from onnxopt.errors import ConfigError
from onnxopt.model import input_specs
from onnxopt.passes import PassContext
from onnxopt.passes.quant import Quantize, latency
from onnxopt.passes.quant.calib import dataset_feeds
from onnxopt.passes.quant.config import QuantizeConfig, resolve
from onnxopt.passes.quant.nodetime import Anchors, Timing, profile_nodes
from onnxopt.passes.quant.static import StaticQuantizer
from onnxopt.profiling.service import ProfileMeasurer
from onnxopt.targets import parse_target
from onnxopt.zoo import corpus
from tests.profiling.helpers import fast_profile


@pytest.fixture(scope="module")
def measurer() -> ProfileMeasurer:
    return ProfileMeasurer(fast_profile("cpu"))


class TableWhole:
    """The real node profiler, with whole-model times from ``table(models)`` (seconds per round)."""

    def __init__(self, table):
        self.real, self.table = ProfileMeasurer(fast_profile("cpu")), table
        self.target = self.real.target

    def nodes(self, model, feeds, *, budget_s: float = 1.5):
        return self.real.nodes(model, feeds, budget_s=budget_s)

    def whole(self, models, feeds):
        return self.table(models)


@pytest.fixture(scope="module")
def digits_quantizer(digits) -> StaticQuantizer:
    model, calib, _ = digits
    cfg = QuantizeConfig(calib_size=16)
    return StaticQuantizer(model, calib, cfg, resolve(cfg))


def quantized_convs(model: onnx.ModelProto) -> set[str]:
    """Conv/Gemm nodes whose weight comes through a DequantizeLinear (quantized, in QDQ form)."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm") and n.input[1] in dq}


class FakeTimer:
    """float table on the first call, int8 table on the second, the partial table after that."""

    def __init__(self, float_t: dict, int8_t: dict, partial_t: dict):
        self.tables, self.calls = [float_t, int8_t], 0
        self.partial = partial_t

    def __call__(self, model: onnx.ModelProto) -> Timing:
        table = self.tables[self.calls] if self.calls < 2 else self.partial
        self.calls += 1
        return Timing(dict(table), sum(table.values()), 0.0, 10)


def test_decisions_follow_the_timing_table(digits_quantizer):
    q = digits_quantizer
    heads = list(Anchors(q.model, q.quantizable()).members())
    fast, slow = heads[: len(heads) // 2], heads[len(heads) // 2:]
    float_t = dict.fromkeys(heads, 100.0)
    int8_t = {**dict.fromkeys(fast, 50.0), **dict.fromkeys(slow, 150.0)}
    boundary = fast[0]  # faster alone, slower once its neighbours are float (boundary Q/DQ)
    timer = FakeTimer(float_t, int8_t, {**int8_t, boundary: 120.0})
    whole = {"fp32": [1.0] * 5, "int8": [2.0] * 5, "partial 0": [0.9] * 5, "partial 1": [0.8] * 5}
    result = latency.latency_aware(q, q.model, [], timer=timer, whole=lambda models: {k: whole[k] for k in models})
    rows = {d.node: d for d in result.decisions}
    assert {n for n, d in rows.items() if d.decision == "int8"} == set(fast) - {boundary}
    assert "boundary" in rows[boundary].reason and rows[boundary].int8_us == 120.0
    assert all(rows[n].float_us == 100.0 and rows[n].int8_us == 150.0 for n in slow)
    assert result.choice == "partial 1" and timer.calls == 4  # float, int8, partial 0, partial 1 (no change)
    in_float = set(result.kept_in_float())
    assert boundary in in_float and not (quantized_convs(result.model) & in_float)
    assert quantized_convs(result.model) & set(fast)
    assert not any(n.startswith("WARNING") for n in result.notes)


def test_an_earlier_variant_wins_when_refinement_cascades(digits_quantizer):
    q = digits_quantizer
    heads = list(Anchors(q.model, q.quantizable()).members())
    timer = FakeTimer(dict.fromkeys(heads, 100.0), dict.fromkeys(heads, 50.0),
                      {**dict.fromkeys(heads, 50.0), heads[1]: 200.0})
    timer.tables[1][heads[0]] = 150.0
    whole = {"fp32": [1.0] * 5, "int8": [0.95] * 5, "partial 0": [0.5] * 5, "partial 1": [0.7] * 5}
    result = latency.latency_aware(q, q.model, [], timer=timer, whole=lambda models: {k: whole[k] for k in models})
    rows = {d.node: d for d in result.decisions}
    assert result.choice == "partial 0"
    assert rows[heads[0]].decision == "float" and rows[heads[1]].decision == "int8"
    assert "later" in rows[heads[1]].reason


def test_slower_than_fp32_falls_back_loudly(digits):
    model, calib, _ = digits

    def fp32_always_fastest(models):
        return {label: [0.001 if label == "fp32" else 0.002] * 5 for label in models}

    ctx = PassContext(data=calib, measurer=TableWhole(fp32_always_fastest))
    out = Quantize(latency_aware=True, calib_size=16).apply(model, ctx)
    assert out.SerializeToString() == model.SerializeToString()
    assert any(n.startswith("WARNING") and "UNCHANGED" in n for n in ctx.notes)
    assert ctx.details["quantize"]["latency_aware"]["choice"] == "fp32"


def test_kernel_mapping_on_digits_profiles(digits_quantizer, digits, measurer):
    q = digits_quantizer
    anchors = Anchors(q.model, q.quantizable())
    feeds = list(dataset_feeds(digits[1], input_specs(q.model), 2))
    for model in (q.model, q.quantize()):
        timing = profile_nodes(model, feeds, anchors, measurer, budget_s=0.2)
        assert timing.note is None  # timed on the profile's own provider
        assert timing.unattributed_us <= 0.05 * timing.total_us, [k for k, a in timing.kernels.items() if not a]
        convs = [h for h in anchors.members() if anchors.ops[h] == "Conv"]
        assert all(timing.per_anchor.get(c, 0) > 0 for c in convs)  # every conv group got its kernel time
    # onnxruntime fuses Conv+BN+Relu into one NCHWc kernel named after the Relu output: one group
    members = anchors.members()["/res/a/a.0/Conv"]
    assert members[0] == "/res/a/a.0/Conv" and "/res/Relu" in members


def check_latency_report(model, data, **options) -> tuple[onnx.ModelProto, dict, list[str]]:
    ctx = PassContext(data=data, measurer=ProfileMeasurer(fast_profile("cpu")))
    out = Quantize(latency_aware=True, **options).apply(model, ctx)
    onnx.checker.check_model(out, full_check=True)
    report = ctx.details["quantize"]["latency_aware"]
    assert report["nodes"] and all({"node", "op", "float_us", "int8_us", "decision"} <= set(r) for r in report["nodes"])
    assert {r["decision"] for r in report["nodes"]} <= {"int8", "float"}
    assert all(r["float_us"] >= 0 and r["int8_us"] >= 0 for r in report["nodes"])
    whole = report["whole_model"]
    assert whole[report["choice"]]["median_ms"] <= whole["fp32"]["median_ms"]  # never slower than the input
    assert any("latency-aware medians" in n for n in ctx.notes)
    return out, report, ctx.notes


def test_latency_aware_digits_end_to_end(digits):
    from onnxopt.evaluate import fidelity

    model, calib, held_out = digits
    out, report, _ = check_latency_report(model, calib, calib_size=16)
    assert len(report["nodes"]) == len(Anchors(*_prepared(model, calib)).members())
    assert fidelity(model, out, held_out).top1_agreement >= 0.99


def _prepared(model, calib):
    cfg = QuantizeConfig(calib_size=4)
    q = StaticQuantizer(model, calib, cfg, resolve(cfg))
    return q.model, q.quantizable()


@pytest.mark.slow
def test_latency_aware_squeezenet(tmp_path):
    model = corpus()["light_squeezenet"]()
    data = load_data("synthetic:n=2", model)
    out, report, notes = check_latency_report(model, data, calib_size=2)
    assert sum(report["unattributed_us"].values()) == 0.0
    convs = [r for r in report["nodes"] if r["op"] == "Conv"]
    assert convs and all(r["float_us"] > 0 and r["int8_us"] > 0 for r in convs)


@pytest.mark.slow
def test_latency_aware_shufflenet_keeps_slow_int8_transposes_in_float():
    model = corpus()["light_shufflenet"]()
    data = load_data("synthetic:n=2", model)
    _, report, _ = check_latency_report(model, data, calib_size=2)
    shuffles = [r for r in report["nodes"] if r["op"] == "Transpose"]
    # channel shuffle = Reshape -> 5-D Transpose -> Reshape; the int8 5-D Transpose runs ~10x slower
    assert shuffles and all(r["int8_us"] > r["float_us"] and r["decision"] == "float" for r in shuffles)


def test_a_gain_within_the_noise_returns_the_input(digits_quantizer):
    """2% faster is within interleaved-timing noise: the float input comes back, and says why."""
    q = digits_quantizer
    heads = list(Anchors(q.model, q.quantizable()).members())
    timer = FakeTimer(dict.fromkeys(heads, 100.0), dict.fromkeys(heads, 50.0), dict.fromkeys(heads, 50.0))
    whole = {"fp32": [1.0] * 5, "int8": [0.98] * 5}
    result = latency.latency_aware(q, q.model, [], timer=timer, whole=lambda models: {k: whole[k] for k in models})
    assert result.choice == "fp32" and result.model is q.model
    assert any(n.startswith("WARNING") and f"{latency.MIN_GAIN:.2f}x" in n for n in result.notes)


def test_all_groups_in_float_is_not_raced_against_fp32(digits_quantizer):
    q = digits_quantizer
    heads = list(Anchors(q.model, q.quantizable()).members())
    timer = FakeTimer(dict.fromkeys(heads, 100.0), dict.fromkeys(heads, 150.0), dict.fromkeys(heads, 150.0))
    raced: list[str] = []

    def whole(models):
        raced.extend(models)
        return {k: [1.0 if k == "fp32" else 1.5] * 5 for k in models}

    result = latency.latency_aware(q, q.model, [], timer=timer, whole=whole)
    assert sorted(raced) == ["fp32", "int8"] and result.choice == "fp32"


class FakeJudge:
    """Cosine falls with every quantized conv (0.1 each): the full int8 model is the worst one."""

    def __init__(self, floor: float):
        self.criteria, self.data = parse_target(f"cosine>={floor}"), [None]

    def score(self, model: onnx.ModelProto) -> dict:
        return {"cosine": 1.0 - 0.1 * len(quantized_convs(model))}

    def holds(self, scores: dict) -> bool:
        return scores["cosine"] >= self.criteria[0].threshold

    def describe(self, scores: dict) -> str:
        return f"cosine={scores['cosine']:.3f}"


def _int8_fastest(models) -> dict[str, list[float]]:
    order = ["int8", "partial 0", "mixed", "fp32"]  # anything else (later partials) is slowest
    return {k: [1.0 + (order.index(k) if k in order else 9)] * 5 for k in models}


def test_fidelity_bar_refuses_the_faster_broken_variant_loudly(digits_quantizer):
    q = digits_quantizer
    heads = list(Anchors(q.model, q.quantizable()).members())
    fast, slow = heads[:2], heads[2:]
    timer = FakeTimer(dict.fromkeys(heads, 100.0), {**dict.fromkeys(fast, 50.0), **dict.fromkeys(slow, 150.0)},
                      {**dict.fromkeys(fast, 50.0), **dict.fromkeys(slow, 150.0)})
    full = len(quantized_convs(q.quantize()))
    judge = FakeJudge(floor=1.0 - 0.1 * (full - 1) + 1e-9)  # full int8 misses it, the 2-group partial meets it
    result = latency.latency_aware(q, q.model, [], timer=timer, whole=_int8_fastest, judge=judge)
    assert result.choice == "partial 0" and not judge.holds(result.scores["int8"])
    assert any("refused the faster int8" in n for n in result.notes)
    assert not any(n.startswith("WARNING") for n in result.notes)  # what came back meets the bar
    strict = latency.latency_aware(q, q.model, [], timer=FakeTimer(*timer.tables, timer.partial),
                                   whole=_int8_fastest, judge=FakeJudge(floor=1.01))
    assert strict.choice == "fp32"
    assert any(n.startswith("WARNING") and "refused the faster" in n for n in strict.notes)
    assert any(n.startswith("WARNING") and "UNCHANGED" in n for n in strict.notes)


def test_latency_aware_with_a_target_races_the_mixed_model(digits):
    model, calib, _ = digits
    ctx = PassContext(data=calib, measurer=TableWhole(_int8_fastest))
    out = Quantize(latency_aware=True, target="cosine>=0.99", calib_size=100).apply(model, ctx)
    report = ctx.details["quantize"]["latency_aware"]
    assert {"fp32", "int8", "mixed"} <= set(report["whole_model"]) and report["choice"] == "int8"
    assert all(v["cosine"] >= 0.99 for k, v in report["scores"].items() if k in ("int8", "mixed"))
    assert any("50 held-out sample(s)" in n for n in ctx.notes)
    onnx.checker.check_model(out)


def test_latency_aware_without_a_target_holds_a_cosine_floor(digits, monkeypatch):
    from onnxopt.passes.quant import run

    model, calib, _ = digits
    monkeypatch.setattr(run, "FLOOR", 1.01)  # no variant can reach it: the fp32 input comes back, loudly
    ctx = PassContext(data=calib, measurer=TableWhole(_int8_fastest))
    out = Quantize(latency_aware=True, calib_size=16).apply(model, ctx)
    assert out.SerializeToString() == model.SerializeToString()
    assert ctx.details["quantize"]["latency_aware"]["choice"] == "fp32"
    assert any(n.startswith("WARNING") and "cosine>=1.01" in n for n in ctx.notes)


def test_timing_off_the_profiles_provider_is_said_loudly(digits):
    """Where the profile allows fallback and its provider cannot run here (the WebGPU plugin without
    a GPU or its package, CUDA without onnxruntime-gpu), the nodes are timed on the CPU: the notes
    must say so. Without fallback the measurer refuses, naming the provider."""
    from onnxopt.errors import PassError, ProviderUnavailableError

    model, calib, _ = digits
    ctx = PassContext(data=calib, measurer=ProfileMeasurer(fast_profile("webgpu", allow_fallback=True)))
    Quantize(latency_aware=True, calib_size=16).apply(model, ctx)
    assert any(n.startswith("WARNING: latency-aware timed the nodes on CPUExecutionProvider, not on the "
                            "profile's WebGpuExecutionProvider") for n in ctx.notes), ctx.notes
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises((ProviderUnavailableError, PassError), match="CUDAExecutionProvider"):
            Quantize(latency_aware=True, calib_size=16).apply(model, PassContext(
                data=calib, measurer=ProfileMeasurer(fast_profile("cuda"))))


def test_latency_aware_without_a_measurer_says_what_to_do(digits):
    model, calib, _ = digits
    with pytest.raises(ConfigError, match="no measurer") as info:
        Quantize(latency_aware=True, calib_size=16).apply(model, PassContext(data=calib))
    assert "onnxopt.optimize" in info.value.hint


def test_optimize_gives_passes_the_profiles_measurer(digits):
    """The API wires the target profile's measuring service into the context (the ``cpu`` profile
    when none is given, as ``make demo`` runs it)."""
    import onnxopt
    from tests.conftest import DIGITS, DIGITS_EVAL

    result = onnxopt.optimize(DIGITS, "quantize:latency_aware=true,calib_size=16", calib=DIGITS_EVAL,
                              profile=fast_profile(), fidelity=False)
    [record] = result.report.passes
    report = record.details["quantize"]["latency_aware"]
    assert report["whole_model"]["fp32"]["n"] >= fast_profile().measure.min_repeats
    assert "format: QDQ" in record.notes[0] and "cpu-1t-fast" in record.notes[0]
