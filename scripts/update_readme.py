"""Regenerate the configuration table in README.md from the config dataclasses."""
import re
from pathlib import Path

from maskcls.config_io import config_table

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
new = re.sub(r"<!-- config-table -->.*?<!-- /config-table -->",
             lambda _: "<!-- config-table -->\n" + config_table() + "<!-- /config-table -->", text, flags=re.S)
readme.write_text(new)
print("README.md configuration table updated" if new != text else "README.md already current")
