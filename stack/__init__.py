"""Runs the whole service locally: private Redis, workers, gunicorn API (`python -m stack`, i.e. `make run`)."""
