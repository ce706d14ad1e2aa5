"""The attention benchmark runs end to end on a tiny shape, after checking its paths agree."""

import pytest

pytest.importorskip("torch")
from benchmarks import attention_cpu  # noqa: E402


def test_the_attention_benchmark_times_every_path_and_ends_with_its_ratio(capsys):
  attention_cpu.main(["--batch=1", "--length=256", "--heads=2", "--head_dim=8", "--repeats=1",
                      "--output=none"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1].startswith("ratio_vs_hf=") and lines[-1].endswith(" mfu=n/a")
  import json
  result = json.loads(lines[-2])
  assert set(result["fwd_bwd_ms"]) == {"xla", "causal_blocks", "blocked", "torch_sdpa"}
  assert all(ms > 0 for ms in result["fwd_bwd_ms"].values())
