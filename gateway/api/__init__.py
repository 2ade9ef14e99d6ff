"""The gateway's HTTP routes, one module per resource (laid out as FastAPI's full-stack template lays them): what
they share in deps.py; their bodies apart, in gateway/schemas.py (OpenAI's) and gateway/admin_schemas.py (the admin
API's). Handlers stay thin: a request's life is gateway/ferry.py's, money is billing's."""
from __future__ import annotations

from fastapi import APIRouter

from gateway.api import (access, budgets, completions, feedback, health, routers, scrape, summaries, tenants, ui,
                         usage)

router = APIRouter()
for module in (completions, feedback, routers, tenants, budgets, usage, summaries, access, ui, health, scrape):
    router.include_router(module.router)
