"""Columns a reader derives from a stored reading, as SQL (pure text, no driver).

Shared by the read side (:mod:`hub.read`) and the alert watcher (:mod:`hub.watch`), so that
neither imports SQL from the other.
"""

# Largest partition use of a reading, from the disk_partitions jsonb.
DISK_MAX_PERCENT = ("(select max((p->>'percent')::float8) from "
                    "jsonb_array_elements(m.disk_partitions) p) as disk_max_percent")
