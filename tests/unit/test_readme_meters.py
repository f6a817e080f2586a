"""The README's meter table is the catalogue: every row, with its type, unit and status."""
import pathlib
import re

from lifecycle_stats.publishing import meters

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
ROW = re.compile(r"^\| `([^`]+)` \| (\w+) \| `([^`]*)` \| .* \| (.*) \|$")


def readme_rows():
    section = README.read_text().split("### Meters", 1)[1].split("\n\n", 2)[1]
    return {m.group(1): (m.group(2), m.group(3).strip('"'), "legacy" in m.group(4))
            for m in map(ROW.match, section.splitlines()) if m}


def test_readme_table_lists_every_meter_with_type_unit_and_legacy_status():
    expected = {m.name: (m.type, m.unit, m.legacy)
                for m in (*meters.CATALOGUE, meters.FLAVOR_METER)}
    assert readme_rows() == expected
