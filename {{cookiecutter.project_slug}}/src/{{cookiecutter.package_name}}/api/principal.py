"""Example route of a caller's own: who the bearer token says it is."""

from fastapi import APIRouter
from pydantic import BaseModel

from {{ cookiecutter.package_name }}.auth import Principal

router = APIRouter(tags=["auth"])


class Me(BaseModel):
    subject: str
    scopes: list[str]


@router.get("/me")
async def me(principal: Principal) -> Me:
    """The token's subject and scopes; 401 without a valid token."""
    return Me(subject=principal.subject, scopes=sorted(principal.scopes))
