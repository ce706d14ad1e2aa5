"""Conversations as training examples: token ids, a loss weight per token, and their seqio task.

A conversation becomes one causal sequence (everything in "targets", nothing in
"inputs") with `targets_weights`: 1 on the tokens of the assistant turns the run
trains, 0 elsewhere. The packer lays it out like any other example (its own segment
id, positions restarting at 0), so packed conversations never attend to each other.

Token ids are the ones the model will be served with. A chat model is exported and
served by transformers or vLLM far more often than by `infer --chat`, and those
render the conversation with the chat template and encode the whole text with the
model's tokenizer files (`apply_chat_template`). So the rendered text is encoded
whole, by that same tokenizer (`hf_tokenizer.served_tokenizer`: the tokenizer.json,
or transformers' tokenizer for a SentencePiece model), special tokens matched in the
text. Every row starts with the model's BOS (the packer writes it); a template that
does not write BOS itself is encoded as the export serves it, with the BOS string
before it (`served_template_source`), so even the first piece is the served one.

Loss masks still come from the turn-by-turn rendering: `chat_templates.assistant_spans`
finds each answer's characters by the prefix property, and a token is trained when
its characters overlap a trained answer's span. A span always covers at least its
end marker, so no trained answer can vanish in the encoding.

Markers. The template's end of turn must be one token of the vocabulary, the EOS
that generation stops at (`check_markers`); a marker the vocabulary lacks (ChatML's
"<|im_end|>" on a Llama-2 vocabulary) would be encoded as letters by every server,
and a model trained so could not stop at one id, so it is refused with the choice
to make. The byte vocabulary has no outside tokenizer: there, the template's EOS
(and BOS) strings are encoded as the vocabulary's EOS (BOS) ids and the rest as bytes.

Too long for the row: whole exchanges (a user turn and its answers) are left out from
the front, the system prompt kept, until the rest fits; the final answer is never
cut. A conversation whose last exchange alone does not fit has nothing left to train
and is dropped, counted by the packer; it is never trained as a row of zero loss.
How many exchanges a conversation loses (or that it is dropped) is remembered per row
length, so later epochs do not tokenize a long turn again only to leave it out.

A template failure names the conversation (its file and record, counted from 1). At
load, conversations the template rejects are counted and left out; one that runs past
the rendering limits stops the load, since each such conversation would spend the
whole budget again every epoch.
"""

import dataclasses
import functools
import itertools
import os
import re
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from absl import logging
import numpy as np
import seqio

from flan_jax import metrics, paths
from flan_jax.data import chat_templates, conversations, example_source, hf_tokenizer, vocabularies
from flan_jax.errors import UserError
from flan_jax.model_dir import TEMPLATE_FILE  # where a run records its chat template

TrainOn = Literal["all", "last"]
TRAIN_ON: tuple[str, ...] = ("all", "last")
# A conversation rendered to find out whether a template writes BOS itself.
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def _specials(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary,
              bos_id: int | None) -> dict[str, int]:
  specials = {template.eos: vocabulary.eos_id} if template.eos else {}
  # One string for both (GPT-2's "<|endoftext|>"): inside a conversation it ends a turn.
  if template.bos and template.bos != template.eos and bos_id is not None:
    specials[template.bos] = bos_id
  return specials


def _check_bos_inside(template: chat_templates.TemplateSpec, text: str,
                      bos_id: int | None) -> None:
  # Llama 2 opens every exchange with BOS; without its id that would train on "<s>" letters.
  if (bos_id is None and template.bos and template.bos != template.eos
      and template.bos in text):
    raise UserError(f"chat template {template.name!r} writes its BOS {template.bos!r} inside "
                    "the conversation, but the vocabulary has no BOS id to encode it as. Use a "
                    "vocabulary with one (the model's own tokenizer) or another template.")


def _byte_encoding(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary,
                   text: str, bos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(ids, character offsets) in the byte vocabulary: one id per UTF-8 byte, the
  template's marker strings as their ids. A leading BOS string is left out (the row
  starts with BOS)."""
  if chat_templates.starts_with_bos(text, template):
    start = len(template.bos)
  else:
    start = 0
  _check_bos_inside(template, text[start:], bos_id)
  specials = _specials(template, vocabulary, bos_id)
  # The longer string first, so "</s>" is not split by a shorter special inside it.
  pattern = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))
  ids, offsets, at = [], [], start
  for match in [*(pattern.finditer(text, start) if specials else []), None]:
    piece_end = match.start() if match else len(text)
    piece = text[at:piece_end]
    if piece:
      encoded = list(vocabulary.encode(piece))
      utf8 = np.frombuffer(piece.encode("utf-8"), np.uint8)
      if len(encoded) != len(utf8):
        raise UserError(f"the {type(vocabulary).__name__} is not a byte vocabulary: its "
                        "conversations need a SentencePiece or tokenizer.json vocabulary.")
      char = np.cumsum((utf8 & 0xC0) != 0x80) - 1 + at  # the character each byte belongs to
      ids += encoded
      offsets += np.stack([char, char + 1], axis=1).tolist()
    if match:
      ids.append(specials[match.group()])
      offsets.append(match.span())
      at = match.end()
  return np.asarray(ids, np.int32), np.asarray(offsets, np.int64).reshape(-1, 2)


def _bos_text(vocabulary: seqio.Vocabulary, tokenizer) -> str | None:
  bos = vocabularies.bos_id(vocabulary)
  return None if bos is None else tokenizer.id_to_token(bos)


@functools.lru_cache(maxsize=64)  # asked at every encoding; a spec is frozen, so hashable
def writes_bos(template: chat_templates.TemplateSpec) -> bool:
  """Whether the template writes BOS itself (Llama 2 and 3) or leaves it to the tokenizer."""
  try:
    return chat_templates.starts_with_bos(template.render(_PROBE), template)
  except UserError:  # a template that wants other turns (a system prompt, say)
    return chat_templates.starts_with_bos(template.render([]), template)


def served_template_source(template: chat_templates.TemplateSpec,
                           vocabulary: seqio.Vocabulary) -> str:
  """The template as an export carries it: training rows start with BOS, so a template
  that does not write BOS itself gets it written first (the tokenizer's `bos_token`)."""
  tokenizer = hf_tokenizer.served_tokenizer(vocabulary)
  if tokenizer is None or writes_bos(template) or _bos_text(vocabulary, tokenizer) is None:
    return template.source
  return "{{- bos_token -}}\n" + template.source


def check_markers(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary) -> None:
  """The template's end of turn (and the BOS it writes) must be the vocabulary's EOS (BOS)
  token, so that the ids trained are the ids served and generation stops at the end
  of the answer."""
  tokenizer = hf_tokenizer.served_tokenizer(vocabulary)
  if tokenizer is None:
    return
  if not template.eos:
    raise UserError(f"chat template {template.name!r} has no end-of-turn string (eos_token): a "
                    "model trained with it would never learn to stop. Give the template one.")
  marker = hf_tokenizer.token_id(tokenizer, template.eos)
  if marker is None:
    pieces = len(tokenizer.encode(template.eos, add_special_tokens=False).ids)
    raise UserError(
        f"chat template {template.name!r} ends each turn with {template.eos!r}, which the "
        f"vocabulary has no token for: servers would encode it as {pieces} ordinary tokens "
        "and a model trained on it could not stop at one id. Choose a template whose end of "
        "turn is the vocabulary's EOS (for Llama-style vocabularies 'zephyr' or 'llama2', "
        f"which end turns with {tokenizer.id_to_token(vocabulary.eos_id)!r}), or a tokenizer.json "
        f"that has {template.eos!r} as a special token and as its eos_token.")
  if marker != vocabulary.eos_id:
    raise UserError(
        f"chat template {template.name!r} ends each turn with {template.eos!r} (id {marker}), but "
        f"the vocabulary's EOS, where generation stops, is "
        f"{tokenizer.id_to_token(vocabulary.eos_id)!r} (id {vocabulary.eos_id}). Make "
        f"{template.eos!r} the EOS (eos_token in the tokenizer_config.json beside tokenizer.json) "
        "or choose a template that ends turns with the EOS.")
  bos = _bos_text(vocabulary, tokenizer)
  if writes_bos(template) and template.bos != bos:
    raise UserError(f"chat template {template.name!r} writes {template.bos!r} as its BOS, but "
                    f"the vocabulary's BOS token is {bos!r}: choose a template for this "
                    "vocabulary (or a model's own, from its tokenizer_config.json).")


def _encoded(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary, text: str,
             bos_id: int | None) -> tuple[np.ndarray, np.ndarray]:
  """(ids, [start, end) characters of `text` per id) of a rendered conversation, as its
  served tokenizer encodes it, without the BOS that starts every row."""
  tokenizer = hf_tokenizer.served_tokenizer(vocabulary)
  if tokenizer is None:
    return _byte_encoding(template, vocabulary, text, bos_id)
  check_markers(template, vocabulary)
  bos = _bos_text(vocabulary, tokenizer)
  prefix = "" if bos is None or text.startswith(bos) else bos
  ids, offsets = hf_tokenizer.encode(tokenizer, prefix + text)
  if bos is not None:
    if not len(ids) or ids[0] != vocabularies.bos_id(vocabulary):
      raise UserError(f"chat template {template.name!r}: the rendered conversation does not "
                      f"encode to {bos!r} first ({text[:40]!r}...).")
    ids, offsets = ids[1:], offsets[1:]  # the row's BOS, written by the packer
  return ids, offsets - len(prefix)


def _in_spans(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
  """Per token, whether its characters overlap one of `spans`."""
  inside = np.zeros(len(offsets), bool)
  for start, end in spans:
    overlaps = (offsets[:, 0] < end) & (offsets[:, 1] > start)
    if not overlaps.any():
      raise UserError(f"the answer at characters [{start}, {end}) has no token in the encoded "
                      "conversation; the tokenizer's offsets do not cover the text.")
    inside |= overlaps
  return inside


def tokenize(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary,
             turns: Sequence[Mapping[str, str]], *, train_on: TrainOn = "all",
             bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(ids, weights) of one conversation: weight 1 on the trained answers' tokens."""
  if train_on not in TRAIN_ON:
    raise UserError(f"train_on={train_on!r}; use 'all' (every assistant turn) or 'last'.")
  text, spans = chat_templates.assistant_spans(template, turns)
  ids, offsets = _encoded(template, vocabulary, text, bos_id)
  trained = spans[-1:] if train_on == "last" else spans
  return ids, _in_spans(offsets, trained).astype(np.int32)


def prompt_ids(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary,
               turns: Sequence[Mapping[str, str]], *, bos_id: int | None = None) -> np.ndarray:
  """The ids a model answers at inference: the turns and the generation prompt, encoded
  as a server encodes `apply_chat_template(turns, add_generation_prompt=True)`."""
  text = template.render(turns, add_generation_prompt=True)
  return _encoded(template, vocabulary, text, bos_id)[0]


def shortened(turns: Sequence[Mapping[str, str]]) -> Iterator[tuple[int, list]]:
  """(exchanges left out, turns): the conversation whole, then without its first
  exchange (a user turn and what answers it), its first two, ...; the system prompt
  always kept. Training and inference fit a conversation by the same rule."""
  system = [turn for turn in turns[:1] if turn["role"] == "system"]
  starts = [i for i, turn in enumerate(turns) if turn["role"] == "user"] or [len(system)]
  for dropped, start in enumerate(starts):
    yield dropped, ([*system, *turns[start:]] if dropped else list(turns))


def fit(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary,
        turns: Sequence[Mapping[str, str]], length: int, *, train_on: TrainOn = "all",
        bos_id: int | None = None, leave_out: int = 0) -> tuple[np.ndarray, np.ndarray, int] | None:
  """(ids, weights, exchanges left out) fitting `length` tokens, or None if even the
  last exchange does not fit (nothing would be trained). `leave_out`: exchanges an
  earlier fit of these turns at this length left out, not tokenized again."""
  for dropped, kept in itertools.islice(shortened(turns), leave_out, None):
    ids, weights = tokenize(template, vocabulary, kept, train_on=train_on, bos_id=bos_id)
    if len(ids) <= length:
      return (ids, weights, dropped) if weights.any() else None
  return None


def answer_example(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary,
                   turns: Sequence[Mapping[str, str]], inputs_length: int, *,
                   bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
  """(prompt ids, final answer ids, exchanges left out) for evaluating the conversation's
  last assistant turn. The prompt is what `prompt_ids` gives inference, fitted to
  `inputs_length` by `shortened`'s rule (if even the last user turn alone is longer,
  it is returned as it is, for the evaluator to cut and count). The answer is the ids
  training trains for that turn, its end marker and EOS included."""
  if not turns or turns[-1]["role"] != "assistant":
    raise UserError("a conversation to evaluate must end with an assistant turn (the "
                    "reference answer).")
  for dropped, kept in shortened(turns[:-1]):
    prompt = prompt_ids(template, vocabulary, kept, bos_id=bos_id)
    if len(prompt) <= inputs_length:
      break
  ids, weights = tokenize(template, vocabulary, [*kept, turns[-1]], train_on="last",
                         bos_id=bos_id)
  return prompt, ids[weights.astype(bool)], dropped


class ChatSource(example_source.ExampleSource):
  """A conversation file as a seqio source of tokenized, weighted, fitted examples.

  With `validation_records`, the file's last that many records (an OASST tree's
  conversations together) are a "validation" split that training never reads. Its
  examples are for evaluation: the prompt before the final answer in "inputs", the
  answer's ids in "targets" and its text in "targets_pretokenized".
  """

  def __init__(self, load: Callable[[], conversations.Conversations],
               template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary, *,
               train_on: TrainOn = "all", bos_id: int | None = None, salt: str = "",
               validation_records: int = 0, path: str = ""):
    if validation_records < 0:
      raise UserError(f"{salt}: validation_records={validation_records}; give 0 (no "
                      "validation split) or how many of the file's last records to hold out.")
    super().__init__(salt, ("train", "validation") if validation_records else ("train",))
    self._load, self._template, self._vocabulary = load, template, vocabulary
    self._train_on, self._bos_id = train_on, bos_id
    self._validation_records, self.path = validation_records, path
    self._conversations: conversations.Conversations | None = None
    self._split_conversations: dict[str, list[tuple[int, list]]] = {}  # (record, turns)
    # (index, row length) -> exchanges left out to fit, None: nothing fits. Kept for the
    # conversations that do not fit whole, so that later epochs tokenize only what is
    # kept: a long turn would otherwise be tokenized again every epoch, to the same end.
    self._left_out: dict[tuple[int, int], int | None] = {}

  @property
  def template(self) -> chat_templates.TemplateSpec:
    return self._template

  def _split(self, split: str) -> list[tuple[int, list]]:
    if self._conversations is None:  # loaded on first use, never at registration
      self._conversations = self._renderable(self._load())
      self._split_conversations = self._by_split(self._conversations)
    if split not in self._split_conversations:
      raise UserError(f"{self._salt} has no {split!r} split; it has {sorted(self._split_conversations)} "
                      "(ChatTask.validation_records makes a validation split).")
    return self._split_conversations[split]

  def _by_split(self, loaded: conversations.Conversations) -> dict[str, list[tuple[int, list]]]:
    records = loaded.records  # `_renderable` numbered them
    pairs = list(zip(records, loaded.conversations))
    if not self._validation_records:
      return {"train": pairs}
    first_held_out = max(records, default=-1) + 1 - self._validation_records
    train = [(record, turns) for record, turns in pairs if record < first_held_out]
    held_out = [(record, turns) for record, turns in pairs if record >= first_held_out]
    validation = [(record, turns) for record, turns in held_out
                  if turns[-1]["role"] == "assistant"]
    loaded.counts["validation_without_answer"] += len(held_out) - len(validation)
    if not train:
      raise UserError(f"{self._salt}: validation_records={self._validation_records} holds out "
                      f"every record ({max(records, default=-1) + 1} with conversations): "
                      "nothing is left to train on. Hold out fewer.")
    if not validation:
      raise UserError(f"{self._salt}: none of the conversations of the last "
                      f"{self._validation_records} records ends with an assistant turn, so there "
                      "is no answer to evaluate. Hold out more records.")
    logging.info("%s: %d conversations to train on, %d held out for validation (the last %d "
                 "records; %d held out end with a user turn and are not evaluated)", self._salt,
                 len(train), len(validation), self._validation_records,
                 len(held_out) - len(validation))
    return {"train": train, "validation": validation}

  @property
  def validation_records(self) -> int:
    return self._validation_records

  def _renderable(self, loaded: conversations.Conversations) -> conversations.Conversations:
    """The conversations the template renders; the others are counted and left out
    here, not met hours into a run (a resumed run would meet them again)."""
    if not loaded.conversations:
      raise UserError(f"{self._salt}: {self.path or 'the file'} holds no conversation to train "
                      f"on ({loaded.summary()}). Check that its records hold answered "
                      "conversations.")
    kept, kept_records, first_problem = [], [], None
    # Without record numbers (a custom loader), each conversation is its own record.
    records = loaded.records or list(range(len(loaded.conversations)))
    for record, turns in zip(records, loaded.conversations):
      try:
        self._template.render(turns)
      except chat_templates.LimitExceeded as problem:
        # Not a rejection to count: each such conversation would spend the budget again.
        raise chat_templates.LimitExceeded(f"{self._where(record)}: {problem}") from None
      except UserError as problem:
        loaded.counts["template_rejected"] += 1
        first_problem = first_problem or f"{self._where(record)}: {problem}"
        continue
      kept.append(turns)
      kept_records.append(record)
    if not kept:
      raise UserError(f"{self._salt}: chat template {self._template.name!r} renders none of "
                      f"the {len(loaded.conversations)} conversations. The first: {first_problem}")
    if first_problem:
      logging.warning("%s: chat template %r rejects %d of %d conversations, left out. The "
                      "first: %s", self._salt, self._template.name,
                      loaded.counts["template_rejected"], len(loaded.conversations),
                      first_problem)
    loaded.conversations, loaded.records = kept, kept_records
    logging.info("%s: %s", self._salt, loaded.summary())
    return loaded

  def _where(self, record: int) -> str:
    return f"{self.path or self._salt}, record {record + 1}"

  @property
  def counts(self) -> dict[str, int]:
    """What reading left out or changed (tool turns, merged turns, rejected conversations)."""
    self._split("train")
    return dict(self._conversations.counts)

  def count(self, split: str = "train") -> int:
    return len(self._split(split))

  def example(self, split: str, index: int,
              sequence_length: Mapping[str, int] | None) -> dict[str, Any] | None:
    record, turns = self._split(split)[index]
    try:
      if split != "train":
        return self._answer_example(turns, sequence_length)
      return self._train_example(index, turns, sequence_length)
    except UserError as problem:  # the template fails on a prompt inside the conversation
      raise UserError(f"{self._where(record)}: {problem}") from None

  def _train_example(self, index, turns, sequence_length) -> dict[str, Any] | None:
    length = sum(sequence_length.values()) if sequence_length else 1 << 30
    key = (index, length)
    left_out = self._left_out.get(key, 0)
    if left_out is None:
      return None
    fitted = fit(self._template, self._vocabulary, turns, length, train_on=self._train_on,
                 bos_id=self._bos_id, leave_out=left_out)
    if fitted is None:
      self._left_out[key] = None
      return None
    ids, weights, dropped = fitted
    if dropped:
      self._left_out[key] = dropped
    return example_source.weighted_example(ids, weights, self._template.render(turns),
                                           dropped_exchanges=dropped)

  def _answer_example(self, turns, sequence_length) -> dict[str, Any]:
    inputs_length = sequence_length["inputs"] if sequence_length else 1 << 30
    prompt, answer, dropped = answer_example(self._template, self._vocabulary, turns,
                                             inputs_length, bos_id=self._bos_id)
    return {"inputs": prompt, "targets": answer, "targets_weights": np.ones_like(answer),
            "inputs_pretokenized": self._template.render(turns[:-1], add_generation_prompt=True),
            "targets_pretokenized": turns[-1]["content"], "dropped_exchanges": dropped}


def register_chat_task(name: str, path: str, *, template: chat_templates.TemplateSpec,
                       vocabulary: seqio.Vocabulary, train_on: TrainOn = "all",
                       bos_id: int | None = None, format: str | None = None,
                       paths: str = "all", merge_consecutive: bool = False,
                       validation_records: int = 0) -> str:
  """Registers conversations from `path` (JSONL/JSON: messages, ShareGPT, Alpaca or
  OASST trees) as a seqio task training on assistant turns; returns its name.

  `bos_id`: the id a template's BOS string encodes to (default: the vocabulary's BOS);
  the rows' start token is BOS already, so a template's leading BOS is dropped.
  `validation_records`: hold out the file's last that many records as a validation
  split, evaluated (as every seen task's validation split is) by the final answer's
  ROUGE-L against greedy generation and its perplexity under the model.
  """
  if train_on not in TRAIN_ON:
    raise UserError(f"train_on={train_on!r}; use 'all' (every assistant turn) or 'last'.")
  if bos_id is None:
    bos_id = vocabularies.bos_id(vocabulary)
  check_markers(template, vocabulary)  # at registration, not at the first example
  load = lambda: conversations.read_conversations(path, format=format, paths=paths,
                                                  merge_consecutive=merge_consecutive)
  seqio.TaskRegistry.add(
      name, source=ChatSource(load, template, vocabulary, train_on=train_on, bos_id=bos_id,
                              salt=name, validation_records=validation_records, path=path),
      output_features=vocabularies.output_features(vocabulary), preprocessors=[],
      postprocess_fn=metrics.strip, metric_fns=[metrics.rouge_l, metrics.target_perplexity])
  return name


@dataclasses.dataclass(frozen=True)
class ChatTask:
  """A conversation file to train on or evaluate, as gin names it; `register` makes its
  seqio task once the run's vocabulary is known.

  `template`: a built-in name (chatml, llama2, llama3, zephyr), or a model directory or
  tokenizer_config.json with its own `chat_template`, or a spec JSON a run recorded
  (MODEL_DIR/chat_template.json). None: for a new run ChatML, or Zephyr where the
  vocabulary has no "<|im_end|>" EOS (`default_template`); when evaluating a run,
  the template it recorded.
  `validation_records`: the file's last that many records held out for evaluation.
  """
  name: str
  path: str
  template: str | None = None
  train_on: str = "all"
  format: str | None = None
  paths: str = "all"
  merge_consecutive: bool = False
  validation_records: int = 0

  def register(self, vocabulary: seqio.Vocabulary,
               recorded: chat_templates.TemplateSpec | None = None) -> str:
    """`recorded`: the template of the checkpoint evaluated, which a named one must equal."""
    return register_chat_task(self.name, self.path,
                              template=self.resolve_template(recorded, vocabulary),
                              vocabulary=vocabulary, train_on=self.train_on, format=self.format,
                              paths=self.paths, merge_consecutive=self.merge_consecutive,
                              validation_records=self.validation_records)

  def resolve_template(self, recorded: chat_templates.TemplateSpec | None = None,
                       vocabulary: seqio.Vocabulary | None = None
                       ) -> chat_templates.TemplateSpec:
    if recorded is None:
      return load_template(self.template) if self.template else default_template(vocabulary)
    if self.template is None:
      return recorded
    named = load_template(self.template)
    if named != recorded:
      raise UserError(f"ChatTask {self.name!r} names chat template {named.name!r}, but the "
                      f"checkpoint was trained with {recorded.name!r} (its {TEMPLATE_FILE}); "
                      "evaluation must render as training did. Leave ChatTask.template unset "
                      "to use the recorded one.")
    return named


def default_template(vocabulary: seqio.Vocabulary | None) -> chat_templates.TemplateSpec:
  """ChatML where the vocabulary can end its turns (its EOS is "<|im_end|>", or bytes),
  else Zephyr, whose turns end with the vocabulary's own EOS."""
  chatml = chat_templates.builtin("chatml")
  if vocabulary is None:
    return chatml
  try:
    check_markers(chatml, vocabulary)
    return chatml
  except UserError:
    tokenizer = hf_tokenizer.served_tokenizer(vocabulary)
    eos = tokenizer.id_to_token(vocabulary.eos_id)
    bos = _bos_text(vocabulary, tokenizer) or ""
    zephyr = chat_templates.builtin("zephyr")
    return dataclasses.replace(zephyr, bos=bos, eos=eos)


def is_conversation_task(task: seqio.Task) -> bool:
  return isinstance(task.source, ChatSource)


def load_template(name_or_path: str) -> chat_templates.TemplateSpec:
  """A built-in template by name; a run's MODEL_DIR (its recorded `chat_template.json`)
  or such a file; or a model's own, from its directory or tokenizer_config.json."""
  if name_or_path in chat_templates.BUILTIN_NAMES:
    return chat_templates.builtin(name_or_path)
  if paths.isdir(name_or_path):
    recorded = paths.join(name_or_path, TEMPLATE_FILE)
    if paths.exists(recorded):
      return chat_templates.TemplateSpec.from_json(paths.read_text(recorded))
    return chat_templates.from_tokenizer_config(name_or_path)
  if paths.exists(name_or_path):
    if os.path.basename(name_or_path) == "tokenizer_config.json":
      return chat_templates.from_tokenizer_config(name_or_path)
    return chat_templates.TemplateSpec.from_json(paths.read_text(name_or_path))
  raise UserError(f"chat template {name_or_path!r}: not a built-in "
                  f"({', '.join(chat_templates.BUILTIN_NAMES)}) and no such file or directory.")


def recorded_template(tasks: Sequence[seqio.Task]) -> chat_templates.TemplateSpec | None:
  """The one template the training tasks' conversations use (None: they have none)."""
  templates = {task.source.template for task in tasks if isinstance(task.source, ChatSource)}
  if len(templates) > 1:
    raise UserError(f"The training tasks mix chat templates ({sorted(t.name for t in templates)}):"
                    " inference could render only one of them as training did. Use one template "
                    "for all.")
  return templates.pop() if templates else None


def held_out_record(tasks: Sequence[seqio.Task]) -> dict[str, dict]:
  """{task: {"path", "validation_records"}} for the conversation tasks of a run."""
  return {task.name: {"path": os.path.abspath(task.source.path) if task.source.path else "",
                      "validation_records": task.source.validation_records}
          for task in tasks if isinstance(task.source, ChatSource)}


def trained_template(template_file: str | None) -> chat_templates.TemplateSpec | None:
  """The chat template a checkpoint was trained with, from the file that records it
  (`ResolvedCheckpoint.chat_template_file`: a run's TEMPLATE_FILE, or a Hugging Face
  tokenizer_config.json); None where there is none. A damaged record is an error,
  never a silent default."""
  return load_template(template_file) if template_file else None


def check_held_out(recorded: Mapping[str, Mapping], task: ChatTask, where: str) -> None:
  """Evaluating `task` on a checkpoint scores only conversations its training held out:
  for the file it trained on, the same last records."""
  trained = recorded.get(task.name)
  if not trained or trained["path"] != os.path.abspath(task.path):
    return  # another file: none of it was trained on under this name
  if trained["validation_records"] != task.validation_records:
    raise UserError(
        f"ChatTask {task.name!r} holds out the last {task.validation_records} records of "
        f"{task.path}, but training held out {trained['validation_records']} ({where}): "
        "evaluation would score conversations the model trained on, or skip some it did "
        f"not. Set ChatTask.validation_records={trained['validation_records']}"
        + (" (training held out none: evaluate on another file)."
           if not trained["validation_records"] else "."))
