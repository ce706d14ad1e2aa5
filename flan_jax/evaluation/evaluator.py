"""Evaluation on seqio tasks: rank classification over options, or generation; then metrics.

A task whose examples carry answer `options` is scored by rank classification, as
FLAN scores it: the option with the highest log-likelihood is the prediction
(`scoring`). Each task says how its options are scored (`flan_task.option_scoring`):
as training targets, with EOS (FLAN's), or as lm-eval's continuations, without
(MMLU). Other tasks, or all tasks with `rank_classification=False`, generate greedily. Either way each task's own postprocessor and metric functions decide the
score, as in seqio, so a task registered once is trained on and evaluated the same way.

Tasks with score metrics (seqio's `(targets, scores)` functions, such as held-out
conversations' `target_perplexity`) also have each reference target scored given
its prompt, as rank classification scores an option.

Prompts are the training prompts: read with the run's sequence lengths (so few-shot
prompts keep the exemplars that fit, see `flan_task`), with a fixed seed (so templates,
exemplars and option formats are the same before and after training), and fitted by
`truncation`'s rule (the front of a long prompt goes, never its question or the
decoder's BOS). Every cut is counted per task and reported.
"""

import collections
import dataclasses
import itertools
import logging
from typing import Callable, Mapping, Sequence

import jax
import numpy as np
import seqio
import tqdm

from flan_jax.data import chat_examples, flan_task, task_reader, truncation
from flan_jax.data.flan_task import REFERENCE_SEPARATOR
from flan_jax.evaluation import decoding, scoring
from flan_jax.evaluation.decoding import GenerateFn
from flan_jax.evaluation.placement import RowPlacement
from flan_jax.errors import UserError
from flan_jax.evaluation.scoring import Pair, ScoredOptions
from flan_jax.metrics import TargetScore
from flan_jax.models import families
from flan_jax.models.families import ModelFamily

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  split: str = "validation"
  max_examples_per_task: int | None = 100
  batch_size: int = 64
  # The training tasks' validation splits too; a large library has hundreds of them.
  evaluate_seen: bool = True
  seed: int = 0  # the same prompts (templates, exemplars, option formats) at every evaluation
  rank_classification: bool = True  # tasks with options: pick the most likely option
  length_normalize: bool = False  # rank by mean instead of summed token log-likelihood
  # False: a decoder-only model reads prompts without its BOS, as lm-eval reads a
  # checkpoint whose tokenizer adds none (no tokenizer_config.json).
  add_bos: bool = True


@dataclasses.dataclass(frozen=True)
class EvalModel:
  """What evaluation needs of a model: generation, option scoring and its prompt format."""
  generate: GenerateFn  # (prompts [B, P], mask [B, P]) -> tokens [B, T]
  score: Callable[[Sequence[Sequence[Pair]]], ScoredOptions]
  lengths: Mapping[str, int]  # the run's TASK_FEATURE_LENGTHS
  prompt_prefix: tuple[int, ...] = ()  # a decoder-only model's BOS
  inputs_eos: bool = True  # see `truncation`
  batch_size: int | None = None  # generation's rows per call (None: EvalConfig.batch_size)
  # Conversations are trained as one causal sequence, and evaluated so: by this model
  # when it reads prompts causally, else by `conversations` (the same parameters read
  # causally; None for an encoder-decoder, see `families.conversation_reader`).
  causal: bool = False
  conversations: "EvalModel | None" = None
  # A decoder-only model's position limit (Hugging Face's max_position_embeddings), if
  # known: an option row longer than it loses its prompt's front, as lm-eval cuts.
  max_length: int | None = None


def make_eval_model(network: ModelFamily, params, lengths: Mapping[str, int], eos_id: int,
                    batch_size: int, placement: RowPlacement = RowPlacement(),
                    max_length: int | None = None, add_bos: bool = True) -> EvalModel:
  """A model family's parameters as evaluation uses them: greedy generation, option
  scoring and the prompt format it was trained with.

  `params` should already be on the devices (placed once, as training shards them);
  `placement` spreads each batch's rows over the devices and hosts.
  """
  batch_size = placement.batch_size(batch_size)
  if max_length is not None and max_length <= lengths["targets"]:
    raise UserError(f"the model reads {max_length} positions, which holds no prompt before a "
                    f"{lengths['targets']}-token option: lower TASK_FEATURE_LENGTHS['targets'].")

  # Option rows are fitted to a decoder's position limit (`_option_pairs`), so no scoring
  # row needs more: a long few-shot input length then costs nothing in scoring.
  score_lengths = dict(lengths)
  if max_length is not None and not network.encoder_decoder:
    score_lengths["inputs"] = min(lengths["inputs"], max_length - lengths["targets"])

  def model_for(network: ModelFamily, conversations: EvalModel | None = None) -> EvalModel:
    return EvalModel(
        generate=decoding.make_generate(network, params, lengths["targets"], eos_id,
                                        placement=placement),
        score=scoring.make_option_scorer(network, params, score_lengths, batch_size=batch_size,
                                         bos_id=network.bos_id if add_bos else None,
                                         placement=placement),
        lengths=lengths, prompt_prefix=tuple(network.prompt_prefix()) if add_bos else (),
        inputs_eos=network.inputs_eos, batch_size=batch_size,
        causal=network.causal,
        conversations=conversations,
        max_length=None if network.encoder_decoder else max_length)

  if network.encoder_decoder or network.causal:  # reads conversations as it reads prompts
    return model_for(network)
  return model_for(network, conversations=model_for(families.conversation_reader(network)))


def scoring_conventions(network: ModelFamily, task_names: Sequence[str], config: EvalConfig,
                        max_length: int | None = None) -> dict:
  """How the numbers of an evaluation were produced, for its report: the BOS rule, each
  task's conventions ("style": "lm_eval" or "flan", `flan_task.STYLES`), the option
  scoring of each task with options, normalisation and the row length limit.

  lm-eval's Hugging Face backend adds a BOS only where the tokenizer's config says so
  (none for a checkpoint without tokenizer_config.json); this evaluator always starts a
  decoder-only row with one, so the report says which.
  """
  prefix = network.prompt_prefix()
  if network.encoder_decoder:
    bos = "none (encoder-decoder: the encoder reads the prompt alone)"
  elif not config.add_bos:
    bos = "none (EvalConfig.add_bos=False)"
  else:
    bos = f"added (id {prefix[0]})" if prefix else "none"
  scorings: dict[str, list[str]] = {}
  styles: dict[str, list[str]] = {}
  for name in task_names:
    scorings.setdefault(flan_task.option_scoring(name), []).append(name)
    styles.setdefault(flan_task.evaluation_style(name), []).append(name)
  return {"bos": bos, "style": styles, "option_scoring": scorings,
          "length_normalize": config.length_normalize, "max_length": max_length}


def eval_split(task: seqio.Task, split: str) -> str | None:
  """`split`, or "test" for evaluation-only tasks (MMLU, BBH, GSM8K) that have no other."""
  if split in task.splits:
    return split
  return "test" if split == "validation" and "test" in task.splits else None


def left_pad_prompts(token_lists: Sequence[Sequence[int]], length: int,
                     prefix: Sequence[int] = (0,)):
  """prefix + inputs per row, left-padded to `length`: (prompts, mask, number cut).

  The prefix is the decoder-only model's BOS, nothing for T5. Inputs too long for the
  buffer lose their front by `truncation`'s rule; the prefix always stays.
  """
  prompts = np.zeros((len(token_lists), length), np.int32)
  mask = np.zeros((len(token_lists), length), np.int32)
  truncated = 0
  for row, tokens in enumerate(token_lists):
    tokens, cut = truncation.fit_inputs(tokens, length - len(prefix), eos_id=-1)
    tokens = [*prefix, *tokens]
    truncated += int(cut)
    prompts[row, length - len(tokens):] = tokens
    mask[row, length - len(tokens):] = 1
  return prompts, mask, truncated


def decode_until_eos(vocabulary: seqio.Vocabulary, ids: np.ndarray) -> str:
  ids = ids.tolist()
  if vocabulary.eos_id in ids:
    ids = ids[:ids.index(vocabulary.eos_id)]
  return vocabulary.decode(ids)


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _options(example) -> list[str]:
  joined = _text(example.get("options", b""))
  return joined.split(REFERENCE_SEPARATOR) if joined else []


def read_examples(task: seqio.Task, lengths: Mapping[str, int], config: EvalConfig) -> list[dict]:
  """The task's evaluation examples, tokenized untrimmed, the same for the same seed."""
  examples = task_reader.task_examples(task, eval_split(task, config.split),
                                       sequence_length=lengths, seed=config.seed, shuffle=False)
  return list(itertools.islice(examples, config.max_examples_per_task or None))  # 0: all


def _generate_predictions(examples, prompts, model: EvalModel, config: EvalConfig,
                          vocabulary, bar: tqdm.tqdm | None = None) -> list[str]:
  buffer = model.lengths["inputs"] + len(model.prompt_prefix)
  batch_size = model.batch_size or config.batch_size
  texts = []
  for start in range(0, len(examples), batch_size):
    chunk = prompts[start:start + batch_size]
    tokens, mask, _ = left_pad_prompts(chunk, buffer, model.prompt_prefix)
    # Full-size batches only (repeating the last row), so generate compiles once.
    fill = ((0, batch_size - len(chunk)), (0, 0))
    generated = model.generate(np.pad(tokens, fill, mode="edge"), np.pad(mask, fill, mode="edge"))
    texts += [decode_until_eos(vocabulary, ids) for ids in generated[:len(chunk)]]
    if bar is not None:
      bar.update(len(chunk))
  return texts


def _fit_row(prompt, target, model: EvalModel):
  """(the prompt's last tokens that fit before the whole `target` in the model's
  positions, whether any were cut); the prompt as it is for a model without a limit."""
  if model.max_length is None:
    return prompt, False
  # Without a BOS the prompt's first token starts the row and takes no position of
  # its own, as in lm-eval's window of max_length + 1 tokens.
  limit = model.max_length + (0 if model.prompt_prefix else 1)
  return truncation.fit_row(prompt, target, limit)


def _option_pairs(example, prompt, model: EvalModel, vocabulary,
                  counts: truncation.TruncationCounts, style: str = "target") -> list[Pair]:
  """(prompt, option) token pairs, one per option.

  `style` (`flan_task.option_scoring`): "target" scores the option as the training
  target it would be, with EOS (FLAN's, t5x's rank classification); "continuation"
  its tokens alone (lm-eval's loglikelihood). Options longer than the target length
  lose their end (a target keeps its EOS); rows longer than the model's maximum
  length lose the prompt's front. Both are counted.
  """
  pairs = []
  length = model.lengths["targets"]
  for option in _options(example):
    tokens = list(vocabulary.encode(option))
    if style == "target":
      option_tokens, cut = truncation.fit_targets([*tokens, vocabulary.eos_id], length)
    else:
      option_tokens, cut = np.asarray(tokens[:length], np.int32), len(tokens) > length
    option_prompt, row_cut = _fit_row(prompt, option_tokens, model)
    counts.options += 1
    counts.options_cut += int(cut)
    counts.rows_cut += int(row_cut)
    pairs.append((option_prompt, option_tokens))
  return pairs


def majority_baseline(targets: Sequence, options: Sequence[Sequence[str]]) -> float:
  """Accuracy (%) of always picking the same option: what "no skill" scores.

  The options' position is the class: for fixed labels (yes/no) that is the most
  frequent label; for options that vary per record (the two numbers compared) it is
  the better of "always the first" and "always the second", about 50%, where the
  most frequent answer string would be a meaningless few percent.
  """
  if not targets:
    return 0.0
  positions = []
  for target, choices in zip(targets, options):
    answers = target if isinstance(target, (list, tuple)) else [target]
    positions.append(next((i for i, o in enumerate(choices) if o.strip() in answers), None))
  hits = collections.Counter(p for p in positions if p is not None)
  return 100.0 * max(hits.values(), default=0) / len(targets)


@dataclasses.dataclass
class _TaskRun:
  """One task's evaluation in progress: its examples, fitted prompts, and cuts."""
  task: seqio.Task
  examples: list[dict]
  prompts: list
  counts: truncation.TruncationCounts
  ranked: bool
  texts: list[str] | None = None  # the chosen option or the generation, per example
  scores: list[TargetScore] | None = None  # the reference's likelihood, for score metrics
  option_scores: list[list[float]] | None = None  # per example, each option's log-likelihood

  @property
  def vocabulary(self) -> seqio.Vocabulary:
    return self.task.output_features["targets"].vocabulary


def _start(task: seqio.Task, model: EvalModel, config: EvalConfig) -> _TaskRun:
  examples = read_examples(task, model.lengths, config)
  vocabulary = task.output_features["targets"].vocabulary
  counts = truncation.TruncationCounts()
  prompts = []
  for example in examples:
    prompt, cut = truncation.fit_inputs(example["inputs"], model.lengths["inputs"],
                                        eos_id=vocabulary.eos_id, inputs_eos=model.inputs_eos)
    # A conversation's prompt loses whole early exchanges first (its source fits it).
    counts.add(cut or example.get("dropped_exchanges", 0) > 0, False)
    prompts.append(prompt)
  ranked = bool(config.rank_classification and examples and all(_options(ex) for ex in examples))
  return _TaskRun(task, examples, prompts, counts, ranked)


def _rank_all(runs: Sequence[_TaskRun], model: EvalModel, config: EvalConfig,
              bar: tqdm.tqdm | None = None) -> None:
  """Picks every ranked task's options across tasks: small tasks share batches instead
  of each padding a batch of its own. Scored `config.batch_size` examples at a time, so
  the progress bar moves (each pair's score does not depend on its neighbours)."""
  items = [(run, example, _option_pairs(example, prompt, model, run.vocabulary, run.counts,
                                        flan_task.option_scoring(run.task.name)))
           for run in runs for example, prompt in zip(run.examples, run.prompts)]
  if not items:
    return
  chosen, option_scores = [], []
  for start in range(0, len(items), config.batch_size):
    chunk = items[start:start + config.batch_size]
    scored = model.score([pairs for _, _, pairs in chunk])
    chosen += scored.choices(config.length_normalize)
    option_scores += [[float(v) for v in values] for values in scored.log_likelihoods]
    if bar is not None:
      bar.update(len(chunk))
  for run in runs:
    run.texts, run.option_scores = [], []
  for (run, example, _), choice, values in zip(items, chosen, option_scores):
    run.texts.append(_options(example)[choice])
    run.option_scores.append(values)


def _score_targets(runs: Sequence[_TaskRun], model: EvalModel) -> None:
  """Each example's reference target scored given its prompt, for tasks with score
  metrics (seqio's `(targets, scores)` functions); every such task in one scoring call.
  The target is laid out as training lays it out: its tokens, then EOS if they lack it
  (a conversation's answer carries its own end of turn); cut targets are counted."""
  items = []
  for run in runs:
    run.scores = []
    eos = run.vocabulary.eos_id
    # A conversation's answer is scored as trained: with its own end of turn, which
    # is EOS only where the template ends turns with it.
    add_eos = not chat_examples.is_conversation_task(run.task)
    for example, prompt in zip(run.examples, run.prompts):
      tokens = [int(t) for t in example["targets"]]
      if add_eos and (not tokens or tokens[-1] != eos):
        tokens.append(eos)
      # A longer target is scored on its first tokens: an EOS forced in after them would
      # be scored where the reference goes on.
      target = np.asarray(tokens[:model.lengths["targets"]], np.int32)
      run.counts.targets_cut += int(len(tokens) > len(target))
      prompt, row_cut = _fit_row(prompt, target, model)
      run.counts.rows_cut += int(row_cut)
      items.append((run, [(prompt, target)]))
  if not items:
    return
  scored = model.score([pairs for _, pairs in items])
  for (run, _), [log_likelihood], [tokens] in zip(items, scored.log_likelihoods,
                                                  scored.token_counts):
    run.scores.append(TargetScore(float(log_likelihood), int(tokens)))


def _predictions_and_targets(run: _TaskRun) -> tuple[list, list]:
  postprocess = run.task.postprocess_fn or (lambda text, **_: text)
  predictions = [postprocess(text, example=ex, is_target=False)
                 for text, ex in zip(run.texts, run.examples)]
  targets = [postprocess(_text(ex["targets_pretokenized"]), example=ex, is_target=True)
             for ex in run.examples]
  return predictions, targets


def _samples(run: _TaskRun) -> list[dict]:
  """One record per example, as lm-eval's --log_samples: the prompt, the model's raw
  output (the chosen option or the generation), what the postprocessor made of it and
  of the reference, and for ranked tasks each option's summed log-likelihood."""
  predictions, targets = _predictions_and_targets(run)
  records = []
  for index, example in enumerate(run.examples):
    record = {"index": index, "inputs": _text(example.get("inputs_pretokenized", "")),
              "output": run.texts[index], "prediction": predictions[index],
              "target": targets[index]}
    if run.ranked:
      record["options"] = _options(example)
      record["option_log_likelihoods"] = run.option_scores[index]
    records.append(record)
  return records


def _metrics(run: _TaskRun) -> dict[str, float]:
  predictions, targets = _predictions_and_targets(run)
  metrics = {}
  for metric_fn in run.task.predict_metric_fns:
    metrics.update(metric_fn(targets, predictions))
  for metric_fn in run.task.score_metric_fns:
    metrics.update(metric_fn(targets, run.scores))
  if run.ranked:
    metrics["majority_baseline"] = majority_baseline(targets, [_options(ex) for ex in run.examples])
  if run.counts.any_cut:
    log.warning("%s: %s.", run.task.name, run.counts)
  return metrics


def evaluate_tasks(tasks: Sequence[seqio.Task], model: EvalModel, config: EvalConfig,
                   samples: dict[str, list[dict]] | None = None
                   ) -> dict[str, tuple[dict[str, float], truncation.TruncationCounts]]:
  """task name -> (its metrics on `config.split`, how many prompts and targets were cut).

  Conversation tasks are evaluated with `model.conversations`, reading as training did.
  `samples`, when given, receives each task's per-example records (`_samples`).
  """
  chats = [task for task in tasks if chat_examples.is_conversation_task(task)]
  if not chats or model.causal:
    return _evaluate_with(tasks, model, config, samples)
  if model.conversations is None:
    raise UserError(f"{chats[0].name} holds conversations, trained as one causal sequence: "
                    "evaluate them with a decoder-only model.")
  results = _evaluate_with([t for t in tasks if t not in chats], model, config, samples)
  results.update(_evaluate_with(chats, model.conversations, config, samples))
  return {task.name: results[task.name] for task in tasks}


def _evaluate_with(tasks: Sequence[seqio.Task], model: EvalModel, config: EvalConfig,
                   samples: dict[str, list[dict]] | None = None
                   ) -> dict[str, tuple[dict[str, float], truncation.TruncationCounts]]:
  runs = [_start(task, model, config) for task in tasks]
  with progress_bar(sum(len(run.examples) for run in runs), f"evaluating {len(runs)} tasks") as bar:
    _rank_all([run for run in runs if run.ranked], model, config, bar)
    _score_targets([run for run in runs if run.task.score_metric_fns], model)
    for run in runs:
      if not run.ranked:
        run.texts = _generate_predictions(run.examples, run.prompts, model, config,
                                          run.vocabulary, bar)
  if samples is not None:
    samples.update({run.task.name: _samples(run) for run in runs})
  return {run.task.name: (_metrics(run), run.counts) for run in runs}


def progress_bar(total: int, description: str) -> tqdm.tqdm:
  """A progress bar over an evaluation's examples (ranked or generated), drawn on stderr
  by process 0 only; it disappears when done, the results table stays."""
  return tqdm.tqdm(total=total, desc=description, unit="ex", dynamic_ncols=True, leave=False,
                   disable=jax.process_index() != 0)


def evaluate_task(task: seqio.Task, model: EvalModel, config: EvalConfig
                  ) -> tuple[dict[str, float], truncation.TruncationCounts]:
  """One task's metrics, and how many of its prompts and targets were cut."""
  return evaluate_tasks([task], model, config)[task.name]


def evaluate(tasks: Sequence[seqio.Task], model: EvalModel, config: EvalConfig,
             samples: dict[str, list[dict]] | None = None) -> dict[str, float]:
  """{"task/metric": value} over `tasks`; `samples` as for `evaluate_tasks`."""
  results = {}
  for name, (metrics, _) in evaluate_tasks(tasks, model, config, samples).items():
    results.update({f"{name}/{metric}": float(value) for metric, value in metrics.items()})
  return results


def group_means(results: Mapping[str, float], groups: Mapping[str, Sequence[str]]) -> dict[str, float]:
  """Mean of each metric over each group's tasks, keyed "<group>_mean/<metric>"."""
  means = {}
  for group, task_names in groups.items():
    by_metric: dict[str, list[float]] = {}
    for key, value in results.items():
      task_name, metric = key.rsplit("/", 1)
      if task_name in task_names:
        by_metric.setdefault(metric, []).append(value)
    means.update({f"{group}_mean/{m}": float(np.mean(v)) for m, v in by_metric.items()})
  return means
