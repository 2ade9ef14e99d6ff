"""One gateway process for the crash tests: `python -m tests.billing.gateway_process PORT DB_URL REDIS_URL PREFIX`.

Echo backends answering 10 ms per token, so a burst keeps requests in flight when the process is killed."""
import sys

import uvicorn

from tests.billing.helpers import gateway_app

if __name__ == "__main__":
    port, db_url, redis_url, prefix = sys.argv[1:5]
    app, _ = gateway_app(db_url, delay_s=0.01, redis_url=redis_url, redis_prefix=prefix)
    uvicorn.run(app, host="127.0.0.1", port=int(port), log_level="warning")
