r"""Where a train step's time goes: XLA's compiled operations, grouped, from jax's profiler.

    python -m benchmarks.step_profile --model=decoder_10m

Builds the same train step `train_throughput` times (same model shapes, optimizer and
synthetic batch; flan_jax only), runs --steps steps under `jax.profiler.trace`, and
reads the trace it writes in Perfetto's JSON format: every compiled operation (a
fusion, a dot, a copy) is one event. Operations are grouped by their HLO name without
its number (`copy_bitcast_fusion.17` -> `copy_bitcast_fusion`): what kind of work,
how many per step, and milliseconds per step. The slowest single operations are listed
with their output shapes from the compiled HLO, which says which tensor each one moves
(e.g. an activation transposed for a weight gradient). Times of operations that ran
concurrently both count, so the groups may add up to more than the step.

The last line is `step_ms=X top=NAME:Y` (the step's wall time; the largest group).
Results go to benchmarks/results/step_profile_<model>_<backend>.json. Needs no torch.
"""

import argparse
import collections
import datetime
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import train_throughput as throughput

def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="decoder_10m",
                      choices=sorted(throughput.MODELS) + sorted(throughput.T5_MODELS))
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=512)
  parser.add_argument("--targets_length", type=int, default=128, help="T5 only")
  parser.add_argument("--steps", type=int, default=3, help="profiled steps")
  parser.add_argument("--top", type=int, default=15, help="single operations listed")
  parser.add_argument("--attention", default="default")
  parser.add_argument("--loss_chunk_length", type=int, default=512)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None,
                      help="JSON file (default benchmarks/results/step_profile_<model>_<backend>"
                           ".json); 'none' writes nothing")
  args = parser.parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  return args


def build_step(args: argparse.Namespace):
  """(run one step, wait for it, compiled HLO text) for flan_jax's train step, built as
  `train_throughput` builds it, on jax's default backend in float32."""
  import jax

  from flan_jax.training import mesh as mesh_lib
  flan = throughput.flan_trainer(args, "default", "float32")
  with mesh_lib.on_mesh(flan.mesh):
    compiled = flan.train_step.jitted.lower(flan.state, flan.batch).compile()
  holder = {"state": flan.state}

  def run():  # the very executable whose HLO names the profiler's events
    holder["state"], _ = compiled(holder["state"], flan.batch)

  return run, lambda: jax.block_until_ready(holder["state"]), compiled.as_text()


def operation_shapes(hlo: str) -> dict[str, str]:
  """Each named instruction of the compiled HLO -> its output shape."""
  pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ", re.M)
  return {m.group(1): m.group(2) for m in pattern.finditer(hlo)}


def operation_times(trace: dict, steps: int, operations) -> dict[str, tuple[float, float]]:
  """Each compiled operation's name -> (milliseconds per step, runs per step). Events
  named after no instruction in `operations` (the executor's own spans, Python frames,
  thread-pool waits) are left out."""
  totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
  for event in trace["traceEvents"]:
    if event.get("ph") != "X" or event["name"] not in operations:
      continue
    totals[event["name"]][0] += event["dur"] / 1e3 / steps  # microseconds in the trace
    totals[event["name"]][1] += 1
  return {name: (ms, round(runs / steps, 2)) for name, (ms, runs) in totals.items()}


def group(times: dict[str, tuple[float, float]]) -> list[dict]:
  """Operations grouped by name without their number, slowest group first."""
  groups: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
  for name, (ms, runs) in times.items():
    kind = re.sub(r"\.\d+$", "", name)
    groups[kind][0] += ms
    groups[kind][1] += runs
  rows = [{"kind": kind, "ms_per_step": round(ms, 2), "per_step": round(runs, 2)}
          for kind, (ms, runs) in groups.items()]
  return sorted(rows, key=lambda row: -row["ms_per_step"])


def profile(run, sync, steps: int) -> tuple[dict, float]:
  """(the Perfetto trace of `steps` steps, wall seconds per step)."""
  import jax
  run()  # compile and warm up outside the trace
  run()
  sync()
  with tempfile.TemporaryDirectory() as directory:
    start = time.perf_counter()
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(steps):
        run()
      sync()
    seconds = (time.perf_counter() - start) / steps
    path = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      return json.load(f), seconds


def _commit() -> str | None:
  """The checkout's commit, for the record (None outside a git checkout)."""
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.abspath(__file__)),
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def main(argv=None) -> None:
  import jax
  args = parse_args(argv)
  run, sync, hlo = build_step(args)
  trace, seconds = profile(run, sync, args.steps)
  shapes = operation_shapes(hlo)
  times = operation_times(trace, args.steps, shapes)
  if not times:
    raise SystemExit("the profiler recorded no compiled operations (is this jaxlib's "
                     "profiler available?)")
  slowest = sorted(times.items(), key=lambda item: -item[1][0])[:args.top]
  result = {
      "model": args.model, "batch": args.batch, "length": args.length,
      "backend": jax.default_backend(),
      # Wall time under the profiler, which slows a step (train_throughput times it bare).
      "step_ms": round(seconds * 1e3, 1),
      "groups": group(times),
      "slowest": [{"name": name, "shape": shapes[name], "ms_per_step": round(ms, 2)}
                  for name, (ms, _) in slowest],
      "jax": jax.__version__, "commit": _commit(), "date": datetime.date.today().isoformat(),
      "command": "python -m benchmarks.step_profile " + " ".join(args.argv),
  }
  for row in result["groups"][:20]:
    print(f"{row['ms_per_step']:9.1f} ms/step {row['per_step']:7g}x  {row['kind']}")
  for row in result["slowest"]:
    print(f"{row['ms_per_step']:9.1f} ms/step  {row['name']}  {row['shape']}")
  output = args.output or os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results",
      f"step_profile_{args.model}_{result['backend']}.json")
  if output != "none":
    with open(output, "w") as f:
      json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in ("model", "step_ms", "backend")}))
  top = result["groups"][0]
  print(f"step_ms={result['step_ms']} top={top['kind']}:{top['ms_per_step']}")


if __name__ == "__main__":
  main()
