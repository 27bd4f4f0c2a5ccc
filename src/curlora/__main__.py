"""`python -m curlora` = the `curlora` command."""

from curlora.cli import run

run()
