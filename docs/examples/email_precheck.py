"""An email platform honouring the guard: one lookup before a send, and a bulk audience filter.

python docs/examples/email_precheck.py redis://127.0.0.1:16379/0 cust-42 cust-43 cust-44
python docs/examples/email_precheck.py "$FATIGUE_REDIS_URL" cust-42   # a Redis Cluster URL (?cluster=1&addr=...) too
"""

import os
import sys

from streams.sender import PreSendCheck, removed_by_reason

# policy=load_policy(...) would honour the policy's quiet hours too (e.g. the tcpa preset)
check = PreSendCheck.from_url(sys.argv[1], prefix=os.environ.get("FATIGUE_REDIS_PREFIX", "fatigue"))
print(sys.argv[2], check.is_allowed(sys.argv[2], "email"))
allowed, removed = removed_by_reason(check.filter(sys.argv[2:], "email"))
print("send to:", allowed, "removed:", dict(removed))
