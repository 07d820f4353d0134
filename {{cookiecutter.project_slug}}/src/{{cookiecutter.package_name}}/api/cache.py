"""Example Redis routes: a small key-value cache with expiry."""

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

{% if cookiecutter.use_auth -%}
from {{ cookiecutter.package_name }}.auth import require_token
{% endif -%}
from {{ cookiecutter.package_name }}.dependencies import AppSettings, RedisClient

{% if cookiecutter.use_auth -%}
# Every route here needs a valid bearer token (auth.py).
router = APIRouter(prefix="/cache", tags=["cache"], dependencies=[require_token()])

{% else -%}
router = APIRouter(prefix="/cache", tags=["cache"])

{% endif -%}
# Under REDIS_KEY_PREFIX: the namespace of these routes' keys.
KEY_PREFIX = "cache:"


class CacheValue(BaseModel):
    value: str = Field(max_length=10_000)
    ttl_seconds: int = Field(default=300, ge=1, le=86_400)


class CacheEntry(BaseModel):
    key: str
    value: str


@router.put("/{key}")
async def put_value(
    key: str, body: CacheValue, redis: RedisClient, settings: AppSettings
) -> CacheEntry:
    await redis.set(settings.redis_key_prefix + KEY_PREFIX + key, body.value, ex=body.ttl_seconds)
    return CacheEntry(key=key, value=body.value)


@router.get("/{key}", responses={status.HTTP_404_NOT_FOUND: {}})
async def get_value(key: str, redis: RedisClient, settings: AppSettings) -> CacheEntry:
    value = await redis.get(settings.redis_key_prefix + KEY_PREFIX + key)
    if value is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "key not found")
    return CacheEntry(key=key, value=value)
