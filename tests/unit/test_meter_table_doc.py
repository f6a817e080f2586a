"""doc/ceilometer.md's meter table is the catalogue: every row, with its type, unit and status."""
import pathlib
import re

from lifecycle_stats.publishing import meters

METERS_PAGE = pathlib.Path(__file__).resolve().parents[2] / "doc" / "ceilometer.md"
ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| `([^`]*)` \| .* \| (.*) \|$")


def documented_rows():
    section = METERS_PAGE.read_text().split("\n## Meters\n\n", 1)[1].split("\n\n", 1)[0]
    return {m.group(1): (m.group(2), m.group(3).strip('"'), "legacy" in m.group(4))
            for m in map(ROW.match, section.splitlines()) if m}


def test_meter_table_lists_every_meter_with_type_unit_and_legacy_status():
    expected = {m.name: (m.type, m.unit, m.legacy)
                for m in (*meters.CATALOGUE, meters.FLAVOR_METER)}
    assert documented_rows() == expected
