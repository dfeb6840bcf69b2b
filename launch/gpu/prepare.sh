#!/usr/bin/env bash
# Builds .gpu/ for launch/gpu/run.sh on a machine with a GPU and no network (BUILD_NOTES "On a
# GPU"): wheels of the packages such an image lacks (Python 3.12), the Whisper model folders
# without their weights (run.sh draws random ones there), and 32 test clips of the synthetic
# corpus. Run from the repo root with the project's venv active and the assets and corpus built.
set -euo pipefail
corpus=${1:-$HOME/.cache/mkd_jax/corpora/synth_1.3h_0.6-0.15-0.25}
mkdir -p .gpu/whl .gpu/models .gpu/clips
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  grain==0.2.18 ml_collections==1.1.0 soundfile==0.14.0 cffi pycparser array_record==0.8.6 portpicker
for m in whisper-tiny.en whisper-base; do
  src=$(python -c "from mkd_jax.assets import ensure_model; print(ensure_model('${m#whisper-}'))")
  mkdir -p .gpu/models/$m
  cp "$src"/{config.json,generation_config.json,preprocessor_config.json,tokenizer.json,.mkd_jax-complete} .gpu/models/$m/
done
python - "$corpus" <<'PY'
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

arrow = Path(sys.argv[1]) / "test" / "data-00000-of-00001.arrow"
with pa.memory_map(str(arrow)) as src:
    table = ipc.open_stream(src).read_all()
for row in table.slice(0, 32).to_pylist():
    Path(".gpu/clips", f"{row['id']}.flac").write_bytes(row["audio"]["bytes"])
PY
du -sh .gpu
