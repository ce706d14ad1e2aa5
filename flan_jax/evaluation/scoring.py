"""Rank classification: score each answer option by its log-likelihood given the prompt.

FLAN evaluates a task with answer options by asking which option the model finds most
likely, not by whether free generation spells one exactly. Each (prompt, option) pair
is laid out exactly as training lays out an example (`packing`: the same BOS, the
same prompt format, the option as the target), and the option's score is the sum of
its tokens' log-probabilities, optionally divided by their number. Whether an option
ends in EOS is the caller's choice (the evaluator follows each task's
`option_scoring`: FLAN's targets with EOS, lm-eval's continuations without).
For a decoder-only model pairs are packed several to a row, as training packs
examples (each its own segment, positions restarting), which scores short prompts
~2x faster than a row per pair. Batches have one fixed shape so the scorer compiles once.

For an encoder-decoder model each prompt is encoded once, and its options' decoder
rows read that encoding. A decoder-only model reads the prompt again for each option:
its prompt and option share one sequence.

Ids beyond the tokenizer's (checkpoints pad their embedding tables) can never be an
option's token, but they take probability mass; `mask_unused_ids` removes them first,
as generation does.
"""

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.data import packing
from flan_jax.errors import UserError
from flan_jax.evaluation.placement import RowPlacement
from flan_jax.models.families import target_log_probs

Pair = tuple[np.ndarray, np.ndarray]  # (fitted prompt tokens, fitted option tokens)


@dataclasses.dataclass(frozen=True)
class ScoredOptions:
  log_likelihoods: list[list[float]]  # per example, per option: summed log-probabilities
  token_counts: list[list[int]]  # per example, per option

  def choices(self, length_normalize: bool = False) -> list[int]:
    """The index of each example's best option (the first on ties)."""
    chosen = []
    for scores, counts in zip(self.log_likelihoods, self.token_counts):
      values = [s / max(c, 1) for s, c in zip(scores, counts)] if length_normalize else scores
      chosen.append(int(np.argmax(values)))
    return chosen


@functools.lru_cache(maxsize=32)
def _compiled_row_scorer(network):
  """One compiled function per model, whatever the parameters (see `make_row_scorer`)."""

  @jax.jit
  def score(params, batch):
    logits = network.mask_unused_ids(network.logits(params, batch))
    return target_log_probs(logits, batch["decoder_target_tokens"],
                            batch["decoder_loss_weights"])

  return score


def make_row_scorer(network, params, placement: RowPlacement = RowPlacement()):
  """batch of training-format rows -> each target token's log-probability [B, L] (0 elsewhere)."""
  score = _compiled_row_scorer(network)
  return lambda batch: placement.get(score(params, {k: placement.put(v) for k, v in batch.items()}))


@functools.lru_cache(maxsize=32)
def _compiled_greedy_row_scorer(network):

  @jax.jit
  def score(params, batch):
    logits = network.mask_unused_ids(network.logits(params, batch))
    targets = batch["decoder_target_tokens"]
    log_probs = target_log_probs(logits, targets, batch["decoder_loss_weights"])
    return log_probs, jnp.argmax(logits, axis=-1) == targets

  return score


def make_greedy_row_scorer(network, params, placement: RowPlacement = RowPlacement()):
  """batch of training-format rows -> (each target token's log-probability [B, L], 0
  elsewhere; whether it is the model's most likely token there [B, L]): lm-eval's
  `loglikelihood` answers both, the second as its `is_greedy`."""
  score = _compiled_greedy_row_scorer(network)

  def run(batch):
    log_probs, greedy = score(params, {k: placement.put(v) for k, v in batch.items()})
    return placement.get(log_probs), placement.get(greedy)

  return run


def _packed_groups(pairs, length: int):
  """Consecutive runs of pairs that share one row of `length` tokens (prompt + option each)."""
  group, used = [], 0
  for index, (_, _, prompt, option) in enumerate(pairs):
    size = len(prompt) + len(option)
    if group and used + size > length:
      yield group
      group, used = [], 0
    group.append(index)
    used += size
  if group:
    yield group


def _score_decoder_only(scorer, pairs, lengths, batch_size, bos_id, scores):
  """Pairs packed several to a row, as training packs examples; sums per segment.

  `bos_id` None: no BOS, as lm-eval reads a checkpoint whose tokenizer adds none; each
  prompt starts from its own first token.
  """
  length = lengths["inputs"] + lengths["targets"]
  if bos_id is None and any(len(prompt) == 0 for _, _, prompt, _ in pairs):
    raise UserError("an empty prompt gives an option nothing to follow without a BOS: "
                    "score with the model's BOS (EvalConfig.add_bos=True).")
  groups = list(_packed_groups(pairs, length))
  for start in range(0, len(groups), batch_size):
    chunk = groups[start:start + batch_size]
    if bos_id is None:
      rows = [packing.prefix_lm_row([(pairs[k][2][1:], pairs[k][3]) for k in group], length,
                                    starts=[pairs[k][2][0] for k in group]) for group in chunk]
    else:
      rows = [packing.prefix_lm_row([pairs[k][2:] for k in group], length, bos_id=bos_id)
              for group in chunk]
    batch = stack_padded(rows, batch_size)
    token_scores = scorer(batch)
    for row, group in enumerate(chunk):
      per_segment = np.bincount(batch["decoder_segment_ids"][row], weights=token_scores[row],
                                minlength=len(group) + 1)
      scores[group] = per_segment[1:len(group) + 1]


@functools.lru_cache(maxsize=32)
def _compiled_encoder_decoder_scorer(network):

  @jax.jit
  def score(params, prompts, prompt_segments, batch):
    encoded = network.encode(params, prompts, prompt_segments)
    index = batch["prompt_index"]
    logits, _ = network.decode(params, encoded[index], prompt_segments[index],
                               batch["decoder_input_tokens"], batch["decoder_segment_ids"],
                               batch["decoder_positions"])
    return jnp.sum(target_log_probs(network.mask_unused_ids(logits),
                                    batch["decoder_target_tokens"],
                                    batch["decoder_loss_weights"]), axis=-1)

  return score


def make_encoder_decoder_scorer(network, params, placement: RowPlacement = RowPlacement()):
  """(prompt rows [P, Le], option rows [B, Ld] with `prompt_index` [B]) -> [B].

  Each distinct prompt is encoded once; its options' rows gather that encoding.
  """
  score = _compiled_encoder_decoder_scorer(network)

  def run(prompts, segments, batch):
    put = placement.put
    return placement.get(score(params, put(prompts), put(segments),
                               {k: put(v) for k, v in batch.items()}))

  return run


def make_option_scorer(network, params, lengths, *, batch_size: int = 64,
                       bos_id: int | None = 0,
                       placement: RowPlacement = RowPlacement()
                       ) -> Callable[[Sequence[Sequence[Pair]]], ScoredOptions]:
  """examples -> ScoredOptions: the log-likelihood of every option of every example.

  `examples[i]` lists (prompt, option) token pairs, already fitted to `lengths` by
  `truncation`'s rule, one pair per option; an example's pairs share one prompt. A
  decoder-only row starts from `bos_id`, or with None from its prompt's first token. The
  forward pass is compiled once, for every call; `placement` says where its rows run
  (`batch_size` is rounded up to a multiple of its devices).
  """
  batch_size = placement.batch_size(batch_size)
  # An encoder-decoder family encodes each prompt once for all its options; a
  # decoder-only one reads prompt and option in one row, several pairs to a row.
  if network.encoder_decoder:
    scorer = make_encoder_decoder_scorer(network, params, placement)
    fill = lambda pairs, scores: _score_encoder_decoder(scorer, pairs, lengths, batch_size,
                                                        scores)
  else:
    scorer = make_row_scorer(network, params, placement)
    fill = lambda pairs, scores: _score_decoder_only(scorer, pairs, lengths, batch_size, bos_id,
                                                     scores)

  def score(examples: Sequence[Sequence[Pair]]) -> ScoredOptions:
    pairs = [(i, j, prompt, option) for i, ex in enumerate(examples)
             for j, (prompt, option) in enumerate(ex)]
    scores = np.zeros(len(pairs), np.float64)
    fill(pairs, scores)
    log_likelihoods = [[0.0] * len(ex) for ex in examples]
    counts = [[0] * len(ex) for ex in examples]
    for (i, j, _, option), value in zip(pairs, scores):
      log_likelihoods[i][j], counts[i][j] = float(value), len(option)
    return ScoredOptions(log_likelihoods, counts)

  return score


def _whole_example_batches(pairs, batch_size: int):
  """Index ranges into `pairs` (grouped by example) that keep an example's options together.

  An example with more options than a batch holds is split; its prompt is then encoded
  once per batch it spans.
  """
  start = end = 0
  while end < len(pairs):
    example_end = end
    while example_end < len(pairs) and pairs[example_end][0] == pairs[end][0]:
      example_end += 1
    if example_end - start > batch_size and end > start:
      yield start, end
      start = end
    while example_end - start > batch_size:
      yield start, start + batch_size
      start += batch_size
    end = example_end
  if end > start:
    yield start, end


def _score_encoder_decoder(scorer, pairs, lengths, batch_size, scores):
  for start, end in _whole_example_batches(pairs, batch_size):
    chunk = pairs[start:end]
    slot: dict[int, int] = {}
    prompts = np.zeros((batch_size, lengths["inputs"]), np.int32)
    for example, _, prompt, _ in chunk:
      if example not in slot:
        slot[example] = len(slot)
        prompts[slot[example], :len(prompt)] = prompt
    rows = [packing.row_features(p, o, lengths, encoder_decoder=True) for _, _, p, o in chunk]
    batch = stack_padded(rows, batch_size, keys=(
        "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
        "decoder_segment_ids", "decoder_positions"))
    batch["prompt_index"] = np.zeros(batch_size, np.int32)
    batch["prompt_index"][:len(chunk)] = [slot[example] for example, _, _, _ in chunk]
    segments = (prompts != 0).astype(np.int32)
    scores[start:end] = scorer(prompts, segments, batch)[:len(chunk)]


def stack_padded(rows: list[dict], batch_size: int, keys: Sequence[str] | None = None
                  ) -> dict[str, np.ndarray]:
  """Rows stacked into a batch of `batch_size` (zero rows, weight 0, after the real ones)."""
  keys = keys or tuple(rows[0])
  batch = {}
  for key in keys:
    stacked = np.zeros((batch_size, *rows[0][key].shape), rows[0][key].dtype)
    stacked[:len(rows)] = np.stack([row[key] for row in rows])
    batch[key] = stacked
  return batch
