"""Chat templates: built-in renderings, assistant spans by prefixes, loading and saving."""

import json
import threading
import time

import pytest

from flan_jax.data.chat_templates import (BUILTIN_NAMES, RenderLimits, TemplateSpec,
                                          assistant_spans, builtin, from_tokenizer_config,
                                          starts_with_bos)
from flan_jax.errors import UserError

CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."}]

# name -> (the whole text, the trained text of each assistant turn), written out by hand
# from each family's published format.
EXPECTED = {
    "chatml": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\nRome.<|im_end|>\n",
        ["Paris.<|im_end|>", "Rome.<|im_end|>"]),
    "llama2": (
        "<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nCapital of France? [/INST] Paris. </s>"
        "<s>[INST] And of Italy? [/INST] Rome. </s>",
        [" Paris. </s>", " Rome. </s>"]),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nParis.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd of Italy?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nRome.<|eot_id|>",
        ["Paris.<|eot_id|>", "Rome.<|eot_id|>"]),
    "zephyr": (
        "<|system|>\nYou are terse.</s>\n"
        "<|user|>\nCapital of France?</s>\n"
        "<|assistant|>\nParis.</s>\n"
        "<|user|>\nAnd of Italy?</s>\n"
        "<|assistant|>\nRome.</s>\n",
        ["Paris.</s>", "Rome.</s>"]),
}


def test_every_builtin_has_an_expected_rendering():
  assert set(BUILTIN_NAMES) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_builtin_renders_the_published_format_and_trains_each_answer(name):
  expected_text, trained = EXPECTED[name]
  text, spans = assistant_spans(builtin(name), CHAT)
  assert text == expected_text
  # Each answer's span: its literal text, found after the previous one.
  expected_spans, start = [], 0
  for piece in trained:
    start = expected_text.index(piece, start)
    expected_spans.append((start, start + len(piece)))
    start += len(piece)
  assert spans == expected_spans
  assert [text[a:b] for a, b in spans] == trained


def test_the_newline_after_the_end_marker_opens_the_next_turn():
  text, spans = assistant_spans(builtin("chatml"), CHAT)
  first_end = spans[0][1]
  assert text[first_end:].startswith("\n<|im_start|>user\n")


@pytest.mark.parametrize("name,has_bos", [("chatml", False), ("llama2", True), ("llama3", True),
                                          ("zephyr", False)])
def test_starts_with_bos_tells_the_tokenizer_not_to_add_another(name, has_bos):
  spec = builtin(name)
  assert starts_with_bos(spec.render(CHAT), spec) is has_bos


PLAIN = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}assistant: {% endif %}")


def test_a_template_without_end_markers_still_trains_every_answer():
  text, spans = assistant_spans(TemplateSpec("plain", PLAIN), CHAT)
  assert [text[a:b] for a, b in spans] == ["Paris.", "Rome."]


def test_generation_markers_parse_and_change_nothing():
  # The newline is an expression: trim_blocks would eat one written after {% endif %}.
  marked = ("{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' %}"
            "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}"
            "{% endif %}{{ '\\n' }}{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")
  assert assistant_spans(TemplateSpec("marked", marked), CHAT) == assistant_spans(
      TemplateSpec("plain", PLAIN), CHAT)


def test_a_template_that_rewrites_earlier_turns_breaks_the_prefix_property():
  # Like templates that drop earlier reasoning: an answer renders differently once
  # another turn follows it, so no prefix rendering can locate it.
  rewriting = ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
               "assistant: (earlier answer)\n{% else %}{{ m['role'] }}: {{ m['content'] }}\n"
               "{% endif %}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
  with pytest.raises(UserError, match="'rewriting' breaks the prefix property at turn 2"):
    assistant_spans(TemplateSpec("rewriting", rewriting), CHAT)


def test_a_template_that_rejects_the_conversation_says_which():
  answer_first = [{"role": "assistant", "content": "Hi."}]
  with pytest.raises(UserError, match="'llama2' cannot render.*alternate"):
    builtin("llama2").render(answer_first)
  with pytest.raises(UserError, match="'broken' does not parse"):
    TemplateSpec("broken", "{% for m in messages %}")
  with pytest.raises(UserError, match="Did you mean 'llama3'"):
    builtin("llama-3")


def _write_config(directory, **config):
  directory.mkdir()
  (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
  return directory


def test_a_tokenizer_config_template_string_loads_with_its_tokens(tmp_path):
  model = _write_config(tmp_path / "tiny-chat", chat_template=builtin("llama3").source,
                        bos_token={"content": "<|begin_of_text|>", "lstrip": False},
                        eos_token="<|eot_id|>")
  spec = from_tokenizer_config(model)
  assert (spec.name, spec.bos, spec.eos) == ("tiny-chat", "<|begin_of_text|>", "<|eot_id|>")
  assert spec.render(CHAT) == EXPECTED["llama3"][0]
  assert from_tokenizer_config(model / "tokenizer_config.json") == spec


def test_a_tokenizer_config_template_list_loads_the_default(tmp_path):
  model = _write_config(tmp_path / "tools-chat", bos_token=None, eos_token="<|im_end|>",
                        chat_template=[{"name": "tool_use", "template": "{{ 'tools' }}"},
                                       {"name": "default", "template": builtin("chatml").source}])
  assert from_tokenizer_config(model).render(CHAT) == EXPECTED["chatml"][0]
  assert from_tokenizer_config(model, template_name="tool_use").render(CHAT) == "tools"
  with pytest.raises(UserError, match=r"no template named 'rag'.*\['default', 'tool_use'\]"):
    from_tokenizer_config(model, template_name="rag")


def test_a_chat_template_jinja_beside_the_config_is_read(tmp_path):
  model = _write_config(tmp_path / "new-style", eos_token="</s>")
  (model / "chat_template.jinja").write_text(builtin("zephyr").source, encoding="utf-8")
  assert from_tokenizer_config(model).render(CHAT) == EXPECTED["zephyr"][0]


def test_a_config_without_a_template_says_what_to_do(tmp_path):
  model = _write_config(tmp_path / "base-model", eos_token="</s>")
  with pytest.raises(UserError, match="has no chat_template.*built-in"):
    from_tokenizer_config(model)


@pytest.mark.parametrize("name", EXPECTED)
def test_a_spec_round_trips_through_json_and_renders_the_same(name):
  spec = builtin(name)
  again = TemplateSpec.from_json(spec.to_json())
  assert again == spec
  assert again.render(CHAT).encode() == spec.render(CHAT).encode()
  assert again.render(CHAT[:2], add_generation_prompt=True) == spec.render(
      CHAT[:2], add_generation_prompt=True)


def test_from_json_rejects_what_to_json_did_not_write():
  with pytest.raises(UserError, match="expected an object with keys"):
    TemplateSpec.from_json(json.dumps({"name": "x", "source": "{{ 1 }}"}))


# Templates are code: each failure is one UserError naming the template, and what
# would hang or exhaust memory is stopped by the rendering limits.


def _finishes_within(seconds: float, function):
  """function()'s result (or its exception), failing the test if it runs longer."""
  outcome = {}

  def run():
    try:
      outcome["value"] = function()
    except BaseException as e:  # handed to the test below
      outcome["error"] = e

  thread = threading.Thread(target=run, daemon=True)
  thread.start()
  thread.join(seconds)
  assert not thread.is_alive(), f"still rendering after {seconds} s"
  if "error" in outcome:
    raise outcome["error"]
  return outcome["value"]


@pytest.mark.parametrize("source,why", [
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ("{{ range(10 ** 9) | length }}", "range of 1000000000 items"),
    ("{{ messages.append(1) }}", "SecurityError"),
    ("{{ messages[0].missing.deeper }}", "UndefinedError"),
])
def test_a_template_that_fails_is_one_error_naming_it_and_why(source, why):
  with pytest.raises(UserError, match=rf"chat template 'failing'.*{why}"):
    _finishes_within(5, lambda: TemplateSpec("failing", source).render(CHAT))


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    # No range: characters of a string, and a macro that calls itself twice.
    "{% set s = messages[0].content * 1000 %}{% for a in s %}{% for b in s %}{% endfor %}"
    "{% endfor %}",
    "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
])
def test_a_template_that_would_run_for_hours_stops_at_the_time_budget(source):
  limits = RenderLimits(seconds=0.3)
  started = time.monotonic()
  with pytest.raises(UserError, match=r"chat template 'slow'.*more than 0.3 s"):
    _finishes_within(5, lambda: TemplateSpec("slow", source).render(CHAT, limits=limits))
  assert time.monotonic() - started < 2


@pytest.mark.parametrize("source", [
    "{{ 'a' * 10 ** 10 }}",
    "{{ ([0] * 10 ** 10) | length }}",
    "{{ 10 ** (10 ** 10) }}",
    "{{ 'a'.ljust(10 ** 10) }}",
    "{{ 'a' | center(10 ** 10) }}",
    "{{ '%9999999999s' % 'a' }}",
    "{{ '{:>9999999999}'.format('a') }}",
    # Doubling a string 40 times: stopped once it passes the cap, long before 2**40.
    "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}{{ ns.s | length }}",
    "{% for i in range(100000) %}{{ messages[0].content * 1000 }}{% endfor %}",
])
def test_a_template_that_would_exhaust_memory_is_refused_with_the_default_limits(source):
  # Each would ask for gigabytes (the last writes 1.4 G characters, 14 k at a time).
  with pytest.raises(UserError, match=r"chat template 'greedy'.*(more than|over) "):
    _finishes_within(5, lambda: TemplateSpec("greedy", source).render(CHAT))


def test_the_output_cap_counts_characters_as_they_are_written():
  many = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
  spec = TemplateSpec("many", many)
  assert spec.render(CHAT, limits=RenderLimits(max_chars=100)) == "".join(
      turn["content"] for turn in CHAT)
  with pytest.raises(UserError, match=r"'many'.*wrote more than 40 characters"):
    spec.render(CHAT, limits=RenderLimits(max_chars=40))
