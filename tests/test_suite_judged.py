"""The suite's LLM-as-judge members (alpaca_eval, mt_bench) on a real tiny model
(stories260K) with a judge served by a local stub of an OpenAI-compatible server: the
model's answers reach the judge, verdicts become the published numbers, the plain
average leaves MT-Bench's 1-10 scale out, a rerun sends the judge nothing, and without a
judge both members are skipped with one line."""

import http.server
import json
import pathlib
import threading

import pytest

import registrations

from flan_jax import suite, suite_members
from flan_jax.evaluation.evaluator import EvalConfig
from flan_jax.llm_judge import JudgeConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
STORIES = DATA / "models" / "stories260K-hf"
pytestmark = pytest.mark.skipif(
    not (STORIES.is_dir() and (DATA / "eval" / "alpaca_eval").is_dir()),
    reason="needs ../shared/data (stories260K-hf, alpaca_eval, open_ended)")

LENGTHS = {"alpaca_eval": {"inputs": 128, "targets": 6}, "mt_bench": {"inputs": 192, "targets": 6}}
EVALUATION = EvalConfig(max_examples_per_task=2, batch_size=4)


class StubJudge:
  """An OpenAI-compatible /v1/chat/completions that prefers Output (b) in every pairwise
  request and rates every answer 7; it keeps the requests it got."""

  def __init__(self):
    self.requests = []
    stub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        stub.requests.append(body)
        text = body["messages"][-1]["content"]
        reply = "[[b]]" if "Output (a)" in text else "The answer is fine. Rating: [[7]]"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data.encode())

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture(scope="module", autouse=True)
def library_registered_for_this_module_only():
  # The library is registered here with stories260K's vocabulary; later tests in this
  # process register it their own way.
  with registrations.restored_afterwards():
    yield


@pytest.fixture(scope="module")
def stub():
  judge = StubJudge()
  yield judge
  judge.server.shutdown()


def _run(output, judge):
  return suite.run_suite(
      str(STORIES), str(output), LENGTHS, members=["alpaca_eval", "mt_bench"],
      evaluation=EVALUATION, data_dir=str(DATA),
      member_settings=suite.SuiteConfig(judge=judge).member_settings())


def test_judged_members_turn_the_judges_verdicts_into_the_published_numbers(stub, tmp_path):
  report = _run(tmp_path, JudgeConfig(endpoint=stub.url, model="stub"))
  # Two instructions, each judged in both orders; two questions, two turns each.
  assert len(stub.requests) == 2 * 2 + 2 * 2
  assert all(r["model"] == "stub" for r in stub.requests)
  alpaca = report["members"]["alpaca_eval"]
  # "[[b]]" in both orders is the model's answer once and the reference's once: a tie.
  assert alpaca["value"] == pytest.approx(50.0)
  assert alpaca["metrics"]["n_draws"] == 2 and alpaca["metrics"]["unparsable"] == 0
  mt = report["members"]["mt_bench"]
  assert mt["value"] == pytest.approx(7.0) and mt["metrics"]["unparsable"] == 0
  # The model's answers are what the judge saw: stories260K has no chat template, so the
  # prompt is the instruction itself, recorded as such.
  judgements = [json.loads(line) for line in
                (tmp_path / "eval" / "suite" / "alpaca_eval_judgements.jsonl").open()]
  asked = [r["messages"][-1]["content"] for r in stub.requests]  # in any order (concurrent)
  for row in judgements:
    about = [text for text in asked if row["instruction"] in text and "Output (a)" in text]
    assert len(about) == 2 and all(row["model_output"] in text for text in about)
  assert "no chat template" in alpaca["scoring"]["prompt"]
  # Tulu's average is over percentages: AlpacaEval's win rate, not MT-Bench's 1-10.
  assert report["average"] == pytest.approx(50.0)
  assert report["normalized_average"] is None

  # A rerun reads the finished members back: the judge gets nothing new.
  before = len(stub.requests)
  again = _run(tmp_path, JudgeConfig(endpoint=stub.url, model="stub"))
  assert len(stub.requests) == before
  assert again["members"]["mt_bench"]["value"] == mt["value"]


def test_without_a_judge_both_members_are_skipped_with_one_line(tmp_path):
  report = _run(tmp_path, None)
  assert report["members"] == {}
  assert report["skipped"] == {"alpaca_eval": suite_members.JUDGE_NEEDED,
                               "mt_bench": suite_members.JUDGE_NEEDED}
  assert report["average"] is None


def test_a_model_without_a_chat_template_reads_a_conversation_as_its_texts():
  conversation = [{"role": "user", "content": "Name a color."},
                  {"role": "assistant", "content": "Blue."},
                  {"role": "user", "content": "Another?"}]
  assert suite_members.plain_prompt(conversation) == "Name a color.\n\nBlue.\n\nAnother?"


def test_alpaca_eval_looks_for_the_reference_it_will_read():
  missing = suite_members.MEMBERS["alpaca_eval"].missing
  judge = JudgeConfig(endpoint="http://localhost:1/v1", model="stub")
  assert missing(str(DATA), {"judge": judge, "reference": "text_davinci_003"}) is None
  line = missing(str(DATA), {"judge": judge, "reference": "no_such_system"})
  assert "no_such_system_model_outputs.json" in line
