"""The batching worker: takes images off the Redis queue and runs the model on them in batches."""
