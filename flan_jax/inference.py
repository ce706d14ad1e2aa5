"""Talk to a checkpoint: generate from prompts, or score answer options. The library
behind `python -m flan_jax.infer`.

A prompt is tokenized exactly as training tokenized a task's inputs: the vocabulary's
tokens, seqio's EOS kept or dropped by the family's rule (`truncation.fit_inputs`),
the decoder-only BOS in front (`left_pad_prompts`), and an over-long prompt cut from
its front, never its end. So `infer` sees the prompts a finetune was trained on.

The vocabulary is the checkpoint's own tokenizer when it has one (a Hugging Face
directory, or a run or orbax checkpoint that started from one), else `vocabulary_path`,
else bytes (the built-in default mixture's vocabulary).
"""

import dataclasses
import json
import logging
import sys
from typing import Callable, Iterable, Iterator, Mapping, Sequence, TextIO

import jax
import numpy as np
import seqio

from flan_jax import model_dir
from flan_jax.data import chat_examples, chat_templates, truncation, vocabularies
from flan_jax.errors import UserError, check_whole_number
from flan_jax.evaluation import decoding, scoring
from flan_jax.evaluation.decoding import DecodeConfig
from flan_jax.evaluation.evaluator import decode_until_eos, left_pad_prompts
from flan_jax.models import families
from flan_jax.models.families import ModelFamily


@dataclasses.dataclass
class Predictor:
  """A model with its vocabulary and prompt format; `generate` and `score` take text."""
  network: ModelFamily
  params: object
  vocabulary: seqio.Vocabulary
  max_input_length: int = 512
  max_new_tokens: int = 64
  decode: DecodeConfig = DecodeConfig()
  stop: Sequence[str] = ()
  batch_size: int = 8
  # Conversations (`infer --chat`): the template training rendered them with.
  chat_template: chat_templates.TemplateSpec | None = None
  # Decode a completion that continues its prompt's text (a causal model's) after the
  # prompt's last token, as harnesses that slice the decoded whole do (HumanEval's): a
  # SentencePiece tokenizer drops the leading space of a text it decodes alone, which
  # would cost generated code a column of indentation.
  decode_in_context: bool = False
  _generate: Callable | None = dataclasses.field(default=None, repr=False)
  _score: Callable | None = dataclasses.field(default=None, repr=False)

  def prompt_tokens(self, text: str) -> tuple[np.ndarray, bool]:
    """(the prompt's tokens as training saw them, without the BOS; whether it was cut)."""
    tokens = [*self.vocabulary.encode(text), self.vocabulary.eos_id]
    return truncation.fit_inputs(tokens, self.max_input_length, eos_id=self.vocabulary.eos_id,
                                 inputs_eos=self.network.inputs_eos)

  def _fitted(self, text: str) -> np.ndarray:
    tokens, cut = self.prompt_tokens(text)
    if cut:
      logging.warning("A prompt longer than --max_input_length=%d tokens lost its front: "
                      "%.60r...", self.max_input_length, text)
    return tokens

  def generate(self, texts: Sequence[str], seed: int | None = None) -> list[str]:
    """One completion per prompt, cut before the first stop string."""
    return self._generate_from([self._fitted(t) for t in texts], seed)

  def chat_prompt_tokens(self, turns: Sequence[Mapping[str, str]]) -> np.ndarray:
    """The conversation's tokens up to the reply, split and encoded as training encoded
    them (`chat_examples.prompt_ids`); too long, it loses whole early exchanges first,
    as in training, and only then the front of what is left."""
    if self.chat_template is None:
      raise UserError("This predictor has no chat template: load it with chat=True.")
    bos_id = vocabularies.bos_id(self.vocabulary)
    for _, kept in chat_examples.shortened(turns):
      tokens = chat_examples.prompt_ids(self.chat_template, self.vocabulary, kept, bos_id=bos_id)
      if len(tokens) <= self.max_input_length:
        return tokens
    logging.warning("The last exchange alone is longer than --max_input_length=%d tokens; it "
                    "lost its front.", self.max_input_length)
    return tokens[len(tokens) - self.max_input_length:]

  def chat(self, conversations: Sequence[Sequence[Mapping[str, str]]],
           seed: int | None = None) -> list[str]:
    """The assistant's next reply in each conversation (which ends with a user turn)."""
    replies = self._generate_from([self.chat_prompt_tokens(c) for c in conversations], seed)
    end = self.chat_template.eos  # where no EOS id stands for it, the marker's letters
    return [reply[:reply.index(end)] if end and end in reply else reply for reply in replies]

  def _generate_from(self, prompts: Sequence[np.ndarray], seed: int | None) -> list[str]:
    if self._generate is None:
      self._generate = decoding.make_generate(self.network, self.params, self.max_new_tokens,
                                              self.vocabulary.eos_id, self.decode)
    prefix = tuple(self.network.prompt_prefix())
    outputs = []
    for start in range(0, len(prompts), self.batch_size):
      chunk = prompts[start:start + self.batch_size]
      tokens, mask, _ = left_pad_prompts(chunk, self.max_input_length + len(prefix), prefix)
      # Full batches only (the last row repeated), so generation compiles once.
      fill = ((0, self.batch_size - len(chunk)), (0, 0))
      # One seed per batch, so rows of different batches draw different samples.
      batch_seed = (self.decode.seed if seed is None else seed) + start
      generated = self._generate(np.pad(tokens, fill, mode="edge"),
                                 np.pad(mask, fill, mode="edge"), batch_seed)
      outputs += [self._text(ids, prompt) for ids, prompt in zip(generated, chunk)]
    return outputs

  def _text(self, ids: np.ndarray, prompt: Sequence[int] = ()) -> str:
    if self.decode_in_context and len(prompt) and prompt[-1] != self.vocabulary.eos_id:
      text = decode_continuation(self.vocabulary, int(prompt[-1]), ids)
    else:
      text = decode_until_eos(self.vocabulary, ids)
    for stop in self.stop:
      if stop and stop in text:
        text = text[:text.index(stop)]
    return text

  def score(self, examples: Sequence[tuple[str, Sequence[str]]]) -> scoring.ScoredOptions:
    """Each option's log-likelihood as the answer to its prompt: the option's tokens and
    EOS, as training scored a target."""
    lengths = {"inputs": self.max_input_length, "targets": self.max_new_tokens}
    if self._score is None:
      self._score = scoring.make_option_scorer(
          self.network, self.params, lengths, batch_size=self.batch_size,
          bos_id=self.network.bos_id)
    pairs = []
    for text, options in examples:
      prompt = self._fitted(text)
      pairs.append([(prompt, truncation.fit_targets(
          [*self.vocabulary.encode(option), self.vocabulary.eos_id], lengths["targets"])[0])
          for option in options])
    return self._score(pairs)


def decode_continuation(vocabulary: seqio.Vocabulary, last_prompt_id: int, ids) -> str:
  """The text `ids` (up to EOS) add after a prompt ending in `last_prompt_id`: the two
  decoded together, less the prompt token's own text; alone where that is not a prefix
  (bytes split across the boundary)."""
  ids = np.asarray(ids).tolist()
  if vocabulary.eos_id in ids:
    ids = ids[:ids.index(vocabulary.eos_id)]
  lead = vocabulary.decode([last_prompt_id])
  whole = vocabulary.decode([last_prompt_id, *ids])
  return whole[len(lead):] if whole.startswith(lead) else vocabulary.decode(ids)


def load_predictor(checkpoint_path: str, *, step: int | None = None,
                   vocabulary_path: str | None = None, chat: bool = False,
                   chat_template: str | None = None, adapter: str | None = None,
                   **settings) -> Predictor:
  """A Predictor for a run's MODEL_DIR, an orbax checkpoint or a Hugging Face directory;
  with `adapter` (a PEFT adapter directory or a LoRA run's MODEL_DIR), for that base
  with the adapter merged in (`checkpoint_eval.load_for_serving`).

  `chat`: for conversations, rendered with `chat_template` (a built-in name, or a
  path: see `chat_examples.load_template`), by default the one the run recorded in
  MODEL_DIR, else the checkpoint's own (its tokenizer_config.json).
  """
  from flan_jax import checkpoint_eval  # the checkpoint formats
  for name in ("max_input_length", "max_new_tokens", "batch_size"):  # before a slow load
    if name in settings:
      check_whole_number(name, settings[name], 1)
  checkpoint = model_dir.resolve(checkpoint_path, adapter=adapter)
  network, params, vocabulary = checkpoint_eval.load_for_serving(checkpoint, step, vocabulary_path)
  template = None
  if chat:
    network = families.conversation_reader(network)  # causally, as conversations are trained
    try:  # the template an adapter run recorded, else the checkpoint's own
      template = chat_examples.load_template(
          chat_template or checkpoint.chat_template_file() or checkpoint_path)
    except UserError as e:
      raise UserError(f"--chat needs the chat template the model was trained with: {e} "
                      "Pass --chat_template=NAME_OR_PATH (built-ins: "
                      f"{', '.join(chat_templates.BUILTIN_NAMES)}).") from None
  # On the device once, not sent with every batch.
  return Predictor(network, _on_device(params), vocabulary, chat_template=template, **settings)


def _on_device(params):
  """The parameters on the device, sent leaf by leaf into the same dicts: each host array
  is dropped once its device copy exists, so the host never holds the model twice."""
  if not isinstance(params, dict):
    return jax.device_put(params)
  for key, value in params.items():
    params[key] = _on_device(value)
  return params


def read_requests(lines: Iterable[str], source: str, chat: bool = False) -> Iterator[dict]:
  """JSONL objects with "inputs" (and optionally "options"), or with `chat` "messages";
  errors name the line."""
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      request = json.loads(line)
    except json.JSONDecodeError as e:
      example = ('{"messages": [{"role": "user", "content": "Hello!"}]}' if chat
                 else '{"inputs": "What is 2 plus 3?"}')
      raise UserError(f"{source}:{number}: not JSON ({e.msg}); write one object per line, "
                      f"e.g. {example}.") from None
    if chat:
      _check_messages(request, f"{source}:{number}")
      yield request
      continue
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), str):
      raise UserError(f'{source}:{number}: needs a string field "inputs".')
    options = request.get("options")
    if options is not None and (not isinstance(options, list) or not options
                                or not all(isinstance(o, str) for o in options)):
      raise UserError(f'{source}:{number}: "options" must be a non-empty list of strings.')
    yield request


def _check_messages(request, where: str) -> None:
  messages = request.get("messages") if isinstance(request, dict) else None
  if not isinstance(messages, list) or not messages:
    raise UserError(f'{where}: --chat needs a "messages" list, e.g. '
                    '{"messages": [{"role": "user", "content": "Hello!"}]}.')
  for i, turn in enumerate(messages):
    if (not isinstance(turn, dict) or turn.get("role") not in ("system", "user", "assistant")
        or not isinstance(turn.get("content"), str)):
      raise UserError(f'{where}: messages[{i}] must be {{"role": "system" | "user" | '
                      f'"assistant", "content": string}}, got {str(turn)[:80]!r}.')
  if messages[-1]["role"] != "user":
    raise UserError(f"{where}: the last message must be the user's (the model answers it), "
                    f"not {messages[-1]['role']!r}.")


def answer(predictor: Predictor, requests: Sequence[dict], seed: int | None = None,
           length_normalize: bool = False) -> list[dict]:
  """Each request with "prediction" added: generated, or with "options" the best-scored
  option, its "scores" (summed log-likelihoods) beside it; for "messages", the reply."""
  answers = [dict(r) for r in requests]
  if answers and "messages" in answers[0]:
    for a, reply in zip(answers, predictor.chat([a["messages"] for a in answers], seed)):
      a["prediction"] = reply
    return answers
  scored = [a for a in answers if a.get("options")]
  generated = [a for a in answers if not a.get("options")]
  if scored:
    result = predictor.score([(a["inputs"], a["options"]) for a in scored])
    for a, scores, choice in zip(scored, result.log_likelihoods,
                                 result.choices(length_normalize)):
      a["scores"] = scores
      a["prediction"] = a["options"][choice]
  if generated:
    for a, text in zip(generated, predictor.generate([a["inputs"] for a in generated], seed)):
      a["prediction"] = text
  return answers


def run_jsonl(predictor: Predictor, lines: Iterable[str], out: TextIO, source: str = "<stdin>",
              seed: int | None = None, length_normalize: bool = False,
              chunk: int = 64, chat: bool = False) -> int:
  """Answers JSONL requests in chunks, writing one JSON line per request; returns the count."""
  count, pending = 0, []

  def flush():
    nonlocal count
    for a in answer(predictor, pending, None if seed is None else seed + count, length_normalize):
      out.write(json.dumps(a, ensure_ascii=False) + "\n")
    out.flush()
    count += len(pending)
    pending.clear()

  for request in read_requests(lines, source, chat):
    pending.append(request)
    if len(pending) == chunk:
      flush()
  if pending:
    flush()
  return count


def interactive(predictor: Predictor, read: Callable[[str], str] = input,
                write: Callable[[str], None] = print, chat: bool = False) -> None:
  """A prompt loop: each line is a prompt, the model's completion is printed; with
  `chat`, each line is the user's next turn in one conversation. Ends at EOF (Ctrl-D)
  or `:quit`."""
  write("Type a prompt and press Enter; Ctrl-D or :quit ends.")
  turn, history = 0, []
  while True:
    try:
      line = read("> ")
    except EOFError:
      write("")
      return
    if line.strip() == ":quit":
      return
    if line.strip() and chat:
      history.append({"role": "user", "content": line})
      reply = predictor.chat([history], seed=predictor.decode.seed + turn)[0]
      history.append({"role": "assistant", "content": reply})
      write(reply)
      turn += 1
    elif line.strip():
      write(predictor.generate([line], seed=predictor.decode.seed + turn)[0])
      turn += 1


def open_input(path: str) -> tuple[Iterable[str], str]:
  if path == "-":
    return sys.stdin, "<stdin>"
  try:
    return open(path, encoding="utf-8"), path
  except OSError as e:
    raise UserError(f"--input {path!r} cannot be read ({e.strerror}).") from None
