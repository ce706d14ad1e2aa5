"""Preference pairs as training rows: both answers of a pair in one row, prompt whole.

Tokens. Each side of a pair is rendered and encoded exactly as a conversation is
(`chat_examples.tokenize`, the run's template, the final answer trained): the prompt
is every token before the answer, which is what `infer --chat` feeds the model, and
the answer is the trained tokens, its end of turn included. Both sides must encode
the prompt to the same ids; a tokenizer that merged the prompt's last characters
with an answer's first would make the two log-probabilities incomparable, so such a
pair is an error, never a silent mismatch.

Rows. A pair is two segments, prompt + chosen then prompt + rejected, each with its
own segment id and positions restarting at 0, so neither answer sees the other and
each reads as it would alone (the packed layout of SFT rows, `packing.prefix_lm_row`).
Packed, pairs are laid into a row in order while they fit (at most `pairs_per_row`);
padded (`pairs_per_row=1`), one pair per row. The prompt is never cut: a pair whose
two segments do not fit a row is dropped and counted. Rows carry, besides the
decoder features, `preference_pair_ids` (the pair's slot in its row, from 1, on its
answer tokens), `preference_chosen` (1 on the chosen side's segment) and
`preference_pair_slots` (which of the row's `pairs_per_row` slots hold a pair), and
with reference log-probabilities known per pair, `reference_log_probs` (each side's
sum on its first answer token).

The stream is deterministic: the pairs in a seeded order per epoch, rows in order,
so a resumed run that skips the batches it trained reads what a straight run reads.
"""

import dataclasses
from typing import Iterator, Mapping, Sequence

from absl import logging
import numpy as np
import seqio

from flan_jax.data import chat_examples, chat_templates, packing
from flan_jax.data.preference_pairs import PreferencePair
from flan_jax.errors import UserError

Row = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TokenizedPair:
  prompt: np.ndarray
  chosen: np.ndarray  # the answer's trained tokens, end of turn included
  rejected: np.ndarray
  index: int  # the pair's place in its split, to look up reference log-probs

  @property
  def length(self) -> int:
    """Tokens the pair takes in a row: the prompt twice, both answers."""
    return 2 * len(self.prompt) + len(self.chosen) + len(self.rejected)


def _answer_ids(template, vocabulary, turns, bos_id) -> tuple[np.ndarray, np.ndarray]:
  ids, weights = chat_examples.tokenize(template, vocabulary, turns, train_on="last",
                                        bos_id=bos_id)
  trained = np.flatnonzero(weights)
  first, last = trained[0], trained[-1]
  if len(trained) != last - first + 1:
    raise UserError("the final answer's trained tokens are not contiguous in the encoding.")
  return ids[:first], ids[first:last + 1]


def tokenize_pair(template: chat_templates.TemplateSpec, vocabulary: seqio.Vocabulary,
                  pair: PreferencePair, *, bos_id: int | None = None,
                  index: int = 0) -> TokenizedPair:
  """The pair's prompt ids and each answer's ids, as conversation training encodes them."""
  prompt, chosen = _answer_ids(template, vocabulary, pair.conversation("chosen"), bos_id)
  rejected_prompt, rejected = _answer_ids(template, vocabulary, pair.conversation("rejected"),
                                          bos_id)
  if not np.array_equal(prompt, rejected_prompt):
    raise UserError(f"chat template {template.name!r}: the prompt encodes to different ids "
                    "before the chosen and the rejected answer (the tokenizer joins its end "
                    "with an answer's start), so their log-probabilities would not be "
                    "comparable. Use a template that ends the prompt with a marker.")
  return TokenizedPair(prompt, chosen, rejected, index)


def fitting(pairs: Sequence[TokenizedPair], length: int, name: str = "") -> list[TokenizedPair]:
  """The pairs whose two segments fit a row of `length`; the others dropped and counted."""
  kept = [pair for pair in pairs if pair.length <= length]
  if len(kept) < len(pairs):
    logging.warning("%s: %d of %d preference pairs do not fit a row of %d tokens with their "
                    "prompt whole (both answers after it); dropped.", name or "pairs",
                    len(pairs) - len(kept), len(pairs), length)
  if not kept:
    raise UserError(f"{name or 'pairs'}: none of the {len(pairs)} preference pairs fits a row "
                    f"of {length} tokens (the prompt twice and both answers). Raise "
                    "TASK_FEATURE_LENGTHS, or use shorter pairs.")
  return kept


def pair_row(pairs: Sequence[TokenizedPair], length: int, pairs_per_row: int, *,
             bos_id: int = 0, reference: Mapping[int, tuple[float, float]] | None = None
             ) -> Row:
  """One row holding `pairs` (each chosen then rejected), with the preference features."""
  if len(pairs) > pairs_per_row:
    raise ValueError(f"{len(pairs)} pairs in a row of {pairs_per_row} slots.")
  segments = [(p.prompt, answer) for p in pairs for answer in (p.chosen, p.rejected)]
  row = packing.prefix_lm_row(segments, length, bos_id=bos_id)
  segment = row["decoder_segment_ids"]
  answer = row["decoder_loss_weights"] > 0
  slot = (segment + 1) // 2  # segments 2k-1 and 2k are pair k
  row["preference_pair_ids"] = np.where(answer, slot, 0).astype(np.int32)
  row["preference_chosen"] = (segment % 2 == 1).astype(np.int32)  # the chosen side's segment
  row["preference_pair_slots"] = (np.arange(pairs_per_row) < len(pairs)).astype(np.int32)
  # Which pair each slot holds (its place in the split), to attach reference log-probs.
  row["preference_pair_index"] = np.array([p.index for p in pairs] + [0] * (pairs_per_row - len(pairs)),
                                          np.int32)
  if reference is not None:
    log_probs = np.zeros(length, np.float32)
    for k, pair in enumerate(pairs):
      for side, value in enumerate(reference[pair.index]):
        log_probs[np.flatnonzero(answer & (segment == 2 * k + 1 + side))[0]] = value
    row["reference_log_probs"] = log_probs
  return row


def rows(pairs: Sequence[TokenizedPair], length: int, pairs_per_row: int, *, bos_id: int = 0,
         reference: Mapping[int, tuple[float, float]] | None = None) -> Iterator[Row]:
  """Rows of the pairs in order: each row takes pairs while they fit (next fit)."""
  current, used = [], 0
  for pair in pairs:
    if current and (used + pair.length > length or len(current) == pairs_per_row):
      yield pair_row(current, length, pairs_per_row, bos_id=bos_id, reference=reference)
      current, used = [], 0
    current.append(pair)
    used += pair.length
  if current:
    yield pair_row(current, length, pairs_per_row, bos_id=bos_id, reference=reference)


def batches(rows_: Iterator[Row], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Stacked rows, `batch_size` at a time (a last partial batch is left out)."""
  group = []
  for row in rows_:
    group.append(row)
    if len(group) == batch_size:
      yield {k: np.stack([r[k] for r in group]) for k in group[0]}
      group = []


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(count)


def train_batches(pairs: Sequence[TokenizedPair], length: int, batch_size: int, *,
                  pairs_per_row: int, seed: int, bos_id: int = 0, skip_batches: int = 0,
                  shard_index: int = 0, num_shards: int = 1,
                  reference: Mapping[int, tuple[float, float]] | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of an endless stream of batches over `pairs` (epoch after epoch,
  each in its own seeded order), from batch `skip_batches` on. Every process makes the
  same global batches and keeps its share of rows, so 2 processes train what 1 does."""
  if batch_size % num_shards:
    raise UserError(f"BATCH_SIZE={batch_size} does not split over {num_shards} processes.")

  def endless():
    epoch = 0
    while True:
      order = epoch_order(len(pairs), seed, epoch)
      yield from rows([pairs[i] for i in order], length, pairs_per_row, bos_id=bos_id,
                      reference=reference)
      epoch += 1

  local = batch_size // num_shards
  for number, batch in enumerate(batches(endless(), batch_size)):
    if number >= skip_batches:
      yield {k: v[shard_index * local:(shard_index + 1) * local] for k, v in batch.items()}


def eval_batches(pairs: Sequence[TokenizedPair], length: int, batch_size: int, *,
                 pairs_per_row: int, bos_id: int = 0,
                 reference: Mapping[int, tuple[float, float]] | None = None
                 ) -> list[dict[str, np.ndarray]]:
  """Every pair once, in order; the last batch filled with empty rows (no pair slots)."""
  all_rows = list(rows(pairs, length, pairs_per_row, bos_id=bos_id, reference=reference))
  empty = {k: np.zeros_like(v) for k, v in all_rows[0].items()}
  all_rows += [empty] * (-len(all_rows) % batch_size)
  return list(batches(iter(all_rows), batch_size))
