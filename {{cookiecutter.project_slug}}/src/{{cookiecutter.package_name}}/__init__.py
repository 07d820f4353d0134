"""{{ cookiecutter.project_name }}: a FastAPI service whose lifespan owns its connections."""
