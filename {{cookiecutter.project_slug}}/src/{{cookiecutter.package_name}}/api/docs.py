"""GET /docs: Swagger UI, with its JavaScript, CSS and favicon served by the service itself, so
that the page works without internet access, or behind a proxy that lets nothing else through.

The files come from the fastapi-swagger package, which releases each new Swagger UI version:
they are pinned and upgraded like any other dependency. Only its files are used: its
`patch_fastapi` reads them with blocking calls on every request.
"""

import os

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.responses import Response
from starlette.routing import Route
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import Scope

OPENAPI_PATH = "/openapi.json"
DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"


class SwaggerUiAssets(StaticFiles):
    """Swagger UI's files. Their names stay the same from one version to the next, so browsers
    must ask again each time (`no-cache`): an unchanged file costs a `304` without a body (its
    ETag), and an upgrade is never hidden behind a cached copy."""

    def __init__(self) -> None:
        super().__init__(packages=[("fastapi_swagger", "resources")])

    def file_response(
        self,
        full_path: PathLike,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


def add_docs(app: FastAPI) -> None:
    """Add GET /docs and its assets to `app` (created with `openapi_url=OPENAPI_PATH`), after
    its other routes: a request tries the routes in order, and each one before its own costs it
    (about 7,000 instructions, 1.5% of GET /health/live)."""

    async def swagger_ui(request: Request) -> HTMLResponse:
        root_path = request.scope.get("root_path", "").rstrip("/")
        assets = root_path + ASSETS_PATH
        return get_swagger_ui_html(
            openapi_url=root_path + OPENAPI_PATH,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
        )

    # FastAPI adds its own OPENAPI_PATH route before any other: it moves to the end too.
    schema_route = next(
        route
        for route in app.router.routes
        if isinstance(route, Route) and route.path == OPENAPI_PATH
    )
    app.router.routes.remove(schema_route)
    app.router.routes.append(schema_route)
    app.add_route(DOCS_PATH, swagger_ui, include_in_schema=False)
    app.mount(ASSETS_PATH, SwaggerUiAssets(), name="docs_assets")
