"""flan_jax as an lm-evaluation-harness model: lm-eval's requests answered by flan_jax's
JAX scoring and decoding, with the numbers lm-eval's Hugging Face backend (HFLM) gives.

lm-eval hands a model three kinds of request; each is answered as HFLM answers it, so
a checkpoint scores the same through either backend:

- `loglikelihood(context, continuation)`: lm-eval's `TemplateLM` splits the text (the
  context's trailing whitespace moves to the continuation; the pair is encoded whole
  and the continuation is what follows the context's tokens; an empty context becomes
  the prefix token). The row is the last max_length + 1 tokens of context +
  continuation: too long, the context loses its front, never the continuation. Its
  first token is read but not predicted; the continuation's tokens are scored. The
  answer is (sum of their log-probabilities, whether each is the model's most likely
  token there).
- `loglikelihood_rolling(text)`: the text's tokens cut into lm-eval's own rolling windows
  (`get_rolling_token_windows`), each scored as a loglikelihood request, summed.
- `generate_until(context, gen_kwargs)`: the context's last max_length - max_gen_toks
  tokens, decoded greedily (or sampled with `do_sample`, beam search with `num_beams`)
  up to max_gen_toks tokens or EOS; the text is cut before the first stop string
  (`until`, plus the EOS token's text, as HFLM adds it).

Tokens are those of the tokenizer the checkpoint is served with (`hf_tokenizer`: a
tokenizer.json as is, a SentencePiece model as transformers builds it), not seqio's
SentencePiece encoding, which splits runs of spaces differently. A BOS goes in front of
every text only with `add_bos_token`; its default, chosen by the caller, is what
transformers' tokenizer does for the checkpoint (`hf_tokenizer.adds_bos`).

Speed: scoring requests are sorted longest first, as HFLM sorts them, and packed
several to a row (each its own segment, positions restarting, as training packs
examples), rows of one length per call so the forward pass compiles once. Prompts for
generation are left-padded to a length bucket (a power of two), so a few shapes compile.
Rows are split over the devices by `placement` (training's batch sharding, see
`placement.sharded_rows`); `context` enters the mesh around every computation. Answers
come back in the order of the requests.

Encoder-decoder (T5) checkpoints are not served here yet: lm-eval's seq2seq rules
(context and continuation encoded apart, the encoder reading the context) are another
row layout.
"""

import bisect
import contextlib
import json
import logging
from typing import Callable, ContextManager, Sequence

import numpy as np
import seqio
from lm_eval import utils as lm_eval_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from lm_eval.models.utils import postprocess_generated_text
from tqdm import tqdm

from flan_jax.data import hf_tokenizer, packing, vocabularies
from flan_jax.errors import UserError, check_whole_number
from flan_jax.evaluation import decoding, scoring
from flan_jax.evaluation.decoding import DecodeConfig
from flan_jax.evaluation.evaluator import left_pad_prompts
from flan_jax.evaluation.placement import RowPlacement
from flan_jax.models.families import ModelFamily

log = logging.getLogger(__name__)

Window = tuple[list[int], list[int]]  # (tokens read, the continuation scored after them)
MIN_BUCKET = 64  # the shortest row or prompt buffer compiled


def bucket(length: int, limit: int) -> int:
  """The power of two (at least MIN_BUCKET) that holds `length`, at most `limit`."""
  size = MIN_BUCKET
  while size < length:
    size *= 2
  return min(size, limit)


def fit_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Window:
  """lm-eval's row for a request: the last max_length + 1 tokens of context and
  continuation (the first of them is read, not predicted), split back into the two."""
  if len(continuation) > max_length:
    raise UserError(f"a continuation of {len(continuation)} tokens does not fit the model's "
                    f"{max_length} positions; raise max_length or shorten the task's targets.")
  tokens = [*context, *continuation][-(max_length + 1):]
  return tokens[:len(tokens) - len(continuation)], list(continuation)


def best_fit_rows(sized: Sequence[tuple[int, int]], row_length: int) -> list[list[int]]:
  """(index, size) items, longest first, into rows of `row_length`: each goes to the row
  it fills best (the least room that holds it), else a new row. Rows keep the order
  they were opened in, so the longest come first."""
  rows: list[list[int]] = []
  room: list[tuple[int, int]] = []  # (room left, row), sorted
  for index, size in sized:
    slot = bisect.bisect_left(room, (size, -1))
    if slot < len(room):
      left, row = room.pop(slot)
    else:
      left, row = row_length, len(rows)
      rows.append([])
    rows[row].append(index)
    if left - size > 0:
      bisect.insort(room, (left - size, row))
  return rows


class FlanJaxLM(TemplateLM):
  """An lm-eval `LM` over a flan_jax model family, its parameters and its vocabulary.

  `max_length`: the positions a row may use (HFLM's max_length). `add_bos_token`: put
  the prefix token (the BOS) in front of every text. `batch_size`: rows per forward
  pass (each holds several short requests). `placement` and `context`: where rows run,
  and the mesh entered around each computation.
  """

  backend = "causal"

  def __init__(self, network: ModelFamily, params, vocabulary: seqio.Vocabulary, *,
               max_length: int, add_bos_token: bool, batch_size: int = 16,
               max_gen_toks: int = 256, seed: int = 0,
               placement: RowPlacement = RowPlacement(),
               context: Callable[[], ContextManager] = contextlib.nullcontext,
               checkpoint_name: str = ""):
    super().__init__()
    if network.encoder_decoder:
      raise UserError("The lm-eval backend serves decoder-only checkpoints; this one is an "
                      "encoder-decoder (T5), whose seq2seq row layout it does not have yet.")
    check_whole_number("max_length", max_length, 2)
    check_whole_number("batch_size", batch_size, 1)
    check_whole_number("max_gen_toks", max_gen_toks, 1)
    self.network, self.params, self.vocabulary = network, params, vocabulary
    self._served = hf_tokenizer.served_tokenizer(vocabulary)  # None: bytes
    self._max_length = max_length
    self.add_bos_token = bool(add_bos_token)
    self._batch_size = placement.batch_size(batch_size)
    self._max_gen_toks = max_gen_toks
    self.seed = seed
    self._placement, self._context = placement, context
    self._checkpoint_name = checkpoint_name
    self._score_rows = scoring.make_greedy_row_scorer(network, params, placement)
    vocabulary_bos = vocabularies.bos_id(vocabulary)
    # HFLM's prefix token is the tokenizer's BOS, else its EOS; a byte vocabulary's
    # models read the decoder's start token as their BOS, as they were trained.
    if self._served is None or vocabulary_bos is not None:
      self._prefix_token_id = network.bos_id
    else:
      self._prefix_token_id = vocabulary.eos_id
    self._bos_text = (self._served.id_to_token(self._prefix_token_id) if self._served
                      else None)
    self._unused_kwargs: set[str] = set()

  # --- what lm-eval reads of a model --------------------------------------------

  @property
  def eot_token_id(self) -> int:
    return self.vocabulary.eos_id

  @property
  def prefix_token_id(self) -> int:
    return self._prefix_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def tokenizer_name(self) -> str:
    return str(self.vocabulary).replace("/", "__")

  def get_model_info(self) -> dict:
    return {"checkpoint": self._checkpoint_name, "max_length": self._max_length,
            "add_bos_token": self.add_bos_token, "rows_per_batch": self._batch_size}

  # --- tokens --------------------------------------------------------------------

  def _encode_text(self, text: str) -> list[int]:
    if self._served is None:
      return [int(i) for i in self.vocabulary.encode(text)]
    return self._served.encode(text, add_special_tokens=False).ids

  def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                 left_truncate_len: int | None = None, **kwargs) -> list[int]:
    """`string`'s tokens, the BOS in front by `add_special_tokens`, else by
    `add_bos_token` (not when the text already starts with it, as HFLM checks)."""
    add = self.add_bos_token if add_special_tokens is None else add_special_tokens
    if add_special_tokens is None and self._bos_text and string.startswith(self._bos_text):
      add = False
    tokens = [self._prefix_token_id, *self._encode_text(string)] if add else self._encode_text(string)
    return tokens[-left_truncate_len:] if left_truncate_len else tokens

  def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
    ids = [int(t) for t in tokens]
    if self._served is None:
      return self.vocabulary.decode(ids)
    return self._served.decode(ids, skip_special_tokens=skip_special_tokens)

  # --- scoring -------------------------------------------------------------------

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs
                            ) -> list[tuple[float, bool]]:
    """((context, continuation) text or None, context tokens, continuation tokens) ->
    (log-likelihood, is_greedy) each, in the order given."""
    windows, cut = [], 0
    for _, context, continuation in requests:
      window = fit_window(context, continuation, self._max_length)
      cut += len(window[0]) < len(context)
      windows.append(window)
    if cut:
      log.warning("%d of %d requests were longer than max_length=%d tokens: their contexts "
                  "lost their front, as lm-eval cuts them.", cut, len(requests), self._max_length)
    sums, greedy = self.score_windows(windows, disable_tqdm)
    answers = [(float(s), bool(g)) for s, g in zip(sums, greedy)]
    for (strings, _, _), answer in zip(requests, answers):
      if strings is not None:
        self.cache_hook.add_partial("loglikelihood", strings, answer)
    return answers

  def score_windows(self, windows: Sequence[Window], disable_tqdm: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Each window's continuation: (summed log-probabilities, all tokens greedy).

    Longest first, packed several to a row of one length (the longest window's
    bucket; `best_fit_rows`), `batch_size` rows per forward pass.
    """
    sums = np.zeros(len(windows), np.float64)
    greedy = np.ones(len(windows), bool)
    # An empty continuation is certain: log-likelihood 0, nothing to miss.
    order = sorted((i for i, (_, cont) in enumerate(windows) if cont),
                   key=lambda i: -(len(windows[i][0]) + len(windows[i][1])))
    if not order:
      return sums, greedy
    sizes = {i: len(windows[i][0]) + len(windows[i][1]) - 1 for i in order}
    row_length = bucket(sizes[order[0]], self._max_length)
    rows = best_fit_rows([(i, sizes[i]) for i in order], row_length)
    with self._context(), tqdm(total=len(order), disable=disable_tqdm,
                               desc="Scoring requests (flan_jax)") as progress:
      for start in range(0, len(rows), self._batch_size):
        chunk = rows[start:start + self._batch_size]
        batch = scoring.stack_padded([packing.prefix_lm_row(
            [(windows[i][0][1:], windows[i][1]) for i in row], row_length,
            starts=[windows[i][0][0] for i in row]) for row in chunk], self._batch_size)
        log_probs, hits = self._score_rows(batch)
        for r, row in enumerate(chunk):
          segments = batch["decoder_segment_ids"][r]
          weights = batch["decoder_loss_weights"][r]
          per_segment = np.bincount(segments, weights=log_probs[r], minlength=len(row) + 1)
          misses = np.bincount(segments, weights=weights * ~hits[r], minlength=len(row) + 1)
          sums[row] = per_segment[1:len(row) + 1]
          greedy[row] = misses[1:len(row) + 1] == 0
        progress.update(sum(len(row) for row in chunk))
    return sums, greedy

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each text's log-likelihood, token by token, in lm-eval's rolling windows."""
    windows, owners = [], []
    for index, (text,) in enumerate(request.args for request in requests):
      for context, continuation in map(lm_eval_utils.make_disjoint_window,
                                       lm_eval_utils.get_rolling_token_windows(
                                           token_list=self.tok_encode(text),
                                           prefix_token=self._prefix_token_id,
                                           max_seq_len=self._max_length, context_len=1)):
        windows.append((None, context, continuation))
        owners.append(index)
    totals = np.zeros(len(requests), np.float64)
    for owner, (value, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
      totals[owner] += value
    for request, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, float(total))
    return [float(t) for t in totals]

  # --- generation ----------------------------------------------------------------

  def _decode_config(self, kwargs: dict) -> DecodeConfig:
    """lm-eval's generation kwargs (after `normalize_gen_kwargs`) as a DecodeConfig;
    others are named in a warning, once each."""
    kwargs = dict(kwargs)
    do_sample = bool(kwargs.pop("do_sample", False))
    temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
    top_k = int(kwargs.pop("top_k", 0) or 0)
    top_p = float(kwargs.pop("top_p", 1.0) or 1.0)
    num_beams = int(kwargs.pop("num_beams", 1) or 1)
    ignored = set(kwargs) - self._unused_kwargs
    if ignored:
      log.warning("generation kwargs %s are not used by the flan_jax backend.", sorted(ignored))
      self._unused_kwargs |= ignored
    if num_beams > 1:
      return DecodeConfig(strategy="beam", num_beams=num_beams, seed=self.seed)
    if do_sample and temperature != 0.0:
      return DecodeConfig(strategy="sample", temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=self.seed)
    return DecodeConfig(seed=self.seed)

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Each request's generation, cut before its first stop string; requests with the
    same gen_kwargs run together, longest prompt first."""
    results: list[str | None] = [None] * len(requests)
    groups: dict[str, list[int]] = {}
    for index, request in enumerate(requests):
      groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
    eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
    with tqdm(total=len(requests), disable=disable_tqdm,
              desc="Generating (flan_jax)") as progress:
      for indices in groups.values():
        kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self._max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text or None)
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        context_limit = self._max_length - max_gen_toks
        if context_limit <= 0:
          raise UserError(f"max_gen_toks={max_gen_toks} leaves no room for a prompt in "
                          f"max_length={self._max_length} positions; lower max_gen_toks.")
        generate = decoding.make_generate(self.network, self.params, max_gen_toks,
                                          self.vocabulary.eos_id, self._decode_config(kwargs),
                                          placement=self._placement)
        prompts = {i: self.tok_encode(requests[i].args[0])[-context_limit:] for i in indices}
        order = sorted(indices, key=lambda i: (-len(prompts[i]), requests[i].args[0]))
        for start in range(0, len(order), self._batch_size):
          chunk = order[start:start + self._batch_size]
          buffer = bucket(len(prompts[chunk[0]]), context_limit)
          tokens, mask, _ = left_pad_prompts([prompts[i] for i in chunk], buffer, prefix=())
          fill = ((0, self._batch_size - len(chunk)), (0, 0))  # full batches: one shape
          with self._context():
            generated = generate(np.pad(tokens, fill, mode="edge"),
                                 np.pad(mask, fill, mode="edge"), self.seed + start)
          for i, ids in zip(chunk, generated):
            text = self.tok_decode(_until_eos(ids.tolist(), self.vocabulary.eos_id))
            results[i] = postprocess_generated_text(text, until, None)
            self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
          progress.update(len(chunk))
    return results


def _until_eos(ids: list[int], eos_id: int) -> list[int]:
  return ids[:ids.index(eos_id)] if eos_id in ids else ids

