"""Run a Milvus standalone server (the PyPI package ``milvus``) until stdin closes, or SIGTERM / SIGINT.

Run it with the Python of the server's own environment (``scripts/ensure-milvus-server.sh`` makes it)::

    .venv-milvus-server/bin/python scripts/run-milvus-server.py DATA_DIR

Every port the server listens on (gRPC proxy, REST/metrics, the embedded etcd's client and peer ports, the
coordinators and nodes) is a free port chosen by the OS, so several servers (and other programs) can run side
by side: the package itself leaves etcd on 2379/2380, so the launcher gives the embedded etcd a configuration
file (``etcd.config.path``) of its own, on 127.0.0.1. (Milvus' own components listen on every interface.) Once the
server answers its health check, one JSON line goes to stdout: ``{"port": int (gRPC, what a client connects
to: milvus://127.0.0.1:PORT/COLLECTION), "http_port": int, "version": str, "pid": int (the server
binary), "data_dir": str}``. Data, configuration and logs (``DATA_DIR/logs/milvus-stderr.log``) live under
DATA_DIR. When stdin reaches its end (the parent closed it, or died) or on SIGTERM / SIGINT, the server is
stopped: SIGTERM, then SIGKILL after 5 s (Milvus 2.3's graceful stop waits ~40 s on its query node; what was
flushed is on disk either way); on Linux the server also gets SIGKILL should this launcher die, so a test
fixture that is killed leaves no server behind. Exit status 1 (and the log's tail on stderr) when the server
does not start.
"""

from __future__ import annotations

import ctypes
import functools
import json
import signal
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

STOP_WAIT_S = 5


def _die_with_parent() -> None:
    """In the server's process before it runs (Linux): SIGKILL when the launcher dies (PR_SET_PDEATHSIG)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_ports(n: int) -> list[int]:
    """n distinct ports that nothing listens on now (all held open together while picking)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _wait_healthy(server, stop: threading.Event, timeout: float = 180.0) -> None:
    """Until the server answers ``/healthz`` with OK. Raises: RuntimeError (it exited, or a signal came),
    TimeoutError."""
    import time
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{server.webservice_port}/healthz"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.server_proc.poll() is not None:
            raise RuntimeError(f"it exited with status {server.server_proc.returncode}")
        if stop.is_set():
            raise RuntimeError("stopped before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if b"OK" in r.read():
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"no answer from {url} in {timeout:.0f} s")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import milvus

    if sys.platform.startswith("linux"):  # the package starts the server with subprocess.Popen: add the hook
        popen = functools.partial(subprocess.Popen, preexec_fn=_die_with_parent)
        milvus.subprocess = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})

    data_dir = Path(sys.argv[1]).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    # the package's configuration template, with the embedded etcd's own configuration file added
    default = milvus.MilvusServerConfig()
    template = data_dir / "milvus.yaml.template"
    text = Path(default.template_file).read_text(encoding="utf-8")
    text = text.replace("\netcd:\n", "\netcd:\n  config:\n    path: {{ etcd_config_path }}\n", 1)
    template.write_text(text, encoding="utf-8")
    config = milvus.MilvusServerConfig(template=str(template))
    config.glog_conf_file = default.glog_conf_file  # set only for the package's own template
    port_keys = [k for k in config.configurable_items if k.endswith("_port")]
    ports = _free_ports(len(port_keys) + 2)
    settings = dict(zip(port_keys, ports, strict=False))
    peer = ports[len(port_keys) + 1]
    etcd_yaml = data_dir / "etcd.yaml"
    client_url, peer_url = f"http://127.0.0.1:{settings['etcd_port']}", f"http://127.0.0.1:{peer}"
    etcd_yaml.write_text(
        f"name: default\nlisten-client-urls: {client_url}\nadvertise-client-urls: {client_url}\n"
        f"listen-peer-urls: {peer_url}\ninitial-advertise-peer-urls: {peer_url}\n"
        f"initial-cluster: default={peer_url}\n",
        encoding="utf-8",
    )
    server = milvus.MilvusServer(config, wait_for_started=False, **settings)
    server.config.set("etcd_config_path", str(etcd_yaml))
    server.webservice_port = ports[len(port_keys)]  # start() takes the first free port from here up
    server.set_base_dir(str(data_dir))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
        _wait_healthy(server, stop)
    except (RuntimeError, TimeoutError, OSError) as e:
        server.stop()
        logs = [data_dir / "logs" / "milvus-stderr.log", data_dir / "logs" / "milvus-stdout.log"]
        tail = "".join(f.read_text(errors="replace")[-3000:] for f in logs if f.is_file())
        print(f"run-milvus-server: the Milvus server did not start ({e})\n{tail}", file=sys.stderr)
        return 1
    try:
        ready = {"port": server.listen_port, "http_port": server.webservice_port, "version": milvus.__version__,
                 "pid": server.server_proc.pid, "data_dir": str(data_dir)}  # fmt: skip
        print(json.dumps(ready), flush=True)

        def watch_stdin():
            while sys.stdin.buffer.read(1 << 16):
                pass
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        while not stop.wait(0.5):
            if server.server_proc is None or server.server_proc.poll() is not None:
                print("run-milvus-server: the Milvus server exited", file=sys.stderr)
                return 1
    finally:
        proc = server.server_proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # a clean stop flushes; the package's stop() waits only 1 s
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
