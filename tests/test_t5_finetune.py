"""Finetuning a T5 starts from a Hugging Face checkpoint, scanned or not."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import flan_jax_tasks.default_mixture  # noqa: E402,F401  (byte-vocabulary tasks: 259 ids)
from flan_jax import finetune  # noqa: E402
from flan_jax.data import pipeline  # noqa: E402
from flan_jax.evaluation.evaluator import EvalConfig  # noqa: E402
from flan_jax.models import hf_t5  # noqa: E402
from flan_jax.models import convert  # noqa: E402
from flan_jax.models.families import EncoderDecoder  # noqa: E402
from flan_jax.models.t5 import T5Config  # noqa: E402
from flan_jax.training.optimizer import OptimizerConfig  # noqa: E402
from flan_jax.training.losses import per_token_loss  # noqa: E402
from flan_jax.training.trainer import TrainerConfig  # noqa: E402

LENGTHS = {"inputs": 64, "targets": 16}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory):
  torch.manual_seed(0)
  config = transformers.T5Config(vocab_size=259, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                 num_heads=4, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False, decoder_start_token_id=0)
  model = transformers.T5ForConditionalGeneration(config)
  with torch.no_grad():
    for param in model.parameters():
      param.normal_(0.0, 0.3)
  path = tmp_path_factory.mktemp("hf_t5")
  model.save_pretrained(path)
  return str(path)


def _first_logged_loss(model_dir, checkpoint, scan):
  finetune.finetune(
      model_dir=str(model_dir), mixture_or_task_name="default_add",
      task_feature_lengths=LENGTHS, batch_size=4,
      trainer=TrainerConfig(train_steps=1, log_every=1, progress_bar=False),
      model=T5Config(scan_layers=scan, remat_policy="full" if scan else "none"),
      optimizer=OptimizerConfig(warmup_steps=10),
      evaluation=EvalConfig(evaluate_seen=False), evaluate_before=False,
      initial_checkpoint_path=checkpoint)
  return json.loads((model_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]


def test_the_first_step_trains_the_imported_weights_scanned_or_not(tmp_path, hf_checkpoint):
  # The loss the checkpoint's own weights give on the run's first batch...
  config, params = hf_t5.load_hf_checkpoint(hf_checkpoint)
  batch = next(pipeline.train_batches("default_add", LENGTHS, 4, seed=0, encoder_decoder=True))
  weights = batch["decoder_loss_weights"]
  # jit: T5 op by op takes seconds a call.
  losses = jax.jit(lambda p, b: per_token_loss(EncoderDecoder(config), p, b))(params, batch)
  expected = float((np.asarray(losses) * weights).sum() / weights.sum())
  # ...is what the run logs at step 1, with the layers looped or stacked and scanned.
  assert _first_logged_loss(tmp_path / "loop", hf_checkpoint, scan=False) == pytest.approx(
      expected, rel=1e-5)
  assert _first_logged_loss(tmp_path / "scan", hf_checkpoint, scan=True) == pytest.approx(
      expected, rel=1e-5)

  # The scanned run exports to Hugging Face: transformers computes our logits from it.
  export = tmp_path / "exported"
  result = subprocess.run([sys.executable, "-m", "flan_jax.models.convert",
                           f"--from_orbax={tmp_path / 'scan'}", f"--to_hf={export}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  config, params, _ = convert.load_orbax(str(tmp_path / "scan"))
  assert not config.scan_layers and "layers_1" in params["encoder"]
  rng = np.random.RandomState(0)
  encoder_tokens = rng.randint(1, 259, (2, 10))
  encoder_tokens[1, 6:] = 0  # padding
  decoder_tokens = np.concatenate([np.zeros((2, 1), int), rng.randint(1, 259, (2, 5))], axis=1)
  ours = jax.jit(EncoderDecoder(config).logits)(
      params, {"encoder_input_tokens": encoder_tokens, "decoder_input_tokens": decoder_tokens})
  model = transformers.T5ForConditionalGeneration.from_pretrained(export).float().eval()
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(encoder_tokens),
                   attention_mask=torch.tensor(encoder_tokens != 0, dtype=torch.long),
                   decoder_input_ids=torch.tensor(decoder_tokens)).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
