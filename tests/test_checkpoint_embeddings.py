"""Curation's checkpoint embeddings equal transformers' mean-pooled last hidden state.

The real pretrained stories260K (a tiny Llama, ../shared/data) read by flan_jax and
by transformers' LlamaModel from the same token ids: the mean over the text's tokens
of the final-norm hidden states must agree, padding and batching notwithstanding.
"""

import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORIES = os.path.join(os.path.dirname(REPO), "shared", "data", "models", "stories260K-hf")
TEXTS = ["Once upon a time there was a little dog.", "The sun was hot.",
         "Lily went to the park with her mom and saw a big red ball under a tree."]


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="stories260K-hf is not in shared/data")
def test_mean_pooled_hidden_states_match_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from flan_jax.checkpoint_embeddings import checkpoint_embeddings
  from flan_jax.data import vocabularies
  ours = checkpoint_embeddings(STORIES, TEXTS, max_length=32, batch_size=2)
  vocabulary = vocabularies.library_vocabulary(None, STORIES)
  model = transformers.AutoModel.from_pretrained(STORIES, dtype=torch.float32).eval()
  bos = model.config.bos_token_id
  for text, row in zip(TEXTS, ours):
    ids = torch.tensor([[bos, *vocabulary.encode(text)]])
    with torch.no_grad():
      hidden = model(input_ids=ids).last_hidden_state[0]
    np.testing.assert_allclose(row, hidden.mean(0).numpy(), atol=2e-5, rtol=2e-4)
  assert ours.shape == (3, model.config.hidden_size)
