"""Example PostgreSQL routes: one session per request, committed before the response is sent."""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, ConfigDict, Field

{% if cookiecutter.use_auth -%}
from {{ cookiecutter.package_name }}.auth import require_token
{% endif -%}
{% if cookiecutter.use_rabbitmq -%}
from {{ cookiecutter.package_name }}.dependencies import DbSession, Outbox
{% else -%}
from {{ cookiecutter.package_name }}.dependencies import DbSession
{% endif -%}
from {{ cookiecutter.package_name }}.models import Note

{% if cookiecutter.use_auth -%}
# Every route here needs a valid bearer token (auth.py).
router = APIRouter(prefix="/notes", tags=["notes"], dependencies=[require_token()])

{% else -%}
router = APIRouter(prefix="/notes", tags=["notes"])

{% endif -%}
# The id column is a PostgreSQL integer: a larger number could never be found, and the driver
# would fail on it rather than the lookup.
NoteId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class NoteIn(BaseModel):
    # PostgreSQL text cannot hold the NUL character.
    text: str = Field(min_length=1, max_length=1000, pattern=r"^[^\x00]*$")


class NoteOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    text: str
    created_at: datetime


{% if cookiecutter.use_auth -%}
@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[require_token("notes:write")])
{% else -%}
@router.post("", status_code=status.HTTP_201_CREATED)
{% endif -%}
{% if cookiecutter.use_rabbitmq -%}
async def create_note(body: NoteIn, session: DbSession, outbox: Outbox) -> NoteOut:
    """201 once the note and its `note.created` event are committed together; the outbox relay
    publishes the event after the response, however long the broker is away."""
{%- else -%}
async def create_note(body: NoteIn, session: DbSession) -> NoteOut:
{%- endif %}
    note = Note(text=body.text)
    session.add(note)
    await session.flush()
{%- if cookiecutter.use_rabbitmq %}
    created = NoteOut.model_validate(note)
    outbox.add(session, "note.created", created.model_dump(mode="json"))
    return created
{%- else %}
    return NoteOut.model_validate(note)
{%- endif %}


@router.get("/{note_id}", responses={status.HTTP_404_NOT_FOUND: {}})
async def get_note(note_id: NoteId, session: DbSession) -> NoteOut:
    note = await session.get(Note, note_id)
    if note is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "note not found")
    return NoteOut.model_validate(note)
