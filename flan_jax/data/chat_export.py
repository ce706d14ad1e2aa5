"""The files a chat model is served with, so that it is served as it was trained.

transformers, vLLM and the servers built on them render a prompt with the
`chat_template` of tokenizer_config.json (or chat_template.jinja, which newer
transformers write and prefer), encode it with the tokenizer files, and stop at
generation_config.json's `eos_token_id`. A run that trains on conversations writes
these into MODEL_DIR/hf_files/, which the Hugging Face export copies beside the
weights (`convert --from_orbax=MODEL_DIR --to_hf=DIR`):

- the tokenizer the run encoded with: tokenizer.model (SentencePiece) or tokenizer.json;
- tokenizer_config.json: the template as training rendered it (`served_template_source`:
  with the BOS the rows start with), the BOS, EOS and unknown token strings, and for a
  SentencePiece model `legacy: false` and the Llama tokenizer class, the settings under
  which transformers encodes as training did (`hf_tokenizer`). Keys an imported model's
  own file has beyond these are kept;
- chat_template.jinja: the same template;
- generation_config.json: `eos_token_id` the end of turn (the vocabulary's EOS, which
  `chat_examples.check_markers` makes the template's end of turn) and `bos_token_id`.

A byte vocabulary has no tokenizer files a server could load, so nothing is written.
"""

import json

import seqio

from flan_jax import paths
from flan_jax.data import chat_examples, chat_templates, hf_tokenizer, vocabularies

TOKENIZER_CONFIG = "tokenizer_config.json"
TEMPLATE_JINJA = "chat_template.jinja"
GENERATION_CONFIG = "generation_config.json"


def _read(path: str) -> dict:
  if not paths.exists(path):
    return {}
  try:
    loaded = paths.read_json(path)
  except ValueError:
    return {}  # replaced below; an imported model's broken file must not stop the export
  return loaded if isinstance(loaded, dict) else {}


def write_served_files(directory: str, template: chat_templates.TemplateSpec,
                       vocabulary: seqio.Vocabulary) -> bool:
  """Writes the serving files into `directory`; False where the vocabulary has none."""
  tokenizer = hf_tokenizer.served_tokenizer(vocabulary)
  if tokenizer is None:
    return False
  chat_examples.check_markers(template, vocabulary)
  bos_id = vocabularies.bos_id(vocabulary)
  config = _read(paths.join(directory, TOKENIZER_CONFIG))
  config.pop("chat_template", None)
  tokens = {"eos_token": tokenizer.id_to_token(vocabulary.eos_id)}
  if bos_id is not None:
    tokens["bos_token"] = tokenizer.id_to_token(bos_id)
  if isinstance(vocabulary, seqio.SentencePieceVocabulary):
    paths.copy(vocabulary.sentencepiece_model_file, paths.join(directory, "tokenizer.model"))
    if paths.exists(paths.join(directory, "tokenizer.json")):
      # transformers prefers tokenizer.json; it must be the tokenizer training used.
      paths.write_atomically(paths.join(directory, "tokenizer.json"), tokenizer.to_str())
    unknown = vocabulary.tokenizer.unk_id()
    if unknown >= 0:
      tokens["unk_token"] = tokenizer.id_to_token(unknown)
    config.update(tokenizer_class="LlamaTokenizer", legacy=False, add_prefix_space=True)
  else:
    paths.copy(vocabulary.path, paths.join(directory, "tokenizer.json"))
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
  source = chat_examples.served_template_source(template, vocabulary)
  config.update(tokens, chat_template=source)
  paths.write_atomically(paths.join(directory, TOKENIZER_CONFIG),
                         json.dumps(config, indent=2, ensure_ascii=False) + "\n")
  paths.write_atomically(paths.join(directory, TEMPLATE_JINJA), source)
  generation = _read(paths.join(directory, GENERATION_CONFIG))
  generation["eos_token_id"] = vocabulary.eos_id
  if bos_id is not None:
    generation["bos_token_id"] = bos_id
  paths.write_atomically(paths.join(directory, GENERATION_CONFIG),
                         json.dumps(generation, indent=2) + "\n")
  return True
