"""Billing: tenants, API keys, prices, budgets, reservations, usage records and reports.

Knows nothing of HTTP or models. Money is integer micro-USD (1 USD = 1_000_000) everywhere.
"""
from billing.auth import Limit, Principal
from billing.rules import BillingError, BudgetExceeded, DuplicateRequest, Reservation, UnknownPrice, UsageRecord
from billing.limits import RateLimited, RateLimiter
from billing.pricing import Price
from billing.service import Billing

__all__ = ["Billing", "BillingError", "BudgetExceeded", "DuplicateRequest", "Limit", "Price", "Principal",
           "RateLimited", "RateLimiter", "Reservation", "UnknownPrice", "UsageRecord"]
