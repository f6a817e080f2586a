"""Which libvirt domains belong to nova, and what nova wrote about them.

One metadata read per domain, cached by domain uuid. A domain without nova metadata is
remembered as such (it is not re-read every poll) and never reported; a domain whose metadata
is hostile or broken is remembered as unusable, counted and logged once per read.

libvirt calls are made without holding the lock, so a slow read never blocks get(). A read
that races with forget() (the domain was undefined meanwhile) is not cached: every read holds a
ticket, and forget() cancels the tickets of reads in flight for that uuid.
"""
from __future__ import annotations

import dataclasses
import logging
import threading

import libvirt

from lifecycle_stats.reading import nova_metadata
from lifecycle_stats.counters import Counters
from lifecycle_stats.interfaces import Connection
from lifecycle_stats.reading.hypervisor import translate, translated
from lifecycle_stats.exceptions import (
    ConnectionLost,
    DomainGone,
    HypervisorError,
    MetadataError,
    MetadataMalformed,
    MetadataRejected,
)
from lifecycle_stats.records import InstanceInfo

NOT_NOVA = "not-nova"  # cache value: the domain has no nova metadata
REJECTED = "metadata.rejected"  # counter names, also cache values for unusable metadata
MALFORMED = "metadata.malformed"
READ_ERRORS = "metadata.read_errors"  # counter: libvirt failed a read (not a lost connection)


class DomainRegistry:
    """Reads metadata through its own `connection` (the agent gives it the event handler's)."""

    def __init__(self, connection: Connection, counters: Counters,
                 log: logging.Logger | None = None):
        self._connection = connection
        self._counters = counters
        self._log = log or logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._entries: dict[str, InstanceInfo | str] = {}
        self._tickets: dict[str, set[object]] = {}

    def observe(self, dom) -> InstanceInfo | None:
        """The cached answer for dom if there is one, else a fresh read."""
        uuid = dom.UUIDString()
        with self._lock:
            if uuid in self._entries:
                return _as_info(self._entries[uuid])
        return self.refresh(dom)

    def refresh(self, dom) -> InstanceInfo | None:
        """Re-read dom's metadata. None: not nova's, unusable, or the domain is gone.

        Raises ConnectionLost / HypervisorError for libvirt failures other than those.
        """
        uuid = dom.UUIDString()
        ticket = self._take_ticket(uuid)
        try:
            entry = self._read(dom, uuid)
        except DomainGone:
            self.forget(uuid)
            return None
        except BaseException:
            self._settle(uuid, ticket, None)
            raise
        self._settle(uuid, ticket, entry)
        return _as_info(entry)

    def refresh_by_uuid(self, instance_id: str) -> InstanceInfo | None:
        """refresh() of the domain with this uuid; a domain that is gone is forgotten."""
        try:
            return self._connection.call(
                lambda conn: self.refresh(conn.lookupByUUIDString(instance_id)), instance_id)
        except DomainGone:
            self.forget(instance_id)
            return None

    def sync(self) -> set[str]:
        """Read every domain not yet known; forget the uuids libvirt no longer has. Returns
        the uuids libvirt has."""
        return self._connection.call(self._sync)

    def _sync(self, conn) -> set[str]:
        with translated():
            domains = conn.listAllDomains(0)
        present = set()
        for dom in domains:
            present.add(dom.UUIDString())
            self._observe_one(dom)
        # a domain defined after the listing may be forgotten here too: it is re-read on use
        with self._lock:
            vanished = [uuid for uuid in self._entries if uuid not in present]
        for uuid in vanished:
            self.forget(uuid)
        return present

    def get(self, instance_id: str) -> InstanceInfo | None:
        with self._lock:
            return _as_info(self._entries.get(instance_id))

    def identify(self, instance_id: str) -> InstanceInfo | None:
        """get(), but a domain never seen before (created since the last sync) is looked up
        and read first. Raises HypervisorError (DomainGone if it is gone)."""
        info = self.get(instance_id)
        if info is not None or self.is_known(instance_id):
            return info
        return self._connection.call(
            lambda conn: self.refresh(conn.lookupByUUIDString(instance_id)), instance_id)

    def forget(self, instance_id: str) -> None:
        with self._lock:
            self._entries.pop(instance_id, None)
            self._tickets.pop(instance_id, None)  # reads in flight will not be cached

    def instances(self) -> dict[str, InstanceInfo]:
        """Nova-owned domains only, by instance uuid."""
        with self._lock:
            return {
                uuid: entry
                for uuid, entry in self._entries.items()
                if isinstance(entry, InstanceInfo)
            }

    def is_known(self, instance_id: str) -> bool:
        """True when the uuid has been read (nova's, not nova's or unusable) and not forgotten."""
        with self._lock:
            return instance_id in self._entries

    def unusable(self, instance_id: str) -> str | None:
        """Why a known domain's nova metadata could not be used (REJECTED / MALFORMED), else
        None (nova's and usable, not nova's, or never read)."""
        with self._lock:
            entry = self._entries.get(instance_id)
        return entry if entry in (REJECTED, MALFORMED) else None

    def _observe_one(self, dom) -> None:
        """observe() for sync: one domain's failure must not hide all the others."""
        try:
            self.observe(dom)
        except ConnectionLost:
            raise
        except HypervisorError as exc:
            self._counters.incr(READ_ERRORS)
            self._log.warning("domain %s: metadata not readable: %s", dom.UUIDString(), exc)

    def _read(self, dom, uuid: str) -> InstanceInfo | str:
        for namespace in nova_metadata.NAMESPACES:
            xml = self._fetch(dom, uuid, namespace)
            if xml is None:
                continue
            try:
                info = nova_metadata.parse(xml, dom.name(), uuid, namespace=namespace)
            except MetadataError as exc:
                return self._unusable(uuid, exc)
            except (ValueError, TypeError, OverflowError, RecursionError) as exc:
                # a document the parser did not foresee: this domain's, never every sync's
                return self._unusable(uuid, MetadataMalformed(
                    f"nova metadata unparsable: {type(exc).__name__}: {str(exc)[:200]}"))
            return self._with_domain_facts(dom, uuid, info)
        return NOT_NOVA

    def _with_domain_facts(self, dom, uuid: str, info: InstanceInfo) -> InstanceInfo:
        """Architecture, os type and vNIC facts from the domain XML (sample metadata only: a
        domain XML we cannot use leaves them out, never the instance)."""
        with translated(uuid):
            xml = dom.XMLDesc(0)
        try:
            return dataclasses.replace(info, **nova_metadata.domain_facts(xml))
        except MetadataError as exc:
            self._log.warning("domain %s: XML unusable for sample metadata: %s", uuid, exc)
            return info

    @staticmethod
    def _fetch(dom, uuid: str, namespace: str) -> str | None:
        try:
            return dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise translate(exc, uuid) from exc

    def _unusable(self, uuid: str, exc: MetadataError) -> str:
        reason = REJECTED if isinstance(exc, MetadataRejected) else MALFORMED
        self._counters.incr(reason)
        self._log.warning("domain %s: nova metadata unusable (%s): %s", uuid, reason, exc)
        return reason

    def _take_ticket(self, uuid: str) -> object:
        ticket = object()
        with self._lock:
            self._tickets.setdefault(uuid, set()).add(ticket)
        return ticket

    def _settle(self, uuid: str, ticket: object, entry: InstanceInfo | str | None) -> None:
        """Drop the ticket; cache entry only if no forget() cancelled the ticket meanwhile."""
        with self._lock:
            live = self._tickets.get(uuid)
            if live is None or ticket not in live:
                return
            live.discard(ticket)
            if not live:
                del self._tickets[uuid]
            if entry is not None:
                self._entries[uuid] = entry


def _as_info(entry: InstanceInfo | str | None) -> InstanceInfo | None:
    return entry if isinstance(entry, InstanceInfo) else None
