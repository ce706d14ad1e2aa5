"""Reading and writing Hugging Face safetensors checkpoints, whatever the architecture.

A checkpoint directory holds either one `model.safetensors` or shards listed in
`model.safetensors.index.json`. The architecture modules (`hf_llama`, `hf_t5`)
describe each tensor with a `TensorSpec` (its HF name and shape, where it lives in
our parameter tree, and the reshapes both ways); this module moves the tensors.
Nothing here imports torch or transformers.
"""

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from flan_jax.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def tensor_files(directory: str) -> dict[str, str]:
  """Tensor name -> the safetensors file holding it."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)["weight_map"]
    return {name: os.path.join(directory, file) for name, file in weight_map.items()}
  single = os.path.join(directory, SINGLE_FILE)
  if not os.path.exists(single):
    raise UserError(f"{directory} has neither {SINGLE_FILE} nor {INDEX_FILE}.")
  with _open(single) as f:
    return {name: single for name in f.keys()}


def _open(path: str):
  """safe_open, with a damaged file as one clear error naming it."""
  from safetensors import SafetensorError, safe_open  # optional dependency: only needed here
  try:
    return safe_open(path, framework="flax")
  except (SafetensorError, OSError) as e:
    raise UserError(f"{path} is not a readable safetensors file ({e}); download or export "
                    "the checkpoint again.") from None


class TensorReader:
  """Reads tensors by name from the files `tensor_files` found, keeping each file open once.

      with TensorReader(files) as reader:
        array = reader.get("model.norm.weight")
  """

  def __init__(self, files: dict[str, str]):
    self._files = files
    self._handles: dict[str, Any] = {}

  def __enter__(self) -> "TensorReader":
    return self

  def __exit__(self, *exc_info) -> None:
    for handle in self._handles.values():
      handle.__exit__(None, None, None)
    self._handles.clear()

  def get(self, name: str) -> np.ndarray:
    from safetensors import SafetensorError
    path = self._files[name]
    if path not in self._handles:
      self._handles[path] = _open(path).__enter__()
    try:
      # Through jax (not numpy) so bfloat16 checkpoints read too.
      return np.asarray(self._handles[path].get_tensor(name))
    except SafetensorError as e:
      raise UserError(f"{path}: tensor {name} cannot be read ({e}); download or export the "
                      "checkpoint again.") from None


def write_tensors(tensors: dict[str, np.ndarray], directory: str,
                  max_shard_bytes: int | None = None) -> None:
  """Writes `tensors` as one model.safetensors or, with `max_shard_bytes`, as shards.

  A shard holds at most `max_shard_bytes` (a single larger tensor gets a shard of
  its own); the index transformers reads lists which shard has which tensor.
  """
  from safetensors.flax import save_file
  os.makedirs(directory, exist_ok=True)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, value in tensors.items():
    if max_shard_bytes is not None and shards[-1] and size + value.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = value
    size += value.nbytes
  # transformers refuses safetensors without a known "format" in their metadata.
  write = lambda shard, file: save_file({k: jnp.asarray(v) for k, v in shard.items()},
                                        os.path.join(directory, file), metadata={"format": "pt"})
  if len(shards) == 1:
    write(shards[0], SINGLE_FILE)
    return
  weight_map = {}
  for i, shard in enumerate(shards):
    file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    write(shard, file)
    weight_map.update({name: file for name in shard})
  index = {"metadata": {"total_size": sum(v.nbytes for v in tensors.values())},
           "weight_map": weight_map}
  with open(os.path.join(directory, INDEX_FILE), "w") as f:
    json.dump(index, f, indent=2)


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  """tree[path[0]][path[1]]... = value, creating the dicts on the way."""
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """One HF tensor <-> one leaf of our parameters; read in both directions."""
  hf_name: str
  path: tuple[str, ...]  # into our params tree
  hf_shape: tuple[int, ...]
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def same(hf_name: str, path: tuple[str, ...], shape: tuple[int, ...]) -> TensorSpec:
  """A tensor stored the same way in both (norm scales, bias tables)."""
  return TensorSpec(hf_name, path, shape, lambda w: w, lambda w: w)


def transposed(hf_name: str, path: tuple[str, ...], out_dim: int, in_dim: int) -> TensorSpec:
  """An `nn.Linear` weight [out, in] <-> a Dense kernel [in, out]."""
  return TensorSpec(hf_name, path, (out_dim, in_dim), lambda w: w.T, lambda w: w.T)


def read_config_json(directory: str, required: Sequence[str] = ()) -> dict:
  """The checkpoint's config.json: one JSON object holding at least the `required` keys,
  else one error naming the file."""
  path = os.path.join(directory, "config.json")
  if not os.path.exists(path):
    raise UserError(f"no config.json in {directory}: is this a Hugging Face checkpoint?")
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except ValueError as e:  # not JSON, or not UTF-8
    raise UserError(f"{path} is not valid JSON ({e}): replace it with the model's "
                    "config.json as Hugging Face saved it.") from None
  if not isinstance(config, dict):
    raise UserError(f"{path} must hold one JSON object, not a {_json_kind(config)}: replace it "
                    "with the model's config.json as Hugging Face saved it.")
  missing = sorted(k for k in required if k not in config)
  if missing:
    raise UserError(f"{path} lacks {missing}, which this architecture's config must have: "
                    "replace it with the model's config.json as Hugging Face saved it.")
  return config


def _json_kind(value) -> str:
  return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
      type(value), "number")


def check_tensor_names(directory: str, missing: Sequence[str], unused: Sequence[str]) -> None:
  """A clear error for tensors the config needs but the files lack, or the reverse."""
  if missing:
    raise UserError(f"{directory} lacks tensors {list(missing[:5])}"
                    f"{f' (and {len(missing) - 5} more)' if len(missing) > 5 else ''}.")
  if unused:
    raise UserError(f"{directory} has tensors its config.json architecture does not use: "
                    f"{list(unused[:5])}.")


def read_tensor(reader: "TensorReader", spec: TensorSpec, param_dtype: str,
                source: str | None = None) -> np.ndarray:
  """`spec`'s tensor (or the one named `source`) in our layout, shape-checked."""
  source = source or spec.hf_name
  tensor = reader.get(source)
  if tuple(tensor.shape) != spec.hf_shape:
    raise UserError(f"tensor {source}: expected shape {spec.hf_shape} (from config.json), "
                    f"found {tuple(tensor.shape)}.")
  return spec.to_ours(tensor.astype(jnp.dtype(param_dtype)))


def export_tensors(params, specs: Sequence[TensorSpec], dtype: str | None) -> dict[str, np.ndarray]:
  """{HF name: tensor} for `specs`, in `dtype` (default: the params' own)."""
  tensors: dict[str, np.ndarray] = {}
  for spec in specs:
    value = np.asarray(get_path(params, spec.path))
    if dtype is not None:
      value = value.astype(jnp.dtype(dtype))
    tensors[spec.hf_name] = np.ascontiguousarray(spec.to_hf(value))
  return tensors


def write_checkpoint(tensors: dict[str, np.ndarray], config_json: dict, directory: str,
                     max_shard_bytes: int | None) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config_json, f, indent=2)
  write_tensors(tensors, directory, max_shard_bytes)
