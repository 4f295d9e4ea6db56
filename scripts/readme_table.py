"""Regenerate the README's table of config groups from the config files (tests/test_readme.py
fails when the two differ): python scripts/readme_table.py"""

from pathlib import Path

from filterformer.runs.compose import config_dir, config_table

BEGIN, END = "<!-- config-table: begin -->\n", "\n<!-- config-table: end -->"

if __name__ == "__main__":
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(before + BEGIN + config_table(config_dir()) + END + after)
    print(f"wrote the config table of {readme}")
