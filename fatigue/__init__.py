"""fatigue: the pure, deterministic core of fatigue-guard.

No Kafka, Redis, asyncio or wall clock lives here: time arrives with events. The same engine is driven by the
Faust worker (``streams``), by the offline replay (``fatigue replay``) and by the tests.
"""

from fatigue.engine import Guard, Step
from fatigue.events import Event, Rejection, parse_event
from fatigue.policy import Policy, PolicyError, load_policy
from fatigue.state import CustomerState

__all__ = [
    "CustomerState",
    "Event",
    "Guard",
    "Policy",
    "PolicyError",
    "Rejection",
    "Step",
    "load_policy",
    "parse_event",
]
