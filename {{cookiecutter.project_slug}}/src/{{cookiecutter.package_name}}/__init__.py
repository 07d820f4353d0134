"""My Service: A FastAPI service whose lifespan owns its connections."""
