"""Looking tasks and mixtures up by name, with a message that suggests the closest ones."""

import seqio

from flan_jax.errors import UserError, closest_names


def registered_names() -> list[str]:
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_mixture_or_task(name: str) -> seqio.Task | seqio.Mixture:
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  names = registered_names()
  if not names:
    raise UserError(
        f"Unknown task or mixture {name!r}: no tasks are registered. Import the module "
        "that registers them (e.g. `import flan_jax_tasks.default_mixture` in the gin file).")
  suggestions = ", ".join(closest_names(name, names)) or "(none similar)"
  raise UserError(
      f"Unknown task or mixture {name!r}. Closest registered names: {suggestions}. "
      f"({len(names)} registered; `python -c 'import seqio, flan_jax_tasks.default_mixture; "
      "print(seqio.MixtureRegistry.names())'` lists the mixtures.)")


def leaf_tasks(name: str) -> list[seqio.Task]:
  target = get_mixture_or_task(name)
  return list(target.tasks) if isinstance(target, seqio.Mixture) else [target]
