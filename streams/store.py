"""Faust's RocksDB store, except that a corrupt partition database is set aside and rebuilt from the changelog.

The local database is only a cache of the changelog topic. After a SIGKILL a worker once found one partition's
database unreadable ("Corruption: ... No such file ... .sst ... MANIFEST may be corrupted"). Faust retried that
open for 30 s and then crashed, and every restart crashed the same way: the worker stayed down, and so did every
block it would have made. A database that cannot be opened for corruption is moved aside (kept for a post-mortem)
and opened empty instead. Recovery then finds no stored changelog offset for it and restores the partition from
the start of the changelog, as it does on a new host.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust.stores
from faust.stores.rocksdb import Store

log = logging.getLogger("fatigue.store")


class RestoringRocksDBStore(Store):
    def _open_for_partition(self, partition: int) -> Any:
        try:
            return super()._open_for_partition(partition)
        except Exception as error:  # rocksdict raises plain Exception with RocksDB's status text
            if "corruption" not in str(error).lower():
                raise
            path = self.partition_path(partition)
            aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
            path.rename(aside)
            log.error(
                "partition %d: the local state database is corrupt (%s); moved it to %s and restoring the partition "
                "from the changelog",
                partition,
                error,
                aside,
            )
        return super()._open_for_partition(partition)


def store_url(table_name: str) -> str:
    """The store URL of a table kept in this store (registered with Faust on the way).

    The table name goes in the URL's path because Faust takes an empty URL as no URL (yarl's ``URL`` is falsy
    without a path) and would fall back to its app-wide store. It is also the directory name prefix Faust's own
    store uses, so a worker keeps its existing databases.
    """
    faust.stores.STORES.aliases["fatigue-rocksdb"] = f"{__name__}:RestoringRocksDBStore"
    return f"fatigue-rocksdb:{table_name}"
