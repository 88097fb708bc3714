"""fatigue: the pure, deterministic core of fatigue-guard.

No Kafka, Redis, asyncio or wall clock lives here: time arrives with events. The same engine is driven by the
Faust worker (``streams``), by the offline replay (``fatigue replay``) and by the tests.
"""

from fatigue import _core

_core.select()  # before the first hot module is imported: compiled or from source

from fatigue.engine import Guard, Step  # noqa: E402
from fatigue.events import Event, Rejection, parse_event  # noqa: E402
from fatigue.policy import Policy, PolicyError, load_policy  # noqa: E402
from fatigue.state import CustomerState  # noqa: E402

core_flavour = _core.flavour  # "compiled" or "pure": which build of the hot modules this process runs

__all__ = [
    "CustomerState",
    "Event",
    "Guard",
    "Policy",
    "PolicyError",
    "Rejection",
    "Step",
    "core_flavour",
    "load_policy",
    "parse_event",
]
