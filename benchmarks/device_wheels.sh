#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels an offline GPU machine lacks, for benchmarks/cuda_check.sh
# to install there with `pip install --no-index --no-deps --target`. Run here, from the repository root,
# where pip reaches the package index. The GPU image is assumed to hold torch, numpy, scipy, pandas,
# matplotlib, scikit-learn, seaborn, pyyaml, psutil, tqdm, pillow, pyarrow (docs/benchmarks.md).
#   METHOD=1     the method's packages missing there: mrcfile, starfile (default 1)
#   CRYODRGN=1   cryodrgn and the packages its parse_pose_star, parse_ctf_star and train_vae modules
#                import that the image lacks (default 1; about 23 MB)
#   PYVER=3.12   the GPU machine's Python (default 3.12)
set -euo pipefail
DEST=${DEST:-.whl}
PYVER=${PYVER:-3.12}
PYTHON=${PYTHON:-python3}
METHOD_WHEELS="mrcfile==1.5.4 starfile==0.5.13"
# cryodrgn 4.3.1's command modules (train_vae imports its analysis helpers) import these; the
# cryodrgn program itself imports every command (healpy, umap-learn, jupyter...): it is not used offline
CRYODRGN_WHEELS="cryodrgn==4.3.1 arrow==1.4.0 comm==0.2.3 fastjsonschema==2.22.3 fqdn==1.6.0 igraph==1.0.0
 ipython==9.18.1 ipywidgets==8.1.9 isoduration==20.11.0 jsonpointer==3.12 jsonschema==4.26.0
 jsonschema-specifications==2025.9.1 lark==1.3.1 nbformat==5.11.1 plotly==6.9.0 referencing==0.37.0
 rfc3339-validator==0.1.4 rfc3986-validator==0.1.1 rfc3987-syntax==1.1.0 rpds-py==2026.9.1 texttable==1.7.2
 traitlets==5.16.1 uri-template==1.3.0 wcwidth==0.9.4 webcolors==25.10.0"
want=""
[ "${METHOD:-1}" = 1 ] && want="$want $METHOD_WHEELS"
[ "${CRYODRGN:-1}" = 1 ] && want="$want $CRYODRGN_WHEELS"
[ -n "$want" ] || { echo "nothing asked for (METHOD=0 CRYODRGN=0)"; exit 0; }
mkdir -p "$DEST"
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms="$platforms --platform $p"
done
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  $platforms -d "$DEST" $want
du -sh "$DEST"
ls "$DEST"
