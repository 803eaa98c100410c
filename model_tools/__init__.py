"""Build, load and (later) export the models the service runs. Imports torch: never used by the API."""
