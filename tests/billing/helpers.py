"""A served gateway for billing's HTTP-level tests."""
from billing import Billing

ADMIN_KEY = "fm-admin-billing-tests"


class ByteTokenizer:
    """One token per byte: enough for /v1/completions, and independent of the bundled checkpoints."""

    bos_token_id = 1

    def __len__(self) -> int:
        return 256

    def encode(self, text: str, add_special_tokens: bool = False, **options) -> list[int]:
        return list(text.encode())

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode(errors="replace")


def gateway_app(db_url: str, delay_s: float = 0.0, limiter=None, backends: dict | None = None,
                redis_url: str | None = None, redis_prefix: str = "ferryman", **billing_options):
    """A full gateway app (auth, limits, reservation, routing, settle, record) over instant echo backends
    (or the `backends` given), with its own Billing: two of these on one database are two replicas.
    With `redis_url`, budget holds are in Redis and records reach the database through the batch writer.
    `billing_options`: Billing's keyword arguments (deadlines, redis_timeout_s, recovery_s)."""
    from backends.echo import EchoBackend
    from billing import RateLimiter
    from gateway.app import create_app
    from gateway.config import Settings
    from tests.util import LengthRouter

    settings = Settings(database_url=db_url, admin_key=ADMIN_KEY)
    billing = Billing(db_url, redis_url=redis_url, redis_prefix=redis_prefix, **billing_options)
    billing.create_schema()
    billing.ensure_admin_defaults()
    backends = backends or {name: EchoBackend(name, delay_s=delay_s) for name in ("ferryman-small", "ferryman-large")}
    app = create_app(settings, billing=billing, limiter=limiter or RateLimiter(), router=LengthRouter(),
                     backends=backends, tokenizer=ByteTokenizer())
    return app, billing
