"""`python -m {{ cookiecutter.package_name }}.migrate`: apply every migration the service ships (Alembic's
`upgrade head`), from wherever it is installed and whatever the working directory. Its output
and exit status are those of `alembic upgrade head` run from the project."""

import argparse
import logging

from alembic import command
from alembic.config import Config
from alembic.util import CommandError, err

# The migrations inside the package, found through its import path: a wheel carries them.
SCRIPT_LOCATION = "{{ cookiecutter.package_name }}:migrations"
# alembic.ini's logging: Alembic's progress on stderr, other libraries' warnings only.
LOG_FORMAT = "%(levelname)-5.5s [%(name)s] %(message)s"
# The advisory lock a run holds (migrations/env.py takes it): runs at once, from two releases
# or a replaced Job pod, go one after the other, and the second finds the work done.
ADVISORY_LOCK_KEY = 0x6D696772617465  # "migrate"


def main() -> None:
    argparse.ArgumentParser(
        prog="python -m {{ cookiecutter.package_name }}.migrate",
        description="Apply every migration the service ships to DATABASE_URL (alembic upgrade"
        " head). Anything else (a downgrade, --sql, a new revision): the alembic command, from"
        " the project.",
    ).parse_args()
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
