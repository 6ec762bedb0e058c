"""Where could benchmark_app and segdeploy's OpenVINO cell differ? Checked in one process, alternating:

    python benchmarks/benchmark_app_referee_checks.py GRAPH [--pairs 8]

1. the input: segdeploy's seeded standard-normal input vs benchmark_app's fill (uniform 0..255, its
   `fill_tensors_with_random` for float inputs), through the same compiled model;
2. the shape: the graph as exported (dynamic batch), as segdeploy compiles it, vs reshaped to a static
   [1, 3, H, W], as benchmark_app's `-shape` does; both with segdeploy's compile config.
Prints one JSON object (medians in ms, ratios, the compiled properties of each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("graph", type=Path)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    import openvino as ov

    from segdeploy.bench.cell import cell_input
    from segdeploy.runtime.openvino_runner import compile_config

    core = ov.Core()
    config = compile_config("f32", "latency", args.threads)
    normal = cell_input(1, args.size)
    uniform = np.random.RandomState(0).uniform(0, 255, normal.shape).astype(np.float32)

    def request(static: bool):
        model = core.read_model(str(args.graph))
        if static:
            model.reshape([1, 3, args.size, args.size])
        compiled = core.compile_model(model, "CPU", config)
        properties = {key: str(compiled.get_property(key)) for key in (
            "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "ENABLE_CPU_PINNING")}
        return compiled.create_infer_request(), properties

    dynamic, dynamic_properties = request(False)
    static, static_properties = request(True)
    cases = {"dynamic, normal input": (dynamic, normal), "dynamic, uniform 0-255 input": (dynamic, uniform),
             "static, normal input": (static, normal)}

    def timed(case):
        infer_request, x = cases[case]
        start = time.perf_counter()
        infer_request.infer({0: x}, share_inputs=True, share_outputs=True)
        return (time.perf_counter() - start) * 1e3
    for case in cases:
        timed(case)
        timed(case)
    latencies = {case: [] for case in cases}
    load = os.getloadavg()
    for index in range(args.pairs):
        for case in (list(cases) if index % 2 == 0 else list(cases)[::-1]):
            latencies[case].append(timed(case))
    medians = {case: statistics.median(values) for case, values in latencies.items()}
    base = medians["dynamic, normal input"]
    print(json.dumps({"graph": str(args.graph), "pairs": args.pairs, "load_average_before": load,
                      "load_average_after": os.getloadavg(), "median_ms": medians,
                      "ratio_to_dynamic_normal": {case: value / base for case, value in medians.items()},
                      "properties": {"dynamic": dynamic_properties, "static": static_properties}}, indent=2))


if __name__ == "__main__":
    main()
