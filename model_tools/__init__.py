"""Build, load, export and verify the models the service runs. Imports torch: never used by the API."""
