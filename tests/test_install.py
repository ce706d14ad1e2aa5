"""A normal (non-editable) `pip install .` carries everything the README uses: the
package, the task library and the gin configs, found from any working directory."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import flan_jax, flan_jax_tasks.library, gin
from flan_jax import gin_utils, train  # train registers the configurables
assert flan_jax.__file__.startswith(sys.argv[1]), flan_jax.__file__
gin_utils.parse(["quickstart.gin"], [])  # which includes models/decoder_tiny.gin
assert gin.query_parameter("DecoderConfig.num_layers") == 4
print("installed")
"""


def test_a_normal_install_has_the_task_library_and_the_gin_configs(tmp_path):
  target = tmp_path / "site"
  install = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
       "--target", str(target), REPO], capture_output=True, text=True, timeout=600)
  assert install.returncode == 0, install.stderr[-3000:]
  env = dict(os.environ, PYTHONPATH=str(target), TF_CPP_MIN_LOG_LEVEL="3")
  check = subprocess.run([sys.executable, "-c", "import sys\n" + CHECK, str(target)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
  assert check.returncode == 0, check.stderr[-3000:]
  assert check.stdout.strip().endswith("installed")
