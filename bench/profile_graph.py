"""Where an exported forward step spends its time: onnxruntime's own profiler on a warm run of a deploy backend's
forward graph at LR 180x320 (1 thread, so kernels do not overlap), summed by op type and by node.

Uses the graphs `bench/deploy.py` exports (the same cache). Writes ``bench/results/profile_graph.{json,md}``.

    python bench/profile_graph.py --backend ort-quantvsr-w4a4
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from deploy import BACKENDS, SIZES, artifacts, graphs_for, needed  # noqa: E402

NAME = "profile_graph"


def profile(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per op type and per node of a warm run (the second) of the graph at ``path`` on zeros-and-noise
    inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, 1
    options.profile_file_prefix = str(RESULTS.parent / "cache" / NAME)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: (rng.random(i.shape, dtype=np.float32) * (0.0 if i.name == "flow" else 0.5))
             for i in session.get_inputs()}
    for _ in range(2):  # the first run also faults in the arena's fresh pages (the HR tensors': hundreds of ms)
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    last = max(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    by_op: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    for event in events:  # the second run's kernels only
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= last:
            by_op[event["args"]["op_name"]] += event["dur"] / 1000
            by_node[event["name"].removesuffix("_kernel_time")] += event["dur"] / 1000
    trace.unlink()
    return dict(by_op), dict(by_node)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="ort-quantvsr-w4a4", choices=[b for b in BACKENDS if b.startswith("ort-")
                                                                        and b != "ort-fp32-unrolled"])
    parser.add_argument("--graph", type=Path, help="profile this exported forward graph of the backend instead of "
                                                   "exporting (e.g. one already in bench/cache/onnx)")
    args = parser.parse_args()
    from harness import git_commit
    from vsrq.benchmark import today

    graph = args.graph or graphs_for(args.backend, SIZES["180x320"], artifacts(needed([args.backend])))
    by_op, by_node = profile(graph)
    total = sum(by_op.values())
    row = {"backend": args.backend, "graph": str(graph.relative_to(RESULTS.parents[1])) if graph.is_absolute() else str(graph), "lr_size": "180x320", "threads": 1,
           "total_ms": round(total, 1),
           "by_op": {k: round(v, 1) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
           "top_nodes": {k: round(v, 1) for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])[:15]},
           "commit": git_commit(), "date": today()}
    old = json.loads((RESULTS / f"{NAME}.json").read_text()) if (RESULTS / f"{NAME}.json").exists() else []
    rows = [r for r in old if r["backend"] != args.backend] + [row]
    (RESULTS / f"{NAME}.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = ["# profile_graph", "", "onnxruntime's profiler, a warm run (the second) of the exported forward step at "
             "LR 180x320, 1 thread; kernel time by op type.", ""]
    for r in rows:
        lines += [f"**{r['backend']}** ({r['date']}, commit {r['commit']}): {r['total_ms']:.0f} ms", "",
                  "| op | ms | share |", "| --- | ---: | ---: |"]
        lines += [f"| {op} | {ms:.0f} | {100 * ms / r['total_ms']:.1f}% |" for op, ms in list(r["by_op"].items())[:12]]
        lines.append("")
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
