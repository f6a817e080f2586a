"""Runs INSIDE .ceilometer-venv (tools/ceilometer_venv.sh), never in the product's venv.

Feeds the agent's real output, captured by tests/interop, through the pinned Ceilometer's own
code and writes what Ceilometer made of it:
  delete_samples  -> ceilometer.meter.notifications.ProcessMeterNotifications with our YAML
  telemetry       -> ceilometer.telemetry.notifications.TelemetryIpc (the polling endpoint)
  udp, file       -> the same endpoint (they carry the same meter messages)
and ceilometer.publisher.utils.verify_signature on every signed dict (and on a tampered copy).
usage: python ceilometer_side.py INPUT.json OUTPUT.json METER_DEFINITIONS_DIR
"""
import copy
import importlib.metadata
import json
import sys
import warnings

warnings.simplefilter("ignore")

from ceilometer import service  # noqa: E402
from ceilometer.meter import notifications as meter_notifications  # noqa: E402
from ceilometer.publisher import utils as publisher_utils  # noqa: E402
from ceilometer.telemetry import notifications as telemetry  # noqa: E402


def as_dicts(samples):
    out = []
    for s in samples:
        d = s.as_dict()
        out.append({k: d[k] for k in ("name", "type", "unit", "volume", "resource_id",
                                      "user_id", "project_id", "timestamp",
                                      "resource_metadata", "id", "source")})
    return out


def signatures(messages, secret):
    valid = [publisher_utils.verify_signature(m, secret) for m in messages]
    tampered = []
    for m in messages:
        bad = copy.deepcopy(m)
        bad["resource_id"] = str(bad.get("resource_id")) + "-x"
        tampered.append(publisher_utils.verify_signature(bad, secret))
    return {"valid": valid, "tampered_valid": tampered}


def main(src, dst, definitions_dir):
    data = json.load(open(src))
    conf = service.prepare_service(argv=["ceilometer-interop"], config_files=[])
    conf.set_override("meter_definitions_dirs", [definitions_dir], group="meter")
    conf.set_override("telemetry_secret", data["secret"], group="publisher")
    meters = meter_notifications.ProcessMeterNotifications(conf, None)
    ipc = telemetry.TelemetryIpc(conf, None)
    out = {"ceilometer_version": importlib.metadata.version("ceilometer")}
    out["delete_samples"] = [as_dicts(meters.build_sample(m)) for m in data["delete_samples"]]
    out["telemetry"] = [as_dicts(ipc.build_sample(m)) for m in data["telemetry"]]
    for name in ("udp", "file"):
        out[name] = as_dicts(ipc.build_sample({"payload": {"samples": data[name]}}))
    out["signatures"] = {
        "telemetry": signatures([s for m in data["telemetry"] for s in m["payload"]["samples"]],
                                data["secret"]),
        "udp": signatures(data["udp"], data["secret"]),
        "file": signatures(data["file"], data["secret"]),
        "delete_samples": signatures(
            [s for m in data["delete_samples"] for s in m["payload"]["samples"]],
            data["secret"]),
    }
    json.dump(out, open(dst, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:4])
