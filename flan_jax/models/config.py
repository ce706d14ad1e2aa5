"""The settings every model family has, and their checks, written once.

A family's config (`DecoderConfig`, `T5Config`) derives from `ModelConfig` and adds
its own fields and checks. Not in `layers`: the checks ask `attention_mask` and
`layer_stack`, whose attention kernels themselves use `layers`.
"""

import dataclasses
from typing import Mapping

from flan_jax.models import lora as lora_lib
from flan_jax.models.attention_mask import check_attention_implementation
from flan_jax.models.layer_stack import check_remat_policy


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 0  # 0: taken from the task vocabulary at run time
  # The embedding is padded to a multiple of this, so its vocab axis divides evenly
  # over a tensor-parallel mesh axis; logits are cut back to `vocab_size`.
  vocab_pad_multiple: int = 128
  embed_dim: int = 128
  num_heads: int = 4
  head_dim: int = 32
  mlp_dim: int = 384
  norm_eps: float = 1e-6
  # The output projection is the embedding (see `layers.output_logits`), or an lm_head.
  tie_embeddings: bool = True
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"
  # One scanned layer instead of num_layers unrolled ones (faster compiles for deep
  # models; parameters gain a leading "layers" axis), and what to rematerialise in
  # the backward pass (`layer_stack.REMAT_POLICIES`).
  scan_layers: bool = False
  remat_policy: str = "none"
  # How attention runs (`attention_mask.ATTENTION_IMPLEMENTATIONS`): "auto" picks per
  # backend and length; "xla" runs everywhere; "cudnn" is the fused flash-attention
  # kernel on NVIDIA GPUs (bf16/fp16 compute only); "splash" Pallas's TPU kernel.
  attention_implementation: str = "auto"
  # Dropout, only while training (see `layer_stack.dropout`); where, each family says.
  dropout_rate: float = 0.0
  # LoRA adapters (`lora.LoraConfig`) on the projections it targets; None: none. A
  # model config read back from JSON passes its fields, made a LoraConfig here.
  lora: lora_lib.LoraConfig | None = None

  # What the hidden states are scaled by before a tied embedding projects them (None:
  # not scaled); a family's constant, not a setting.
  tied_output_scale = None

  @property
  def padded_vocab_size(self) -> int:
    return -(-self.vocab_size // self.vocab_pad_multiple) * self.vocab_pad_multiple

  def lora_names(self) -> Mapping[str, tuple[str, ...]]:
    """Each projection LoRA can target (our layer name) -> the names a target may call it."""
    raise NotImplementedError

  def lora_layers(self) -> frozenset[str]:
    """The layers (`lora_names`' keys) whose weights get adapters."""
    return self.lora.layers(self.lora_names(), type(self).__name__) if self.lora else frozenset()

  def __post_init__(self):
    object.__setattr__(self, "lora", lora_lib.from_fields(self.lora))
    self.lora_layers()  # a target the family does not have is an error now, not at init
    check_remat_policy(self.remat_policy)
    check_attention_implementation(self.attention_implementation)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate={self.dropout_rate} must be in [0, 1).")
