"""What a tune run leaves in its folder: ``best.onnx`` (with its session settings), ``pareto/*.onnx``,
``trials.csv``, ``report.json`` and a self-contained ``report.html`` (plots as PNGs too, with the
``report`` extra's matplotlib; without it the HTML still has the tables). ``render(DIR)`` rebuilds the
CSV, JSON and HTML from the folder's SQLite file.

Example::

    write_outputs(result, profile, Path("out/tune"))
    render("out/tune")
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxopt import model as model_io
from onnxopt.errors import ConfigError


def write_outputs(result, profile, folder: Path, protect: Sequence[str | os.PathLike] = ()) -> None:
    from onnxopt.profiling.settings import write_settings

    folder.mkdir(parents=True, exist_ok=True)
    best_profile = profile
    if result.best is not None:
        best_profile = profile.model_copy(update={"session": profile.session.model_copy(update=result.best.session)})
    write_settings(result.model, best_profile, folder, "best", protect=tuple(protect))
    pareto = folder / "pareto"
    pareto.mkdir(exist_ok=True)
    for trial in result.front:
        if trial.model is not None:
            import onnx

            model_io.save(onnx.load_from_string(trial.model), pareto / f"trial{trial.seq:03d}.onnx",
                          protect=tuple(protect))
    data = report_data(result.summary, [t.row() for t in result.trials], [t.seq for t in result.front],
                       result.best.seq if result.best else None, [f.row() for f in result.final],
                       [d.describe() for d in result.space.dims], result.space.fixed)
    write_report(folder, data)


def report_data(summary: dict, rows: list[dict], front: list[int], best: int | None, final: list[dict],
                dims: list[dict], fixed: dict) -> dict[str, Any]:
    return {"summary": summary, "best": best, "front": front, "final": final, "space": dims, "fixed": fixed,
            "trials": rows}


def write_report(folder: Path, data: dict[str, Any]) -> None:
    _atomic(folder / "report.json", json.dumps(data, indent=2, default=str) + "\n")
    _atomic(folder / "trials.csv", _csv(data["trials"]))
    pictures = _plots(data)
    for name, png in pictures.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(png)
        os.replace(tmp, folder / name)
    _atomic(folder / "report.html", _html(data, pictures))


def render(folder: str | os.PathLike) -> dict[str, Any]:
    """Re-render ``report.json``/``trials.csv``/``report.html`` from the folder's SQLite file."""
    from onnxopt.tuning.cache import TrialCache

    path = Path(folder) / "trials.sqlite"
    if not path.is_file():
        raise ConfigError(f"{folder} holds no tune run (no trials.sqlite)", "give the --out folder of onnxopt tune")
    cache = TrialCache(path)
    runs = cache.runs()
    if not runs:
        raise ConfigError(f"{path} records no run")
    run, meta = runs[-1]
    stored = sorted(cache.trials(run), key=lambda t: t["seq"])
    cache.close()
    from onnxopt.tuning.search import Trial

    trials = [Trial.from_stored(t) for t in stored]
    old = json.loads((Path(folder) / "report.json").read_text()) if (Path(folder) / "report.json").is_file() else {}
    data = report_data(meta, [t.row() for t in trials], old.get("front", []), old.get("best"),
                       meta.get("final", []), old.get("space", []), old.get("fixed", {}))
    write_report(Path(folder), data)
    return data


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _csv(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in row.items()})
    return out.getvalue()


def _plots(data: dict[str, Any]) -> dict[str, bytes]:
    """pareto.png (latency ratio vs accuracy loss, size as marker size) and history.png (best so far)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    rows = [r for r in data["trials"] if r.get("ratio") is not None]
    if not rows:
        return {}
    front = set(data["front"])
    pictures = {}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sizes = [max(r["size"] or 1, 1) for r in rows]
    scale = 400 / max(sizes)
    for subset, colour, label in ((lambda r: r["seq"] not in front, "#9aa", "trial"),
                                  (lambda r: r["seq"] in front, "#d33", "Pareto front")):
        chosen = [r for r in rows if subset(r)]
        ax.scatter([r["ratio"] for r in chosen], [_loss(r) for r in chosen],
                   s=[max(r["size"] or 1, 1) * scale for r in chosen], c=colour, alpha=0.7, label=label)
    best = [r for r in rows if r["seq"] == data["best"]]
    if best:
        ax.scatter([best[0]["ratio"]], [_loss(best[0])], marker="*", s=260, c="#fc0",
                   edgecolors="#333", label="chosen", zorder=3)
    marked = [r for r in rows if r["origin"] not in ("search", "grid")]
    for i, r in enumerate(marked):  # the input and the single techniques, labels staggered so they stay legible
        ax.annotate(r["origin"], (r["ratio"], _loss(r)), fontsize=8,
                    xytext=(6, 10 * (i - len(marked) / 2)), textcoords="offset points")
    ax.axvline(1.0, color="#555", lw=0.8, ls="--")
    ax.set_xlabel("latency / input latency (marker area: model size)")
    by_metric = any(r.get("score_max_drop") is not None for r in rows)
    ax.set_ylabel("accuracy drop (the target's metric)" if by_metric else "1 - output cosine")
    if not by_metric:  # a metric drop moves in steps of 1/samples: a linear axis; cosine losses span decades
        ax.set_yscale("symlog", linthresh=1e-5)
        ax.set_ylim(bottom=0)
    ax.margins(y=0.12)
    legend = ax.legend(fontsize=8)
    for handle in legend.legend_handles:
        handle.set_sizes([40])
    pictures["pareto.png"] = _png(fig, plt)
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    best, history = float("inf"), []
    for r in sorted(data["trials"], key=lambda r: r["seq"]):
        if r["status"] == "ok" and r.get("ratio") is not None:
            best = min(best, r["ratio"])
        history.append(best if best != float("inf") else None)
    ax.step(range(1, len(history) + 1), history, where="post")
    ax.set_xlabel("trial")
    ax.set_ylabel("best latency ratio so far")
    pictures["history.png"] = _png(fig, plt)
    return pictures


def _loss(row: dict) -> float:
    """The accuracy loss the Pareto front used: the metric drop when measured, else 1 - cosine."""
    drop = row.get("score_max_drop")
    return drop if drop is not None else 1 - (row.get("score_cosine") or 0)


def _png(fig, plt) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(json.dumps(value) if isinstance(value, dict | list) else str(value))


def _html(data: dict[str, Any], pictures: dict[str, bytes]) -> str:
    summary = data["summary"]
    front = set(data["front"])
    columns = ["seq", "origin", "status", "spec", "session", "ratio", "ci_low", "ci_high", "size", "score_cosine",
               "score_top1", "score_iou", "score_max_drop", "reason"]
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = []
    for r in data["trials"]:
        style = ' class="front"' if r["seq"] in front else ""
        style = ' class="best"' if r["seq"] == data["best"] else style
        body.append(f"<tr{style}>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>")
    final = "".join(f"<tr><td>{_fmt(f['label'])}</td><td>{_fmt(f['ratio'])}</td><td>{_fmt(f['ci_low'])}</td>"
                    f"<td>{_fmt(f['ci_high'])}</td><td>{_fmt(f['median_ms'])}</td></tr>" for f in data["final"])
    images = "".join(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     for name, png in pictures.items())
    worth = "".join(f"<li>{html.escape(k)}: {html.escape(json.dumps(v))}</li>"
                    for k, v in summary.get("settings_worth", {}).items())
    space = "".join(f"<li>{html.escape(json.dumps(d))}</li>" for d in data["space"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>onnxopt tune report</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 5px}}tr.front{{background:#fee}}tr.best{{background:#fbb;font-weight:bold}}
img{{max-width:48%;margin:4px}}</style></head><body>
<h1>onnxopt tune: {_fmt(summary.get('input'))}</h1>
<p>profile <b>{_fmt(summary.get('profile'))}</b>, target <b>{_fmt(summary.get('target'))}</b>, strategy
{_fmt(summary.get('strategy'))}, seed {_fmt(summary.get('seed'))}, {_fmt(summary.get('trials'))} trials
({_fmt(summary.get('ok'))} measured, {_fmt(summary.get('violates'))} broke the target, {_fmt(summary.get('failed'))}
failed, {_fmt(summary.get('cached'))} from the cache); evaluation data: {_fmt(summary.get('data'))}</p>
<p><b>Decision:</b> {_fmt(summary.get('decision'))}</p>
{images}
<h2>Final measurement (one interleaved run, ratios to the input)</h2>
<table><tr><th>model</th><th>ratio</th><th>ci_low</th><th>ci_high</th><th>median ms</th></tr>{final}</table>
<h2>Session settings searched (median latency ratio of measured trials per value)</h2><ul>{worth}</ul>
<h2>Trials</h2><table><tr>{head}</tr>{''.join(body)}</table>
<h2>Search space</h2><ul>{space}</ul><p>fixed: {_fmt(data.get('fixed'))}</p>
</body></html>
"""
