"""Starting and stopping the whole service: a private Redis, workers and the gunicorn API.

`make run` and the integration tests both go through `Stack`, so the tests
exercise the same processes, commands and environment a user runs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from serving.config import Settings
from serving.fleet_scripts import live_worker_counts, model_ages
from serving.protocol import FleetKeys, Keys
from serving.redis_client import REDIS_ERRORS, RedisClient, connect
from worker.queue import WorkerQueue, worker_id_prefix

REPO_ROOT = Path(__file__).resolve().parent.parent
STOP_GRACE_SECONDS = 20.0
# The two programs of the service, as `python <arguments>`; docker-compose.yml runs the same (a test checks).
API_ARGUMENTS = ("-m", "gunicorn", "-c", "python:app.gunicorn_conf", "app:create_app()")
WORKER_ARGUMENTS = ("-m", "worker")
NGINX_TEMPLATE = REPO_ROOT / "deploy" / "nginx" / "imgcls.conf.template"  # docker-compose.yml mounts the same
# nginx's main configuration around the template, for a private nginx that runs in the foreground.
NGINX_MAIN = """daemon off;
worker_processes 1;
pid {scratch}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {scratch}/nginx-body;
    proxy_temp_path {scratch}/nginx-proxy;
    fastcgi_temp_path {scratch}/nginx-fastcgi;
    uwsgi_temp_path {scratch}/nginx-uwsgi;
    scgi_temp_path {scratch}/nginx-scgi;
    include {scratch}/imgcls.conf;
}}
"""


class StartupError(RuntimeError):
    """A process of the stack did not come up; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SIG_DFL = 0  # libc's value


def _child_setup(launcher_pid: int) -> None:
    """Runs in each child between fork and exec.

    A forked child inherits the launcher's signal mask, and exec keeps it: a worker restarted while
    the launcher blocks SIGINT/SIGTERM for sigwaitinfo would never hear its stop signal. So every
    child starts with an empty mask and the default dispositions of the stop signals (a launcher
    started in the background by a shell ignores SIGINT, and ignored signals survive exec), and dies
    with the launcher, even when the launcher is SIGKILLed (the parent-death signal; sent at once if
    the launcher is already gone). libc's signal(), not Python's, which works in the main thread only.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        libc.signal(int(signum), SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != launcher_pid:
        os.kill(os.getpid(), signal.SIGTERM)


class Stack:
    """Context manager that runs Redis (unless settings name one), workers and the API."""

    def __init__(self, settings: Settings, workers: int = 1, private_redis: bool = True,
                 log_dir: Path | None = None,
                 redis_arguments: tuple[str, ...] = (),
                 redis_url_template: str = "redis://:{password}@127.0.0.1:{port}/0"):
        self.settings = settings
        self.redis_arguments = redis_arguments  # e.g. TLS options; "{port}" is filled in
        self.redis_url_template = redis_url_template  # "{password}" and "{port}" are filled in
        self.worker_count = workers
        self.private_redis = private_redis
        self.log_dir = log_dir  # None: children write to this process's stdout/stderr
        self.redis_process: subprocess.Popen | None = None
        self.worker_processes: list[subprocess.Popen] = []
        self.api_process: subprocess.Popen | None = None
        self.proxy_process: subprocess.Popen | None = None
        self.api_url: str | None = None  # where the API itself listens, once started (behind nginx: not `url`)
        self.metrics_dir: Path | None = None  # the API processes' prometheus_client files, once started
        self._scratch = Path(tempfile.mkdtemp(prefix="imgcls-stack-"))  # mode 0700
        # The private Redis's password, one per Stack so that a restarted Redis (start_redis(port)) takes the
        # clients' old one: whoever reaches loopback could otherwise read every upload and forge any answer.
        self._redis_password = secrets.token_urlsafe(24)  # URL- and redis.conf-safe characters only

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    def __enter__(self) -> "Stack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self, ready_timeout: float = 120.0) -> None:
        """Everything, after checking that the port is free (gunicorn would find out only after the workers
        loaded their models, and the readiness check could meanwhile be answered by whatever holds the port)."""
        self._require_free_port()
        if self.private_redis:
            self.start_redis()
        for _ in range(self.worker_count):
            self.start_worker()
        self.start_api()
        self.wait_until_ready(ready_timeout)

    def start_redis(self, port: int | None = None) -> None:
        """A private, memory-only, password-protected Redis on loopback; `port` reuses an earlier one's (a restart).

        The password reaches redis-server in a configuration file of mode 0600, never on its command line
        (which `ps` shows every user), and the children in REDIS_URL in their environment (readable by this
        user only); redis_url_file holds that URL for the user's own commands beside `make run`.
        """
        if shutil.which("redis-server") is None:
            raise StartupError("redis-server not found: install Debian's redis-server package")
        port = port or free_port()
        config = self._private_file("redis.conf", f"requirepass {self._redis_password}\n")
        self.redis_process = self._spawn("redis", [
            "redis-server", str(config), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self._scratch), "--loglevel", "warning",
            # Redis logs its banner and shutdown at "warning" too: to a file, not the launcher's terminal
            # (the launcher shows its last lines if it dies).
            *(() if self.log_dir else ("--logfile", str(self.redis_log))),
            *(argument.format(port=port) for argument in self.redis_arguments)])
        url = self.redis_url_template.format(password=self._redis_password, port=port)
        self.settings = dataclasses.replace(self.settings, redis_url=url)
        self._private_file(self.redis_url_file.name, url + "\n")
        self._wait_for(lambda: self.redis().ping(), {"redis": self.redis_process}, 10.0)

    @property
    def redis_url_file(self) -> Path:
        """Where the private Redis's REDIS_URL, password included, is kept (mode 0600) while the stack runs."""
        return self._scratch / "redis-url"

    def _private_file(self, name: str, text: str) -> Path:
        """A file in the scratch folder that only this user can read, created so from the start."""
        path = self._scratch / name
        path.unlink(missing_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(text)
        return path

    def _require_free_port(self) -> None:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
            try:
                probe.bind((self.settings.host, self.settings.port))
            except OSError as exc:
                raise StartupError(f"port {self.settings.port} on {self.settings.host} is in use ({exc.strerror}): "
                                   "stop what listens there, or set PORT to another port") from None

    def require_redis(self) -> None:
        """A Redis the user named answers; else StartupError at once, rather than workers retrying for minutes."""
        try:
            connect(self.settings.redis_url, 3, 3).ping()
        except REDIS_ERRORS as exc:
            raise StartupError(f"Redis at {self.settings.redis_url_redacted} does not answer ({exc}): start it, or "
                               "fix REDIS_URL (unset, make run starts a private one)") from None

    def restart_worker_if_dead(self, index: int) -> bool:
        """Start a fresh worker in place of a dead one; True if it had died."""
        if self.worker_processes[index].poll() is None:
            return False
        self.worker_processes[index] = self._spawn(f"worker{index}", [sys.executable, *WORKER_ARGUMENTS])
        return True

    def hand_back_work_of(self, pid: int) -> tuple[int, int]:
        """A dead worker's unfinished messages back to its version's queues at once, each a failed delivery, as its
        version's reaper would do after WORKER_TIMEOUT; then the messages whose MAX_ATTEMPTS ran out are answered
        500. (requeued, answered). Found by the worker id's host-and-pid start in every version's workers set;
        a worker that died before its first heartbeat holds nothing. The reaper stays for hosts no launcher sees.
        """
        client, prefix, settings = self.redis(), worker_id_prefix(pid), self.settings
        requeued = answered = 0
        for model in model_ages(client, fleet=FleetKeys(settings.key_prefix)):
            keys = Keys(settings.key_prefix, model)
            for worker_id in (w.decode() for w in client.zrange(keys.workers, 0, -1)):
                if not worker_id.startswith(prefix):
                    continue
                queue = WorkerQueue(client, keys, worker_id)
                # A timeout of 0: it is dead for certain, whatever its last heartbeat says.
                outcome = queue.return_unfinished(worker_id, True, settings.max_attempts, 0.0)
                requeued += outcome[0] if outcome else 0
                answered += queue.answer_exhausted(settings.max_attempts)
        return requeued, answered

    def start_worker(self, env: dict[str, str] | None = None) -> subprocess.Popen:
        """One more worker; `env` adds to its environment (tests: libfaketime's, for a clock that is off)."""
        process = self._spawn(f"worker{len(self.worker_processes)}", [sys.executable, *WORKER_ARGUMENTS], env)
        self.worker_processes.append(process)
        return process

    def redis_port(self) -> int:
        return self.redis().connection_pool.connection_kwargs["port"]

    def start_api(self) -> None:
        """The API on HOST:PORT; with PROXY=nginx, nginx there and the API behind it on a loopback port."""
        # prometheus_client's multiprocess files, fresh for every start: an earlier run's would add old counts.
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="api-metrics-", dir=self._scratch))
        env = {"PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        self.api_url = self.url
        if self.settings.proxy == "nginx":
            env |= {"HOST": "127.0.0.1", "PORT": str(free_port())}
            self.api_url = f"http://127.0.0.1:{env['PORT']}"
            self.start_proxy(f"127.0.0.1:{env['PORT']}")
        self.api_process = self._spawn("api", [sys.executable, *API_ARGUMENTS], env)

    def start_proxy(self, api_address: str) -> None:
        if shutil.which("nginx") is None:
            raise StartupError("PROXY=nginx, but nginx is not installed: install Debian's nginx-light package")
        values = {"LISTEN": f"{self.settings.host}:{self.settings.port}", "API_UPSTREAM": api_address,
                  "MAX_UPLOAD_BYTES": str(self.settings.max_upload_bytes),  # the API's limit, to the byte
                  "PROXY_READ_TIMEOUT": f"{self.settings.request_timeout + 10:g}s"}
        nginx_dir = self._scratch / "nginx"
        nginx_dir.mkdir()
        nginx_dir.chmod(0o777)  # nginx's worker runs as nobody when started as root; it writes its buffers here
        (nginx_dir / "imgcls.conf").write_text(string.Template(NGINX_TEMPLATE.read_text()).safe_substitute(values))
        (nginx_dir / "nginx.conf").write_text(NGINX_MAIN.format(scratch=nginx_dir))
        self._scratch.chmod(0o711)
        self.proxy_process = self._spawn("proxy", ["nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")])

    def wait_until_ready(self, timeout: float) -> None:
        """Until the API answers on `url` (through the proxy, if any) and a worker has announced its model."""
        answering = {"api": self.api_process} | ({"proxy": self.proxy_process} if self.proxy_process else {})
        self._wait_for(lambda: requests.get(self.url + "/healthz", timeout=1).raise_for_status(), answering, timeout)
        for count, process in enumerate(self.worker_processes, start=1):
            self._wait_for(lambda count=count: self._require_live_workers(count), {f"worker{count - 1}": process},
                           timeout)

    def _require_live_workers(self, count: int) -> None:
        client, prefix = self.redis(), self.settings.key_prefix
        versions = list(model_ages(client, fleet=FleetKeys(prefix)))
        live = sum(live_worker_counts(client, prefix=prefix, model_ids=versions,
                                      worker_timeout=self.settings.worker_timeout).values())
        if live < count:
            raise StartupError(f"{live} of {count} workers announced")

    def redis(self) -> RedisClient:
        return connect(self.settings.redis_url, 1, 5)

    def stop(self) -> None:
        """Proxy, then API (each lets in-flight requests finish), then every worker at once, then Redis.

        Says how long each took, and names any it had to kill, so that a slow stop shows its cause.
        """
        phases = [("proxy", [self.proxy_process], signal.SIGQUIT),  # nginx's graceful stop; TERM is not
                  ("API", [self.api_process], signal.SIGTERM),
                  (f"{len(self.worker_processes)} worker(s)", self.worker_processes, signal.SIGTERM),
                  ("Redis", [self.redis_process], signal.SIGTERM)]
        took = []
        for name, processes, stop_signal in phases:
            running = [p for p in processes if p is not None and p.poll() is None]
            if running:
                started = time.monotonic()
                killed = self.stop_processes(running, stop_signal=stop_signal)
                took.append(f"{name} {time.monotonic() - started:.1f} s"
                            + (f" (pids {killed} killed after {STOP_GRACE_SECONDS:g} s)" if killed else ""))
        if took:
            print(f"stopping took: {', '.join(took)}", file=sys.stderr, flush=True)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def stop_process(self, process: subprocess.Popen | None, grace: float = STOP_GRACE_SECONDS,
                     stop_signal: signal.Signals = signal.SIGTERM) -> None:
        self.stop_processes([process] if process else [], grace, stop_signal)

    @staticmethod
    def stop_processes(processes: list[subprocess.Popen], grace: float = STOP_GRACE_SECONDS,
                       stop_signal: signal.Signals = signal.SIGTERM) -> list[int]:
        """stop_signal to all, then each gets the same grace period, counted from then, before SIGKILL.

        Returns the pids it had to kill."""
        running = [p for p in processes if p.poll() is None]
        for process in running:
            process.send_signal(stop_signal)
        give_up_at = time.monotonic() + grace
        killed = []
        for process in running:
            try:
                process.wait(max(give_up_at - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                killed.append(process.pid)
        return killed

    def log_path(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    @property
    def redis_log(self) -> Path:
        return self.log_path("redis") or self._scratch / "redis.log"

    def redis_log_tail(self, lines: int = 5) -> str:
        """The private Redis's last log lines, for a message about its death."""
        try:
            return "\n".join(self.redis_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        env = {**os.environ, **self.settings.as_env(), **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        output = None
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = open(self.log_path(name), "ab")
        # Own session: a terminal's Ctrl-C reaches only the launcher, which stops children in order.
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
                                   if output else None, start_new_session=True,
                                   preexec_fn=functools.partial(_child_setup, os.getpid()))
        if output:
            output.close()
        return process

    def _wait_for(self, check, processes: dict[str, subprocess.Popen], timeout: float) -> None:
        """Until check() passes; StartupError at once if one of `processes` (by name) exits meanwhile."""
        give_up_at = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < give_up_at:
            for name, process in processes.items():
                if process.poll() is not None:
                    raise StartupError(f"{name} exited with code {process.returncode}{self._log_hint(name)}")
            try:
                check()
                return
            except Exception as exc:  # not up yet: connection refused, key missing, ...
                last_error = exc
            time.sleep(0.1)
        names = " and ".join(processes)
        raise StartupError(f"{names} not ready after {timeout:.0f}s ({last_error})"
                           + "".join(self._log_hint(name) for name in processes))

    def _log_hint(self, name: str) -> str:
        path = self.log_path(name)
        if path:
            return f"; see {path}"
        return f"; its log ends:\n{self.redis_log_tail()}" if name == "redis" else ""
