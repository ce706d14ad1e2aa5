"""The step profiler groups a trace's compiled operations by hand-checkable rules, and
profiles a tiny train step end to end."""

import json
import re

from benchmarks import step_profile


def test_operations_are_timed_per_step_and_grouped_without_their_numbers():
  event = lambda name, microseconds: {"ph": "X", "name": name, "dur": microseconds}
  trace = {"traceEvents": [
      event("copy_fusion.1", 3000), event("copy_fusion.2", 1000), event("copy_fusion.1", 2000),
      event("dot.7", 8000), event("ThunkExecutor::Execute", 99000),
      {"ph": "M", "name": "thread_name", "dur": 5}]}
  times = step_profile.operation_times(trace, 2, {"copy_fusion.1", "copy_fusion.2", "dot.7"})
  assert times == {"copy_fusion.1": (2.5, 1.0), "copy_fusion.2": (0.5, 0.5), "dot.7": (4.0, 0.5)}
  assert step_profile.group(times) == [
      {"kind": "dot", "ms_per_step": 4.0, "per_step": 0.5},
      {"kind": "copy_fusion", "ms_per_step": 3.0, "per_step": 1.5}]
  hlo = "  %dot.7 = f32[4,8]{1,0} dot(%a, %b)\n  ROOT %copy_fusion.1 = f32[8]{0} fusion(%x)"
  assert step_profile.operation_shapes(hlo) == {"dot.7": "f32[4,8]{1,0}",
                                                "copy_fusion.1": "f32[8]{0}"}


def test_a_tiny_train_step_is_profiled_into_its_compiled_operations(capsys):
  step_profile.main(["--model=tiny", "--batch=2", "--length=64", "--steps=2", "--top=5",
                     "--output=none"])
  lines = capsys.readouterr().out.strip().splitlines()
  summary = json.loads(lines[-2])
  assert summary["model"] == "tiny" and summary["step_ms"] > 0
  top_kind, top_ms = lines[-1].split(" top=")[1].rsplit(":", 1)
  assert float(top_ms) > 0
  # The slowest operations were found in the step's compiled HLO, with their shapes.
  # The largest group is the first group line; then the 5 slowest operations, each
  # found in the step's compiled HLO with its shape.
  groups = [line.split() for line in lines[:-7]]
  # (the group line shows one decimal: 1.25 prints as 1.2)
  assert groups[0][-1] == top_kind and abs(float(groups[0][0]) - float(top_ms)) <= 0.06
  for line in lines[-7:-2]:
    milliseconds, _, name, shape = line.split(maxsplit=3)
    assert float(milliseconds) >= 0 and re.fullmatch(r"\w+\[[\d,]*\]\S*|\(.*\)", shape), line
