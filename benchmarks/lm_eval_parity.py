r"""flan_jax's MMLU, BBH and GSM8K against lm-evaluation-harness, question by question.

  PYTHONPATH=.:.pp nice python benchmarks/lm_eval_parity.py --data_dir=../shared/data \
      --checkpoint=../shared/data/models/stories260K-hf --out=/tmp/lm_eval_parity \
      [--runs=mmlu_0shot,mmlu_5shot,bbh_cot_fewshot,gsm8k_cot] [--limit=N] [--max_gen_toks=256]

Both sides evaluate the same Hugging Face checkpoint on the same local files:

- lm-eval (0.4.x) runs its own task configs, `mmlu_<subject>` (0- and 5-shot),
  `bbh_cot_fewshot_<task>` and `gsm8k_cot`, through its HF backend (`HFLM`, float32, on
  the CPU) with `log_samples`. No network: each config is a small YAML that `include`s
  lm-eval's built-in one and only points its dataset at the local files (MMLU's CSVs
  converted to JSONL with lm-eval's doc fields: question, choices, answer index).
- flan_jax runs the library's tasks (`mmlu_<subject>_{zs,fs}_noopt`, `bbh_<task>_cot`,
  `gsm8k_cot`) through its evaluator, with lm-eval's settings for this checkpoint: no
  BOS (the checkpoint has no tokenizer_config.json, so lm-eval's tokenizer adds none),
  rows cut to the model's `max_position_embeddings` from the left, and for generation
  the prompt cut to max_length - max_gen_toks tokens and max_gen_toks new tokens.

Per question it compares the prompt (character for character), then MMLU's chosen
letter and each letter's log-likelihood (within 1e-4; the largest difference is
reported), or BBH's and GSM8K's cut generation and extracted answers (BBH:
`get-answer`; GSM8K: strict-match and flexible-extract). Agreement is the share of
questions where everything compared is equal.

Results go to `--out`/parity.json (per benchmark: questions, agreement, max
log-likelihood difference, the disagreeing questions) and are printed as a table.
"""

import argparse
import csv
import dataclasses
import json
import logging
import os
import time
from typing import Sequence

# Offline: lm-eval and datasets must read only the local files.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LETTERS = ("A", "B", "C", "D")
PREFIX = "parity"  # our lm-eval task names and flan_jax task names start with it


# --- lm-eval's side


def lm_eval_tasks_dir() -> str:
  import lm_eval
  return os.path.join(os.path.dirname(lm_eval.__file__), "tasks")


def _write_yaml(path: str, config: dict) -> None:
  import yaml
  with open(path, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)


def _mmlu_jsonl(csv_path: str, jsonl_path: str) -> None:
  """MMLU's CSV (question,choice0..3,answer) as lm-eval's doc fields, read independently
  of flan_jax: the question as written (lm-eval strips it), choices, the answer index."""
  with open(csv_path, newline="", encoding="utf-8") as f, open(jsonl_path, "w") as out:
    for row in csv.DictReader(f):
      doc = {"question": row["question"], "choices": [row[f"choice{i}"] for i in range(4)],
             "answer": int(row["answer"])}
      out.write(json.dumps(doc) + "\n")


def write_lm_eval_configs(data_dir: str, out_dir: str, mmlu_subjects: Sequence[str] = (),
                          bbh_tasks: Sequence[str] = (), gsm8k: bool = False) -> dict[str, list]:
  """YAMLs in `out_dir` (lm-eval's --include_path), each lm-eval's own config with its
  dataset pointed at `data_dir`; returns benchmark -> [(our lm-eval task, its name in
  the library)]."""
  os.makedirs(out_dir, exist_ok=True)
  builtin = lm_eval_tasks_dir()
  names: dict[str, list] = {"mmlu": [], "bbh": [], "gsm8k": []}
  for subject in mmlu_subjects:
    files = {}
    for split, folder in (("test", "test"), ("dev", "dev")):
      files[split] = os.path.join(out_dir, f"mmlu_{subject}_{split}.jsonl")
      _mmlu_jsonl(os.path.join(data_dir, "eval", "mmlu", folder, f"{subject}_{folder}.csv"),
                  files[split])
    task = f"{PREFIX}_mmlu_{subject}"
    _write_yaml(os.path.join(out_dir, f"{task}.yaml"), {
        "include": os.path.join(builtin, "mmlu", "default", f"mmlu_{subject}.yaml"),
        "task": task, "tag": f"{PREFIX}_mmlu", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": files}})
    names["mmlu"].append((task, subject))
  for name in bbh_tasks:
    task = f"{PREFIX}_bbh_{name}"
    _write_yaml(os.path.join(out_dir, f"{task}.yaml"), {
        "include": os.path.join(builtin, "bbh", "cot_fewshot", f"{name}.yaml"),
        "task": task, "tag": f"{PREFIX}_bbh", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": os.path.join(
            os.path.abspath(data_dir), "eval", "bbh", "bbh", f"{name}.json")},
                           "field": "examples"}})
    names["bbh"].append((task, name))
  if gsm8k:
    task = f"{PREFIX}_gsm8k_cot"
    _write_yaml(os.path.join(out_dir, f"{task}.yaml"), {
        "include": os.path.join(builtin, "gsm8k", "gsm8k-cot.yaml"),
        "task": task, "tag": f"{PREFIX}_gsm8k", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {"test": os.path.join(
            os.path.abspath(data_dir), "eval", "gsm8k", "test.jsonl")}}})
    names["gsm8k"].append((task, "gsm8k"))
  return names


def lm_eval_model(checkpoint: str, batch_size: int = 16):
  """lm-eval's Hugging Face backend as `lm_eval --model hf --model_args
  pretrained=<checkpoint>,device=cpu,dtype=float32` builds it."""
  from lm_eval.models.huggingface import HFLM
  return HFLM(pretrained=checkpoint, device="cpu", dtype="float32", batch_size=batch_size)


def run_lm_eval(model, include_dir: str, tasks: Sequence[str], *, num_fewshot: int | None = None,
                limit: int | None = None, gen_kwargs: str | None = None,
                task_manager=None) -> dict[str, list[dict]]:
  """lm-eval's per-question samples (its --log_samples), by task, in document order.
  `task_manager`: one built for `include_dir` (indexing lm-eval's configs takes seconds)."""
  import lm_eval
  from lm_eval.tasks import TaskManager
  results = lm_eval.simple_evaluate(
      model=model, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
      gen_kwargs=gen_kwargs, log_samples=True, bootstrap_iters=0,
      task_manager=task_manager or TaskManager(include_path=include_dir), random_seed=0,
      numpy_random_seed=0,
      torch_random_seed=0, fewshot_random_seed=0)
  return {task: sorted(samples, key=lambda s: s["doc_id"])
          for task, samples in results["samples"].items()}


# --- flan_jax's side


@dataclasses.dataclass
class FlanJaxModel:
  """A Hugging Face checkpoint as flan_jax's evaluator runs it, with lm-eval's settings."""
  checkpoint: str
  batch_size: int = 16

  def __post_init__(self):
    from flan_jax import checkpoint_eval, job, model_dir
    from flan_jax.data.vocabularies import vocabulary_from_path
    resolved = model_dir.resolve(self.checkpoint)
    self.vocabulary = vocabulary_from_path(os.path.join(self.checkpoint, "tokenizer.model"))
    config, self.params = checkpoint_eval.load_checkpoint(resolved)
    self.network = job.network_for(config, self.vocabulary)
    self.max_length = checkpoint_eval.position_limit(resolved)

  def evaluate(self, tasks, lengths, limit: int | None) -> dict[str, list[dict]]:
    from flan_jax.evaluation import evaluator
    model = evaluator.make_eval_model(self.network, self.params, lengths,
                                      self.vocabulary.eos_id, self.batch_size,
                                      max_length=self.max_length, add_bos=False)
    config = evaluator.EvalConfig(split="test", max_examples_per_task=limit,
                                  batch_size=self.batch_size, add_bos=False)
    samples: dict[str, list[dict]] = {}
    evaluator.evaluate_tasks(tasks, model, config, samples)
    return samples


def register_library_tasks(data_dir: str, vocabulary, mmlu_subjects=(), bbh_tasks=(),
                           gsm8k: bool = False) -> dict[str, dict[str, str]]:
  """The library's lm-eval-style specs registered under our prefix with `vocabulary`:
  "<benchmark>:<name>" -> variant -> seqio task."""
  import seqio
  from flan_jax.data import flan_task
  from flan_jax_tasks.library import bbh, gsm8k as gsm8k_lib, mmlu

  def register(spec):
    spec = dataclasses.replace(spec, name=f"{PREFIX}_{spec.name}", vocabulary=vocabulary)
    variants = {v.name: f"{spec.name}_{v.name}" for v in flan_task.variants_of(spec)}
    if not all(name in seqio.TaskRegistry.names() for name in variants.values()):
      flan_task.register_flan_task(spec)
    return {variant: seqio.get_mixture_or_task(name) for variant, name in variants.items()}

  tasks = {}
  for subject in mmlu_subjects:
    tasks[f"mmlu:{subject}"] = register(mmlu.spec(data_dir, subject))
  for name in bbh_tasks:
    tasks[f"bbh:{name}"] = register(bbh.spec(data_dir, name))
  if gsm8k:
    tasks["gsm8k:gsm8k"] = register(gsm8k_lib.spec(data_dir))
  return tasks


# --- the comparison


@dataclasses.dataclass
class Agreement:
  questions: int = 0
  agreed: int = 0
  max_log_likelihood_difference: float = 0.0
  disagreements: list = dataclasses.field(default_factory=list)

  @property
  def percent(self) -> float:
    return 100.0 * self.agreed / max(self.questions, 1)

  def add(self, same: bool, where: str, ours, theirs) -> None:
    self.questions += 1
    self.agreed += int(same)
    if not same and len(self.disagreements) < 50:
      self.disagreements.append({"question": where, "flan_jax": ours, "lm_eval": theirs})

  def summary(self) -> dict:
    return {"questions": self.questions, "agreed": self.agreed, "agreement_percent": self.percent,
            "max_log_likelihood_difference": self.max_log_likelihood_difference,
            "disagreements": self.disagreements}


def compare_mmlu(ours: list[dict], theirs: list[dict], agreement: Agreement, where: str,
                 tolerance: float = 1e-4) -> None:
  """Chosen letter equal and every letter's log-likelihood within `tolerance`."""
  if len(ours) != len(theirs):
    raise ValueError(f"{where}: flan_jax has {len(ours)} questions, lm-eval {len(theirs)}.")
  for index, (mine, sample) in enumerate(zip(ours, theirs)):
    their_scores = [float(r[0]) for r in sample["filtered_resps"]]
    their_choice = LETTERS[max(range(len(their_scores)), key=lambda i: their_scores[i])]
    difference = max(abs(a - b) for a, b in zip(mine["option_log_likelihoods"], their_scores))
    agreement.max_log_likelihood_difference = max(agreement.max_log_likelihood_difference,
                                                  difference)
    their_prompt = sample["arguments"][0][0]
    same = (mine["output"] == their_choice and difference <= tolerance
            and mine["inputs"] == their_prompt)
    agreement.add(same, f"{where}[{index}]", [mine["output"], mine["option_log_likelihoods"]],
                  [their_choice, their_scores])


def _by_question(samples: list[dict]) -> list[dict[str, dict]]:
  """lm-eval logs a generation sample once per filter: per question, filter -> sample."""
  questions: dict[int, dict[str, dict]] = {}
  for sample in samples:
    questions.setdefault(sample["doc_id"], {})[sample["filter"]] = sample
  return [questions[doc_id] for doc_id in sorted(questions)]


def _answer(sample: dict) -> str:
  value = sample["filtered_resps"]
  return value if isinstance(value, str) else value[0]


def compare_generations(ours: list[dict], theirs: list[dict], extractors: dict,
                        agreement: Agreement, where: str, cut) -> None:
  """The cut generation and each extraction equal, per question. `extractors` maps
  lm-eval's filter names to our functions for them; `cut` is our stop rule (lm-eval
  stops generating at the same sequences)."""
  questions = _by_question(theirs)
  if len(ours) != len(questions):
    raise ValueError(f"{where}: flan_jax has {len(ours)} questions, lm-eval {len(questions)}.")
  for index, (mine, by_filter) in enumerate(zip(ours, questions)):
    first = next(iter(by_filter.values()))
    their_text, their_prompt = first["resps"][0][0], first["arguments"][0][0]
    their_answers = {name: _answer(by_filter[name]) for name in extractors}
    my_text = cut(mine["output"])
    my_answers = {name: extract(my_text) for name, extract in extractors.items()}
    same = my_text == their_text and my_answers == their_answers and mine["inputs"] == their_prompt
    agreement.add(same, f"{where}[{index}]", [my_text, my_answers], [their_text, their_answers])


def gsm8k_extractors() -> dict:
  """Our strict-match and flexible-extract, with lm-eval's fallback "[invalid]"."""
  from flan_jax_tasks.library import gsm8k
  return {"strict-match": lambda t: gsm8k.strict_answer(t) or "[invalid]",
          "flexible-extract": lambda t: gsm8k.flexible_answer(t) or "[invalid]"}


def bbh_extractors() -> dict:
  from flan_jax_tasks.library import bbh
  return {"get-answer": bbh.cot_answer}


# --- the full run

# run -> (benchmark, our variant, lm-eval's num_fewshot: None keeps its config's)
RUNS = {"mmlu_0shot": ("mmlu", "zs_noopt", 0), "mmlu_5shot": ("mmlu", "fs_noopt", 5),
        "bbh_cot_fewshot": ("bbh", "cot", None), "gsm8k_cot": ("gsm8k", "cot", None)}


def run(data_dir: str, checkpoint: str, out: str, *, runs: Sequence[str], limit: int | None,
        mmlu_subjects=None, bbh_tasks=None, max_gen_toks: int = 256,
        batch_size: int = 16) -> dict:
  """Each of `runs` (RUNS' keys) both ways; `limit` questions per task (None: all)."""
  from flan_jax_tasks.library import bbh, gsm8k, mmlu
  data_dir = os.path.abspath(data_dir)
  benchmarks = {RUNS[label][0] for label in runs}
  mmlu_subjects = (mmlu_subjects or mmlu.subjects(data_dir)) if "mmlu" in benchmarks else ()
  bbh_tasks = (bbh_tasks or bbh.tasks(data_dir)) if "bbh" in benchmarks else ()
  include = os.path.join(out, "lm_eval_tasks")
  names = write_lm_eval_configs(data_dir, include, mmlu_subjects, bbh_tasks, "gsm8k" in benchmarks)
  ours_model = FlanJaxModel(checkpoint, batch_size)
  theirs_model = lm_eval_model(checkpoint, batch_size)
  library = register_library_tasks(data_dir, ours_model.vocabulary, mmlu_subjects, bbh_tasks,
                                    "gsm8k" in benchmarks)
  summary = {}
  # lm-eval keeps the last max_length - max_gen_toks context tokens and generates up to
  # max_gen_toks; MMLU's input length only has to hold every exemplar (rows are cut to
  # the model's positions, as lm-eval cuts them).
  generation_lengths = {"inputs": ours_model.max_length - max_gen_toks, "targets": max_gen_toks}
  for label in runs:
    benchmark, variant, shots = RUNS[label]
    start = time.time()
    pairs = names[benchmark]
    theirs = run_lm_eval(theirs_model, include, [t for t, _ in pairs], num_fewshot=shots,
                         limit=limit, gen_kwargs=None if benchmark == "mmlu"
                         else f"max_gen_toks={max_gen_toks}")
    middle = time.time()
    tasks = [library[f"{benchmark}:{name}"][variant] for _, name in pairs]
    lengths = {"inputs": 1 << 20, "targets": 4} if benchmark == "mmlu" else generation_lengths
    ours = ours_model.evaluate(tasks, lengths, limit)
    agreement = Agreement()
    for (lm_task, _), task in zip(pairs, tasks):
      if benchmark == "mmlu":
        compare_mmlu(ours[task.name], theirs[lm_task], agreement, task.name)
      else:
        stops = bbh.STOP_SEQUENCES if benchmark == "bbh" else gsm8k.STOP_SEQUENCES
        compare_generations(ours[task.name], theirs[lm_task],
                            bbh_extractors() if benchmark == "bbh" else gsm8k_extractors(),
                            agreement, task.name,
                            lambda t, stops=stops: bbh.cut_at_stop_sequences(t, stops))
    summary[label] = {**agreement.summary(), "tasks": len(pairs), "limit_per_task": limit,
                      "max_gen_toks": None if benchmark == "mmlu" else max_gen_toks,
                      "lm_eval_seconds": round(middle - start, 1),
                      "flan_jax_seconds": round(time.time() - middle, 1)}
    print(f"{label}: {agreement.agreed}/{agreement.questions} agree "
          f"({agreement.percent:.2f}%), max |log-likelihood difference| "
          f"{agreement.max_log_likelihood_difference:.2e}", flush=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "parity.json"), "w") as f:
      json.dump(summary, f, indent=1)
  return summary


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default="../shared/data")
  parser.add_argument("--checkpoint", default="../shared/data/models/stories260K-hf")
  parser.add_argument("--out", default="/tmp/lm_eval_parity")
  parser.add_argument("--runs", default=",".join(RUNS), help=f"some of {list(RUNS)}")
  parser.add_argument("--limit", type=int, default=None, help="questions per task (all: unset)")
  parser.add_argument("--max_gen_toks", type=int, default=256)
  parser.add_argument("--batch_size", type=int, default=16)
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  run(args.data_dir, os.path.abspath(args.checkpoint), args.out, runs=args.runs.split(","),
      limit=args.limit, max_gen_toks=args.max_gen_toks, batch_size=args.batch_size)


if __name__ == "__main__":
  main()
