"""Profiler repeatability and overhead, side by side in one run.

1. ``profile`` five times on the same model: the spread of the five medians (goal: within 3%).
2. The profiler's own overhead: its median against a bare onnxruntime loop over the same feed, same
   session settings, timed in this process right after (the one loop outside the measurement
   child, kept as the reference it is measured against).

    .venv/bin/python benchmarks/profiling.py [--model models/digits_cnn.onnx | zoo:ppocr_cls] [--profile cpu-1t]
"""

from __future__ import annotations

import argparse
import statistics
import time


def bare_loop_ms(model, feed: dict, prof, seconds: float) -> float:
    """Median ms of session.run in a plain loop in this process: the reference the profiler's overhead
    is measured against, on a session opened as the measurement child opens it."""
    from onnxopt.profiling.child import open_session, session_options
    from onnxopt.profiling.measure import provider_chain

    chain = provider_chain(prof)
    session = open_session(model.SerializeToString(), session_options(prof.session.model_dump(mode="json")),
                           chain.names, chain.options, None)
    end, runs = time.perf_counter() + prof.measure.warmup_s, 0
    while runs < prof.measure.warmup or time.perf_counter() < end:  # the same warm-up as the profiler
        session.run(None, feed)
        runs += 1
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(times)


def main() -> None:
    import onnxopt
    from onnxopt.model import load, parse_shapes
    from onnxopt.profiling import get_profile
    from onnxopt.profiling.profiler import _item

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/digits_cnn.onnx", help="a path, or zoo:NAME (onnxopt.zoo)")
    parser.add_argument("--profile", default="cpu-1t")
    parser.add_argument("--shape", action="append")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    shapes = parse_shapes(args.shape) if args.shape else None
    prof = get_profile(args.profile)
    source = args.model
    if source.startswith("zoo:"):
        from onnxopt import zoo

        source = zoo.corpus()[source[4:]]()

    medians, walls = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        [result] = onnxopt.profile(source, profile=prof, shapes=shapes).results
        walls.append(time.perf_counter() - start)
        medians.append(result.latency_ms.median)
        print(f"  profile: median {result.latency_ms.median:.4f} ms  ±{result.latency_ms.rel_ci:.2%} (95% CI)  "
              f"n={result.latency_ms.n}  target reached: {result.target_reached}  wall {walls[-1]:.1f} s")
    mid = statistics.median(medians)
    spread = (max(medians) - min(medians)) / mid
    print(f"{args.runs} runs on {args.model} / {prof.name}: medians {min(medians):.4f}..{max(medians):.4f} ms, "
          f"spread {spread:.2%} of the median (goal <= 3%)")

    model = load(source, shapes=shapes)
    feed = _item("bench", model, None, prof, 0).feeds[0]
    bare = bare_loop_ms(model, feed, prof, seconds=max(2.0, prof.measure.min_time_s))
    print(f"bare onnxruntime loop: median {bare:.4f} ms; profiler median {mid:.4f} ms "
          f"-> overhead {(mid - bare) / bare:+.2%} per run; "
          f"profiler wall time per call {statistics.median(walls):.1f} s (child start + session + protocol)")


if __name__ == "__main__":
    main()
