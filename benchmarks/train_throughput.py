r"""Training throughput: flan_jax's train step against transformers + torch, same model, same batch.

    python -m benchmarks.train_throughput --model=decoder_10m --compare=hf
    python -m benchmarks.train_throughput --model=decoder_50m --compare=hf --steps=2
    python -m benchmarks.train_throughput --model=t5_small --compare=hf --targets_length=128 --steps=2
    python -m benchmarks.train_throughput --model=decoder_10m --lora_rank=8 --compare=hf

One process builds flan_jax's decoder (`DecoderOnly`, causal, untied embeddings) and
exports its initial weights to a Hugging Face `LlamaForCausalLM`, or its T5
(`EncoderDecoder`, v1.1: gated GELU, untied output layer) exported to a
`T5ForConditionalGeneration`, so both start from the same parameters and compute the
same function. Both train on the same synthetic batch (random token ids, one example
per row; for T5 --length encoder and --targets_length decoder tokens): forward,
backward, gradient clipping at 1.0 and an AdamW update (lr 1e-4, betas 0.9/0.95,
weight decay 0.01 except norms and the input embedding) per step. flan_jax runs
`make_train_step` (jit, donated state); torch runs eager with SDPA attention and fused
AdamW (transformers' Trainer default optimizer), optionally also `torch.compile`.

After the first step (flan_jax: compile + run, the time to first step) and one warm-up
step each, the two alternate for --rounds rounds of --steps timed steps, so a noisy
neighbour hits both alike; the rates are medians over rounds. On the CPU everything is
float32 and the peak FLOP/s the MFU is measured against is measured in the same run,
before and after the rounds (the fastest of jnp.dot and torch.matmul of --peak_size
square matrices, median of 10 each). On a GPU compute is bf16 by default (parameters
stay float32, as in mixed-precision training on both sides; torch under autocast) and
the peak is the datasheet's dense bf16 one for GPUs in `flan_jax.training.mfu`'s table
(989 TFLOP/s on an H100 / H200), else measured (8192-square matmuls). flan_jax runs
with its defaults (attention implementation, loss chunking) unless --attention /
--loss_chunk_length say otherwise.

Tokens per step: the predicted tokens for a decoder, B * (L - 1); for T5 every token
either stack reads, B * (encoder + decoder length), reported with sequences (rows) per
second, the unit T5 throughputs are usually quoted in. Model FLOPs are counted as
training counts them (`flan_jax.models.flops`): T5's count each stack's weights and
attention over its own tokens.

LoRA (--lora_rank > 0): flan_jax trains adapters (`LoraConfig`: --lora_targets, alpha
--lora_alpha, dropout 0) beside its frozen base; the peer is transformers + PEFT,
`peft.get_peft_model` on the same LlamaForCausalLM (T5ForConditionalGeneration) with
the same targets, rank and alpha, and AdamW over its trainable parameters only. PEFT's
adapters are loaded with flan_jax's initial ones (A random, B zero; exported with
`peft_io.save_peft`), so both start from the same function and take the same update.
Full finetuning of the same model is timed too, in the same alternating rounds, for
both frameworks: `lora_speedup_vs_full` is LoRA's tokens/s over full finetuning's.
MFU counts a LoRA step's own FLOPs (`flan_jax.models.flops`: 4 per frozen base weight
and token, 6 per adapter weight).

The last line is `ratio_vs_hf=X.XX mfu=Y.YY` (with LoRA, after
`lora_speedup_vs_full=Z.ZZ`) (tokens/s ours over theirs; flan_jax's
MFU as a fraction of that peak). Results go to
benchmarks/results/train_throughput_<model>_<backend>.json.

Imports only jax, flax, optax, numpy, torch, transformers and flan_jax.models /
flan_jax.training: no TensorFlow, seqio or gin, so it runs as-is on a GPU machine.
(`--objective=dpo`, the DPO step against TRL's DPOTrainer on stories260K, whole or
with --lora_rank LoRA against TRL + PEFT, is `benchmarks/dpo_throughput`; it also needs
trl, and flan_jax.data for the pair rows.)
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Callable

import numpy as np

# Llama-shaped, untied embeddings (so both frameworks hold the same tensors), multi-head
# attention, vocabularies a multiple of 128 (our embedding is padded to one, so the
# parameter counts match exactly).
MODELS = {
    "decoder_10m": dict(vocab_size=8192, num_layers=8, embed_dim=256, num_heads=4,
                        num_kv_heads=4, head_dim=64, mlp_dim=704),
    "decoder_50m": dict(vocab_size=16384, num_layers=10, embed_dim=512, num_heads=8,
                        num_kv_heads=8, head_dim=64, mlp_dim=1408),
    "tiny": dict(vocab_size=256, num_layers=2, embed_dim=64, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=128),  # for tests
}
# T5 v1.1 shapes (gated GELU, untied lm_head); 32,128 rows as in the released
# checkpoints, already a multiple of the 128 our embedding is padded to.
T5_MODELS = {
    "t5_small": dict(vocab_size=32128, num_encoder_layers=8, num_decoder_layers=8,
                     embed_dim=512, num_heads=6, head_dim=64, mlp_dim=1024),
    "t5_base": dict(vocab_size=32128, num_encoder_layers=12, num_decoder_layers=12,
                    embed_dim=768, num_heads=12, head_dim=64, mlp_dim=2048),
    "t5_tiny": dict(vocab_size=256, num_encoder_layers=2, num_decoder_layers=2, embed_dim=64,
                    num_heads=4, head_dim=16, mlp_dim=128),  # for tests
}
LEARNING_RATE, BETAS, WEIGHT_DECAY, CLIP_NORM = 1e-4, (0.9, 0.95), 0.01, 1.0


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="decoder_10m",
                      choices=sorted({**MODELS, **T5_MODELS, "stories260K": None}))
  parser.add_argument("--objective", default="sft", choices=["sft", "dpo"],
                      help="sft: cross-entropy (any synthetic model); dpo: the DPO step on "
                           "stories260K against TRL's DPOTrainer (benchmarks/dpo_throughput)")
  parser.add_argument("--compare", default="hf", choices=["hf"],
                      help="what to compare with: transformers' LlamaForCausalLM (T5: "
                           "T5ForConditionalGeneration) on torch")
  parser.add_argument("--batch", type=int, default=8, help="rows per step")
  parser.add_argument("--length", type=int, default=512, help="tokens per row (T5: encoder's)")
  parser.add_argument("--targets_length", type=int, default=128,
                      help="T5 only: decoder tokens per row")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per round and framework")
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
  parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                      help="auto: cuda when torch sees a GPU (jax then uses its default "
                           "backend), else cpu for both")
  parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                      help="compute dtype; auto: float32 on cpu, bfloat16 on cuda")
  parser.add_argument("--attention", default="default",
                      help="flan_jax's attention_implementation (xla, cudnn, blocked, causal_blocks, "
                           "auto); "
                           "default: DecoderConfig's own default, what training gets")
  parser.add_argument("--loss_chunk_length", type=int, default=512,
                      help="flan_jax's loss chunking (train.loss_chunk_length, 512 by default; "
                           "rows no longer than it are not chunked)")
  parser.add_argument("--torch_compile", action="store_true",
                      help="also time torch.compile(model) (slow to compile on a CPU)")
  parser.add_argument("--peak_size", type=int, default=2048,
                      help="side of the square matmul that measures peak FLOP/s")
  parser.add_argument("--lora_rank", type=int, default=0,
                      help="> 0: train LoRA adapters of this rank (frozen base), against "
                           "transformers + PEFT (--objective=dpo: TRL's DPOTrainer with "
                           "PEFT); 0: full finetuning")
  parser.add_argument("--lora_targets", default="q,v",
                      help="LoRA's target modules, comma-separated (LoraConfig.target_modules: "
                           "q, k, v, o, gate, up, down, lm_head, all-linear); q,v is PEFT's "
                           "default for Llama")
  parser.add_argument("--lora_alpha", type=float, default=16.0, help="LoRA's alpha")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--output", default=None,
                      help="JSON file (default benchmarks/results/"
                           "train_throughput_<model>_<backend>.json); 'none' writes nothing")
  # --objective=dpo only (benchmarks/dpo_throughput.py):
  parser.add_argument("--stories_dir", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
      "models", "stories260K-hf"), help="stories260K in Hugging Face layout")
  parser.add_argument("--prompt_length", type=int, default=96, help="tokens per prompt")
  parser.add_argument("--answer_length", type=int, default=160, help="tokens per answer")
  parser.add_argument("--beta", type=float, default=0.1, help="DPO's beta")
  args = parser.parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)  # for the record
  if (args.objective == "dpo") != (args.model == "stories260K"):
    parser.error("--objective=dpo runs on --model=stories260K (a real pretrained model, as a "
                 "preference stage starts from one), and stories260K only with it.")
  if args.lora_rank < 0:
    parser.error(f"--lora_rank must be 0 (full finetuning) or more, got {args.lora_rank}")
  if args.lora_rank:
    from flan_jax.errors import UserError
    from flan_jax.models.decoder import DecoderConfig
    # stories260K is a Llama decoder: its projections are DecoderConfig's.
    plain = (DecoderConfig() if args.objective == "dpo"
             else model_config(args, "float32", lora=False))
    try:  # a bad target or alpha: one clear error now, not after the models are built
      lora_config(args, plain)
    except UserError as e:
      parser.error(str(e))
  return args


def resolve_device(args: argparse.Namespace) -> tuple[str, str]:
  """(torch device, compute dtype) after 'auto'."""
  import torch
  device = args.device
  if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda" and not torch.cuda.is_available():
    raise SystemExit("--device=cuda, but torch.cuda.is_available() is False")
  dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
  return device, dtype


def jax_device(device: str):
  """jax's default backend on a GPU machine; the CPU when asked for (even where a GPU exists)."""
  import jax
  return jax.devices("cpu")[0] if device == "cpu" else jax.devices()[0]


def is_t5(model: str) -> bool:
  return model in T5_MODELS


def _attention_setting(args: argparse.Namespace) -> dict:
  # The framework's default attention unless asked: "fast by default" is what is measured.
  return {} if args.attention == "default" else {"attention_implementation": args.attention}


def decoder_config(args: argparse.Namespace, dtype: str):
  from flan_jax.models.decoder import DecoderConfig
  # prefix_lm=False: causal everywhere, the function LlamaForCausalLM computes.
  return DecoderConfig(**MODELS[args.model], tie_embeddings=False, prefix_lm=False,
                       dtype=dtype, param_dtype="float32", **_attention_setting(args))


def t5_config(args: argparse.Namespace, dtype: str):
  from flan_jax.models.t5 import T5Config
  # v1.1: gated GELU, its own lm_head, no output scaling. No dropout (T5Config's default;
  # the exported HF config says so too), so both sides compute one deterministic function.
  return T5Config(**T5_MODELS[args.model], feed_forward="gated-gelu", tie_embeddings=False,
                  dropout_rate=0.0, dtype=dtype, param_dtype="float32",
                  **_attention_setting(args))


def lora_config(args: argparse.Namespace, config):
  """`config` with the adapters --lora_rank asks for (dropout 0: the peer's too, and a
  deterministic step); the targets are checked against the family's projections."""
  from flan_jax.models.lora import LoraConfig
  targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
  return dataclasses.replace(config, lora=LoraConfig(rank=args.lora_rank, alpha=args.lora_alpha,
                                            dropout=0.0, target_modules=targets))


def model_config(args: argparse.Namespace, dtype: str, lora: bool = True):
  """The benchmark's model config; with --lora_rank (and `lora`), its adapters too."""
  config = (t5_config if is_t5(args.model) else decoder_config)(args, dtype)
  # Benchmarks that reuse this builder (step_profile) have no LoRA flags.
  return lora_config(args, config) if lora and getattr(args, "lora_rank", None) else config


def resolved_attention(config, length: int) -> str:
  """What the config's attention setting comes to at `length` keys on this backend."""
  from flan_jax.models import attention_mask
  from flan_jax.models.t5 import T5Config
  if isinstance(config, T5Config):  # attention with a bias: neither causal_blocks nor splash
    return attention_mask.attention_implementation(config, length)
  causal = not config.prefix_lm  # the decoder's rows here: its own tokens, no cache
  return attention_mask.attention_implementation(config, length, self_attention=True,
                                                 causal=causal)


def synthetic_batch(batch: int, length: int, vocab_size: int, seed: int = 0):
  """(flan_jax batch, token ids [B, L]): random ids, one example per row, no padding.

  transformers' causal LM loss predicts ids[:, 1:] from ids[:, :-1] (it shifts the
  labels itself): L - 1 targets per row. Our batch says the same explicitly: inputs
  are the ids, targets the ids shifted left, and the last position (which has nothing
  to predict) gets loss weight 0, so both average over the same B * (L - 1) tokens.
  """
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, (batch, length), dtype=np.int32)
  targets = np.concatenate([ids[:, 1:], np.zeros((batch, 1), np.int32)], axis=1)
  weights = np.ones_like(ids)
  weights[:, -1] = 0
  flan_batch = {
      "decoder_input_tokens": ids, "decoder_target_tokens": targets,
      "decoder_loss_weights": weights,
      "decoder_segment_ids": np.ones_like(ids),
      "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), ids.shape).copy(),
      "decoder_causal_attention": np.zeros_like(ids),
  }
  return flan_batch, ids


def synthetic_t5_batch(batch: int, inputs_length: int, targets_length: int, vocab_size: int,
                       seed: int = 0):
  """(flan_jax batch, transformers' inputs): random ids, one example per row, no padding.

  The decoder reads the targets shifted right behind the start token 0 and predicts
  every one of them: B * targets_length loss tokens on both sides. transformers gets
  the same decoder_input_ids explicitly (what its own shift of the labels would make).
  Segment ids are given as 1 everywhere: ours would otherwise treat id 0 in the
  random inputs as padding, which HF (with no attention mask) attends to.
  """
  rng = np.random.default_rng(seed)
  inputs = rng.integers(0, vocab_size, (batch, inputs_length), dtype=np.int32)
  targets = rng.integers(0, vocab_size, (batch, targets_length), dtype=np.int32)
  decoder_inputs = np.concatenate([np.zeros((batch, 1), np.int32), targets[:, :-1]], axis=1)
  positions = lambda x: np.broadcast_to(np.arange(x.shape[1], dtype=np.int32), x.shape).copy()
  flan_batch = {
      "encoder_input_tokens": inputs, "encoder_segment_ids": np.ones_like(inputs),
      "encoder_positions": positions(inputs),
      "decoder_input_tokens": decoder_inputs, "decoder_target_tokens": targets,
      "decoder_loss_weights": np.ones_like(targets),
      "decoder_segment_ids": np.ones_like(targets), "decoder_positions": positions(targets),
  }
  return flan_batch, {"input_ids": inputs, "decoder_input_ids": decoder_inputs, "labels": targets}


@dataclasses.dataclass
class Contestants:
  """Both trainers, ready to step on their own copy of the one batch."""
  config: object
  flan_step: Callable  # () -> loss (a jax scalar; not waited for)
  torch_step: Callable  # () -> loss (a torch scalar)
  torch_compiled_step: Callable | None
  flan_sync: Callable  # waits for flan_jax's queued work
  torch_sync: Callable
  flan_parameters: int
  hf_parameters: int
  flan_trainable: int  # with LoRA the adapters; else every parameter
  hf_trainable: int  # parameters with requires_grad (PEFT freezes the base)
  matmul_parameters: dict[str, int]  # `ModelFamily.matmul_weights`
  tokens_per_step: int  # decoder: B * (L - 1) predicted tokens; T5: B * (Le + Ld)
  flops_per_step: float
  flan_setup_s: float


@dataclasses.dataclass
class FlanTrainer:
  """flan_jax's side: its train step on one device, a fresh state and the batch."""
  config: object
  train_step: Callable  # `make_train_step`'s: (state, batch) -> (state, metrics); .jitted
  state: object
  batch: dict
  mesh: object
  hf_inputs: dict  # the same batch as transformers takes it
  setup_s: float  # the state's initialisation


def flan_trainer(args: argparse.Namespace, device: str, dtype: str,
                 lora: bool = True) -> FlanTrainer:
  """flan_jax's train step for `args` (model, batch, length, seed, loss chunking, LoRA
  unless `lora` is False) on `device` ("cpu", else jax's default backend), with the
  optimizer both sides share."""
  import jax

  from flan_jax.models.families import DecoderOnly, EncoderDecoder
  from flan_jax.training import losses
  from flan_jax.training import mesh as mesh_lib
  from flan_jax.training import optimizer as optimizer_lib
  from flan_jax.training import train_step as step_lib

  config = model_config(args, dtype, lora)
  if is_t5(args.model):
    flan_batch, hf_inputs = synthetic_t5_batch(args.batch, args.length, args.targets_length,
                                               config.vocab_size, args.seed)
    model = EncoderDecoder(config)
    lengths = {"inputs": args.length, "targets": args.targets_length}
  else:
    flan_batch, ids = synthetic_batch(args.batch, args.length, config.vocab_size, args.seed)
    hf_inputs = {"input_ids": ids, "labels": ids}  # transformers shifts the labels itself
    model = DecoderOnly(config)
    lengths = {"inputs": 0, "targets": args.length}  # one decoder row of args.length
  mesh = mesh_lib.make_mesh(devices=[jax_device(device)])  # one device, as torch uses one
  # Constant lr, no warmup: the same update rule as torch's AdamW in `build`.
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(
      learning_rate=LEARNING_RATE, warmup_steps=0, schedule="constant", b1=BETAS[0],
      b2=BETAS[1], weight_decay=WEIGHT_DECAY, grad_clip_norm=CLIP_NORM), total_steps=1000)
  start = time.perf_counter()
  state, shardings = step_lib.init_train_state(model, optimizer, mesh, lengths, args.seed)
  jax.block_until_ready(state)
  setup_s = time.perf_counter() - start
  # z_loss=0: transformers' loss has none, and equal losses need equal objectives.
  loss = losses.cross_entropy_loss(z_loss=0.0, chunk_length=args.loss_chunk_length)
  train_step = step_lib.make_train_step(model, optimizer, mesh, shardings, loss)
  return FlanTrainer(config, train_step, state, step_lib.global_batch(flan_batch, mesh), mesh,
                     hf_inputs, setup_s)


def peft_lora_config(config):
  """PEFT's LoraConfig for `config.lora`: the same targets (their Hugging Face names),
  rank and alpha; dropout 0 and no bias, as ours."""
  import peft

  from flan_jax.models import peft_io
  from flan_jax.models.t5 import T5Config

  settings = config.lora
  return peft.LoraConfig(
      r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none",
      target_modules=peft_io.hf_target_names(config),
      task_type="SEQ_2_SEQ_LM" if isinstance(config, T5Config) else "CAUSAL_LM")


def load_our_adapters(peft_model, adapters, config) -> None:
  """Sets `peft_model`'s adapters (A and B) to ours, through our PEFT export, so both
  sides start from one function; raises if the two adapter sets do not match one to one."""
  import peft
  from safetensors.torch import load_file

  from flan_jax.models import peft_io

  with tempfile.TemporaryDirectory() as tmp:
    peft_io.save_peft(adapters, config, tmp)
    ours = load_file(os.path.join(tmp, peft_io.ADAPTER_WEIGHTS))
  loaded = peft.set_peft_model_state_dict(peft_model, ours)
  if loaded.unexpected_keys:
    raise RuntimeError(f"PEFT does not know our adapter keys {loaded.unexpected_keys[:4]}")
  lora_keys = [n for n, _ in peft_model.named_parameters() if "lora_" in n]
  if len(lora_keys) != len(ours):
    raise RuntimeError(f"PEFT made {len(lora_keys)} adapter tensors, we wrote {len(ours)}")


def with_peft_adapters(hf_model, adapters, config):
  """`hf_model` wrapped by `peft.get_peft_model` with `config.lora`'s targets, rank and
  alpha (dropout 0), its adapters set to ours. The base is frozen, as PEFT freezes it."""
  import peft

  model = peft.get_peft_model(hf_model, peft_lora_config(config))
  load_our_adapters(model, adapters, config)
  return model


def build(args: argparse.Namespace, device: str, dtype: str, lora: bool = True) -> Contestants:
  """Both frameworks' steps on the same model and batch (with --lora_rank, and `lora`:
  LoRA on both sides)."""
  import jax
  import torch
  import transformers

  from flan_jax.models import families, hf_llama, hf_t5

  t5 = is_t5(args.model)
  flan = flan_trainer(args, device, dtype, lora)
  config, hf_inputs, batch = flan.config, flan.hf_inputs, flan.batch
  # Host copies: the state is donated by each step. With LoRA the state trains the
  # adapters and holds the frozen base apart.
  trainable = jax.device_get(flan.state.params)
  params = trainable if config.lora is None else jax.device_get(flan.state.frozen)
  holder = {"state": flan.state}

  def flan_step():
    holder["state"], metrics = flan.train_step(holder["state"], batch)
    return metrics["loss"]

  count = lambda tree: sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree))
  flan_trainable = count(trainable)
  flan_parameters = count(params) + (flan_trainable if config.lora else 0)
  family = families.family_for(config)
  matmuls = family.matmul_weights()
  base_config = dataclasses.replace(config, lora=None)

  # The same weights in transformers' layout, through our exporter.
  with tempfile.TemporaryDirectory() as tmp:
    if t5:
      # HF's T5Config defaults to dropout 0.1, which .train() would switch on.
      hf_t5.save_hf_checkpoint(params, base_config, tmp, hf_config={"dropout_rate": 0.0})
      hf_class = transformers.T5ForConditionalGeneration
    else:
      hf_llama.save_hf_checkpoint(params, base_config, tmp, extra_config={
          "max_position_embeddings": max(args.length, 2048)})
      hf_class = transformers.LlamaForCausalLM
    hf_model = hf_class.from_pretrained(tmp, dtype=torch.float32, attn_implementation="sdpa")
  if config.lora is not None:
    hf_model = with_peft_adapters(hf_model, trainable, config)
  hf_model.to(device).train()
  hf_parameters = sum(p.numel() for p in hf_model.parameters())
  hf_trainable = sum(p.numel() for p in hf_model.parameters() if p.requires_grad)
  # Our decay mask: no decay on norm scales and the input embedding (Llama's
  # embed_tokens; T5's shared, which its stacks' embed_tokens alias). LoRA's adapters
  # are decayed on both sides. The optimizer holds the trainable parameters only.
  no_decay = lambda name: (name.endswith("norm.weight") or "embed_tokens" in name
                           or name.endswith("shared.weight"))
  named = [(n, p) for n, p in hf_model.named_parameters() if p.requires_grad]
  groups = [
      {"params": [p for n, p in named if not no_decay(n)], "weight_decay": WEIGHT_DECAY},
      {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
  ]
  try:  # fused: what transformers' Trainer uses by default on torch >= 2.8
    torch_optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS, eps=1e-8,
                                        fused=True)
  except (RuntimeError, TypeError):
    torch_optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, betas=BETAS, eps=1e-8)
  hf_tensors = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in hf_inputs.items()}
  autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16))
              if device == "cuda" and dtype == "bfloat16" else contextlib.nullcontext)
  all_params = [p for _, p in named]  # what is clipped: the trainable parameters

  def make_torch_step(forward):
    def step():
      with autocast():
        loss = forward(**hf_tensors).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(all_params, CLIP_NORM)
      torch_optimizer.step()
      torch_optimizer.zero_grad(set_to_none=True)
      return loss.detach()
    return step

  torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  if t5:
    tokens_per_step = args.batch * (args.length + args.targets_length)
    flops_per_step = args.batch * family.flops_per_sequence(
        {"encoder": args.length, "decoder": args.targets_length})
  else:
    tokens_per_step = args.batch * (args.length - 1)
    flops_per_step = tokens_per_step * family.flops_per_token(
        {"decoder": args.length})["decoder"]
  return Contestants(
      config=config, flan_step=flan_step, torch_step=make_torch_step(hf_model),
      torch_compiled_step=make_torch_step(torch.compile(hf_model)) if args.torch_compile else None,
      flan_sync=lambda: jax.block_until_ready(holder["state"]), torch_sync=torch_sync,
      flan_parameters=flan_parameters, hf_parameters=hf_parameters,
      flan_trainable=flan_trainable, hf_trainable=hf_trainable,
      matmul_parameters=matmuls, tokens_per_step=tokens_per_step, flops_per_step=flops_per_step,
      flan_setup_s=flan.setup_s)


def measure_peak_flops(device: str, dtype: str, size: int, repeats: int = 10) -> dict:
  """Matmul FLOP/s of this machine, median of `repeats`, for jax and torch; the datasheet
  figure in bf16 on a GPU in `flan_jax.training.mfu`'s table."""
  import jax
  import jax.numpy as jnp
  import torch

  if device == "cuda":
    size = max(size, 8192)  # a 2048 matmul is over before a GPU is busy
  flop = 2 * size**3
  jdev = jax_device(device)
  a = jax.device_put(jax.random.normal(jax.random.key(0), (size, size), dtype), jdev)
  matmul = jax.jit(jnp.dot)
  matmul(a, a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    times.append(time.perf_counter() - start)
  jax_flops = flop / statistics.median(times)

  t = torch.randn(size, size, dtype=getattr(torch, dtype), device=device)
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  torch.matmul(t, t)
  sync()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    torch.matmul(t, t)
    sync()
    times.append(time.perf_counter() - start)
  torch_flops = flop / statistics.median(times)

  result = {"jax_matmul_flops": jax_flops, "torch_matmul_flops": torch_flops,
            "peak_flops": max(jax_flops, torch_flops),
            "peak_source": f"measured: faster of jnp.dot and torch.matmul, {size}x{size} {dtype}"}
  if device == "cuda" and dtype == "bfloat16":
    from flan_jax.training import mfu

    name = torch.cuda.get_device_name()
    peak = mfu.peak_flops_per_device(name)
    if peak is not None:
      result.update(peak_flops=peak, peak_source=f"datasheet: {name} dense bf16")
  return result


def _timed_round(step: Callable, sync: Callable, steps: int) -> float:
  """Seconds for `steps` steps, dispatched back to back and waited for at the end."""
  start = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  return time.perf_counter() - start


def _first_step(step: Callable, sync: Callable) -> tuple[float, float]:
  """(seconds, loss) of one step; the first one's time is a cold start (for jax: trace +
  compile + run)."""
  start = time.perf_counter()
  loss = step()
  sync()
  return time.perf_counter() - start, float(loss)


def machine() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  try:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (ValueError, OSError, AttributeError):
    memory_gib = None
  return {"cpu": cpu, "cpus": os.cpu_count(),
          "memory_gib": round(memory_gib, 1) if memory_gib else None,
          "platform": platform.platform(), "python": platform.python_version()}


def run(args: argparse.Namespace) -> tuple[dict, str]:
  """Builds, warms up and times both; returns (results, the final line)."""
  import jax
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  device, dtype = resolve_device(args)
  load_before = os.getloadavg()
  peak = measure_peak_flops(device, dtype, args.peak_size)
  c = build(args, device, dtype)
  attention_fallback = None
  try:
    flan_ttfs, flan_first_loss = _first_step(c.flan_step, c.flan_sync)
  except Exception as e:  # noqa: BLE001  (cuDNN attention unavailable: say so, use XLA's)
    if (args.attention not in ("default", "auto")
        or resolved_attention(c.config, args.length) != "cudnn"):
      raise
    attention_fallback = f"{type(e).__name__}: {str(e)[:300]}"
    print(f"cuDNN attention failed ({attention_fallback}); timing XLA attention instead",
          file=sys.stderr)
    args = argparse.Namespace(**{**vars(args), "attention": "xla"})
    c = build(args, device, dtype)
    flan_ttfs, flan_first_loss = _first_step(c.flan_step, c.flan_sync)
  torch_first_s, torch_first_loss = _first_step(c.torch_step, c.torch_sync)
  contestants = {"flan_jax": (c.flan_step, c.flan_sync), "torch": (c.torch_step, c.torch_sync)}
  flops_per_step = {"flan_jax": c.flops_per_step, "torch": c.flops_per_step}
  full = None
  if args.lora_rank:  # full finetuning of the same model, in the same rounds
    full = build(args, device, dtype, lora=False)
    full_first = {"flan_jax": _first_step(full.flan_step, full.flan_sync),
                  "torch": _first_step(full.torch_step, full.torch_sync)}
    contestants.update(flan_jax_full=(full.flan_step, full.flan_sync),
                       torch_full=(full.torch_step, full.torch_sync))
    flops_per_step.update(flan_jax_full=full.flops_per_step, torch_full=full.flops_per_step)
  second_loss = {}  # the warm-up step: the loss after one identical AdamW update
  for name, (step, sync) in contestants.items():
    second_loss[name] = _first_step(step, sync)[1]
  compiled_first_s = None
  if c.torch_compiled_step:  # the same model and optimizer; its first step warms it up
    compiled_first_s, _ = _first_step(c.torch_compiled_step, c.torch_sync)
    contestants["torch_compile"] = (c.torch_compiled_step, c.torch_sync)

  seconds = {name: [] for name in contestants}
  for _ in range(args.rounds):  # alternate: a noisy neighbour hits both alike
    for name, (step, sync) in contestants.items():
      seconds[name].append(_timed_round(step, sync, args.steps))
  # Measured again after the rounds, and the faster kept: a busy neighbour during one
  # measurement would otherwise understate the peak and flatter the MFU.
  measured = [peak, measure_peak_flops(device, dtype, args.peak_size)]
  peak = max(measured, key=lambda m: m["peak_flops"])
  rates = {name: [round(c.tokens_per_step * args.steps / s, 1) for s in times]
           for name, times in seconds.items()}
  median = {name: statistics.median(r) for name, r in rates.items()}
  sequences = {name: rate * args.batch / c.tokens_per_step for name, rate in median.items()}
  per_token = c.flops_per_step / c.tokens_per_step
  mfu = {name: flops_per_step[name] / c.tokens_per_step * rate / peak["peak_flops"]
         for name, rate in median.items()}
  ratio = median["flan_jax"] / median["torch"]
  fields = (T5_MODELS if is_t5(args.model) else MODELS)[args.model]

  result = {
      "model": args.model, "compare": args.compare, "parameters": c.flan_parameters,
      "lora_rank": args.lora_rank,
      "hf_parameters": c.hf_parameters, "matmul_parameters": sum(c.matmul_parameters.values()),
      "matmul_parameters_by_stack": c.matmul_parameters,
      "config": {k: getattr(c.config, k) for k in fields},
      "batch": args.batch, "length": args.length,
      "targets_length": args.targets_length if is_t5(args.model) else None,
      "tokens_per_step": c.tokens_per_step,
      "steps_per_round": args.steps, "rounds": args.rounds, "device": device,
      "jax_backend": jax_device(device).platform, "dtype": dtype,
      "attention": {"flan_jax": f"{c.config.attention_implementation} -> "
                                f"{resolved_attention(c.config, args.length)}",
                    "torch": "sdpa"},
      "loss_chunk_length": args.loss_chunk_length,
      "attention_fallback": attention_fallback,
      "flan_jax_tokens_per_s": round(median["flan_jax"], 1),
      "torch_tokens_per_s": round(median["torch"], 1),
      "flan_jax_sequences_per_s": round(sequences["flan_jax"], 3),
      "torch_sequences_per_s": round(sequences["torch"], 3),
      "tokens_per_s_by_round": rates,
      "ratio_vs_hf": round(ratio, 3),
      "flops_per_token": per_token, "flops_per_step": c.flops_per_step,
      "peak_flops": peak["peak_flops"], "peak_source": peak["peak_source"],
      "matmul_flops_before_after": [
          {"jax": round(m["jax_matmul_flops"]), "torch": round(m["torch_matmul_flops"])}
          for m in measured],
      "mfu": {name: round(v, 4) for name, v in mfu.items()},
      "flan_jax_setup_s": round(c.flan_setup_s, 2),
      "flan_jax_time_to_first_step_s": round(flan_ttfs, 2),
      "torch_first_step_s": round(torch_first_s, 2),
      "first_loss": {"flan_jax": flan_first_loss, "torch": torch_first_loss},
      "second_loss": second_loss,
      "torch_threads": torch.get_num_threads(),
      "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
      "machine": machine(),
      "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
      "jax": jax.__version__, "torch": torch.__version__,
      "transformers": transformers.__version__,
      "date": datetime.date.today().isoformat(),
      "command": " ".join(["python -m benchmarks.train_throughput"] + args.argv),
  }
  line = f"ratio_vs_hf={ratio:.2f} mfu={mfu['flan_jax']:.2f}"
  if full is not None:
    speedup = {name: median[name] / median[f"{name}_full"] for name in ("flan_jax", "torch")}
    result.update(
        lora={"rank": args.lora_rank, "alpha": args.lora_alpha, "dropout": 0.0,
              "targets": list(c.config.lora.target_modules),
              "peft_targets": _peft_targets(c.config)},
        trainable_parameters={"flan_jax": c.flan_trainable, "torch": c.hf_trainable},
        step_s={name: round(c.tokens_per_step / rate, 4) for name, rate in median.items()},
        full_finetuning={
            "flan_jax_tokens_per_s": round(median["flan_jax_full"], 1),
            "torch_tokens_per_s": round(median["torch_full"], 1),
            "ratio_vs_hf": round(median["flan_jax_full"] / median["torch_full"], 3),
            "trainable_parameters": {"flan_jax": full.flan_trainable,
                                     "torch": full.hf_trainable},
            "flan_jax_time_to_first_step_s": round(full_first["flan_jax"][0], 2),
            "first_loss": {name: first[1] for name, first in full_first.items()},
            "flops_per_token": full.flops_per_step / full.tokens_per_step},
        lora_speedup_vs_full={name: round(v, 3) for name, v in speedup.items()})
    line = f"lora_speedup_vs_full={speedup['flan_jax']:.2f} {line}"
  if compiled_first_s is not None:
    result["torch_compile_first_step_s"] = round(compiled_first_s, 2)
    result["torch_compile_tokens_per_s"] = round(median["torch_compile"], 1)
    result["torch_compile_sequences_per_s"] = round(sequences["torch_compile"], 3)
  return result, line


def _peft_targets(config) -> list[str]:
  from flan_jax.models import peft_io
  return peft_io.hf_target_names(config)


def main(argv=None) -> None:
  args = parse_args(argv)
  # jax takes 75% of a GPU up front by default; both frameworks share one here.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
  lora = f"_lora{args.lora_rank}" if args.lora_rank else ""
  if args.objective == "dpo":
    from benchmarks import dpo_throughput
    result, line = dpo_throughput.run(args)
    name = f"train_throughput_{args.model}_dpo{lora}_{result['device']}.json"
  else:
    result, line = run(args)
    name = f"train_throughput_{args.model}{lora}_{result['jax_backend']}.json"
  print(json.dumps(result))
  output = args.output or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                       name)
  if output != "none":
    from flan_jax import paths
    paths.write_atomically(output, json.dumps(result, indent=1) + "\n")
  print(line)


if __name__ == "__main__":
  main()
