"""State shared across processes and machines on Redis: buckets, leases, breaker records, budgets.

Only :class:`SharedPolicy` is imported here; the Redis-backed stores live in private
modules that import redis-py, loaded by the runtime when ``shared`` is set.
"""

from .policy import SharedPolicy as SharedPolicy
from .policy import masked_url as masked_url

__all__ = ["SharedPolicy", "masked_url"]
