"""Runs INSIDE .ceilometer-venv (tools/ceilometer_venv.sh): Ceilometer's own LibvirtInspector.

The baseline of benchmarks/poll_cycle.py. It builds the real
ceilometer.compute.virt.libvirt.inspector.LibvirtInspector with a minimal oslo.config conf
(Ceilometer's own option list, `[DEFAULT] libvirt_uri` set), then serves JSON lines:

    stdout first: {"ready": true, "ceilometer": "27.0.0", "libvirt": 9000000}
    stdin:  {"instances": [{"id": uuid, "name": display, "instance_name": domain}, ...]}
    stdout: {"wall_ms": .., "cpu_ms": .., "instances": n, "read": ok, "errors": {exc: count}}

One request is one poll cycle as Ceilometer's compute pollsters make it: each inspector method
once per instance (the pollsters' per-cycle cache), generators drained to lists, an
InspectorException skips that instance like GenericComputePollster.get_samples. Wall is
perf_counter, client CPU is this process's time.process_time across the cycle.

    .ceilometer-venv/bin/python -W ignore benchmarks/_ceilometer_inspector_worker.py --uri URI
"""
import argparse
import collections
import importlib.metadata
import json
import sys
import time
import types

import libvirt
from oslo_config import cfg

from ceilometer import opts
from ceilometer.compute.virt import inspector as virt_inspector
from ceilometer.compute.virt.libvirt.inspector import LibvirtInspector

# What the compute pollsters call per instance; vnic rates are not implemented for libvirt.
METHODS = ("inspect_instance", "inspect_vnics", "inspect_disks", "inspect_disk_info")


def make_conf(uri: str) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    for group, options in opts.list_opts():  # what ceilometer.service.prepare_service registers
        conf.register_opts(list(options), group=None if group == "DEFAULT" else group)
    conf([], project="ceilometer", default_config_files=[], default_config_dirs=[])
    conf.set_override("libvirt_uri", uri)
    return conf


def nova_instance(spec: dict) -> types.SimpleNamespace:
    """What the inspector reads of a novaclient Server: id, the domain name (by getattr)."""
    return types.SimpleNamespace(**{"id": spec["id"], "name": spec.get("name", ""),
                                    "OS-EXT-SRV-ATTR:instance_name": spec.get("instance_name")})


def poll_cycle(inspector: LibvirtInspector, instances: list) -> dict:
    errors = collections.Counter()
    read = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for instance in instances:
        try:
            for method in METHODS:
                result = getattr(inspector, method)(instance, None)
                if not isinstance(result, virt_inspector.InstanceStats):
                    list(result)  # the pollsters' cache never keeps an iterator
            read += 1
        except virt_inspector.InspectorException as exc:
            errors[type(exc).__name__] += 1
    return {"wall_ms": (time.perf_counter() - wall) * 1e3,
            "cpu_ms": (time.process_time() - cpu) * 1e3,
            "instances": len(instances), "read": read, "errors": dict(errors)}


def serve(inspector: LibvirtInspector, lines, out) -> None:
    for line in lines:
        try:
            instances = [nova_instance(spec) for spec in json.loads(line)["instances"]]
            reply = poll_cycle(inspector, instances)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops the run
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="qemu:///system")
    args = parser.parse_args()
    inspector = LibvirtInspector(make_conf(args.uri))  # connects (read-only) at construction
    print(json.dumps({"ready": True, "ceilometer": importlib.metadata.version("ceilometer"),
                      "libvirt": libvirt.getVersion()}), flush=True)
    serve(inspector, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
