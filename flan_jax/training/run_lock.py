"""One run per MODEL_DIR: a lock file that a second concurrent run is refused by.

Two runs writing one MODEL_DIR overwrite each other's checkpoints and interleave their
metrics. The primary process of a run holds MODEL_DIR/.run_lock (its host, process id
and a heartbeat it refreshes while it runs). Another run finding the lock is refused
with a message naming the holder, unless the holder is gone: a dead process on this
host, or, for another host, a heartbeat older than `stale_after_s`.
"""

import json
import logging
import os
import socket
import threading
import time

from flan_jax.errors import UserError

LOCK_FILE = ".run_lock"


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
    self.path = os.path.join(model_dir, LOCK_FILE)
    self.stale_after_s = stale_after_s
    self.enabled = enabled
    self._held = False
    self._stopped = threading.Event()

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # unreadable: treat as stale below

  def _is_stale(self, holder: dict) -> bool:
    if not holder:
      return True
    if holder.get("host") == socket.gethostname():
      return not _alive(int(holder.get("pid", -1)))
    try:
      age = time.time() - os.path.getmtime(self.path)
    except OSError:
      return True
    return age > self.stale_after_s

  def acquire(self) -> None:
    if not self.enabled:
      return
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    try:  # created only if absent, atomically: of two runs starting together, one wins
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      holder = self._holder()
      if not self._is_stale(holder):
        raise UserError(
            f"MODEL_DIR {os.path.dirname(self.path)} is in use by process {holder.get('pid')} "
            f"on {holder.get('host')} (started {holder.get('started')}): wait for that run to "
            f"end, or choose another MODEL_DIR. If that run is gone, delete {self.path}.") from None
      logging.warning("Taking over %s from a run that is gone (%s).", self.path, holder)
      temporary = f"{self.path}.{os.getpid()}"
      with open(temporary, "w") as f:
        f.write(record)
      os.replace(temporary, self.path)
    else:
      with os.fdopen(fd, "w") as f:
        f.write(record)
    self._held = True
    threading.Thread(target=self._beat, daemon=True).start()

  def _beat(self) -> None:
    # Refreshes the lock's time while the run lives, so that runs on other hosts (which
    # cannot see this process) only take it over once it has stopped beating.
    while not self._stopped.wait(self.stale_after_s / 10):
      try:
        os.utime(self.path)
      except OSError:
        return

  def release(self) -> None:
    self._stopped.set()
    if self._held:
      try:
        with open(self.path) as f:
          mine = json.load(f).get("pid") == os.getpid()
      except (OSError, ValueError):
        mine = False
      if mine:
        os.remove(self.path)
      self._held = False

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
