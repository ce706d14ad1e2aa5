import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run on the CPU even where a GPU exists, so results match CI.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
