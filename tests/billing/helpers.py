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
    from tests.harness import echo_backends, gateway_app as wire

    billing = Billing(db_url, redis_url=redis_url, redis_prefix=redis_prefix, **billing_options)
    wiring = wire(db_url, billing=billing, limiter=limiter, tokenizer=ByteTokenizer(), admin_key=ADMIN_KEY,
                  backends=backends or echo_backends(delay_s=delay_s))
    return wiring.app, wiring.billing
