"""The splash-attention path (Pallas's TPU kernel, interpreted on this CPU) equals XLA's
attention: causal and prefix-LM rows, packed, grouped-query, in values and gradients,
on one device and per shard under a mesh; and "auto" takes it on TPUs only where it
applies."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.models import attention_mask
from flan_jax.models.attention_mask import attention_implementation, make_attention_mask
from flan_jax.models.pallas_attention import splash_attention, splash_block_size_for
from tiny import attention_decoder, packed_ids, simulated_devices_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("prefix_lm", [False, True])
def test_splash_attention_equals_the_xla_path_in_values_and_gradients(prefix_lm):
  rng = np.random.default_rng(0)
  B, L, H, G, D = 2, 256, 4, 2, 16  # two query heads per key head
  q = jnp.asarray(rng.normal(size=(B, L, H, D)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, L, G, D)), jnp.float32) for _ in range(2))
  segments, positions, prefix = (jnp.asarray(x) for x in packed_ids(B, L, rng))
  if not prefix_lm:
    prefix = jnp.zeros_like(prefix)
  mask = make_attention_mask(segments, positions, prefix, segments, positions, prefix)
  reference = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, scale=0.3)
  splash = lambda q, k, v: splash_attention(q, k, v, segments, prefix if prefix_lm else None,
                                            scale=0.3)
  # Padding (segment 0, position 0, loss-masked) sees all padding under the position
  # rule and only earlier padding in the kernel; examples' tokens see the same keys.
  real = np.asarray(segments > 0)[..., None, None]
  np.testing.assert_allclose(splash(q, k, v) * real, reference(q, k, v) * real,
                             rtol=1e-5, atol=1e-5)
  weight = jnp.asarray(real * np.cos(np.arange(D)), jnp.float32)
  loss = lambda f: lambda *a: (f(*a) * weight).sum()
  for got, want in zip(jax.grad(loss(splash), (0, 1, 2))(q, k, v),
                       jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_the_decoder_on_splash_equals_xla_attention_as_a_prefix_lm_on_one_device():
  from flan_jax.models.decoder import Decoder
  rng = np.random.default_rng(6)
  B, L = 2, 256
  segments, positions, prefix = (jnp.asarray(x) for x in packed_ids(B, L, rng))
  tokens = jnp.asarray(rng.integers(1, 300, (B, L)), jnp.int32) * (segments > 0)
  xla, splash = (Decoder(attention_decoder(name)) for name in ("xla", "splash"))
  params = jax.jit(xla.init)(jax.random.key(0), tokens, positions, segments, prefix)
  run = lambda model: jax.jit(lambda p: model.apply(p, tokens, positions, segments,
                                                    prefix)[0])(params)
  real = np.asarray(segments > 0)[..., None]
  np.testing.assert_allclose(run(splash) * real, run(xla) * real, rtol=1e-4, atol=1e-4)


def test_auto_takes_splash_on_tpus_for_self_attention_without_a_cache(monkeypatch):
  assert splash_block_size_for(2048) == 512 and splash_block_size_for(384) == 128
  assert splash_block_size_for(200) is None
  monkeypatch.setattr(attention_mask.jax, "default_backend", lambda: "tpu")
  monkeypatch.setattr(attention_mask, "splash_placeable", lambda: True)  # one device or a mesh
  prefix_lm = attention_decoder("auto")
  assert attention_implementation(prefix_lm, 512, self_attention=True) == "splash"
  assert attention_implementation(prefix_lm, 2048, self_attention=True, causal=True) == "splash"
  assert attention_implementation(prefix_lm, 2048) == "blocked"  # a cache: long
  assert attention_implementation(prefix_lm, 512) == "xla"  # a cache: short
  assert attention_implementation(prefix_lm, 200, self_attention=True) == "xla"
  assert attention_implementation(attention_decoder("splash"), 512) == "xla"


# Four simulated devices as (data 2, fsdp 1, tensor 2): rows split over data, heads
# over tensor; the decoder's logits and gradients on the splash path, run per shard,
# equal XLA's attention on the same mesh.
SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np
from flan_jax.models.attention_mask import attention_implementation
from flan_jax.models.decoder import Decoder
from flan_jax.training import mesh as mesh_lib
from tiny import attention_decoder, packed_ids
rng = np.random.default_rng(4)
B, L = 4, 256
segments, positions, prefix = (jnp.asarray(x) for x in packed_ids(B, L, rng))
tokens = jnp.asarray(rng.integers(1, 300, (B, L)), jnp.int32) * (segments > 0)
real = np.asarray(segments > 0)[..., None]
splash_config = attention_decoder("splash", num_heads=4, num_kv_heads=2)
# Over four devices a kernel XLA cannot split needs the mesh and the axis rules set
# to run per shard; without them every device would compute every row.
assert attention_implementation(splash_config, L, self_attention=True) == "xla"
mesh = mesh_lib.make_mesh((2, 1, 2))
with jax.set_mesh(mesh):
  assert attention_implementation(splash_config, L, self_attention=True) == "xla"
with mesh_lib.on_mesh(mesh):
  assert attention_implementation(splash_config, L, self_attention=True) == "splash"
  rows = mesh_lib.batch_sharding(mesh)
  ids = [jax.device_put(x, rows) for x in (tokens, positions, segments, prefix)]
  xla = Decoder(attention_decoder("xla", num_heads=4, num_kv_heads=2))
  splash = Decoder(splash_config)
  params = jax.jit(xla.init)(jax.random.key(0), *ids)
  def run(model):
    loss = lambda p: (model.apply(p, *ids)[0] * real).sum() / 1000
    return jax.jit(jax.value_and_grad(loss))(params)
  (got, got_grads), (want, want_grads) = run(splash), run(xla)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-5)
print("same")
"""


def test_the_decoder_on_splash_per_shard_equals_xla_attention_on_a_mesh():
  paths = os.pathsep.join([REPO, os.path.join(REPO, "tests")])
  env = dict(simulated_devices_env(4), PYTHONPATH=paths)
  result = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith("same")
