"""The gateway's HTTP routes, one module per resource (laid out as FastAPI's full-stack template lays them): what
they share in deps.py; their bodies apart, in gateway/schemas.py (OpenAI's) and gateway/admin_schemas.py (the admin
API's). Handlers stay thin: a request's life is gateway/ferry.py's, money is billing's."""
from __future__ import annotations

from fastapi import APIRouter

from gateway.api import (access, budgets, completions, feedback, health, routers, scrape, summaries, tenants, ui,
                         usage)

# The app includes each directly (gateway/app.py): a router nested in another costs FastAPI a walk of the
# nesting on every request.
ROUTERS: tuple[APIRouter, ...] = tuple(module.router for module in (
    completions, feedback, routers, tenants, budgets, usage, summaries, access, ui, health, scrape))
