"""FLAN-style templates: one record, several natural-language renderings.

A `Template` is a pair of `str.format`-style strings over a record's fields, e.g.
`Template("What is {a} plus {b}?", "{answer}")`. A task carries several templates;
`apply_templates` turns each record into `inputs`/`targets` by drawing one of them,
deterministically for seqio's seed, and records the drawn index as `template_idx`
so evaluation can break results down by template.

Rendering happens inside the tf.data graph (a `tf.strings.join` over literal pieces
and field tensors) so it runs at pipeline speed without a Python round trip. A
template that names a field the records lack fails when the pipeline is built, with
the template and the available fields in the message.
"""

import dataclasses
import string
from typing import Mapping, Sequence

import seqio
import tensorflow as tf

_FORMATTER = string.Formatter()


@dataclasses.dataclass(frozen=True)
class Template:
  inputs: str
  targets: str

  def fields(self) -> set[str]:
    return _field_names(self.inputs) | _field_names(self.targets)

  def render(self, record: Mapping[str, str]) -> tuple[str, str]:
    """Python rendering, for inspection and tests; the pipeline uses the TF path."""
    _check_fields(self, record.keys())
    return self.inputs.format(**record), self.targets.format(**record)


def _pieces(pattern: str) -> list[tuple[str, str | None]]:
  """(literal, field) pairs; escaped braces are already unescaped in the literals."""
  pieces = []
  for literal, field, spec, conversion in _FORMATTER.parse(pattern):
    if spec or conversion:
      raise ValueError(
          f"Template {pattern!r}: format specs and conversions ({{{field}:{spec}}}) are "
          "not supported; put formatted values into the record instead.")
    if field is not None and (not field.isidentifier()):
      raise ValueError(f"Template {pattern!r}: field {{{field}}} must be a plain name.")
    pieces.append((literal, field))
  return pieces


def _field_names(pattern: str) -> set[str]:
  return {field for _, field in _pieces(pattern) if field is not None}


def _check_fields(template: Template, available) -> None:
  missing = template.fields() - set(available)
  if missing:
    raise ValueError(
        f"Template (inputs={template.inputs!r}, targets={template.targets!r}) uses "
        f"field(s) {sorted(missing)} that the records do not have; available fields: "
        f"{sorted(available)}.")


def _render_tf(pattern: str, record: Mapping[str, tf.Tensor]) -> tf.Tensor:
  parts = []
  for literal, field in _pieces(pattern):
    if literal:
      parts.append(tf.constant(literal))
    if field is not None:
      value = record[field]
      parts.append(value if value.dtype == tf.string else tf.strings.as_string(value))
  return tf.strings.join(parts) if parts else tf.constant("")


def apply_templates(templates: Sequence[Template]):
  """A seqio preprocessor rendering every record with one randomly drawn template."""
  if not templates:
    raise ValueError("apply_templates needs at least one template.")
  templates = tuple(templates)

  @seqio.map_over_dataset(num_seeds=1)
  def render(record, seed):
    for template in templates:
      _check_fields(template, record.keys())
    index = tf.random.stateless_uniform(
        [], seed, minval=0, maxval=len(templates), dtype=tf.int32)
    rendered = dict(record)
    rendered["inputs"] = tf.gather(tf.stack([_render_tf(t.inputs, record) for t in templates]), index)
    rendered["targets"] = tf.gather(tf.stack([_render_tf(t.targets, record) for t in templates]), index)
    rendered["template_idx"] = index
    return rendered

  return render
