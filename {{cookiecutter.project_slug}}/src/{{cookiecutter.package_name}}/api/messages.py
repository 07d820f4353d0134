"""Example RabbitMQ route: publish a message, answered once the broker has confirmed it."""

import uuid

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

{% if cookiecutter.use_auth -%}
from {{ cookiecutter.package_name }}.auth import require_token
{% endif -%}
from {{ cookiecutter.package_name }}.dependencies import RabbitMQClient
from {{ cookiecutter.package_name }}.resources.rabbitmq import PublishError, unavailable

{% if cookiecutter.use_auth -%}
# Every route here needs a valid bearer token (auth.py).
router = APIRouter(prefix="/messages", tags=["messages"], dependencies=[require_token()])


{% else -%}
router = APIRouter(prefix="/messages", tags=["messages"])


{% endif -%}
class NewMessage(BaseModel):
    text: str = Field(max_length=10_000)
    # A client that retries a publish sends the same id: the consumer handles it once.
    message_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class Published(BaseModel):
    message_id: str


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {}},
)
async def publish_message(body: NewMessage, rabbitmq: RabbitMQClient) -> Published:
    """202 once the broker has the message (publisher confirm); 503 when it does not confirm
    within RABBITMQ_PUBLISH_TIMEOUT: the message may or may not have been queued, and a retry
    with the same message_id is handled once."""
    message_id = body.message_id or uuid.uuid4().hex
    try:
        await rabbitmq.publish(
            body.model_dump_json(include={"text"}).encode(), message_id=message_id
        )
    except PublishError as exc:
        raise unavailable(exc) from exc
    return Published(message_id=message_id)
