"""The ``onnxopt`` command: parse arguments, call the API, render with rich. No logic of its own.

Exit codes: 0 ok; 2 usage or config error; 3 bad input model or data; 4 a pass failed (nothing
written); 5 a measurement failed; 1 anything else; 130 interrupted. Errors are one line on
stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make ONNX models smaller and faster for a target, keeping their answers.")

ShapeOpt = Annotated[list[str] | None, typer.Option("--shape", help="Fix an input's dims: NAME=1x3x224x224 (repeat).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
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
    con.print(f"[bold]{model}[/]  opset {report.opset}, IR {report.ir_version}, {report.producer or 'unknown producer'}")
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
    passes: Annotated[str | None, typer.Option("--passes", help="Pipeline spec, e.g. 'simplify,prune:ratio=0.3'.")] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="TOML recipe file instead of --passes.")] = None,
    calib: Annotated[str | None, typer.Option("--calib", help=".npz/.npy, image folder, or 'synthetic'.")] = None,
    shape: ShapeOpt = None,
    seed: int = 0,
    external_data: Annotated[bool | None, typer.Option("--external-data/--no-external-data")] = None,
    force: Annotated[bool, typer.Option("--force", help="Allow overwriting the input model.")] = False,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Run passes on MODEL and write the result to OUTPUT (atomically; never over the input)."""
    import onnxopt
    from onnxopt.errors import ConfigError, OutputExistsError

    if (passes is None) == (recipe is None):
        raise ConfigError("give exactly one of --passes or --recipe", "e.g. --passes simplify")
    if output.exists() and model.exists() and output.resolve() == model.resolve() and not force:
        raise OutputExistsError(f"refusing to overwrite the input model {model}", "choose another -o or pass --force")
    with _pass_progress(enabled=not json_out) as progress:
        result = onnxopt.optimize(model, passes, recipe=recipe, calib=calib, shapes=_shapes(shape), seed=seed,
                                  progress=progress)
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
    limit: int | None = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
):
    """Run A and B on the same inputs: cosine, max |diff|, relative L2, top-1 agreement per output."""
    import onnxopt

    result = onnxopt.compare(model_a, model_b, data=data, shapes=_shapes(shape), limit=limit)
    if json_out:
        return _emit_json(result.model_dump(mode="json"))
    _render_fidelity(_console(), result.model_dump(mode="json"))


@app.command("passes")
def list_passes(json_out: JsonOpt = False, debug: DebugOpt = False):
    """The registered passes, their options and which ones the tuner may search."""
    import onnxopt

    rows = []
    for name, cls in onnxopt.passes().items():
        fields = {k: {"default": f.default, "type": str(f.annotation)} for k, f in cls.Config.model_fields.items()}
        rows.append({"name": name, "doc": (cls.__doc__ or "").strip().splitlines()[0],
                     "options": fields, "tunable": {k: repr(v) for k, v in cls.tunable.items()}})
    if json_out:
        return _emit_json(rows)
    con = _console()
    for row in rows:
        con.print(f"[bold]{row['name']}[/]: {row['doc']}")
        for key, info in row["options"].items():
            mark = "  (tunable)" if key in row["tunable"] else ""
            con.print(f"    {key} = {info['default']!r}{mark}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and turn every error into one line and an exit code."""
    from onnxopt.errors import OnnxOptError

    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, prog_name="onnxopt", standalone_mode=False)
        return 0
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
