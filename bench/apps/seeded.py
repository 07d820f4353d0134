"""What bench/run.py stores before the load starts, for the apps under test to read."""

# Every key the benchmark's services write starts with it (their REDIS_KEY_PREFIX); bench/run.py
# deletes them all at the end.
REDIS_KEY_PREFIX = "bench:"
# The key that bench/run.py's PUT /cache/bench writes (the service puts "cache:" after the prefix).
CACHE_KEY = REDIS_KEY_PREFIX + "cache:bench"
