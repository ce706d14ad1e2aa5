"""gin for the entry points: file lookup, `--gin.NAME=value` flags, clear errors.

Only the entry points (`train.py`, ...) use gin; library code takes plain arguments.
`--gin.NAME=VALUE` is shorthand for `--gin_bindings='NAME = VALUE'`. VALUE is gin
syntax (numbers, 'strings', [lists], {dicts}, @references, %MACROS); anything that
does not parse as such is taken as a bare string, so `--gin.MODEL_DIR=/tmp/run`
works without shell-quoted quotes.
"""

import ast
import contextlib
import importlib.util
import os
import sys
from typing import Callable, Sequence

from absl import app, flags, logging
import gin

from flan_jax.errors import UserError, closest_names, exit_on_user_error



def _gin_dir() -> str:
  """The repository's gin/ directory (an editable install, a checkout), else the copy a
  normal install carries as `flan_jax_gin`: `include 'models/decoder_tiny.gin'` then
  resolves from any working directory."""
  checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")
  if os.path.isdir(checkout):
    return checkout
  spec = importlib.util.find_spec("flan_jax_gin")
  if spec and spec.submodule_search_locations:
    return list(spec.submodule_search_locations)[0]
  return checkout


GIN_DIR = _gin_dir()


def _as_gin_value(text: str) -> str:
  # References, and containers that may hold them ([@ChatTask()]), are gin's to parse;
  # anything else Python cannot read is a bare string (--gin.MODEL_DIR=/tmp/run).
  if text.startswith(("@", "%", "[", "(", "{")):
    return text
  try:
    ast.literal_eval(text)
    return text
  except (ValueError, SyntaxError):
    return repr(text)


def rewrite_gin_flags(argv: Sequence[str]) -> list[str]:
  """Turns every `--gin.NAME=VALUE` into `--gin_bindings=NAME = VALUE`."""
  rewritten = []
  for arg in argv:
    if arg.startswith("--gin.") and "=" in arg:
      name, value = arg[len("--gin."):].split("=", 1)
      rewritten.append(f"--gin_bindings={name} = {_as_gin_value(value)}")
    elif arg.startswith("--gin."):
      raise UserError(f"{arg!r} has no value: write --gin.NAME=VALUE.")
    else:
      rewritten.append(arg)
  return rewritten


def _resolve(path: str) -> str:
  for candidate in (path, os.path.join(GIN_DIR, path)):
    if os.path.isfile(candidate):
      return candidate
  raise UserError(f"gin file {path!r} not found (looked in {os.getcwd()} and {GIN_DIR}).")


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses files then bindings; any mistake becomes one UserError naming it."""
  if not gin_files:
    raise UserError("No --gin_file given; e.g. --gin_file=gin/quickstart.gin.")
  files = [_resolve(f) for f in gin_files]
  gin.add_config_file_search_path(GIN_DIR)
  for path in files:
    try:
      with _quiet_absl():  # gin logs an ERROR for every search-path miss of an include
        gin.parse_config_file(path)
    except (ImportError, IOError) as e:
      raise UserError(f"gin file {path}: {e}") from None
    except Exception as e:  # gin reports syntax and unknown-name errors in many types
      raise UserError(f"gin file {path}: {_first_line(e)}") from None
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise UserError(f"bad gin binding {binding!r}: {_first_line(e)}") from None
  try:
    gin.finalize()
  except Exception as e:
    raise UserError(f"gin configuration: {_first_line(e)}") from None


def check_bindings_used(bindings: Sequence[str]) -> None:
  """Call from inside the configured function, once gin has built its arguments: a macro
  that nothing reads (`--gin.TRAIN_STEPZ=5`), or a command-line binding of a
  configurable that nothing built (`--gin.T5Config.embed_dim=32` for a decoder), is an
  error rather than a setting silently ignored."""
  from gin import config as gin_config  # gin keeps what was bound and what was used here
  used = set(gin_config._OPERATIVE_CONFIG)
  unused = sorted(name for name, selector in gin_config._CONFIG
                  if selector == "gin.macro" and (name, selector) not in used)
  built = {selector.rsplit(".", 1)[-1] for _, selector in used} | {
      selector for _, selector in used}
  for binding in bindings:
    name = binding.split("=", 1)[0].strip()
    configurable = name.rsplit(".", 1)[0].rsplit("/", 1)[-1] if "." in name else None
    if configurable and configurable not in built:
      unused.append(name)
  if unused:
    macros = [name for name, selector in gin_config._CONFIG if selector == "gin.macro"]
    def hint(name: str) -> str:
      close = closest_names(name, [m for m in macros if m != name]) if "." not in name else []
      return f"{name} (did you mean {', '.join(close)}?)" if close else name
    hints = [hint(n) for n in unused]
    raise UserError(f"gin settings that nothing uses: {'; '.join(hints)}. Remove them or fix "
                    "their names.")


@contextlib.contextmanager
def _quiet_absl():
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.FATAL)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def _first_line(error: Exception) -> str:
  text = str(error).strip() or type(error).__name__
  return text.splitlines()[0] if "\n" in text and len(text) > 300 else text


# The flags `define_flags` defines belong to the entry point that calls it: its --help
# lists them.
flags.disclaim_key_flags()


def define_flags(binding_example: str) -> None:
  """--gin_file and --gin_bindings, for an entry point configured by gin (once, however
  many entry points a process imports)."""
  if "gin_file" in flags.FLAGS:
    return
  flags.DEFINE_multi_string("gin_file", [], "gin config files, parsed in order.")
  flags.DEFINE_multi_string("gin_bindings", [], f"gin bindings, e.g. {binding_example!r}.")


def configurables(*classes: type) -> None:
  """Makes each class configurable in gin files (`@DecoderConfig()`, ...)."""
  for cls in classes:
    gin.external_configurable(cls)


def check_command_line_bindings_used() -> None:
  """`check_bindings_used` of the command line's --gin_bindings (none where no command
  line was parsed: a test calling the configured function)."""
  parsed = flags.FLAGS.is_parsed()
  check_bindings_used(flags.FLAGS.gin_bindings if parsed else [])


def main_calling(job: Callable[[], object], before: Callable[[], None] = lambda: None
                 ) -> Callable[[list[str]], None]:
  """An entry point's main: the command line checked and gin parsed (config errors
  before `before`, e.g. joining a cluster), then `job()`."""
  def main(argv: list[str]) -> None:
    start_main(argv, flags.FLAGS.gin_file, flags.FLAGS.gin_bindings)
    before()
    job()
  return main


def run_main(main_fn: Callable[[list[str]], None]) -> None:
  """app.run, with `--gin.NAME=VALUE` flags and UserErrors as one line and exit status 2."""
  argv = exit_on_user_error(rewrite_gin_flags)(sys.argv)
  app.run(exit_on_user_error(main_fn), argv=argv)


def start_main(argv: Sequence[str], gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """What every entry point's main does first: no stray arguments, quiet library logs
  unless --verbosity is given, then the gin configuration."""
  if len(argv) > 1:
    raise UserError(f"Unexpected arguments {list(argv[1:])}; settings go in --gin.NAME=VALUE.")
  if not flags.FLAGS["verbosity"].present:
    # Library INFO logs (orbax, seqio) drown the output; --verbosity=0 brings them back.
    logging.set_verbosity(logging.WARNING)
  parse(gin_files, bindings)
