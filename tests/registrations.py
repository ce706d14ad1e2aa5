"""Task registrations a test module makes, undone after it: the process's registries,
the library's record of its DATA_DIR and the default vocabulary come back exactly as
they were, so tests that register the library from different data (or with another
vocabulary) can share a process in any order."""

import contextlib

import seqio

from flan_jax.data import vocabularies

REGISTRIES = (seqio.MixtureRegistry, seqio.TaskRegistry)


@contextlib.contextmanager
def restored_afterwards():
  from flan_jax_tasks import library
  saved = {registry: dict(registry._REGISTRY) for registry in REGISTRIES}
  saved_library, saved_vocabulary = dict(library._registered), vocabularies._default
  try:
    yield
  finally:
    for registry in REGISTRIES:
      registry._REGISTRY.clear()
      registry._REGISTRY.update(saved[registry])
    library._registered.clear()
    library._registered.update(saved_library)
    vocabularies.set_default_vocabulary(saved_vocabulary)
