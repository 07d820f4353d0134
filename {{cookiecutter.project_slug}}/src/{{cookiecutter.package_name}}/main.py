"""The ASGI entry point: `uvicorn {{ cookiecutter.package_name }}.main:app`."""

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.logging import configure_logging
from {{ cookiecutter.package_name }}.settings import load_settings

settings = load_settings()
configure_logging(settings.log_format, settings.log_level)
app = create_app(settings)
