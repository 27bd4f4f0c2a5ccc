#!/usr/bin/env bash
# Copy the paper data the GPU runs need from ../shared/data into .devdata/ (git-ignored; carried by the device
# tool, since ../shared does not travel). Never committed.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
src=../shared/data
rm -rf .devdata && mkdir -p .devdata
cp -r "$src/glue" "$src/sentiment140" "$src/wikitext-2" "$src/squad" "$src/vader" .devdata/
grep -qx '.devdata/' .git/info/exclude 2>/dev/null || echo '.devdata/' >> .git/info/exclude
du -sh .devdata
