"""Self-Instruct: the filters against rouge-score and by hand, classification detection on
the paper's seed tasks, the loop with a scripted teacher (resume, a stub HTTP endpoint),
and a real weak teacher (stories260K) on a few requests."""

import hashlib
import http.server
import json
import os
import random
import threading

import pytest
from rouge_score import rouge_scorer

from flan_jax import llm_judge
from flan_jax.data import conversations, decontamination
from flan_jax.data import instruction_filters as filters
from flan_jax.data import self_instruct
from flan_jax.errors import UserError
from flan_jax.evaluation.judge import EndpointJudge, Judge

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
SEEDS = os.path.join(DATA, "instruct", "self_instruct", "seed_tasks.jsonl")
STORIES = os.path.join(DATA, "models", "stories260K-hf")
needs_data = pytest.mark.skipif(not os.path.exists(SEEDS), reason="no ../shared/data")
SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

PAIRS = [
    ("Give three tips for staying healthy.", "Give me three tips to stay healthy!"),
    ("a b c d e f g h i j", "a b c d e f g x y z"),  # F1 exactly 0.7
    ("Classify the sentiment of the sentence.", "Sentence: classify its sentiment"),
    ("Write a poem about the sea.", "Translate the sentence into French."),
    ("Héllo wörld, café au lait", "hello world cafe au lait"),  # non-ASCII splits words
    ("", "anything at all"),
    ("The cat sat on the mat the cat", "the the cat cat mat on sat"),
]


@pytest.mark.parametrize("target,prediction", PAIRS)
def test_rouge_l_equals_rouge_score(target, prediction):
  expected = SCORER.score(target, prediction)["rougeL"].fmeasure
  ours = filters.rouge_l_f1(filters.rouge_tokens(target), filters.rouge_tokens(prediction))
  assert ours == expected


def test_the_pool_rejects_at_exactly_the_threshold_and_keeps_just_below():
  pool = filters.RougePool(["a b c d e f g h i j"])
  assert SCORER.score("a b c d e f g h i j", "a b c d e f g x y z")["rougeL"].fmeasure == 0.7
  assert pool.too_similar("a b c d e f g x y z")  # 0.7: rejected
  below = "a b c d e f x y z w"  # LCS 6 of 10: 0.6
  assert SCORER.score("a b c d e f g h i j", below)["rougeL"].fmeasure < 0.7
  assert not pool.too_similar(below)


@needs_data
def test_the_pool_finds_the_same_best_match_as_brute_force_rouge_score():
  seeds = [s.instruction for s in self_instruct.read_seed_tasks(SEEDS)]
  pool = filters.RougePool(seeds, threshold=0.3)  # low, so the bounds must keep members
  rng = random.Random(0)
  for query in rng.sample(seeds, 10) + ["Tell me if the email is spam or not."]:
    words = query.split()
    query = " ".join(words[:-1] + ["banana"])  # a near copy
    brute = max(SCORER.score(s, query)["rougeL"].fmeasure for s in seeds)
    best, member = pool.most_similar(query)
    if brute >= 0.3:
      assert best == brute and member is not None
    else:
      assert best < 0.3
  assert pool.exact_checks < 11 * len(seeds) / 4  # the bounds spared most LCS computations


@pytest.mark.parametrize("keyword", filters.KEYWORDS)
def test_each_keyword_rejects_an_instruction(keyword):
  assert filters.text_problem(f"Please {keyword.upper()} the thing for me") == "keyword"


@pytest.mark.parametrize("harmless", ["Explain the mapping between two sets.",
                                      "Describe a profile of a good leader.",
                                      "Summarize the plotline of Hamlet.",
                                      "Where should I go tonight?"])
def test_keywords_match_whole_words_only(harmless):
  assert filters.text_problem(harmless) is None


def test_length_bounds_are_inclusive():
  assert filters.text_problem("Sort these") == "length"
  assert filters.text_problem("Sort these numbers") is None
  assert filters.text_problem(" ".join(["word"] * 150)) is None
  assert filters.text_problem(" ".join(["word"] * 151)) == "length"
  assert filters.text_problem("Sort these numbers", min_words=4) == "length"


def test_first_character_and_program_filters():
  assert filters.text_problem("- Sort these numbers") == "punctuation"
  assert filters.text_problem("\"Sort these numbers") == "punctuation"
  assert filters.text_problem("Écris un poème maintenant") == "non_ascii"
  assert filters.text_problem("Write a program that sorts numbers") == "write_a_program"
  assert filters.text_problem("") == "empty"


@needs_data
def test_classification_is_recognised_on_the_papers_seed_tasks():
  seeds = self_instruct.read_seed_tasks(SEEDS)
  labelled = [s for s in seeds if s.is_classification]
  others = [s for s in seeds if not s.is_classification]
  assert len(labelled) == 26 and len(others) == 149
  found = sum(filters.looks_like_classification(s.instruction) for s in labelled)
  false_alarms = sum(filters.looks_like_classification(s.instruction) for s in others)
  assert found >= 25, found  # misses only "Find out the largest one from a set of numbers."
  assert false_alarms <= 6, false_alarms  # tasks that label, then also explain or correct


def test_parsing_a_continued_list_and_instances():
  completion = " Name a fruit.\n10. Sort the list.\n11) Tell a joke\n\n12. "
  assert self_instruct.parse_instructions(completion) == [
      "Name a fruit.", "Sort the list.", "Tell a joke", ""]
  pairs = self_instruct.parse_instances(
      "Input: 2, 1\nOutput: 1, 2\n\nInput: (none)\nOutput: 3\nTask: something else", False)
  assert pairs == [("2, 1", "1, 2"), ("", "3")]
  assert self_instruct.parse_instances("Output: Paris", False) == [("", "Paris")]
  labelled = self_instruct.parse_instances(" positive\nInput: I loved it\n\nClass label: "
                                           "negative\nInput: Awful.", True)
  assert labelled == [("I loved it", "positive"), ("Awful.", "negative")]


WORDS = [f"w{i}" for i in range(400)]


def scripted_answer(prompt: str) -> str:
  """A deterministic teacher: fresh instructions per request (some filtered), and
  instances in the format asked, one of them repeated."""
  h = hashlib.sha256(prompt.encode()).hexdigest()
  rng = random.Random(h)
  if prompt.startswith("Come up with"):
    a, b, c, d = rng.sample(WORDS, 4)
    return (f" Explain how {a} relates to {b} and {c} in {d}.\n10. Draw a picture of {a}.\n"
            f"11. Classify the sentiment of the {b} {c} review.\n12. ok")
  if prompt.endswith("Class label:"):
    return f" positive\nInput: I loved {h[:6]}\n\nClass label: negative\nInput: Awful {h[:6]}"
  return f"Input: {h[:8]}\nOutput: {h[8:16]}\n\nInput: {h[:8]}\nOutput: {h[8:16]}\n\nInput: x\nOutput:"


class ScriptedTeacher(Judge):
  identity = "scripted"

  def __init__(self, cache_dir=None):
    super().__init__(cache_dir, batch_size=4)
    self.asked: list[str] = []

  def _complete(self, requests):
    self.asked += list(requests)
    return [scripted_answer(r) for r in requests]


@needs_data
def test_the_loop_counts_every_rejection_and_writes_alpaca_records(tmp_path):
  seeds = self_instruct.read_seed_tasks(SEEDS)
  config = self_instruct.SelfInstructConfig(num_instructions=6, requests_per_step=2)
  report = self_instruct.generate(seeds, ScriptedTeacher(), str(tmp_path), config,
                                  progress=False)
  assert report.instructions_kept == 6
  assert (report.candidates == report.instructions_kept + report.instructions_rejected()
          + report.beyond_target)
  records = [json.loads(l) for l in open(tmp_path / self_instruct.OUTPUT_FILE)]
  assert len(records) == report.records_written
  assert {tuple(r) for r in records} == {("instruction", "input", "output")}
  assert report.rejected["keyword"] > 0 and report.rejected["length"] > 0  # "Draw", "ok"
  assert report.rejected["duplicate_instance"] > 0 and report.rejected["empty_instance"] > 0
  assert report.classification_tasks > 0  # "Classify the sentiment ...": output first
  assert any(r["output"] in ("positive", "negative") for r in records)
  written = json.load(open(tmp_path / self_instruct.REPORT_FILE))
  assert written["report"]["rejected"] == report.rejected
  # One gin file, added after the chat quickstart's, makes train's chat task this data,
  # which reads as one user turn and one reply per record.
  name, path, format_ = chat_task_from_gin(self_instruct.write_chat_gin(str(tmp_path), "grown"))
  assert (name, format_) == ("grown", "alpaca")
  assert path == str(tmp_path / self_instruct.OUTPUT_FILE)
  chats = conversations.read_conversations(path, format=format_).conversations
  assert len(chats) == len(records)
  first = records[0]
  assert [t["content"] for t in chats[0]] == [
      "\n\n".join(filter(None, [first["instruction"], first["input"]])), first["output"]]


@needs_data
def test_one_gin_file_makes_the_output_a_flan_style_task(tmp_path):
  import gin
  import seqio
  from flan_jax import train  # noqa: F401  (makes train and InstructionFile configurable)
  from flan_jax.data import task_reader, vocabularies
  config = self_instruct.SelfInstructConfig(num_instructions=3, requests_per_step=2)
  self_instruct.generate(self_instruct.read_seed_tasks(SEEDS), ScriptedTeacher(),
                         str(tmp_path), config, progress=False)
  records = [json.loads(l) for l in open(tmp_path / self_instruct.OUTPUT_FILE)]
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([self_instruct.write_task_gin(str(tmp_path),
                                                                      "grown_plain")], [])
    (reference,) = gin.query_parameter("train.instruction_files")
    files = [gin.query_parameter(f"grown_plain/InstructionFile.{field}")
             for field in ("name", "path")]
  finally:
    gin.clear_config()
  assert reference.scoped_selector.startswith("grown_plain/")
  assert train.InstructionFile(*files).register(vocabularies.byte_vocabulary()) == "grown_plain"
  task = seqio.get_mixture_or_task("grown_plain_zs_noopt")
  targets = {e["targets_pretokenized"] for split in ("train", "validation") for e in
             task_reader.task_examples(task, split, sequence_length=None, shuffle=False,
                                                    seed=0)}
  assert targets == {r["output"] for r in records}


def chat_task_from_gin(path):
  """(name, data path, format) of the one ChatTask `train` gets from the chat
  quickstart's gin file followed by `path`."""
  import gin
  from flan_jax import train  # noqa: F401  (makes train and ChatTask configurable)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([os.path.join(repo, "gin", "chat_quickstart.gin"),
                                         path], [])
    (reference,) = gin.query_parameter("train.chat_tasks")
    scope = reference.scoped_selector.split("/")[0]
    assert gin.query_parameter(f"{scope}/ChatTask.path").scoped_selector == "CHAT_DATA/gin.macro"
    return (gin.query_parameter(f"{scope}/ChatTask.name"), gin.query_parameter("%CHAT_DATA"),
            gin.query_parameter(f"{scope}/ChatTask.format"))
  finally:
    gin.clear_config()


@needs_data
def test_the_teacher_can_decide_which_tasks_are_classification(tmp_path):
  class Judging(ScriptedTeacher):
    def _complete(self, requests):
      answers = super()._complete(requests)
      # Says "Yes" only for the "Explain how ..." tasks, which the keyword rule calls
      # open-ended: those must then be asked output first.
      return [(" Yes" if r.rstrip().endswith("Is it classification?") and
               "Task: Explain how" in r.split("\n\n")[-1] else
               " No" if r.rstrip().endswith("Is it classification?") else a)
              for r, a in zip(requests, answers)]

  teacher = Judging()
  config = self_instruct.SelfInstructConfig(num_instructions=4, requests_per_step=2,
                                            classify_with="teacher")
  report = self_instruct.generate(self_instruct.read_seed_tasks(SEEDS), teacher,
                                  str(tmp_path), config, progress=False)
  asked = [r for r in teacher.asked if r.startswith("Can the following task")]
  assert len(asked) == report.classification_requests == report.instance_requests
  assert "Is it classification? Yes" in asked[0] and "Is it classification? No" in asked[0]
  records = [json.loads(l) for l in open(tmp_path / self_instruct.OUTPUT_FILE)]
  assert {r["instruction"].startswith("Explain how") for r in records} == {True, False}
  for record in records:
    labelled = record["output"] in ("positive", "negative")
    assert labelled == record["instruction"].startswith("Explain how"), record


GSM8K_TEST = os.path.join(DATA, "eval", "gsm8k", "test.jsonl")


def _gsm8k_index(kind: str, questions: list[str]):
  if kind == "ngram_index":  # the one-off report's dict index
    return decontamination.build_ngram_index(questions, source="gsm8k")
  from flan_jax.data import decontamination_index as di  # the cached one the CLI builds
  return di.DecontaminationIndex.build([("gsm8k", q) for q in questions], di.RULES[kind])


@pytest.mark.skipif(not os.path.exists(GSM8K_TEST), reason="no GSM8K in ../shared/data")
@pytest.mark.parametrize("kind", ["ngram_index", "13-gram", "8-gram"])
def test_instances_copying_an_eval_question_are_dropped_and_counted(tmp_path, kind):
  questions = [json.loads(line)["question"] for line in open(GSM8K_TEST)][:50]
  index = _gsm8k_index(kind, questions)
  planted = questions[7]

  class LeakyTeacher(ScriptedTeacher):
    def _complete(self, requests):
      answers = super()._complete(requests)
      # Input-first instance requests get the eval question as one instance's input.
      return [a.replace("\n\nInput: x\n", f"\n\nInput: {planted}\nOutput: 18\n\nInput: x\n")
              for a in answers]

  seeds = self_instruct.read_seed_tasks(SEEDS)
  config = self_instruct.SelfInstructConfig(num_instructions=4, requests_per_step=2)
  report = self_instruct.generate(seeds, LeakyTeacher(), str(tmp_path / "leaky"), config,
                                  progress=False, contamination=index)
  written = open(tmp_path / "leaky" / self_instruct.OUTPUT_FILE).read()
  assert report.rejected["contaminated_instance"] > 0
  assert report.contaminated_by == {"gsm8k": report.rejected["contaminated_instance"]}
  assert planted[:40] not in written
  # Clean data loses nothing: the same run with and without the index writes the same.
  with_index = self_instruct.generate(seeds, ScriptedTeacher(), str(tmp_path / "a"), config,
                                      progress=False, contamination=index)
  self_instruct.generate(seeds, ScriptedTeacher(), str(tmp_path / "b"), config, progress=False)
  assert with_index.rejected["contaminated_instance"] == 0
  assert (open(tmp_path / "a" / self_instruct.OUTPUT_FILE).read()
          == open(tmp_path / "b" / self_instruct.OUTPUT_FILE).read())


class Interrupted(Exception):
  pass


@needs_data
def test_a_resumed_run_repeats_no_request_and_ends_as_an_uninterrupted_one(tmp_path):
  seeds = self_instruct.read_seed_tasks(SEEDS)
  config = self_instruct.SelfInstructConfig(num_instructions=8, requests_per_step=2)
  whole = ScriptedTeacher(str(tmp_path / "whole" / "cache"))
  self_instruct.generate(seeds, whole, str(tmp_path / "whole"), config, progress=False)

  out = tmp_path / "resumed"
  first = ScriptedTeacher(str(out / "cache"))

  def stop_after_two_steps(report):
    if report.instruction_requests >= 4:
      raise Interrupted

  with pytest.raises(Interrupted):
    self_instruct.generate(seeds, first, str(out), config, progress=False,
                           on_step=stop_after_two_steps)
  second = ScriptedTeacher(str(out / "cache"))
  self_instruct.generate(seeds, second, str(out), config, progress=False)
  assert first.asked and second.asked
  assert not set(first.asked) & set(second.asked)  # nothing asked twice
  assert sorted(first.asked + second.asked) == sorted(whole.asked)
  assert (open(out / self_instruct.OUTPUT_FILE).read()
          == open(tmp_path / "whole" / self_instruct.OUTPUT_FILE).read())


class StubServer(http.server.BaseHTTPRequestHandler):
  bodies: list[dict] = []

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    StubServer.bodies.append(body)
    if self.path != "/v1/chat/completions":
      self.send_error(404)
      return
    answer = self.answer(body["messages"][0]["content"])
    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]})
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.end_headers()
    self.wfile.write(data.encode())

  def answer(self, prompt: str) -> str:
    return scripted_answer(prompt)

  def log_message(self, *args):
    pass


@needs_data
def test_an_openai_compatible_endpoint_teaches_with_its_sampling_temperature(tmp_path):
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubServer)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  StubServer.bodies = []
  try:
    teacher = llm_judge.make_judge(f"http://127.0.0.1:{server.server_port}", "stub-model",
                                   cache_dir=str(tmp_path / "cache"), max_tokens=128,
                                   temperature=0.7)
    assert isinstance(teacher, EndpointJudge)
    config = self_instruct.SelfInstructConfig(num_instructions=3, requests_per_step=2)
    report = self_instruct.generate(self_instruct.read_seed_tasks(SEEDS), teacher,
                                    str(tmp_path), config, progress=False)
  finally:
    server.shutdown()
  assert report.instructions_kept == 3
  assert teacher.requests_made == len(StubServer.bodies) > 0
  assert {b["temperature"] for b in StubServer.bodies} == {0.7}
  assert {b["model"] for b in StubServer.bodies} == {"stub-model"}
  assert all(b["messages"][0]["role"] == "user" for b in StubServer.bodies)


@pytest.mark.skipif(not os.path.exists(STORIES), reason="no stories260K in ../shared/data")
def test_a_weak_local_teacher_runs_the_loop_and_its_filters(tmp_path):
  teacher = llm_judge.make_judge(checkpoint=STORIES, cache_dir=str(tmp_path / "cache"),
                                 max_tokens=24, max_input_length=512, batch_size=2)
  config = self_instruct.SelfInstructConfig(num_instructions=2, requests_per_step=2,
                                            max_requests=4, demonstrations=1)
  report = self_instruct.generate(self_instruct.read_seed_tasks(SEEDS), teacher,
                                  str(tmp_path), config, progress=False)
  assert report.instruction_requests == 4 or report.instructions_kept == 2
  assert report.candidates > 0
  # Every candidate that passed the filters was asked for instances, and then kept or
  # dropped for having none.
  filtered = sum(report.rejected[name] for name in filters.FILTERS)
  assert filtered + report.instance_requests + report.beyond_target == report.candidates
  assert report.instructions_kept + report.rejected["no_instances"] == report.instance_requests
  records = [json.loads(l) for l in open(tmp_path / self_instruct.OUTPUT_FILE)]
  assert len(records) == report.records_written
  assert teacher.requests_made == (report.instruction_requests + report.instance_requests)


def test_an_unreachable_teacher_is_one_error_naming_the_teachers_flag():
  import socket
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  teacher = EndpointJudge(f"http://127.0.0.1:{port}", "m", retries=0,
                          flag_names=("--endpoint", "--model"))
  with pytest.raises(UserError, match=r"could not be reached.*is --endpoint its address"):
    teacher.complete(["Come up with a series of tasks:\n1. Sort numbers.\n2."])


class LeakyStubServer(StubServer):
  """Plants a GSM8K test question as one instance's input, as a teacher that memorised it."""
  planted = ""

  def answer(self, prompt: str) -> str:
    return scripted_answer(prompt).replace(
        "\n\nInput: x\n", f"\n\nInput: {self.planted}\nOutput: 18\n\nInput: x\n")


@pytest.mark.skipif(not os.path.exists(GSM8K_TEST), reason="no GSM8K in ../shared/data")
def test_the_command_decontaminates_against_the_cached_eval_index(tmp_path):
  """`--decontaminate_against=gsm8k`: the task library's GSM8K test set, indexed once
  into --decontamination_cache_dir (the index curate and the run guard share), drops
  the planted question and counts it in report.json."""
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  LeakyStubServer.planted = json.loads(open(GSM8K_TEST).readline())["question"]
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LeakyStubServer)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([repo, os.path.join(repo, ".pp"),
                                         os.environ.get("PYTHONPATH", "")]))
  cache, output = tmp_path / "cache", tmp_path / "out"
  try:
    result = subprocess.run(
        [sys.executable, "-m", "flan_jax.self_instruct", f"--seed_tasks={SEEDS}",
         f"--output={output}", "--num_instructions=3", "--requests_per_step=2",
         f"--endpoint=http://127.0.0.1:{server.server_port}", "--model=stub",
         "--decontaminate_against=gsm8k", f"--data_dir={DATA}", "--decontamination_rule=8-gram",
         f"--decontamination_cache_dir={cache}"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=300)
  finally:
    server.shutdown()
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((output / self_instruct.REPORT_FILE).read_text())["report"]
  removed = report["rejected"]["contaminated_instance"]
  assert removed > 0 and sum(report["contaminated_by"].values()) == removed
  assert all(name.startswith("gsm8k") for name in report["contaminated_by"])
  assert LeakyStubServer.planted[:40] not in (output / self_instruct.OUTPUT_FILE).read_text()
  described = [json.loads(p.read_text()) for p in cache.glob("8-gram-*.json")]
  assert len(described) == 1 and described[0]["rule"] == "8-gram"
  assert all(s.startswith("gsm8k") for s in described[0]["sources"])
