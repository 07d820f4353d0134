"""`python -m {{ cookiecutter.package_name }}.migrate`: apply every migration the service ships (Alembic's
`upgrade head`), from wherever it is installed and whatever the working directory. Its output
and exit status are those of `alembic upgrade head` run from the project."""

import logging

from alembic import command
from alembic.config import Config
from alembic.util import CommandError, err

# The migrations inside the package, found through its import path: a wheel carries them.
SCRIPT_LOCATION = "{{ cookiecutter.package_name }}:migrations"
# alembic.ini's logging: Alembic's progress on stderr, other libraries' warnings only.
LOG_FORMAT = "%(levelname)-5.5s [%(name)s] %(message)s"


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("alembic").setLevel(logging.INFO)
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    try:
        command.upgrade(config, "head")
    except CommandError as exc:
        err(str(exc))  # "FAILED: ..." and exit status 255, as the alembic command


if __name__ == "__main__":
    main()
