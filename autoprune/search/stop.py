"""The stop flag that Ctrl-C sets (:mod:`autoprune.stop`), for the search's safe points."""

from autoprune.stop import stop_on_signals, stop_requested

__all__ = ["stop_on_signals", "stop_requested"]
