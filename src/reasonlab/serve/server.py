"""Running the app of `reasonlab serve` with uvicorn: on the calling thread (`run_server`) or on a
background thread (`ServerThread`)."""

from __future__ import annotations

import os
import socket
import threading
import time


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); OSError when the address is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _server(app, sock):
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30, access_log=False)
    return uvicorn.Server(config)


def run_server(app, sock: socket.socket, on_start=None) -> None:
    """Serve `app` on `sock` until interrupted (the calling thread; Ctrl-C stops it)."""
    server = _server(app, sock)
    if on_start is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            on_start()

        server.startup = startup
    server.run(sockets=[sock])


class ServerThread:
    """`app` served on a background thread (tests, notebooks): `.url`, then `.close()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = _server(app, self.sock)
        self.app = app
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def model_name_of(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or "reasonlab"
