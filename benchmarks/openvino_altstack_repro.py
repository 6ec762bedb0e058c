"""Minimal reproduction of the SIGSEGV that ended the one-process test suite: OpenVINO's CPU plugin and the
thread's alternate signal stack.

    python benchmarks/openvino_altstack_repro.py [--output benchmarks/results/openvino_altstack_repro.json]

What happens (OpenVINO 2026.4.1, Linux x86-64; seen with gdb `break sigaltstack`): each CPU plugin instance
(one per `openvino.Core` that loads "CPU") installs a new alternate signal stack (`sigaltstack`) on the
thread that creates it, from its constructor (`create_plugin_engine`), and its destructor puts back the one
it found. Two cores whose plugins are destroyed in the order they were made (A, B; then A, then B) leave
B's destructor restoring A's stack, which A's destructor has already freed (unmapped): the thread's
alternate stack now points at unmapped memory. The next signal whose handler runs on the alternate stack
(`SA_ONSTACK`: every handler Python installs, e.g. SIGCHLD once torch's DataLoader set one, SIGINT, and
faulthandler's SIGSEGV handler) cannot be delivered: the kernel kills the process with SIGSEGV (si_code
SI_KERNEL, si_addr 0), and faulthandler prints nothing because its own handler needs that stack too.

Each scenario runs in a fresh interpreter; the row records the exit status and the alternate stack after
each step (address, size, whether it is mapped). segdeploy's workaround is the last scenario: one Core per
process (core/env.py `openvino_core`), so the plugin is made once and never destroyed while the process runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = textwrap.dedent('''
    import ctypes, gc, json, os, signal, sys
    libc = ctypes.CDLL(None)

    class stack_t(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    def altstack(step):
        current = stack_t()
        libc.sigaltstack(None, ctypes.byref(current))
        address = current.ss_sp or 0
        mapped = any(lo <= address < hi for lo, hi in (
            (int(a, 16), int(b, 16)) for a, b in (line.split()[0].split("-") for line in open("/proc/self/maps"))))
        print(json.dumps({"step": step, "altstack": hex(address), "size": current.ss_size, "mapped": mapped}),
              flush=True)

    import faulthandler
    faulthandler.enable()
    import openvino as ov
    altstack("start (faulthandler's stack)")
''')

SIGNAL = textwrap.dedent('''
    signal.signal(signal.SIGUSR1, lambda *args: None)  # a Python handler: SA_ONSTACK, as SIGCHLD's or SIGINT's
    os.kill(os.getpid(), signal.SIGUSR1)
    print(json.dumps({"step": "a signal was delivered"}), flush=True)
''')

SCENARIOS = {
    "two cores, destroyed first-made-first (as runners closed in build order)": '''
        a = ov.Core(); a.get_property("CPU", "OPTIMIZATION_CAPABILITIES"); altstack("core A loaded CPU")
        b = ov.Core(); b.get_property("CPU", "OPTIMIZATION_CAPABILITIES"); altstack("core B loaded CPU")
        del a; gc.collect(); altstack("core A destroyed")
        del b; gc.collect(); altstack("core B destroyed")
    ''',
    "two cores, destroyed last-made-first": '''
        a = ov.Core(); a.get_property("CPU", "OPTIMIZATION_CAPABILITIES"); altstack("core A loaded CPU")
        b = ov.Core(); b.get_property("CPU", "OPTIMIZATION_CAPABILITIES"); altstack("core B loaded CPU")
        del b; gc.collect(); altstack("core B destroyed")
        del a; gc.collect(); altstack("core A destroyed")
    ''',
    "one core for the process, two compiled models released first-made-first (segdeploy's workaround)": '''
        core = ov.Core()
        import openvino.opset13 as ops
        param = ops.parameter([1, 4], ov.Type.f32)
        model = ov.Model([ops.relu(param)], [param], "tiny")
        first = core.compile_model(model, "CPU"); altstack("model 1 compiled")
        second = core.compile_model(model, "CPU"); altstack("model 2 compiled")
        del first; gc.collect(); altstack("model 1 released")
        del second; gc.collect(); altstack("model 2 released")
    ''',
}


def run_scenario(body: str) -> dict:
    code = PRELUDE + textwrap.dedent(body) + SIGNAL
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {"exit_status": proc.returncode, "crashed": proc.returncode < 0,
            "signal": "SIGSEGV" if proc.returncode == -11 else None,
            "faulthandler_output": proc.stderr.strip()[-400:] or None, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "openvino_altstack_repro.json")
    args = parser.parse_args()
    from importlib import metadata

    results = {name: run_scenario(body) for name, body in SCENARIOS.items()}
    for name, result in results.items():
        print(f"{'CRASH' if result['crashed'] else 'ok   '} exit {result['exit_status']:>4}  {name}")
    report = {"openvino": metadata.version("openvino"), "python": sys.version.split()[0],
              "kernel": os.uname().release, "min_signal_stack_bytes": os.sysconf("SC_MINSIGSTKSZ")
              if "SC_MINSIGSTKSZ" in os.sysconf_names else None, "scenarios": results}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
