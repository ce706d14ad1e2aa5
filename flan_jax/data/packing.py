"""Best-fit packing of prefix-LM or encoder-decoder examples into fixed-length rows.

seqio's packer fills rows in arrival order and closes a row as soon as the next
example does not fit, which leaves ~20% padding on mixtures of very different
lengths (T0 at length 1024). Here every example goes into the open row with the
least room that still fits it (best fit), and a row is emitted once it is nearly
full or when too many rows are open (the fullest goes first). With a few dozen open
rows this keeps padding to a few percent while staying streaming and deterministic:
the same input stream gives the same rows, so resuming by skipping rows is exact.

Each row has the features seqio's PrefixLMFeatureConverter makes (decoder input
and target tokens, loss weights on targets only, segment ids from 1, positions
restarting per example, causal-attention flags over each prompt plus one), so the
model sees packed rows exactly as it would see seqio's. With `encoder_decoder=True`
a row is two bins (encoder inputs, decoder targets) that must both have room, and
its features are those of seqio's EncDecFeatureConverter. Inputs or targets longer
than their feature length are fitted by `truncation`'s rule (a prompt keeps its end,
where the question is; a target its start and EOS), the rule evaluation uses too,
and every cut is counted and logged, never silent. `row_features` lays out one
example alone, as evaluation's scoring rows.

`bos_id` is the token each decoder row starts from: 0 as in seqio, or a pretrained
decoder-only model's own BOS (Llama's is 1; its 0 is <unk>).
"""

import dataclasses
from typing import Iterable, Iterator, Mapping, Sequence

from absl import logging
import numpy as np

from flan_jax.data import truncation
from flan_jax.errors import UserError

FEATURES = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")
ENCODER_DECODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                            "decoder_target_tokens", "decoder_input_tokens",
                            "decoder_loss_weights", "decoder_segment_ids", "decoder_positions")


@dataclasses.dataclass
class PackingStats:
  length: int  # all bins of a row together
  examples: int = 0
  truncated_inputs: int = 0
  truncated_targets: int = 0
  # Conversations (`chat_examples`): exchanges left out to fit, and conversations dropped
  # because not even their last exchange fit (nothing to train).
  dropped_exchanges: int = 0
  dropped_examples: int = 0
  rows: int = 0
  tokens: int = 0  # non-padding tokens in emitted rows

  @property
  def efficiency(self) -> float:
    return self.tokens / max(self.rows * self.length, 1)


@dataclasses.dataclass(eq=False)  # rows are compared by identity
class _Row:
  pieces: list  # (inputs, targets, target weights or None for all ones) token arrays
  used: list  # tokens used in each bin


def _fill_prefix_lm(row: _Row, length: int, bos_id: int,
                    starts: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """`starts`: each segment's first input token instead of `bos_id` (see `prefix_lm_row`)."""
  out = {k: np.zeros(length, np.int32) for k in FEATURES}
  start = 0
  for segment, (inputs, targets, weights) in enumerate(row.pieces, start=1):
    tokens = np.concatenate([inputs, targets])
    end = start + len(tokens)
    out["decoder_target_tokens"][start:end] = tokens
    out["decoder_input_tokens"][start] = bos_id if starts is None else starts[segment - 1]
    out["decoder_input_tokens"][start + 1:end] = tokens[:-1]
    out["decoder_loss_weights"][start + len(inputs):end] = 1 if weights is None else weights
    out["decoder_segment_ids"][start:end] = segment
    out["decoder_positions"][start:end] = np.arange(len(tokens))
    # The prompt and the position that predicts the first target token see each other.
    out["decoder_causal_attention"][start:min(start + len(inputs) + 1, end)] = 1
    start = end
  return out


def _fill_encoder_decoder(row: _Row, lengths: tuple[int, int], bos_id: int) -> dict[str, np.ndarray]:
  encoder_length, decoder_length = lengths
  out = {k: np.zeros(encoder_length if k.startswith("encoder") else decoder_length, np.int32)
         for k in ENCODER_DECODER_FEATURES}
  enc, dec = 0, 0
  for segment, (inputs, targets, _) in enumerate(row.pieces, start=1):
    out["encoder_input_tokens"][enc:enc + len(inputs)] = inputs
    out["encoder_segment_ids"][enc:enc + len(inputs)] = segment
    out["encoder_positions"][enc:enc + len(inputs)] = np.arange(len(inputs))
    end = dec + len(targets)
    out["decoder_target_tokens"][dec:end] = targets
    out["decoder_input_tokens"][dec] = bos_id
    out["decoder_input_tokens"][dec + 1:end] = targets[:-1]
    out["decoder_loss_weights"][dec:end] = 1
    out["decoder_segment_ids"][dec:end] = segment
    out["decoder_positions"][dec:end] = np.arange(len(targets))
    enc, dec = enc + len(inputs), end
  return out


class BestFitPacker:
  """Packs a stream of {"inputs", "targets"} token arrays into rows of `length`."""

  def __init__(self, lengths: Mapping[str, int], max_open_rows: int = 64, name: str = "",
               *, encoder_decoder: bool = False, bos_id: int = 0, eos_id: int = 1,
               inputs_eos: bool = True, max_examples_per_row: int | None = None):
    self.input_length, self.target_length = lengths["inputs"], lengths["targets"]
    self.encoder_decoder = encoder_decoder
    # One bin (the prefix-LM row) or two (encoder, decoder).
    self.capacity = ((self.input_length, self.target_length) if encoder_decoder
                     else (self.input_length + self.target_length,))
    self.length = sum(self.capacity)
    self.max_open_rows = max_open_rows
    self.name = name
    self.bos_id, self.eos_id, self.inputs_eos = bos_id, eos_id, inputs_eos
    self.max_examples_per_row = max_examples_per_row  # 1: unpacked rows
    self.stats = PackingStats(self.length)
    self._open: list[_Row] = []

  def _trim(self, example) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if "targets_weights" in example:  # a conversation or plain text, fitted by its source
      return self._weighted(example)
    inputs, inputs_cut = truncation.fit_inputs(example["inputs"], self.input_length,
                                               eos_id=self.eos_id, inputs_eos=self.inputs_eos)
    targets, targets_cut = truncation.fit_targets(example["targets"], self.target_length)
    self.stats.truncated_inputs += int(inputs_cut)
    self.stats.truncated_targets += int(targets_cut)
    if inputs_cut or targets_cut:
      self._report_truncation()
    return inputs, targets, None

  def _weighted(self, example) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if self.encoder_decoder:
      raise UserError(f"{self.name or 'the mixture'}: conversations and plain text train "
                      "decoder-only models; an encoder-decoder model needs (inputs, targets) "
                      "tasks.")
    targets = np.asarray(example["targets"], np.int32)
    if len(targets) > self.length:
      raise ValueError(f"an example of {len(targets)} tokens reached the packer, whose rows "
                       f"hold {self.length}: its source should have fitted it.")
    dropped = int(example.get("dropped_exchanges", 0))
    if dropped:
      self.stats.dropped_exchanges += dropped
      self._report_dropped()
    return (np.zeros(0, np.int32), targets,
            np.asarray(example["targets_weights"], np.int32))

  def drop(self) -> None:
    """Counts an example with nothing left to train, which the stream left out."""
    self.stats.dropped_examples += 1
    self._report_dropped()

  def _report_dropped(self) -> None:
    count = self.stats.dropped_exchanges + self.stats.dropped_examples
    if count & (count - 1) == 0:  # 1, 2, 4, 8, ...
      logging.warning(
          "packing%s: conversations longer than the row (%d tokens) so far: %d exchanges left "
          "out from the front, %d conversations dropped whole (their last exchange alone did "
          "not fit; nothing to train).", f" {self.name}" if self.name else "", self.length,
          self.stats.dropped_exchanges, self.stats.dropped_examples)

  def _report_truncation(self) -> None:
    cut = self.stats.truncated_inputs + self.stats.truncated_targets
    if cut & (cut - 1) == 0:  # 1, 2, 4, 8, ...: a running count without a flood
      logging.warning(
          "packing%s: %d of %d examples so far were longer than the feature lengths and "
          "were cut (%d inputs > %d tokens lost their start, %d targets > %d tokens their end).",
          f" {self.name}" if self.name else "", cut, self.stats.examples,
          self.stats.truncated_inputs, self.input_length, self.stats.truncated_targets,
          self.target_length)

  def _emit(self, row: _Row) -> dict[str, np.ndarray]:
    self.stats.rows += 1
    self.stats.tokens += sum(row.used)
    if self.encoder_decoder:
      return _fill_encoder_decoder(row, self.capacity, self.bos_id)
    return _fill_prefix_lm(row, self.length, self.bos_id)

  def _room(self, row: _Row) -> list[int]:
    return [c - u for c, u in zip(self.capacity, row.used)]

  def add(self, example) -> Iterator[dict[str, np.ndarray]]:
    """Places one example; yields any rows that are finished."""
    self.stats.examples += 1
    inputs, targets, weights = self._trim(example)
    size = ((len(inputs), len(targets)) if self.encoder_decoder
            else (len(inputs) + len(targets),))
    fitting = [r for r in self._open if all(room >= s for room, s in zip(self._room(r), size))]
    if fitting:
      row = min(fitting, key=lambda r: sum(self._room(r)))
    else:
      row = _Row(pieces=[], used=[0] * len(self.capacity))
      self._open.append(row)
    row.pieces.append((inputs, targets, weights))
    row.used = [u + s for u, s in zip(row.used, size)]
    full = self.max_examples_per_row and len(row.pieces) >= self.max_examples_per_row
    if full or min(self._room(row)) < 4:  # nothing useful fits any more
      self._open.remove(row)
      yield self._emit(row)
    if len(self._open) > self.max_open_rows:
      fullest = max(self._open, key=lambda r: sum(r.used))
      self._open.remove(fullest)
      yield self._emit(fullest)

  def flush(self) -> Iterator[dict[str, np.ndarray]]:
    for row in sorted(self._open, key=lambda r: -sum(r.used)):
      yield self._emit(row)
    self._open = []

  def state(self) -> dict:
    """The open rows and counts, JSON-able: `restore` continues exactly from here."""
    return {"open": [{"pieces": [[i.tolist(), t.tolist()] + ([] if w is None else [w.tolist()])
                                 for i, t, w in row.pieces],
                      "used": list(row.used)} for row in self._open],
            "stats": dataclasses.asdict(self.stats)}

  def restore(self, state: dict) -> None:
    self._open = [_Row(pieces=[(np.asarray(i, np.int32), np.asarray(t, np.int32),
                                np.asarray(w[0], np.int32) if w else None)
                               for i, t, *w in row["pieces"]], used=list(row["used"]))
                  for row in state["open"]]
    self.stats = PackingStats(**state["stats"])


def row_features(inputs, targets, lengths: Mapping[str, int], *, encoder_decoder: bool = False,
                 bos_id: int = 0) -> dict[str, np.ndarray]:
  """One example alone in a row, already fitted to `lengths`: the features training sees."""
  packer = BestFitPacker(lengths, encoder_decoder=encoder_decoder, bos_id=bos_id)
  row = _Row(pieces=[(np.asarray(inputs, np.int32), np.asarray(targets, np.int32), None)],
             used=[len(inputs), len(targets)] if encoder_decoder else [len(inputs) + len(targets)])
  return packer._emit(row)


def prefix_lm_row(examples: Sequence[tuple], length: int, *, bos_id: int = 0,
                  starts: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Several fitted (inputs, targets) examples in one decoder row, segments 1, 2, ... in order.

  What the packer emits for them, for callers that choose the grouping themselves
  (evaluation packs option-scoring rows in order). `starts` gives each example's first
  input token in place of `bos_id`: a prompt read without BOS starts from its own
  first token, which is then not predicted.
  """
  pieces = [(np.asarray(i, np.int32), np.asarray(t, np.int32), None) for i, t in examples]
  used = sum(len(i) + len(t) for i, t, _ in pieces)
  if used > length:
    raise ValueError(f"{used} tokens do not fit in a row of {length}.")
  return _fill_prefix_lm(_Row(pieces=pieces, used=[used]), length, bos_id, starts)


def pack(examples: Iterable, lengths: Mapping[str, int], max_open_rows: int = 64,
         name: str = "", *, encoder_decoder: bool = False, bos_id: int = 0, eos_id: int = 1,
         inputs_eos: bool = True, max_examples_per_row: int | None = None
         ) -> Iterator[dict[str, np.ndarray]]:
  """Rows from a (possibly endless) stream of examples; flushes when the stream ends."""
  packer = BestFitPacker(lengths, max_open_rows, name, encoder_decoder=encoder_decoder,
                         bos_id=bos_id, eos_id=eos_id, inputs_eos=inputs_eos,
                         max_examples_per_row=max_examples_per_row)
  for example in examples:
    yield from packer.add(example)
  yield from packer.flush()
