"""The README's task-registration example runs as written."""

import os
import re

import seqio

import flan_jax_tasks.default_mixture  # noqa: F401  (the example mixes in default_add_zs_noopt)
from flan_jax.data import mixtures

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_registration_example_registers_a_working_task_and_mixture():
  code = re.search(r"```python\n(.*?)```", open(README).read(), re.S).group(1)
  exec(compile(code, "README.md", "exec"), {})
  try:
    task = seqio.get_mixture_or_task("capitals")
    examples = list(task.get_dataset(None, split="train", shuffle=False).as_numpy_iterator())
    assert len(examples) == 2
    assert {e["targets_pretokenized"].decode() for e in examples} == {"Paris", "Tokyo"}
    assert all(e["targets"][-1] == 1 for e in examples)  # EOS appended
    rates = mixtures.normalized_rates(seqio.get_mixture_or_task("my_mixture"))
    assert rates["capitals"] < rates["default_add_zs_noopt"]  # 2 examples against a capped 3,000
  finally:
    seqio.MixtureRegistry.remove("my_mixture")
    seqio.TaskRegistry.remove("capitals")
