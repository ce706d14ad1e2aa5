"""One run per MODEL_DIR: a lock file that a second concurrent run is refused by.

Two runs writing one MODEL_DIR overwrite each other's checkpoints and interleave their
metrics. The primary process of a run holds MODEL_DIR/.run_lock (its host, process id
and a heartbeat it refreshes while it runs). Another run finding the lock is refused
with a message naming the holder, unless the holder is gone: a dead process on this
host, or, for another host, a heartbeat older than `stale_after_s`.

In a bucket (gs://...) nothing creates a file only if it is absent, so there the lock
is checked, then written: it refuses a run started after another has begun, but two
started within the same moment may both go on.
"""

import json
import logging
import os
import socket
import threading
import time

from flan_jax import paths
from flan_jax.errors import UserError
from flan_jax.model_dir import LOCK_FILE


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's live process
    return True
  return True


class RunLock:
  """`with RunLock(model_dir):` holds the lock for the block, refreshing it meanwhile."""

  def __init__(self, model_dir: str, stale_after_s: float = 600.0, enabled: bool = True):
    self.path = paths.join(model_dir, LOCK_FILE)
    self.stale_after_s = stale_after_s
    self.enabled = enabled
    self._held = False
    self._stopped = threading.Event()

  def _holder(self) -> dict | None:
    if not paths.exists(self.path):
      return None
    try:
      return json.loads(paths.read_text(self.path))
    except (OSError, ValueError):
      return {}  # unreadable: treat as stale below

  def _is_stale(self, holder: dict) -> bool:
    if not holder:
      return True
    if holder.get("host") == socket.gethostname():
      return not _alive(int(holder.get("pid", -1)))
    try:
      age = time.time() - paths.modified_time(self.path)
    except OSError:
      return True
    return age > self.stale_after_s

  def acquire(self) -> None:
    if not self.enabled:
      return
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    self._record = record
    try:  # created only if absent, atomically: of two runs starting together, one wins
      if paths.is_remote(self.path):
        if paths.exists(self.path):
          raise FileExistsError(self.path)
        paths.write_atomically(self.path, record)
        fd = None
      else:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      holder = self._holder()
      if not self._is_stale(holder):
        raise UserError(
            f"MODEL_DIR {os.path.dirname(self.path)} is in use by process {holder.get('pid')} "
            f"on {holder.get('host')} (started {holder.get('started')}): wait for that run to "
            f"end, or choose another MODEL_DIR. If that run is gone, delete {self.path}.") from None
      logging.warning("Taking over %s from a run that is gone (%s).", self.path, holder)
      paths.write_atomically(self.path, record)
    else:
      if fd is not None:
        with os.fdopen(fd, "w") as f:
          f.write(record)
    self._held = True
    threading.Thread(target=self._beat, daemon=True).start()

  def _beat(self) -> None:
    # Refreshes the lock's time while the run lives, so that runs on other hosts (which
    # cannot see this process) only take it over once it has stopped beating.
    while not self._stopped.wait(self.stale_after_s / 10):
      try:
        if paths.is_remote(self.path):  # objects cannot be touched, only rewritten
          paths.write_atomically(self.path, self._record)
        else:
          os.utime(self.path)
      except Exception:  # a failing heartbeat must not kill the run; the lock just ages
        return

  def release(self) -> None:
    self._stopped.set()
    if self._held:
      holder = self._holder() or {}
      if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        paths.remove(self.path)
      self._held = False

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
