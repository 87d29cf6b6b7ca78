"""The ``onnxopt`` command: parse arguments, call the API, render with rich. No logic of its own.

Exit codes: 0 ok; 2 usage or config error; 3 bad input model or data; 4 a pass failed (nothing
written); 5 a measurement failed; 1 anything else; 130 interrupted. Errors are one line on
stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make ONNX models smaller and faster for a target, keeping their answers.")

ShapeOpt = Annotated[list[str] | None, typer.Option("--shape", help="Fix an input's dims: NAME=1x3x224x224 (repeat).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
ImageSpecOpt = Annotated[str | None, typer.Option(
    "--image-spec", help="Preprocessing for image folders: resize=256,crop=224,layout=NCHW,color=RGB,"
    "scale=1/255,mean=0.485|0.456|0.406,std=0.229|0.224|0.225")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks.")]


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _shapes(items: list[str] | None) -> dict[str, list[int]] | None:
    from onnxopt.model import parse_shapes

    return parse_shapes(items) if items else None


def _emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def _fmt_int(value: int | None) -> str:
    if value is None:
        return "unknown"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return str(value)


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


@app.command()
def inspect(model: Path, shape: ShapeOpt = None, top: int = 10, json_out: JsonOpt = False, debug: DebugOpt = False):
    """Inputs, outputs, opset, op histogram, params, MACs, size and the largest layers."""
    import onnxopt

    report = onnxopt.inspect(model, shapes=_shapes(shape), top=top)
    if json_out:
        return _emit_json(report.model_dump(mode="json"))
    from rich.table import Table

    con = _console()
    producer = report.producer or "unknown producer"
    con.print(f"[bold]{model}[/]  opset {report.opset}, IR {report.ir_version}, {producer}")
    for kind, tensors in (("input", report.inputs), ("output", report.outputs)):
        for t in tensors:
            dims = "?" if t.dims is None else "x".join("?" if d is None else str(d) for d in t.dims)
            con.print(f"  {kind:6} {t.name}: {t.dtype} [{dims}]")
    s = report.stats
    con.print(f"  nodes {s.nodes}  params {_fmt_int(s.params)}  MACs {_fmt_int(s.macs)}  "
              f"size {_fmt_bytes(report.size_on_disk or s.size_bytes)}")
    con.print("  ops: " + ", ".join(f"{op}×{n}" for op, n in sorted(s.op_histogram.items(), key=lambda kv: -kv[1])))
    table = Table("layer", "op", "params", "MACs", title="largest layers")
    for layer in report.largest_layers:
        table.add_row(layer.name, layer.op_type, _fmt_int(layer.params), _fmt_int(layer.macs))
    con.print(table)
    for note in report.notes:
        con.print(f"[yellow]note:[/] {note}")


@app.command()
def optimize(
    model: Path,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the optimized model.")],
    passes: Annotated[str | None, typer.Option("--passes", help="Pipeline spec: 'simplify,prune:ratio=0.3'.")] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="TOML recipe file instead of --passes.")] = None,
    calib: Annotated[str | None, typer.Option("--calib", help=".npz/.npy, image folder, or 'synthetic'.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Evaluation data for fidelity (default: the tail "
                                                            "of --calib).")] = None,
    shape: ShapeOpt = None,
    image_spec: ImageSpecOpt = None,
    opset: Annotated[int | None, typer.Option("--opset", help="Upgrade the model to this opset first.")] = None,
    seed: int = 0,
    external_data: Annotated[bool | None, typer.Option("--external-data/--no-external-data")] = None,
    force: Annotated[bool, typer.Option("--force", help="Allow overwriting the input model.")] = False,
    eval_metric: Annotated[str | None, typer.Option(
        "--eval", help="module:function, a metric (outputs, labels) -> float for quantize's max_drop target "
        "(the same as quantize:eval=...).")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Run passes on MODEL and write the result to OUTPUT (atomically; never over the input)."""
    import onnxopt
    from onnxopt.errors import OutputExistsError

    # save() refuses this too; asking first spares running the passes for nothing
    if output.exists() and model.exists() and output.resolve() == model.resolve() and not force:
        raise OutputExistsError(f"refusing to overwrite the input model {model}", "choose another -o or pass --force")
    with _pass_progress(enabled=not json_out) as progress:
        result = onnxopt.optimize(model, passes, recipe=recipe, calib=calib, data=data, shapes=_shapes(shape),
                                  opset=opset, seed=seed, progress=progress, metric=eval_metric,
                                  image_spec=image_spec)
    onnxopt.save(result.model, output, external_data=external_data, protect=[model], force=force)
    payload = result.report.model_dump(mode="json")
    payload["output"] = str(output)
    if json_out:
        return _emit_json(payload)
    _render_optimize(payload)


class _pass_progress:
    """A rich progress line per pass on stderr, fed by the API's progress callback."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                  console=_console(stderr=True), transient=True)
        self._progress.__enter__()
        self._task = self._progress.add_task("loading", total=1.0)
        return lambda name, fraction: self._progress.update(self._task, description=f"pass {name}", completed=fraction)

    def __exit__(self, *exc):
        if self.enabled:
            self._progress.__exit__(*exc)
        return False


def _render_optimize(payload: dict) -> None:
    from rich.table import Table

    con = _console()
    table = Table("pass", "seconds", "nodes", "params", "MACs", "size", title=f"wrote {payload['output']}")
    before = payload["before"]
    table.add_row("(input)", "", str(before["nodes"]), _fmt_int(before["params"]), _fmt_int(before["macs"]),
                  _fmt_bytes(before["size_bytes"]))
    for record in payload["passes"]:
        after = record["after"]
        table.add_row(record["name"], f"{record['seconds']:.2f}", str(after["nodes"]), _fmt_int(after["params"]),
                      _fmt_int(after["macs"]), _fmt_bytes(after["size_bytes"]))
    con.print(table)
    for record in payload["passes"]:
        for note in record["notes"]:
            con.print(f"  {record['name']}: {note}")
    _render_fidelity(con, payload.get("fidelity"))
    for note in payload.get("notes", []):
        con.print(f"[yellow]note:[/] {note}")


def _render_fidelity(con, fid: dict | None) -> None:
    if not fid:
        return
    from rich.table import Table

    label = "synthetic inputs" if fid.get("synthetic") else fid.get("source", "data")
    table = Table("output", "cosine mean", "cosine min", "max |diff|", "rel L2", "top-1 agree",
                  title=f"fidelity vs input on {fid.get('samples')} samples ({label})")
    for out in fid["outputs"]:
        top1 = "-" if out.get("top1_agreement") is None else f"{out['top1_agreement']:.4f}"
        table.add_row(out["name"], f"{out['cosine_mean']:.6f}", f"{out['cosine_min']:.6f}",
                      f"{out['max_abs_diff']:.3g}", f"{out['rel_l2']:.3g}", top1)
    con.print(table)
    if fid.get("accuracy_reference") is not None:
        con.print(f"  accuracy: reference {fid['accuracy_reference']:.4f}, candidate {fid['accuracy_candidate']:.4f}")


@app.command()
def compare(
    model_a: Path,
    model_b: Path,
    data: Annotated[str | None, typer.Option("--data", help=".npz/.npy, image folder, or 'synthetic'.")] = None,
    shape: ShapeOpt = None,
    image_spec: ImageSpecOpt = None,
    limit: int | None = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Run A and B on the same inputs: cosine, max |diff|, relative L2, top-1 agreement per output."""
    import onnxopt

    result = onnxopt.compare(model_a, model_b, data=data, shapes=_shapes(shape), limit=limit, image_spec=image_spec)
    if json_out:
        return _emit_json(result.model_dump(mode="json"))
    _render_fidelity(_console(), result.model_dump(mode="json"))


@app.command("passes")
def list_passes(json_out: JsonOpt = False, debug: DebugOpt = False):
    """The registered passes, their options and which ones the tuner may search."""
    import onnxopt

    infos = [cls.describe() for cls in onnxopt.list_passes().values()]
    if json_out:
        return _emit_json([info.model_dump(mode="json") for info in infos])
    from rich.markup import escape

    con = _console()
    for info in infos:
        con.print(f"[bold]{info.name}[/]: {escape(info.summary)}")
        for opt in info.options:
            tunable = f"  [dim](tunable: {escape(opt.tunable)})[/]" if opt.tunable else ""
            con.print(f"    {opt.name} = {escape(repr(opt.default))}  [dim]{escape(opt.type)}[/]{tunable}")
        for old, new in info.deprecated.items():
            con.print(f"    {old}: [yellow]deprecated[/], write {new}")


@app.command("profile")
def profile_cmd(
    models: Annotated[list[Path], typer.Argument(help="One model, or several to measure interleaved (A B A B).")],
    profile: Annotated[str, typer.Option("--profile", "-p", help="Device profile name or .toml file.")] = "cpu",
    shape: ShapeOpt = None,
    data: Annotated[str | None, typer.Option("--data", help=".npz/.npy, image folder, or 'synthetic'.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Override the profile's batch.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds before the child is killed.")] = None,
    emit_ort: Annotated[Path | None, typer.Option("--emit-ort", help="Write ORT-format models into DIR.")] = None,
    mobile_check: Annotated[bool | None, typer.Option("--mobile-check/--no-mobile-check",
                                                      help="NNAPI/CoreML usability (default: profile's).")] = None,
    write_settings: Annotated[Path | None, typer.Option(
        "--write-settings", help="Write each model with its session settings + sidecar JSON to DIR.")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Latency on a device profile, measured in a child process; several models get ratios to the first."""
    import onnxopt

    with _status(f"profiling on {profile}", enabled=not json_out):
        report = onnxopt.profile([str(m) for m in models], profile=profile, data=data, shapes=_shapes(shape),
                                 batch_size=batch_size, timeout_s=timeout, emit_ort=emit_ort,
                                 mobile_check=mobile_check, write_settings=write_settings)
    if json_out:
        _emit_json(report.model_dump(mode="json"))
    else:
        _render_profile(report.model_dump(mode="json"))
    if not report.ok:
        raise typer.Exit(5)


@app.command("profiles")
def list_profiles(json_out: JsonOpt = False, debug: DebugOpt = False):
    """The device profiles (shipped and from $ONNXOPT_PROFILES) and their providers."""
    from onnxopt.profiling import get_profile, profiles

    rows = [get_profile(path).model_dump(mode="json", include={"name", "description", "providers", "accelerates"})
            for path in profiles().values()]
    if json_out:
        return _emit_json(rows)
    con = _console()
    for row in rows:
        chain = " > ".join(p["name"].removesuffix("ExecutionProvider") for p in row["providers"])
        con.print(f"[bold]{row['name']:10}[/] {row['description']}  [{chain}]  "
                  f"fast: {', '.join(row['accelerates']['precisions'])}")


class _status:
    """A spinner on stderr while something slow runs (only on a terminal)."""

    def __init__(self, text: str, enabled: bool):
        self.text, self.enabled = text, enabled and sys.stderr.isatty()

    def __enter__(self):
        if self.enabled:
            self._status = _console(stderr=True).status(self.text)
            self._status.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._status.__exit__(*exc)
        return False


def _render_profile(payload: dict) -> None:
    from rich import box
    from rich.table import Column, Table

    con = _console()
    ratios = {r["model"]: r for r in payload["ratios"]}
    # fits an 80-column terminal unwrapped; p99 and throughput go on each model's line below
    table = Table(*(Column(h, no_wrap=True) for h in ("model", "median ms", "±CI", "p90", "n")),
                  Column("ratio [95% CI]", no_wrap=True, min_width=19),
                  title=f"latency on profile {payload['profile']} ({payload['provider']})", box=box.SIMPLE_HEAD)
    for r in payload["results"]:
        name = Path(r["model"]).name
        if not r["ok"]:
            table.add_row(name, f"[red]{r['failure']}[/]", *[""] * 4)
            continue
        lat, ratio = r["latency_ms"], ratios.get(r["model"])
        ratio_text = f"{ratio['ratio']:.3f} [{ratio['ci_low']:.3f}-{ratio['ci_high']:.3f}]" if ratio else (
            "1 (reference)" if ratios else "")
        table.add_row(name, f"{lat['median']:.4g}", f"{lat['rel_ci']:.1%}", f"{lat['p90']:.3g}", str(lat["n"]),
                      ratio_text)
    con.print(table)
    for r in payload["results"]:
        name = Path(r["model"]).name
        if not r["ok"]:
            con.print(f"[red]failed:[/] {name}: {r['error']}")
            continue
        placement = ", ".join(f"{p} {n}" for p, n in r["placement"]["nodes"].items())
        rss = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f} MB"
        con.print(f"{name}: p99 {r['latency_ms']['p99']:.4g} ms, {r['throughput_per_s']:.4g} items/s, session "
                  f"{r['session_create_ms']:.1f} ms, first run {r['first_inference_ms']:.2f} ms, peak RSS {rss}; "
                  f"nodes: {placement}")
        if not r["target_reached"]:
            con.print(f"[yellow]note:[/] {name}: CI ±{r['latency_ms']['rel_ci']:.1%} did not reach the "
                      f"target ±{r['target_rel_ci']:.1%} within the time budget")
        if r["fallback_note"]:
            con.print(f"[yellow]fallback:[/] {name}: {r['fallback_note']}")
    first = payload["results"][0]
    con.print(f"inputs: {'synthetic' if first['inputs_synthetic'] else first['inputs_source']}, "
              f"batch {first['batch_size']}")
    _render_edge(con, payload)


def _render_edge(con, payload: dict) -> None:
    for edge in payload["edge"]:
        con.print(f"[bold]{Path(edge['model']).name}[/] edge:")
        if edge["ort"]:
            con.print(f"  ORT format {edge['ort']['path']} ({_fmt_bytes(edge['ort']['size_bytes'])})")
        for ep in (edge["usability"] or {}).get("providers", []):
            relaxed = ep["suitability_if_fixed_shapes"]
            fixed = f", with fixed shapes {relaxed}" if relaxed else ""
            con.print(f"  {ep['provider']}: {ep['suitability']}{fixed} — {ep['supported_nodes']}/{ep['nodes']} nodes "
                      f"in {ep['partitions']} partitions; unsupported: {', '.join(ep['unsupported_ops']) or 'none'}")
        for error in edge["errors"]:
            con.print(f"  [red]failed:[/] {error}")
    for path in payload["settings_files"]:
        con.print(f"wrote {path}")


@app.command("sensitivity")
def sensitivity_cmd(
    model: Path,
    data: Annotated[str | None, typer.Option("--data", help=".npz/.npy, image folder, or 'synthetic'.")] = None,
    ratios: Annotated[str, typer.Option("--ratios", help="Comma-separated ratios to try per group.")] = "0.1,0.3,0.5",
    shape: ShapeOpt = None,
    limit: int = 32,
    min_score: Annotated[float, typer.Option("--min-score", help="Score floor for the suggested ratios.")] = 0.99,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the curves as PNG/SVG (report extra).")] = None,
    macs_budget: Annotated[float | None, typer.Option(
        "--macs-budget", help="Also print per-group ratios removing this MACs fraction at least damage.")] = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Prune each channel group alone at each ratio and report the fidelity/accuracy curve."""
    import onnxopt
    from onnxopt.errors import ConfigError
    from onnxopt.passes.prune.sensitivity import check_macs_budget, check_ratios

    try:
        values = [float(r) for r in ratios.split(",") if r.strip()]
    except ValueError:
        raise ConfigError(f"bad --ratios {ratios!r}", "e.g. --ratios 0.1,0.3,0.5") from None
    check_ratios(values)  # the library's checks, run before the slow part rather than after it
    check_macs_budget(macs_budget)
    with _status("pruning group by group", enabled=not json_out):
        report = onnxopt.sensitivity(model, data=data, ratios=values, shapes=_shapes(shape), limit=limit,
                                     min_score=min_score, macs_budget=macs_budget)
    if plot is not None:
        _plot_sensitivity(report, plot)
    if json_out:
        return _emit_json(report.model_dump(mode="json"))
    from rich.table import Table

    table = Table("group", "channels", "MACs share", *[f"{report.metric} @{r}" for r in values],
                  title=f"sensitivity of {model.name} (reference {report.metric} {report.reference:.4f})")
    for row in report.groups:
        by_ratio = {p["ratio"]: p["score"] for p in row["points"]}
        table.add_row(row["producers"][0], str(row["channels"]), f"{row['macs_share']:.1%}",
                      *[f"{by_ratio[r]:.4f}" if r in by_ratio else "-" for r in values])
    con = _console()
    con.print(table)
    con.print("suggested: prune:overrides=" + "|".join(report.suggested_overrides))
    if report.macs_budget is not None:
        con.print(f"for MACs -{report.macs_budget:.0%} (per-group drops add up to -{report.budget_macs_drop:.1%}; "
                  "prune:strategy=sensitivity measures the real one): prune:ratio=0,overrides="
                  + "|".join(report.budget_overrides))


def _plot_sensitivity(report, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from onnxopt.errors import ConfigError

        raise ConfigError("--plot needs matplotlib", "pip install 'onnxopt[report]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in report.groups:
        points = row["points"]
        ax.plot([p["ratio"] for p in points], [p["score"] for p in points], marker="o", linewidth=1,
                label=row["producers"][0])
    ax.set_xlabel("ratio of the group's channels removed")
    ax.set_ylabel(report.metric)
    if len(report.groups) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _register_tune() -> None:
    from onnxopt.cli_tune import report_cmd, tune_cmd

    app.command("tune")(tune_cmd)
    app.command("report")(report_cmd)


_register_tune()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every error into one line and an exit code."""
    from onnxopt.errors import OnnxOptError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            result = app(args=args, prog_name="onnxopt", standalone_mode=False)
        if result == 130:  # typer >= 0.2x returns Ctrl-C's exit code instead of raising Abort
            _fail("interrupted", 130, debug, KeyboardInterrupt())
        return result if isinstance(result, int) else 0
    except typer.Exit as exc:
        return exc.exit_code
    except _click_error() as exc:
        _fail(f"usage: {exc.format_message()}", exc.exit_code, debug, exc)
    except (typer.Abort, KeyboardInterrupt) as exc:
        _fail("interrupted", 130, debug, exc)
    except OnnxOptError as exc:
        _fail(exc.one_line(), exc.exit_code, debug, exc)
    except Exception as exc:  # the last resort: one line, the traceback only on --debug
        _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", 1, debug, exc)
    return 1


def _show_warning(message, category, *_args, **_kwargs) -> None:
    """Warnings (a deprecated option name, say) as one line on stderr, without Python's source line."""
    sys.stderr.write(f"warning: {message}\n")


def _click_error() -> type[Exception]:
    """Click's usage-error base: typer >= 0.17 vendors click, older typer depends on it."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException
    return ClickException


def _fail(message: str, code: int, debug: bool, exc: BaseException) -> None:
    if debug:
        import traceback

        traceback.print_exception(exc)
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
