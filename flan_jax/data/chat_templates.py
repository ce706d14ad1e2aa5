"""Chat templates: a conversation rendered to text, and which of its characters to train.

A `TemplateSpec` is a Jinja chat template with the BOS and EOS strings it refers
to, rendered as Hugging Face's `apply_chat_template` renders it: an immutable
sandboxed Jinja environment with `trim_blocks` and `lstrip_blocks`, the loop
controls extension, `raise_exception` for templates that reject a conversation, a
`tojson` that does not HTML-escape, and the variables `messages`, `bos_token`,
`eos_token` and `add_generation_prompt`. A model's own template comes from its
`tokenizer_config.json` (`from_tokenizer_config`); four families are built in
(`builtin(name)`, names in `BUILTIN_NAMES`). A spec is plain JSON (`to_json`,
`from_json`), so a run can record the exact template beside its checkpoints and
inference renders prompts the same way.

Loss masks. Multi-turn SFT trains every assistant turn and nothing else.
`assistant_spans` finds each assistant turn's characters by the prefix property:
the text of turns [0, i) with the generation prompt is a prefix of the text of
turns [0, i], and what the second adds is what the model must produce at turn i.
This needs no `{% generation %}` markers (few templates have them; those that do
parse here and render as plain text). It does need a template that renders each
turn the same whatever follows it; one that does not (it drops earlier reasoning,
say, or moves the system prompt to the last turn) breaks the property, and
`assistant_spans` raises naming the template and the turn rather than train on
misplaced masks.

Where a span ends. A span keeps the turn's end marker (`<|im_end|>`, `<|eot_id|>`,
`</s>`) so the model learns to stop, and ends at the last non-whitespace character
the turn adds. ChatML and Zephyr write a newline after the marker; that newline
belongs to the next turn's prefix: generation stops at the marker, and the
template writes the newline itself when it renders the next prompt. (A template
with no end marker thus trains no stop; the caller would append EOS.) A span may
start with whitespace: Llama 2 puts a space before the answer, which its
SentencePiece tokenizer folds into the answer's first token.

BOS. Some templates write the BOS string themselves (Llama 2 and 3), others leave
it to the tokenizer (ChatML, Zephyr). `starts_with_bos` tells the caller which, so
the tokenizer does not add a second one.

Limits. A template is code, so it renders in `template_sandbox`'s environment: each
rendering has a time budget and caps on the characters written, on every string or
list made and on `range` (`RenderLimits`). Whatever goes wrong, a limit passed
(`LimitExceeded`) or the template's own failure (a division by zero, an undefined
field, unbounded recursion), is one UserError naming the template and, where it can,
the template line.

Deliberately absent: Hugging Face's `strftime_now`. Templates use it to print
today's date, which would make the training text depend on the day it was rendered;
the templates that check for it fall back to a fixed date, the others fail with
the template's name.
"""

import dataclasses
import functools
import json
import os
import traceback
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext

from flan_jax.data import template_sandbox
from flan_jax.data.template_sandbox import LimitExceeded, RenderLimits  # noqa: F401 (re-exported)
from flan_jax.errors import UserError, closest_names

Span = tuple[int, int]  # [start, end) character offsets into the rendered text


class _GenerationBlocks(jinja2.ext.Extension):
  """Reads `{% generation %}...{% endgeneration %}` as its plain contents.

  Hugging Face templates mark assistant text this way for `return_assistant_tokens_
  mask`; spans here come from prefixes, so the tags only need to parse.
  """
  tags = {"generation"}

  def parse(self, parser):
    next(parser.stream)
    return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str):
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators=None, sort_keys: bool = False) -> str:
  # Jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt.
  return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                    sort_keys=sort_keys)


@functools.lru_cache(maxsize=None)
def _environment() -> template_sandbox.LimitedEnvironment:
  environment = template_sandbox.LimitedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[jinja2.ext.loopcontrols, _GenerationBlocks])
  environment.globals["raise_exception"] = _raise_exception
  environment.filters["tojson"] = _tojson
  return environment


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> jinja2.Template:
  return _environment().from_string(source)


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else "(no message)"


def _template_line(error: Exception) -> str:
  """Where in the template it failed: jinja2 maps its frames to template lines."""
  lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
           if frame.filename == "<template>"]
  return f" (template line {lines[-1]})" if lines else ""


@dataclasses.dataclass(frozen=True)
class TemplateSpec:
  name: str
  source: str  # the Jinja template
  bos: str = ""  # what the template's `bos_token` renders as; "" when the model has none
  eos: str = ""

  def __post_init__(self):
    for field in ("name", "source", "bos", "eos"):
      if not isinstance(getattr(self, field), str):
        raise UserError(f"TemplateSpec.{field} must be a string, got "
                        f"{type(getattr(self, field)).__name__}.")
    self._template()  # a template that does not parse fails here, not mid-run

  def _template(self) -> jinja2.Template:
    try:
      return _compile(self.source)
    except jinja2.TemplateSyntaxError as e:
      raise UserError(f"chat template {self.name!r} does not parse: {e.message} (template line "
                      f"{e.lineno}). Fix the template.") from None

  def render(self, turns: Sequence[Mapping[str, str]], add_generation_prompt: bool = False,
             limits: RenderLimits = template_sandbox.DEFAULT_LIMITS) -> str:
    """The conversation as text; with add_generation_prompt, ready for the next answer.

    Whatever goes wrong is one UserError naming the template; `LimitExceeded` (a
    UserError too) when the rendering went past `limits`.
    """
    roles, template = [turn.get("role") for turn in turns], self._template()
    try:
      return template_sandbox.render(
          template, limits, messages=[dict(turn) for turn in turns],
          bos_token=self.bos, eos_token=self.eos, add_generation_prompt=add_generation_prompt)
    except LimitExceeded as e:
      raise LimitExceeded(
          f"chat template {self.name!r} stopped on the conversation (roles {roles}): {e}"
          f"{_template_line(e)}. Fix the template, or leave out the conversation if it is "
          "this large.") from None
    except Exception as e:  # noqa: BLE001 (a template is code: whatever it raises is its failure)
      raise UserError(f"chat template {self.name!r} cannot render the conversation (roles "
                      f"{roles}): {type(e).__name__}: {_first_line(e)}{_template_line(e)}. "
                      "The template rejects these turns: fix the data, or the template, or "
                      "choose another.") from None

  def to_json(self) -> str:
    """The spec as JSON, with tokenizer_config.json's key names."""
    return json.dumps({"name": self.name, "chat_template": self.source, "bos_token": self.bos,
                       "eos_token": self.eos}, indent=2, ensure_ascii=False) + "\n"

  @classmethod
  def from_json(cls, text: str) -> "TemplateSpec":
    try:
      spec = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"not a chat template spec: invalid JSON ({e}). Write it with "
                      "TemplateSpec.to_json().") from None
    keys = {"name", "chat_template", "bos_token", "eos_token"}
    if not isinstance(spec, dict) or set(spec) != keys:
      found = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
      raise UserError(f"not a chat template spec: expected an object with keys {sorted(keys)}, "
                      f"found {found}. Write it with TemplateSpec.to_json().")
    return cls(spec["name"], spec["chat_template"], spec["bos_token"], spec["eos_token"])


def assistant_spans(template: TemplateSpec,
                    turns: Sequence[Mapping[str, str]]) -> tuple[str, list[Span]]:
  """The rendered conversation and the [start, end) span of each assistant turn."""
  text = template.render(turns)
  spans = []
  for i, turn in enumerate(turns):
    if turn.get("role") != "assistant":
      continue
    prompt = template.render(turns[:i], add_generation_prompt=True)
    through = template.render(turns[:i + 1])
    _check_prefix(template, i, prompt, through,
                  f"turns [0, {i}) with the generation prompt", f"turns [0, {i}]")
    _check_prefix(template, i, through, text, f"turns [0, {i}]", "the whole conversation")
    end = len(prompt) + len(through[len(prompt):].rstrip())
    if end == len(prompt):
      raise UserError(f"chat template {template.name!r}: assistant turn {i} adds no text to the "
                      "prompt, so there is nothing to train. Does the template render assistant "
                      "turns?")
    spans.append((len(prompt), end))
  return text, spans


def _check_prefix(template: TemplateSpec, turn: int, prefix: str, text: str, prefix_name: str,
                  text_name: str) -> None:
  if text.startswith(prefix):
    return
  at = next((k for k, (a, b) in enumerate(zip(prefix, text)) if a != b), len(text))
  raise UserError(
      f"chat template {template.name!r} breaks the prefix property at turn {turn}: the text of "
      f"{prefix_name} is not a prefix of the text of {text_name} (they part at character {at}: "
      f"{prefix[at:at + 40]!r} vs {text[at:at + 40]!r}). Loss masks need a template that "
      "renders each turn the same whatever follows it: fix the template or use a built-in one "
      f"({', '.join(BUILTIN_NAMES)}).")


def starts_with_bos(text: str, template: TemplateSpec) -> bool:
  """Whether the rendered text already begins with BOS (then the tokenizer must not add one)."""
  return bool(template.bos) and text.startswith(template.bos)


# Built-in templates, each matching its family's published format. Newlines inside
# the quoted strings are output; the template's own line breaks are layout, removed
# by trim_blocks, lstrip_blocks and the `-` of `{{- -}}`.

# ChatML, OpenAI's "Chat Markup Language" (openai/openai-python, chatml.md, release
# v0.28.0): <|im_start|>role\ncontent<|im_end|>\n per message; the generation prompt
# opens an assistant message. There is no BOS; Qwen and others stop at <|im_end|>.
_CHATML = r"""
{% for message in messages %}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{% endfor %}
{% if add_generation_prompt %}
{{- '<|im_start|>assistant\n' -}}
{% endif %}
"""

# Llama 2 chat, as Meta's reference code builds it (meta-llama/llama,
# llama/generation.py, `chat_completion`; llama.com "Model Cards & Prompt formats:
# Meta Llama 2"): the system prompt goes into the first user message as
# "<<SYS>>\n...\n<</SYS>>\n\n", each exchange is "<s>[INST] {user} [/INST] {answer} </s>"
# with both texts stripped, and the prompt ends after " [/INST]", so there is no
# separate generation prompt.
_LLAMA2 = r"""
{% if messages and messages[0]['role'] == 'system' %}
{% set system = messages[0]['content'] %}
{% set turns = messages[1:] %}
{% else %}
{% set system = none %}
{% set turns = messages %}
{% endif %}
{% for message in turns %}
{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
{{- raise_exception('llama2 needs user and assistant turns to alternate, user first') -}}
{% endif %}
{% if message['role'] == 'user' %}
{% set content = message['content'] %}
{% if loop.first and system is not none %}
{% set content = '<<SYS>>\n' + system + '\n<</SYS>>\n\n' + content %}
{% endif %}
{{- bos_token + '[INST] ' + content | trim + ' [/INST]' -}}
{% else %}
{{- ' ' + message['content'] | trim + ' ' + eos_token -}}
{% endif %}
{% endfor %}
"""

# Llama 3 instruct (llama.com "Model Cards & Prompt formats: Meta Llama 3"; Meta's
# meta-llama/llama3, llama/tokenizer.py, `ChatFormat`): <|begin_of_text|> once, then
# per message <|start_header_id|>role<|end_header_id|>\n\n{stripped content}<|eot_id|>;
# the generation prompt is the assistant header. Like Meta's `encode_dialog_prompt`,
# BOS is written even before an empty conversation, which keeps prefixes prefixes.
_LLAMA3 = r"""
{{- bos_token -}}
{% for message in messages %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
    + message['content'] | trim + '<|eot_id|>' -}}
{% endfor %}
{% if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
{% endif %}
"""

# Zephyr (HuggingFaceH4/zephyr-7b-beta, tokenizer_config.json `chat_template`):
# <|role|>\ncontent</s>\n per message, unstripped; the generation prompt is
# "<|assistant|>\n". The template writes no BOS: Mistral's tokenizer adds it.
_ZEPHYR = r"""
{% for message in messages %}
{{- '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' -}}
{% endfor %}
{% if add_generation_prompt %}
{{- '<|assistant|>\n' -}}
{% endif %}
"""

# strip(): the sources open with a newline for layout, which would be output.
_BUILTINS = {name: TemplateSpec(name, source.strip(), bos, eos) for name, source, bos, eos in (
    ("chatml", _CHATML, "", "<|im_end|>"),
    ("llama2", _LLAMA2, "<s>", "</s>"),
    ("llama3", _LLAMA3, "<|begin_of_text|>", "<|eot_id|>"),
    ("zephyr", _ZEPHYR, "<s>", "</s>"),
)}
BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTINS)


def builtin(name: str) -> TemplateSpec:
  """A built-in template by name: chatml, llama2, llama3 or zephyr."""
  if name not in _BUILTINS:
    close = closest_names(name, _BUILTINS)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UserError(f"no built-in chat template {name!r}; the built-ins are "
                    f"{list(BUILTIN_NAMES)}.{hint} A model's own template loads with "
                    "from_tokenizer_config(MODEL_DIR).")
  return _BUILTINS[name]


def from_tokenizer_config(path: str | os.PathLike, *, template_name: str = "default",
                          name: str | None = None) -> TemplateSpec:
  """A model's own template from its tokenizer_config.json (the file or its directory).

  `chat_template` may be a string or a list of {"name", "template"} (the one named
  `template_name` is taken); when the config has none, a `chat_template.jinja`
  beside it (where newer transformers save it) is read. `bos_token` and `eos_token`
  may be strings or {"content": ...} objects. The spec is named after the directory
  unless `name` is given.
  """
  path = os.fspath(path)
  config_path = os.path.join(path, "tokenizer_config.json") if os.path.isdir(path) else path
  directory = os.path.dirname(os.path.abspath(config_path))
  config = _read_json(config_path)
  source = config.get("chat_template")
  if source is None:
    jinja_path = os.path.join(directory, "chat_template.jinja")
    if not os.path.isfile(jinja_path):
      raise UserError(f"{config_path} has no chat_template, and there is no chat_template.jinja "
                      f"beside it. Use a built-in template ({', '.join(BUILTIN_NAMES)}) or add "
                      "the model's template.")
    with open(jinja_path, encoding="utf-8") as f:
      source = f.read()
  elif isinstance(source, list):
    source = _named_template(source, template_name, config_path)
  elif not isinstance(source, str):
    raise UserError(f"{config_path}: chat_template is a {type(source).__name__}; expected a "
                    "string or a list of {'name', 'template'} objects.")
  elif template_name != "default":
    raise UserError(f"{config_path} holds one chat template, not a list, so there is no "
                    f"template named {template_name!r}; leave template_name at 'default'.")
  bos = _token_text(config.get("bos_token"), "bos_token", config_path)
  eos = _token_text(config.get("eos_token"), "eos_token", config_path)
  if name is None:
    name = os.path.basename(directory)
    name += "" if template_name == "default" else f":{template_name}"
  return TemplateSpec(name, source, bos, eos)


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such file. Pass a model directory holding tokenizer_config.json "
                    "or the file itself.")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({e}).") from None
  if not isinstance(config, dict):
    raise UserError(f"{path}: expected a JSON object, found a {type(config).__name__}.")
  return config


def _named_template(templates: list, template_name: str, path: str) -> str:
  named = {}
  for i, entry in enumerate(templates):
    if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
            and isinstance(entry.get("template"), str)):
      raise UserError(f"{path}: chat_template[{i}] must be an object with string 'name' and "
                      f"'template', got {str(entry)[:60]!r}.")
    named[entry["name"]] = entry["template"]
  if template_name not in named:
    raise UserError(f"{path}: chat_template has no template named {template_name!r}; it has "
                    f"{sorted(named)}. Pass template_name= one of them.")
  return named[template_name]


def _token_text(value: Any, field: str, path: str) -> str:
  """A special token's text: a string, an AddedToken-style {"content": ...}, or none ("")."""
  if value is None:
    return ""
  if isinstance(value, dict):
    value = value.get("content")
  if not isinstance(value, str):
    raise UserError(f"{path}: {field} must be a string or an object with a string 'content', "
                    f"got {value!r}.")
  return value
