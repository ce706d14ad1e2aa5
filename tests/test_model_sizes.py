"""The gin model sizes describe the published architectures: parameter counts match."""

import os

import gin
import jax
import pytest

import flan_jax.train  # noqa: F401  (registers DecoderConfig with gin)
from flan_jax.models.decoder import Decoder, DecoderConfig
from tiny import dummy_inputs

GIN_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin", "models")

# Published sizes (model cards / papers), in parameters.
PUBLISHED = {"llama2_7b": 6.74e9, "tinyllama_1b": 1.10e9, "llama3_2_1b": 1.24e9,
             "llama3_2_3b": 3.21e9, "llama3_8b": 8.03e9}


def _config(name: str) -> DecoderConfig:
  gin.clear_config()
  try:
    gin.parse_config_file(os.path.join(GIN_MODELS, f"{name}.gin"))
    fields = {f: gin.query_parameter(f"DecoderConfig.{f}")
              for f in DecoderConfig.__dataclass_fields__
              if f"DecoderConfig.{f}" in gin.config_str()}
  finally:
    gin.clear_config()
  return DecoderConfig(**fields)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_model(name):
  config = _config(name)
  shapes = jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), *dummy_inputs(8)))
  count = sum(x.size for x in jax.tree.leaves(shapes))
  # The embedding is padded to a multiple of 128 rows; these vocabularies already are.
  assert config.padded_vocab_size == config.vocab_size
  assert count == pytest.approx(PUBLISHED[name], rel=0.01), count


# T5 v1.1 / Flan-T5 (encoder-decoder), counted the same way (flan_jax.train, imported
# above, registers T5Config with gin too).
from flan_jax.models.t5 import T5, T5Config  # noqa: E402

T5_PUBLISHED = {"t5_1_1_small": 77e6, "t5_1_1_base": 248e6, "t5_1_1_large": 783e6,
                "t5_1_1_xl": 2.85e9, "t5_1_1_xxl": 11.1e9}


def _t5_config(name: str) -> T5Config:
  gin.clear_config()
  try:
    gin.parse_config_file(os.path.join(GIN_MODELS, f"{name}.gin"))
    fields = {f: gin.query_parameter(f"T5Config.{f}")
              for f in T5Config.__dataclass_fields__ if f"T5Config.{f}" in gin.config_str()}
  finally:
    gin.clear_config()
  return T5Config(**fields)


@pytest.mark.parametrize("name", sorted(T5_PUBLISHED))
def test_t5_parameter_count_matches_the_published_model(name):
  config = _t5_config(name)
  tokens = jax.ShapeDtypeStruct((1, 8), jax.numpy.int32)
  shapes = jax.eval_shape(lambda e, d: T5(config).init(jax.random.key(0), e, d), tokens, tokens)
  count = sum(x.size for x in jax.tree.leaves(shapes))
  assert config.padded_vocab_size == config.vocab_size == 32128
  assert not config.tie_embeddings and config.feed_forward == "gated-gelu"
  assert count == pytest.approx(T5_PUBLISHED[name], rel=0.01), count
