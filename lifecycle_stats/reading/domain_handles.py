"""libvirt domain handles of one connection, by uuid: a delete's read is then one call.

A single read needs a virDomain of its own connection. Looking it up (lookupByUUIDString) is
a libvirt call of its own on nova's wait; a handle kept from one listAllDomains, made off
that wait (after each poll, at a resync), spares it. A handle names its domain by uuid, and
libvirtd finds the domain by uuid at every call, so a handle stays good across the domain's
restarts (its id is stale: the id is taken from the stats record's own domain) and a domain
gone since yields an empty stats list, as one gone after a lookup does.

A handle belongs to the connection it came from: after a reconnect every handle is dropped.
A read still running on the lost connection (it raced the reconnect) keeps nothing: the
handles stay the live connection's.
"""
from __future__ import annotations

import threading

import libvirt


class DomainHandles:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._by_uuid: dict[str, libvirt.virDomain] = {}

    def get(self, conn: libvirt.virConnect, instance_id: str) -> libvirt.virDomain:
        """The handle of instance_id on conn; looked up (and kept) when none is known."""
        with self._lock:
            dom = self._by_uuid.get(instance_id) if conn is self._conn else None
        if dom is None:
            dom = conn.lookupByUUIDString(instance_id)
            with self._lock:
                if conn is not self._conn:
                    if self._conn is not None and _alive(self._conn):
                        return dom  # conn is the older one: the handles stay the live one's
                    self._conn, self._by_uuid = conn, {}
                self._by_uuid[instance_id] = dom
        return dom

    def learn_all(self, conn: libvirt.virConnect) -> int:
        """Keep a handle of every domain libvirt has now, in place of the old ones; how many."""
        handles = {dom.UUIDString(): dom for dom in conn.listAllDomains(0)}
        with self._lock:
            self._conn, self._by_uuid = conn, handles
        return len(handles)

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._by_uuid.pop(instance_id, None)


def _alive(conn: libvirt.virConnect) -> bool:
    """libvirt's own view of the connection (no call to libvirtd); a closed one raises."""
    try:
        return conn.isAlive() == 1
    except libvirt.libvirtError:
        return False
