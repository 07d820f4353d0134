"""What bench/run.py stores before the load starts, for the apps under test to read."""

# The Redis key that bench/run.py's PUT /cache/bench writes (the service prefixes "cache:").
CACHE_KEY = "cache:bench"
