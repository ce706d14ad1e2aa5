import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run on the CPU even where a GPU exists, so results match CI.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Many tests (and the CLIs they start) compile the same tiny programs: a train step per
# run, the same evaluation. JAX's persistent compilation cache, shared by the xdist
# workers and their subprocesses, compiles each once; a cached executable is the same
# program, so no result changes (the test run on CI starts with an empty cache).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"flan_jax_tests_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
