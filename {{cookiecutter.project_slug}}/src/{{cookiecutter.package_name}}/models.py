"""The example table behind /notes. Replace it with your own models."""

{% if cookiecutter.use_rabbitmq -%}
import uuid
{% endif -%}
from datetime import datetime
{%- if cookiecutter.use_rabbitmq %}
from typing import Any
{%- endif %}

from sqlalchemy import DateTime, String, func
{%- if cookiecutter.use_rabbitmq %}
from sqlalchemy.dialects.postgresql import JSONB
{%- endif %}
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    # Read server-generated columns back in the INSERT's RETURNING, not in a second query.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012

    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
{%- if cookiecutter.use_rabbitmq %}


class OutboxEvent(Base):
    """An event written in the transaction of the change it reports, waiting for the relay
    (outbox.py) to publish it; deleted once the broker has confirmed it."""

    __tablename__ = "outbox"

    # Made here, not by the database: the message id the consumer deduplicates on.
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    event_type: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # The relay takes the oldest first, and measures the lag from the oldest.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
{%- endif %}
