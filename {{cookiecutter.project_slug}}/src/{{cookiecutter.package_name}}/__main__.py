"""`python -m {{ cookiecutter.package_name }}`: serve the app with uvicorn on HOST:PORT."""

import uvicorn

from {{ cookiecutter.package_name }}.settings import load_settings


def main() -> None:
    settings = load_settings()
    uvicorn.run(
        "{{ cookiecutter.package_name }}.main:app",
        host=settings.host,
        port=settings.port,
        lifespan="on",
        # main.py routes uvicorn's records into our log stream; the middleware logs each request.
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
