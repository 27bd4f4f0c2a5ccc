"""`python -m curlora.cli` = the `curlora` command (for machines where the console script is not installed)."""

from curlora.cli import run

run()
