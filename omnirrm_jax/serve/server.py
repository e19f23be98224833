"""uvicorn's server, ending with exit status 0 on SIGTERM: uvicorn re-raises a caught SIGTERM after its graceful
shutdown (so the process dies by the signal, status 143); a drained server stopped on purpose should exit 0."""

from __future__ import annotations

import contextlib
import signal
import threading

import uvicorn


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
