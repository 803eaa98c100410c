"""What the API and the worker share: configuration, the Redis protocol and image preprocessing.

Nothing here imports torch, so the API process stays small and starts fast.
"""
