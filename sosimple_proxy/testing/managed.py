"""What every driven program (the proxy, baresip, linphonec) shares: it
runs in a directory that is removed afterwards if the helper made it, and a
``with`` block starts it and always cleans up, even when the start fails."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="ManagedProcess")


class ManagedProcess:
    """A mixin: subclasses set ``dir`` and ``_own_dir`` and define
    ``start()`` (returning self) and ``stop()``."""

    dir: Path
    _own_dir: bool

    def start(self: T) -> T:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def stop(self) -> Any:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def cleanup(self) -> None:
        """Stop, and remove the directory if this helper made it."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self: T) -> T:
        try:
            return self.start()
        except BaseException:
            self.cleanup()
            raise

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
