"""``onnxopt tune`` and ``onnxopt report``: parse, call ``onnxopt.tune`` / the report renderer, and show
a live rich table of the trials (the current Pareto front highlighted) with a progress bar.

Registered on the main app by ``onnxopt.cli``; kept apart so the CLI module stays readable.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

ROWS_SHOWN = 14


def tune_cmd(
    model: Path,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for best.onnx, pareto/, trials and the report.")],
    profile: Annotated[str | None, typer.Option("--profile", "-p", help="Device profile name or .toml file "
                                                "[default: cpu].")] = None,
    budget: Annotated[int | None, typer.Option(
        "--budget", help="Number of distinct trials [default: 20; grid: all its points].")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", help="Stop after this long: 90s, 30m, 1h.")] = None,
    calib: Annotated[str | None, typer.Option("--calib", help="Calibration data: .npz/.npy, image folder.")] = None,
    data: Annotated[str | None, typer.Option("--data", help="Evaluation data (default: the tail of --calib).")] = None,
    eval_metric: Annotated[str | None, typer.Option(
        "--eval", help="module:function, a metric (outputs, labels) -> float for drop<= targets.")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help="Accuracy target: 'cosine>=0.999', 'top1>=0.99', 'iou>=0.97', 'drop<=0.01'.")] = None,
    strategy: Annotated[str | None, typer.Option(
        "--strategy", help="ngopt, random, grid, bo, cma, de or portfolio [default: ngopt].")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="[default: 0]")] = None,
    jobs: Annotated[int, typer.Option("--jobs", help="Trials built in parallel (measurements stay serial).")] = 1,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="TOML: fix, narrow or widen dimensions.")] = None,
    objective: Annotated[str | None, typer.Option(
        "--objective", help="What best means: latency (default), or weights such as latency=1,size=0.5 "
        "(terms: latency, size, accuracy, memory).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out with its profile, target, strategy, seed and budget.")] = False,
    shape: Annotated[list[str] | None, typer.Option("--shape", help="Fix an input's dims: NAME=1x3x224x224.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
):
    """Search pass and session settings by latency on the target and accuracy; write the Pareto front.

    Re-running with the same --out reuses every finished trial (a killed run resumes where it stopped)."""
    import onnxopt
    from onnxopt.model import parse_shapes

    view = None if json_out else LiveView(budget or 20)
    try:
        result = onnxopt.tune(str(model), profile=profile, calib=calib, data=data, metric=eval_metric, target=target,
                              budget=budget, time_limit=time_limit, strategy=strategy, seed=seed, jobs=jobs,
                              resume=resume, objective=objective, recipe=recipe, out_dir=out,
                              shapes=parse_shapes(shape) if shape else None, on_event=view.event if view else None)
    finally:
        if view:
            view.stop()
    payload = json.loads((out / "report.json").read_text())
    if json_out:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return
    render_summary(payload, out, improved=result.improved)


def report_cmd(
    folder: Path,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
):
    """Re-render a tune folder's report (report.html, report.json, trials.csv) from its SQLite file."""
    from onnxopt.tuning.report import render

    payload = render(folder)
    if json_out:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
        return
    render_summary(payload, folder, improved=payload.get("best") is not None)


def render_summary(payload: dict[str, Any], folder: Path, improved: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False)
    summary = payload["summary"]
    rows = {r["seq"]: r for r in payload["trials"]}
    table = Table(title=f"Pareto front ({summary.get('profile')}, target {summary.get('target')})")
    for col in ("trial", "pipeline", "session", "latency ratio [95% CI]", "size", "cosine", "final ratio"):
        table.add_column(col)
    final = {f["label"]: f for f in payload.get("final", [])}
    for seq in payload["front"]:
        r = rows.get(seq)
        if r is None:
            continue
        f = final.get(f"t{seq}")
        mark = " *" if seq == payload.get("best") else ""
        table.add_row(f"{seq}{mark}", r["spec"], _session(r["session"]), _ratio(r), _size(r["size"]),
                      _num(r.get("score_cosine")), _ratio(f) if f else "-")
    con.print(table)
    con.print(summary.get("decision", ""))
    con.print(f"{summary.get('trials')} trials: {summary.get('ok')} measured, {summary.get('violates')} broke the "
              f"target, {summary.get('failed')} failed, {summary.get('cached')} reused from the cache")
    best = "best.onnx" if improved else "best.onnx (the input model, as decided above)"
    con.print(f"wrote {folder}/{best}, pareto/, trials.csv, report.json, report.html")


def _ratio(r: dict) -> str:
    if r.get("ratio") is None:
        return "-"
    return f"{r['ratio']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _num(value) -> str:
    return "-" if value is None else f"{value:.5f}"


def _size(value) -> str:
    return "-" if value is None else f"{value / 2**20:.2f} MiB" if value >= 2**20 else f"{value / 2**10:.1f} KiB"


def _session(session: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in session.items()) if session else "profile"


class LiveView:
    """A live table of the latest trials and a progress bar with the time left (estimated per trial)."""

    def __init__(self, budget: int):
        self.budget, self.rows, self.start_time, self.best = budget, [], time.monotonic(), None
        self.status = "starting"
        self.live = None

    def start(self) -> None:
        from rich.live import Live

        self.live = Live(self._render(), refresh_per_second=4, transient=False)
        self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "start":  # inputs loaded and checked: the search begins
            self.budget = data["budget"]
            self.start()
        elif kind == "trial":
            trial = data["trial"]
            self.rows.append(trial)
            if trial.status == "ok" and (self.best is None or trial.latency.ratio < self.best.latency.ratio):
                self.best = trial
            self.status = "searching"
        elif kind == "measuring":
            self.status = f"measuring trial {data['trial'].seq}"
        elif kind == "final":
            self.status = f"re-measuring {len(data['finalists'])} finalists with the input"
        if self.live is not None:
            self.live.update(self._render())

    def _front(self) -> set[int]:
        """The current Pareto front (latency ratio, size, accuracy loss) of the measured trials."""
        from onnxopt.tuning.objective import accuracy_loss
        from onnxopt.tuning.pareto import front_indices

        measured = [t for t in self.rows if t.status == "ok" and t.latency and t.latency.ratio is not None]
        points = [(t.latency.ratio, float(t.size or 0), accuracy_loss(t.scores)) for t in measured]
        return {measured[i].seq for i in front_indices(points)}

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        table = Table(expand=False)
        for col in ("trial", "origin", "status", "pipeline", "ratio", "size", "cosine"):
            table.add_column(col)
        table.caption = "green: on the current Pareto front; bold: fastest so far"
        front = self._front()
        for t in self.rows[-ROWS_SHOWN:]:
            style = ("bold green" if t is self.best else "green" if t.seq in front
                     else "red" if t.status == "failed" else "")
            ratio = f"{t.latency.ratio:.3f}" if t.latency and t.latency.ratio is not None else "-"
            table.add_row(str(t.seq), t.origin, t.status, t.spec[:70], ratio, _size(t.size),
                          _num(t.scores.get("cosine")), style=style)
        done = len(self.rows)
        elapsed = time.monotonic() - self.start_time
        left = elapsed / done * max(self.budget - done, 0) if done else None
        eta = f"~{left:.0f} s left" if left is not None else "estimating"
        header = Text(f"{done}/{self.budget} trials, {elapsed:.0f} s, {eta} - {self.status}")
        return Group(table, ProgressBar(total=self.budget, completed=min(done, self.budget), width=60), header)
