"""What `nmt serve` runs: bind the address, load the model, serve with uvicorn until Ctrl-C or
SIGTERM, then stop cleanly.

Stopping: the listening socket closes, the requests already queued are still answered for
`grace_s` seconds (the batch being translated always finishes), the rest get 503, and the
command returns normally. A second Ctrl-C quits at once. Startup errors are NmtErrors: a bad
host is a usage error (exit 2), a port in use or a bad checkpoint a runtime error (exit 1)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import re
import signal
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

from nmt.errors import NmtError, UsageError
from nmt.serve import require_server_packages
from nmt.serve.options import ServeOptions

log = logging.getLogger(__name__)

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")  # RFC 1123: checked before any lookup


def run_server(checkpoint_path: Path | None, options: ServeOptions, device: str = "cpu",
               precision: str | None = None, threads: int | None = None,
               verbose: bool = False) -> None:
    """Serves the checkpoint (file or run directory; default: the newest run) until stopped."""
    require_server_packages()
    options.check()
    sock = bind(options.host, options.port)
    try:
        app = _load_app(checkpoint_path, options, device, precision, threads)
        _serve(app, sock, options, verbose)
    finally:
        sock.close()


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a one-line error: the address is checked here, before
    the model loads, so that a typo costs no waiting."""
    if not (_is_ip(host) or (len(host) <= 253 and _HOST_NAME.fullmatch(host))):
        raise UsageError(f"--host {host}: not a host name or address (e.g. 127.0.0.1, ::1, "
                         f"0.0.0.0, localhost)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise UsageError(f"--host {host}: not a host name or address ({reason})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise _bind_error(host, port, err) from None
    sock.setblocking(False)
    return sock


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bind_error(host: str, port: int, err: OSError) -> NmtError:
    if err.errno == errno.EADDRINUSE:
        return NmtError(f"--port {port}: {host}:{port} is already in use (stop the other "
                        f"server, or choose another --port; 0 picks a free one)")
    if err.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"--host {host}: not an address of this machine")
    if err.errno == errno.EACCES:
        return NmtError(f"--port {port}: permission denied (ports below 1024 need privileges)")
    return NmtError(f"cannot listen on {host}:{port} ({err.strerror or err})")


def _load_app(checkpoint_path, options: ServeOptions, device: str, precision: str | None,
              threads: int | None):
    import torch

    from nmt.inference.translator import load_translator
    from nmt.serve.answer import widest_allowed
    from nmt.serve.app import create_app

    if threads:
        torch.set_num_threads(threads)
    translator = load_translator(checkpoint_path, device, precision=precision)
    widest = widest_allowed(translator, options)
    if translator.decode.beam > widest:
        raise UsageError(f"--max-beam {options.max_beam}: narrower than the checkpoint's "
                         f"decode.beam {translator.decode.beam} (at most {widest} here)")
    return create_app(translator, options)


def _serve(app, sock: socket.socket, options: ServeOptions, verbose: bool) -> None:
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            log.info("stopping: answering the queued requests (at most %g s), refusing new ones",
                     options.grace_s)
            app.state.batcher.close(options.grace_s)
            await super().shutdown(sockets)

    config = uvicorn.Config(app, log_config=None, access_log=verbose, lifespan="on",
                            ws="none", timeout_graceful_shutdown=options.grace_s + 30)
    _route_uvicorn_logs(verbose)
    host, port = sock.getsockname()[:2]
    where = f"[{host}]" if ":" in host else host
    log.info("serving on http://%s:%d/ (API: /docs; Ctrl-C stops)", where, port)
    if not options.loopback and options.api_key is None:
        log.warning("listening on %s without --api-key: anyone who reaches this machine can "
                    "use the model", host)
    server = Server(config)
    with _signals_recorded():
        server.run(sockets=[sock])
    if server.force_exit:  # a second Ctrl-C: the queued requests were dropped
        raise KeyboardInterrupt
    log.info("stopped")


@contextmanager
def _signals_recorded():
    """While uvicorn runs, Ctrl-C and SIGTERM are only logged outside it: uvicorn handles them
    and, once stopped, raises them again, which must then end nothing but the server."""
    handled = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, lambda num, frame: log.debug("signal %d", num))
              for s in handled}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def _route_uvicorn_logs(verbose: bool) -> None:
    """uvicorn's warnings and errors go where nmt's logs go (stderr, one format); its start-up
    chatter and the access log (a line per request) only with --verbose."""
    ours = list(logging.getLogger("nmt").handlers) or [logging.StreamHandler(sys.stderr)]
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = ours if name != "uvicorn.access" or verbose else []
        logger.propagate = False
    logging.getLogger("uvicorn").setLevel(logging.INFO if verbose else logging.WARNING)
