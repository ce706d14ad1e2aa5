"""The real task library, registered from a data directory (DATA_DIR).

`register(data_dir)` registers every dataset found under `data_dir` (the layout of
../shared/data; see its README) as FLAN-style seqio tasks with clusters, and the
collection mixtures. Nothing is read at registration beyond file listings and small
headers: records load on first use. Registering twice is a no-op.

Each submodule exposes `register(data_dir: str) -> list[str]`, returning the names
of the mixtures it registered (one per dataset, over that dataset's variants).

On top, the collections and splits FLAN trains with:
- `<submodule>_collection` for each training submodule: its datasets mixed
  examples-proportionally with FLAN's cap;
- `flan_collection`: Flan 2022's split of the collections (Flan 2021-style datasets
  46%, T0 27.9%, Natural Instructions 24.2%, chain-of-thought 1.8%);
- `loo_<cluster>_train` / `loo_<cluster>_eval` for every training cluster.
MMLU, BBH, GSM8K, TyDiQA and MGSM are evaluation-only and appear in no training mixture;
a benchmark whose files are missing is skipped with one log line saying where they go.
"""

import importlib
import os

import seqio

from flan_jax.data import clusters
from flan_jax.data.mixtures import register_weighted_mixture
from flan_jax.data.vocabularies import set_default_vocabulary
from flan_jax.errors import UserError

SUBMODULES = ("t0", "natural_instructions", "instruction_induction", "cot", "glue",
              "instruct", "mmlu", "bbh", "gsm8k", "tydiqa", "mgsm")
EVALUATION_ONLY = ("mmlu", "bbh", "gsm8k", "tydiqa", "mgsm")
CAP = 3_000  # FLAN's per-task cap on examples-proportional rates
# Flan 2022's mixture weights (Longpre et al., 2023, Table 2), over our collections.
FLAN_2022_WEIGHTS = {"flan2021": 0.46, "t0": 0.279, "natural_instructions": 0.242, "cot": 0.018}
_FLAN2021_STYLE = ("glue", "instruction_induction", "instruct")

_registered: dict[str, dict[str, list[str]]] = {}


def register(data_dir: str, vocabulary: seqio.Vocabulary | None = None) -> dict[str, list[str]]:
  """Registers the whole library once per data_dir; returns submodule -> mixture names.

  `vocabulary` (default: bytes) is what every library task tokenizes with.
  """
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  if data_dir in _registered:
    return _registered[data_dir]
  if not os.path.isdir(data_dir):
    raise UserError(f"DATA_DIR {data_dir!r} is not a directory; point it at the data "
                    "(e.g. ../shared/data).")
  if _registered:
    raise UserError(f"The library is already registered from {next(iter(_registered))}; "
                    "one process registers one DATA_DIR.")
  if vocabulary is not None:
    set_default_vocabulary(vocabulary)
  result = {}
  for name in SUBMODULES:
    module = importlib.import_module(f"flan_jax_tasks.library.{name}")
    result[name] = module.register(data_dir)
  _register_collections(result)
  _registered[data_dir] = result
  return result


def _flat_collection(name: str, dataset_mixtures: list[str]) -> None:
  """Every variant task of the datasets, each dataset weighted by min(examples, cap).

  A dataset's weight is shared among its variants (`clusters.dataset_shared_rates`), so a
  dataset rendered seven ways does not count seven times. Rates are evaluated when first
  needed, so registering reads no data.
  """
  tasks = [task.name for dataset in dataset_mixtures
           for task in seqio.get_mixture_or_task(dataset).tasks]
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, clusters.dataset_shared_rates(tasks, CAP))


def _register_collections(result: dict[str, list[str]]) -> None:
  collections = {}
  for name, mixtures in result.items():
    if name in EVALUATION_ONLY or not mixtures:
      continue
    collections[name] = f"{name}_collection"
    _flat_collection(collections[name], mixtures)
  flan2021 = [m for name in _FLAN2021_STYLE for m in result.get(name, [])]
  if flan2021:
    _flat_collection("flan2021_collection", flan2021)
    collections["flan2021"] = "flan2021_collection"
  parts = {collections[k]: w for k, w in FLAN_2022_WEIGHTS.items() if k in collections}
  if parts:
    register_weighted_mixture("flan_collection", parts)
  training_tasks = [t.name for name, mixtures in result.items() if name not in EVALUATION_ONLY
                    for m in mixtures for t in seqio.get_mixture_or_task(m).tasks]
  for cluster in clusters.tasks_by_cluster(training_tasks):
    clusters.register_leave_one_out(cluster, among=training_tasks, cap=CAP)
