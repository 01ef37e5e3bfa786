#!/usr/bin/env bash
# Wheels of the packages the lent GPU machine's image lacks (it has Python 3.12, torch, torchvision, numpy, pandas,
# scipy, transformers... but no registry), at the versions of constraints.txt, into .whl/ (git-ignored locally via
# .git/info/exclude). The list is the one the first device check needed (results/perf/device_check/NOTES.md).
# On the machine: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#                 export PYTHONPATH=/tmp/site:$PWD; python3 scripts/device_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
MISSING="alembic annotated-types blinker cachetools cffi colorlog cryptography databricks-sdk docker fastapi
faster-coco-eval Flask flask-cors ftfy gitdb GitPython google-auth graphene graphql-core graphql-relay gunicorn
httpcore2 httpx2 huey importlib_metadata itsdangerous Mako mlflow mlflow-skinny mlflow-tracing mlxtend
open_clip_torch opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions optuna
prettytable pyasn1 pyasn1_modules pycocotools pycparser pydantic pydantic_core python-dotenv scikit-dimension
skops smmap SQLAlchemy sqlparse starlette submitit truststore typing-inspection uvicorn wcwidth"
pins=()
for name in $MISSING; do
    pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt) || { echo "error: $name is not pinned in constraints.txt" >&2; exit 2; }
    pins+=("$pin")
done
mkdir -p .whl .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for tag in manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}"
echo "$(ls .whl | wc -l) wheels in .whl/ ($(du -sh .whl | cut -f1)); carry .whl in the device call"
