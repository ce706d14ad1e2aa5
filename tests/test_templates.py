"""Templates render every field, in the tf.data graph exactly as in Python."""

import pytest
import seqio
import tensorflow as tf

from flan_jax.data.templates import Template, apply_templates

TEMPLATES = [
    Template("What is {a} plus {b}?", "{answer}"),
    Template("Add {b} to {a}. Answer:", "The sum is {answer}."),
    Template("{a}+{b}= {{literal braces}}", "{answer}"),
]
RECORDS = [{"a": str(i), "b": str(2 * i), "answer": str(3 * i)} for i in range(40)]


def _render(templates, records, seed=0):
  dataset = tf.data.Dataset.from_tensor_slices({k: [r[k] for r in records] for k in records[0]})
  with seqio.utils.map_seed_manager(seed):
    rendered = apply_templates(templates)(dataset)
  return list(rendered.as_numpy_iterator())


def test_every_field_is_rendered_and_matches_python_rendering():
  for record, out in zip(RECORDS, _render(TEMPLATES, RECORDS)):
    template = TEMPLATES[out["template_idx"]]
    inputs, targets = template.render(record)
    assert out["inputs"].decode() == inputs
    assert out["targets"].decode() == targets
    for field in template.fields():
      assert record[field] in inputs + targets


def test_escaped_braces_and_numeric_fields():
  template = Template("{n} items {{x}}", "{n}")
  dataset = tf.data.Dataset.from_tensor_slices({"n": [7, 12]})
  with seqio.utils.map_seed_manager(0):
    out = list(apply_templates([template])(dataset).as_numpy_iterator())
  assert [o["inputs"].decode() for o in out] == ["7 items {x}", "12 items {x}"]


def test_template_choice_is_deterministic_for_a_seed_and_uses_every_template():
  first = [o["template_idx"] for o in _render(TEMPLATES, RECORDS, seed=3)]
  again = [o["template_idx"] for o in _render(TEMPLATES, RECORDS, seed=3)]
  other = [o["template_idx"] for o in _render(TEMPLATES, RECORDS, seed=4)]
  assert first == again
  assert first != other
  assert set(first) == {0, 1, 2}


def test_missing_field_names_the_template_and_the_field():
  with pytest.raises(ValueError, match=r"\['c'\].*available fields: \['a', 'answer', 'b'\]"):
    _render([Template("{a} and {c}", "{answer}")], RECORDS[:2])


def test_format_specs_are_rejected_with_advice():
  with pytest.raises(ValueError, match="format specs"):
    Template("{a:>4}", "{answer}").fields()
