"""Runs INSIDE .ceilometer-venv (tools/ceilometer_venv.sh), never in the product's venv.

Polls one real domain with Ceilometer's own compute pollsters (every `ceilometer.poll.compute`
entry point) and writes the samples they make. The instance comes from Ceilometer's own
libvirt_metadata discovery over the live domain; the one thing that discovery would ask nova's
API, the flavor id for a flavor name (nova < 2025.2 writes no id into the domain), is answered
with the id given on the command line, as nova's API would answer it ("" = nova knows no such
flavor, so Ceilometer falls back to the name).
With a telemetry secret it also writes the samples as ceilometer-polling would send them on
the bus (`telemetry.polling` payload: meter messages signed with the secret).
usage: python ceilometer_pollsters.py LIBVIRT_URI HOST INSTANCE_UUID FLAVOR_ID OUTPUT.json
       [TELEMETRY_SECRET]
"""
import importlib.metadata
import json
import sys
import warnings

warnings.simplefilter("ignore")

from oslo_utils import timeutils  # noqa: E402

from ceilometer import service  # noqa: E402
from ceilometer.compute import discovery  # noqa: E402
from ceilometer.publisher import utils as publisher_utils  # noqa: E402


class OneDomain:
    """The libvirt connection, listing only the guest under test: the host is shared, and
    other tests' domains vanish while Ceilometer's discovery walks the list."""

    def __init__(self, conn, instance_id):
        self._conn, self._id = conn, instance_id

    def listAllDomains(self, flags=0):
        return [self._conn.lookupByUUIDString(self._id)]

    def __getattr__(self, name):
        return getattr(self._conn, name)


class NovaAnswers(discovery.InstanceDiscovery):
    """Ceilometer's discovery, with nova's API answered from the command line."""

    def __init__(self, conf, flavor_id, instance_id):
        super().__init__(conf)
        self._api_flavor_id = flavor_id or None
        self._instance_id = instance_id

    @property
    def connection(self):
        return OneDomain(super().connection, self._instance_id)

    def get_flavor_id(self, name):
        return self._api_flavor_id


def as_dict(sample):
    d = sample.as_dict()
    return {k: d[k] for k in ("name", "type", "unit", "volume", "resource_id", "user_id",
                              "project_id", "resource_metadata")}


def main(uri, host, instance_id, flavor_id, dst, secret=None):
    conf = service.prepare_service(argv=["ceilometer-fidelity"], config_files=[])
    conf.set_override("libvirt_uri", uri)
    conf.set_override("host", host)
    found = NovaAnswers(conf, flavor_id, instance_id).discover(manager=None)
    instances = [i for i in found if i.id == instance_id]
    cache, samples, errors = {}, [], {}
    polling_timestamp = timeutils.utcnow().isoformat()  # one per poll, as its manager stamps
    for ep in importlib.metadata.entry_points(group="ceilometer.poll.compute"):
        try:
            pollster = ep.load()(conf)
            for sample in pollster.get_samples(None, cache, instances):
                sample.set_timestamp(polling_timestamp)
                samples.append(sample)
        except Exception as exc:  # a pollster the host cannot serve (perf events off, ...)
            errors[ep.name] = repr(exc)
    json.dump({"ceilometer_version": importlib.metadata.version("ceilometer"),
               "instances": len(instances), "samples": [as_dict(s) for s in samples],
               "errors": errors,
               "messages": [publisher_utils.meter_message_from_counter(s, secret)
                            for s in samples] if secret else []},
              open(dst, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:7])
