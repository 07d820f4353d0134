"""The migrations build exactly the schema the models describe."""

from alembic import command

from tests.conftest import alembic_config


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    # The `database_url` fixture has run every migration. `alembic check` compares the
    # database with the models, and fails on a model changed without a migration; then:
    # alembic revision --autogenerate -m "what changed"
    with alembic_config(database_url) as config:
        command.check(config)
