"""gunicorn settings, derived from serving.config: `gunicorn -c python:app.gunicorn_conf 'app:create_app()'`."""

from serving.config import Settings

_settings = Settings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.api_processes
# Requests spend most of their life blocked on Redis, so threads, not processes, carry the concurrency.
worker_class = "gthread"
threads = _settings.api_threads
timeout = int(_settings.request_timeout) + 30
graceful_timeout = int(_settings.request_timeout) + 5  # lets in-flight requests finish on SIGTERM
accesslog = "-"
loglevel = _settings.log_level.lower()
# gunicorn's control socket lives at one fixed path per user, so two servers would fight over it.
control_socket_disable = True
