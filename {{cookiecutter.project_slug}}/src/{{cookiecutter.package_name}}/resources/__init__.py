"""The shared resources the lifespan opens: one module, one async context manager each."""
