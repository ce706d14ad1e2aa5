"""LLM-as-judge: verdicts read from replies, both orders combined, AlpacaEval's numbers as
the `alpaca_eval` package computes them, MT-Bench's published prompts and means, an
OpenAI-compatible endpoint (a local stub server) behind the disk cache, and a local
checkpoint as the judge."""

import http.server
import importlib.util
import json
import math
import os
import sys
import threading
import types

import numpy as np
import pytest

from flan_jax.errors import UserError
from flan_jax.evaluation import alpaca_eval, mt_bench, win_rates
from flan_jax.evaluation.judge import EndpointJudge, Judge, chat_completions_url

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
STORIES = os.path.join(SHARED, "models", "stories260K-hf")
needs_data = pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "eval", "alpaca_eval")),
                                reason="needs ../shared/data")


def test_a_pairwise_verdict_is_read_only_when_the_reply_gives_exactly_one():
  assert alpaca_eval.parse_verdict("[[a]]") == "a"
  assert alpaca_eval.parse_verdict("Output (b) is more complete.\n[[B]]") == "b"
  assert alpaca_eval.parse_verdict("[[ (a) ]] ... so: [[a]]") == "a"  # repeats agree
  for unparsable in ["", "Output (a) is better.", "[[a]] or maybe [[b]]", "[[c]]", "[a]",
                     "[[tie]]", None]:
    assert alpaca_eval.parse_verdict(unparsable) is None, unparsable


def test_an_mt_bench_rating_is_read_as_fastchat_reads_it():
  assert mt_bench.parse_rating("The answer is fine.\nRating: [[7]]") == 7
  assert mt_bench.parse_rating("Rating: [[8.5]]") == 8.5
  assert mt_bench.parse_rating("Rating: [6]") == 6  # FastChat's fallback pattern
  assert mt_bench.parse_rating("[[3]] at first, then [[9]]") == 3  # the first one
  for unparsable in ["Rating: seven", "[[11]]", "[[0]]", "", "[[rating]]"]:
    assert mt_bench.parse_rating(unparsable) is None, unparsable


def test_both_orders_make_one_preference_on_alpaca_evals_scale():
  # Order 1 shows the reference as (a); order 2 shows the model as (a).
  assert alpaca_eval.combine_orders("b", "a") == 2.0  # the model won both
  assert alpaca_eval.combine_orders("a", "b") == 1.0  # the reference won both
  assert alpaca_eval.combine_orders("a", "a") == 1.5  # (a) won both: position, a tie
  assert alpaca_eval.combine_orders("b", "b") == 1.5
  assert math.isnan(alpaca_eval.combine_orders(None, "a"))  # no guess from one order
  assert math.isnan(alpaca_eval.combine_orders("b", None))


@pytest.fixture(scope="module")
def alpaca_eval_package():
  # alpaca_eval 0.6.6 imports pkg_resources (setuptools < 81) for two version helpers
  # our comparison never calls; newer setuptools no longer has it.
  if importlib.util.find_spec("pkg_resources") is None:
    sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
  package = pytest.importorskip("alpaca_eval.metrics.glm_winrate")
  return package


def _synthetic_judgements(n=120, seed=0):
  """Preferences that depend on length and on a per-instruction difficulty, with ties and
  NaNs; and AlpacaEval's df_gamed.csv layout for the same instructions."""
  rng = np.random.default_rng(seed)
  difficulty = rng.normal(size=n)
  reference_lengths = rng.integers(50, 1500, size=n)
  model_lengths = rng.integers(50, 1500, size=n)
  logit = 2 * np.tanh((model_lengths - reference_lengths) / 400) + difficulty + 0.3
  preferences = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), 2.0, 1.0)
  preferences[rng.uniform(size=n) < 0.2] = 1.5
  preferences[[3, 40]] = np.nan
  gamed = [{"model": variant, "index": i, "instruction_difficulty": difficulty[i],
            "std_delta_len": (d := rng.normal()),
            "preference": 1 / (1 + np.exp(-(1.5 * np.tanh(d) + difficulty[i] - 0.5))),
            "not_gamed_baseline": False}
           for variant in ("concise", "verbose") for i in range(n)]
  return preferences, model_lengths, reference_lengths, gamed


def test_win_rate_and_length_controlled_win_rate_equal_the_alpaca_eval_package(
    alpaca_eval_package, tmp_path, monkeypatch):
  import pandas as pd
  preferences, model_lengths, reference_lengths, gamed = _synthetic_judgements()
  gamed_path = tmp_path / "df_gamed.csv"
  pd.DataFrame(gamed).to_csv(gamed_path, index=False)
  # The package downloads df_gamed.csv from the Hub; here it reads the same synthetic file.
  monkeypatch.setattr(alpaca_eval_package, "hf_hub_download", lambda **_: str(gamed_path))
  annotations = [{"index": i, "preference": p, "output_1": "r" * int(r), "output_2": "m" * int(m),
                  "generator_1": "reference", "generator_2": "model", "annotator": "judge"}
                 for i, (p, m, r) in enumerate(zip(preferences, model_lengths, reference_lengths))]

  ours = win_rates.win_rate(preferences)
  theirs = alpaca_eval_package.get_winrate(annotations)
  assert ours["win_rate"] == pytest.approx(theirs["win_rate"], abs=1e-9)
  assert ours["standard_error"] == pytest.approx(theirs["standard_error"], abs=1e-9)
  for count in ("n_wins", "n_wins_base", "n_draws", "n_total"):
    assert ours[count] == theirs[count], count

  for glm, gamed_annotations in [(win_rates.GLM_V1, win_rates.read_gamed_annotations(gamed_path)),
                                 (win_rates.GLM_MINIMAL, None)]:
    theirs = alpaca_eval_package.get_length_controlled_winrate(
        annotations, glm_name=glm, save_weights_dir=None, is_warn_extreme_changes=False)
    ours = win_rates.length_controlled_win_rate(preferences, model_lengths, reference_lengths,
                                                gamed_annotations=gamed_annotations)
    assert ours["glm"] == glm
    assert ours["length_controlled_win_rate"] == pytest.approx(
        theirs["length_controlled_winrate"], abs=1e-9), glm
    assert ours["lc_standard_error"] == pytest.approx(theirs["lc_standard_error"], abs=1e-9)
    # Length mattered in these judgements, and the model's answers were not shorter:
    # controlling for length moves the win rate.
    assert abs(ours["length_controlled_win_rate"] - win_rates.win_rate(preferences)["win_rate"]) > 0.1


def test_the_win_rate_by_hand():
  result = win_rates.win_rate([2, 2, 1, 1.5, math.nan, 0])  # 0 is AlpacaEval's legacy tie
  shares = np.array([1, 1, 0, 0.5, 0.5])
  assert result["win_rate"] == pytest.approx(100 * shares.mean())
  assert result["standard_error"] == pytest.approx(100 * shares.std(ddof=1) / math.sqrt(5))
  assert (result["n_wins"], result["n_wins_base"], result["n_draws"], result["n_total"]) == (2, 1, 2, 5)


def _quality(output):
  return 2 if "GOOD" in output else 0 if output == "bad" else 1  # the reference's: 1


class ScriptedJudge(Judge):
  """Prefers the output that says "GOOD", then the reference, then "bad"; answers nonsense where the instruction is
  listed in `confuse`; prefers (a) whatever it says where listed in `position_bias`."""
  identity = "scripted"

  def __init__(self, confuse=(), position_bias=(), **kwargs):
    super().__init__(**kwargs)
    self.confuse, self.position_bias = set(confuse), set(position_bias)

  def _complete(self, requests):
    replies = []
    for request in requests:
      text = request[-1]["content"]
      instruction = text.split("# Instruction\n", 1)[1].split("\n\n# Output (a)", 1)[0]
      output_a, output_b = text.split("# Output (a)\n", 1)[1].split("\n\n# Output (b)\n", 1)
      output_b = output_b.split("\n\n# Your task", 1)[0]
      if instruction in self.confuse:
        replies.append("Both are lovely.")
      elif instruction in self.position_bias:
        replies.append("[[a]]")
      else:
        replies.append("[[a]]" if _quality(output_a) > _quality(output_b) else "[[b]]")
    return replies


@needs_data
def test_alpaca_eval_judges_both_orders_and_counts_what_it_cannot_read(tmp_path):
  reference = alpaca_eval.read_reference(SHARED, max_examples=12)
  instructions = [r["instruction"] for r in reference]
  # The model wins 7 instructions, loses 2 ("bad"), ties one by the judge's position
  # bias, and 2 get no verdict.
  outputs = ["GOOD answer"] * 9 + ["bad", "bad", "GOOD"]
  judge = ScriptedJudge(confuse=instructions[:2], position_bias=instructions[11:],
                        cache_dir=str(tmp_path / "cache"))
  judgements = tmp_path / "alpaca_eval.jsonl"
  result = alpaca_eval.evaluate(judge, outputs, SHARED, max_examples=12,
                                judgements_path=str(judgements))
  assert (result["n"], result["n_judged"], result["unparsable"],
          result["unparsable_judgements"]) == (12, 10, 2, 4)
  assert (result["n_wins"], result["n_wins_base"], result["n_draws"]) == (7, 2, 1)
  assert result["win_rate"] == pytest.approx(100 * 7.5 / 10)
  assert judge.requests_made == 24  # both orders of each instruction
  rows = [json.loads(line) for line in judgements.read_text().splitlines()]
  assert [r["preference"] for r in rows] == [None, None] + [2.0] * 7 + [1.0, 1.0, 1.5]
  assert rows[11]["verdict_reference_first"] == rows[11]["verdict_model_first"] == "a"
  assert rows[2]["reference_output"] == reference[2]["output"]
  assert result["length_controlled_win_rate"] == pytest.approx(
      win_rates.length_controlled_win_rate(
          [r["preference"] for r in rows], [len(o) for o in outputs],
          [len(r["output"]) for r in reference])["length_controlled_win_rate"])

  # A function of the instructions gives the outputs too; the cache answers the rerun.
  again = ScriptedJudge(confuse=instructions[:2], position_bias=instructions[11:],
                        cache_dir=str(tmp_path / "cache"))
  assert alpaca_eval.evaluate(again, lambda texts: outputs[:len(texts)], SHARED,
                              max_examples=12)["win_rate"] == result["win_rate"]
  assert again.requests_made == 0


class StubServer:
  """An OpenAI-compatible chat completions server in a thread: it records each request
  body and answers with `reply(body)`; a status other than 200 answers that error."""

  def __init__(self, reply):
    self.bodies, self.paths, self.status, self.raw = [], [], 200, None
    self.fail_first = 0  # answer this many requests with HTTP 503 first
    stub = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_POST(self):  # pylint: disable=invalid-name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        stub.bodies.append(body)
        stub.paths.append((self.path, self.headers.get("Authorization")))
        if stub.fail_first:
          stub.fail_first -= 1
          self.send_error(503, "busy")
          return
        payload = stub.raw if stub.raw is not None else json.dumps(
            {"object": "chat.completion",
             "choices": [{"index": 0, "message": {"role": "assistant",
                                                  "content": reply(body)}}]}).encode()
        self.send_response(stub.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

      def log_message(self, *args):
        pass

    self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
    threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()

  def close(self):
    self.server.shutdown()
    self.server.server_close()


@pytest.fixture
def stub_server():
  servers = []

  def start(reply):
    servers.append(StubServer(reply))
    return servers[-1]

  yield start
  for server in servers:
    server.close()


def _rating_by_turn(body):
  """Turn-1 answers get 8 (7 with a reference shown), turn-2 answers 4."""
  system, user = body["messages"][0]["content"], body["messages"][1]["content"]
  if "second" in system:
    return "The follow-up is weak. Rating: [[4]]"
  return "Rating: [[7]]" if "[The Start of Reference Answer]" in user else "Rating: [[8]]"


def test_an_endpoint_judge_posts_openai_chat_requests_in_batches_and_caches_them(
    stub_server, tmp_path):
  server = stub_server(lambda body: f"echo {body['messages'][-1]['content']}")
  judge = EndpointJudge(server.url + "/v1", "judge-model", cache_dir=str(tmp_path),
                        batch_size=3, concurrency=2, max_tokens=64, api_key="secret")
  requests = ["first", [{"role": "system", "content": "Be fair."},
                        {"role": "user", "content": "second"}], "third", "fourth"]
  assert judge.complete(requests) == ["echo first", "echo second", "echo third", "echo fourth"]
  assert judge.requests_made == 4 and len(server.bodies) == 4
  assert {path for path, _ in server.paths} == {"/v1/chat/completions"}
  assert {auth for _, auth in server.paths} == {"Bearer secret"}
  body = next(b for b in server.bodies if b["messages"][-1]["content"] == "second")
  assert body == {"model": "judge-model", "temperature": 0, "max_tokens": 64,
                  "messages": [{"role": "system", "content": "Be fair."},
                               {"role": "user", "content": "second"}]}

  # The rerun asks nothing; a new request asks only itself; another model asks again.
  rerun = EndpointJudge(server.url, "judge-model", cache_dir=str(tmp_path), max_tokens=64)
  assert rerun.complete(requests + ["fifth"])[:4] == ["echo first", "echo second",
                                                        "echo third", "echo fourth"]
  assert rerun.requests_made == 1 and len(server.bodies) == 5
  other = EndpointJudge(server.url, "another-model", cache_dir=str(tmp_path), max_tokens=64)
  assert other.complete(["first", "first"]) == ["echo first"] * 2  # asked once
  assert other.requests_made == 1 and len(server.bodies) == 6
  # Each cache entry is readable JSON: the judge, the request, the completion.
  entries = [json.loads(p.read_text()) for p in tmp_path.rglob("*.json")]
  assert len(entries) == 6
  assert {"judge", "request", "completion"} == set(entries[0])


def test_a_busy_endpoint_is_asked_again(stub_server):
  server = stub_server(lambda body: "[[a]]")
  server.fail_first = 2
  judge = EndpointJudge(server.url, "judge-model", retries=2, retry_wait=0.01)
  assert judge.complete(["hello"]) == ["[[a]]"]
  assert len(server.paths) == 3
  server.fail_first = 3
  with pytest.raises(UserError, match="HTTP 503"):
    judge.complete(["again"])


def test_endpoint_failures_are_one_clear_error_naming_the_url(stub_server):
  server = stub_server(lambda body: "fine")
  judge = EndpointJudge(server.url, "judge-model", retry_wait=0.01)
  server.status, server.raw = 404, b'{"error": "model judge-model not found"}'
  with pytest.raises(UserError, match=r"127\.0\.0\.1.*HTTP 404.*not found"):
    judge.complete(["hello"])
  server.status, server.raw = 200, b"<html>not json</html>"
  with pytest.raises(UserError, match=r"127\.0\.0\.1.*did not answer with an OpenAI chat"):
    judge.complete(["hello"])
  server.close()
  with pytest.raises(UserError, match=r"127\.0\.0\.1.*could not be reached.*3 tries"):
    judge.complete(["hello again"])
  with pytest.raises(UserError, match="is not an http"):
    EndpointJudge("localhost:8000", "judge-model")
  assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
  assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"


@needs_data
def test_mt_bench_grades_both_turns_with_the_published_prompts(stub_server, tmp_path):
  server = stub_server(_rating_by_turn)
  questions = mt_bench.read_questions(SHARED)
  assert len(questions) == 80 and len({q["category"] for q in questions}) == 8
  # A writing question and a math question (which has reference answers).
  chosen = [q for q in questions if q["question_id"] in (81, 111)]
  seen = []

  def answer(conversations):
    seen.extend(conversations)
    return [f"reply to {c[-1]['content'][:20]}" for c in conversations]

  judge = EndpointJudge(server.url, "judge-model", cache_dir=str(tmp_path / "cache"))
  questions_dir = tmp_path / "data" / "eval" / "open_ended"
  questions_dir.mkdir(parents=True)
  (questions_dir / "mtbench_question.jsonl").write_text(
      "".join(json.dumps(q) + "\n" for q in chosen))
  result = mt_bench.evaluate(judge, answer, str(tmp_path / "data"),
                             judgements_path=str(tmp_path / "mt_bench.jsonl"))
  # Turn 2 is asked after the model's own turn-1 answer.
  assert seen[2] == [{"role": "user", "content": chosen[0]["turns"][0]},
                     {"role": "assistant", "content": f"reply to {chosen[0]['turns'][0][:20]}"},
                     {"role": "user", "content": chosen[0]["turns"][1]}]
  assert result["score_turn1"] == pytest.approx((8 + 7) / 2)
  assert result["score_turn2"] == 4 and result["score"] == pytest.approx((8 + 7 + 4 + 4) / 4)
  assert result["categories"] == {"math": {"score": 5.5, "score_turn1": 7, "score_turn2": 4},
                                  "writing": {"score": 6, "score_turn1": 8, "score_turn2": 4}}
  assert result["unparsable"] == 0 and result["n_rated"] == 4
  # The judge saw FastChat's single-math-v1-multi-turn prompt for the math question's turn 2.
  math_turn2 = mt_bench.grading_request(chosen[1], ["x", "y"], 2)
  assert math_turn2[0]["content"].startswith("Please act as an impartial judge")
  assert "### Reference answer:\n" + chosen[1]["reference"][1] in math_turn2[1]["content"]
  assert math_turn2[1]["content"].endswith("<|The End of Assistant A's Conversation with User|>")
  rows = [json.loads(line) for line in (tmp_path / "mt_bench.jsonl").read_text().splitlines()]
  assert [(r["question_id"], r["turn"], r["rating"]) for r in rows] == [
      (81, 1, 8), (81, 2, 4), (111, 1, 7), (111, 2, 4)]


@pytest.mark.skipif(not os.path.isdir(STORIES), reason="needs ../shared/data")
def test_a_local_checkpoint_judges_and_its_unparsable_verdicts_are_counted(tmp_path):
  from flan_jax.llm_judge import make_judge
  judge = make_judge(checkpoint=STORIES, cache_dir=str(tmp_path / "cache"), max_tokens=8,
                     max_input_length=96, batch_size=4)
  # A 260K-parameter story model writes stories, not verdicts.
  result = alpaca_eval.evaluate(judge, ["Once upon a time.", "The end."], SHARED, max_examples=2,
                                judgements_path=str(tmp_path / "judgements.jsonl"))
  rows = [json.loads(line) for line in (tmp_path / "judgements.jsonl").read_text().splitlines()]
  assert all(isinstance(r["reply_reference_first"], str) for r in rows)
  assert (result["unparsable"], result["unparsable_judgements"], result["n_judged"]) == (2, 4, 0)
  assert math.isnan(result["win_rate"]) and judge.requests_made == 4
  again = make_judge(checkpoint=STORIES, cache_dir=str(tmp_path / "cache"), max_tokens=8,
                     max_input_length=96, batch_size=4)
  alpaca_eval.evaluate(again, ["Once upon a time.", "The end."], SHARED, max_examples=2)
  assert again.requests_made == 0


def test_make_judge_wants_exactly_one_judge():
  from flan_jax.llm_judge import make_judge
  with pytest.raises(UserError, match="Choose one judge"):
    make_judge()
  with pytest.raises(UserError, match="Choose one judge"):
    make_judge(endpoint="http://localhost:1", model="m", checkpoint="/x")
  with pytest.raises(UserError, match="judge_model"):
    make_judge(endpoint="http://localhost:1")


@needs_data
def test_bad_benchmark_input_is_one_clear_error(tmp_path):
  judge = ScriptedJudge()
  with pytest.raises(UserError, match="1 model outputs for 3 AlpacaEval instructions"):
    alpaca_eval.evaluate(judge, ["only one"], SHARED, max_examples=3)
  with pytest.raises(UserError, match="Model output 1 .* is NoneType"):
    alpaca_eval.evaluate(judge, ["a", None, "c"], SHARED, max_examples=3)
  with pytest.raises(UserError, match="references there: .*text_davinci_003"):
    alpaca_eval.read_reference(SHARED, reference="gpt5")
  assert judge.requests_made == 0
  with pytest.raises(UserError, match="two string answers"):
    mt_bench.evaluate(judge, [["turn 1 only"]], SHARED, max_examples=1)
  broken = tmp_path / "eval" / "open_ended"
  broken.mkdir(parents=True)
  (broken / "mtbench_question.jsonl").write_text('{"category": "math", "turns": ["one"]}\n')
  with pytest.raises(UserError, match=r"mtbench_question.jsonl:1: .*two string \"turns\""):
    mt_bench.read_questions(str(tmp_path))
