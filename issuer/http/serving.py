"""Running uvicorn for ``issuer serve``: listen first, stop cleanly.

- **Listen before uvicorn starts.** The socket is bound here and handed to uvicorn
  (one worker or several), so a port in use is one clear :class:`ListenError`
  naming ``--port``, not uvicorn's start-up lines and exit status 3. Binding the very
  socket that is served leaves no race: a pre-check that closed its socket would
  let another process take the port before uvicorn binds it again.
- **A signal is a request to stop, and stopping is success.** uvicorn stops
  gracefully on SIGINT or SIGTERM, then re-raises the signal so that the default
  action follows: a ``KeyboardInterrupt``, or death by SIGTERM (exit status 143,
  which ``make run`` reports as ``make: *** [Makefile:…: run] Terminated``). The
  server's own exit handler stays installed around the run instead, so the re-raised
  signal (like one arriving before uvicorn installs its handler) means "stop", and
  the process exits 0. With workers, uvicorn's supervisor already ends normally.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from issuer.errors import ListenError
from issuer.http.protocol import ServerConfig

log = logging.getLogger("issuer.serve")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` for uvicorn, or :class:`ListenError` saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: quick restarts
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(_cannot_listen(exc, host, port)) from None
    sock.set_inheritable(True)  # worker processes serve it too
    return sock


def _cannot_listen(exc: OSError, host: str, port: int) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {host}: unknown host name; choose another --host"
    if exc.errno == errno.EADDRINUSE:
        return f"{where} is already in use (another server?); stop it or choose a free --port"
    if exc.errno == errno.EACCES:
        return (
            f"no permission to listen on {where} (ports below 1024 need privileges); "
            "choose another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: not an address of this machine; choose another --host"
    return f"cannot listen on {where}: {exc.strerror or exc.__class__.__name__}"


def serve(config: ServerConfig) -> bool:
    """Serve ``config`` on a socket bound first; False if a single worker failed to start.

    Raises :class:`ListenError` (before anything starts) when the address is unusable.
    """
    sock = listen(config.host, config.port)
    scheme_host = f"[{config.host}]" if ":" in config.host else config.host
    log.info("listening on http://%s:%d (Ctrl-C to stop)", scheme_host, config.port)
    if config.workers > 1:
        from uvicorn.supervisors import Multiprocess  # noqa: PLC0415 - only with workers

        Multiprocess(config, sockets=[sock]).run()
        return True
    server = uvicorn.Server(config)
    with _stop_signals_handled_by(server):
        server.run(sockets=[sock])
    return bool(server.started)


@contextmanager
def _stop_signals_handled_by(server: uvicorn.Server) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``server.handle_exit`` (a graceful stop) for the whole run."""
    previous = {sig: signal.signal(sig, server.handle_exit) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
