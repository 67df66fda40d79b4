#!/usr/bin/env bash
# Build and check slidefuse's container images (`make image`, `make image-test`).
#
#   tools/image/image.sh build cpu|gpu     build one target as slidefuse:<target>
#   tools/image/image.sh test  cpu|gpu     check a built target (see below)
#
# With a docker daemon, docker builds and runs them. Without one (this project's machines), podman builds with
# the vfs storage driver and chroot isolation, and buildah runs commands in a working container (`podman run`
# needs setrlimit, which these machines refuse). Without a registry, the base is a Debian bookworm made here with
# mmdebstrap and imported as localhost/debian:bookworm (python3.11 then comes from Debian; see the Dockerfile).
# Environment: IMAGE_BASE (a base image to use instead), IMAGE_CACHE (default .cache/image), PIP_CERT (a CA
# bundle passed to the build as a secret, for TLS-inspecting proxies), IMAGE_TIMES (a file that gets one
# "target seconds" line per build).
#
# test cpu: `slidefuse segment` on the demonstration slide inside the image, as its non-root user, with the slide
#           mounted read-only; checks mask.tif, report.json and that the mask equals the one made here by the
#           same model with ort-cpu (read with tifffile); then the same with --backend ov-cpu (OpenVINO fp32).
# test gpu: onnxruntime-gpu (with its CUDA provider) and TensorRT import, the CPU onnxruntime is absent, the
#           demonstration bundle verifies (`slidefuse info`), and `--backend ort-cuda` without a GPU fails with
#           slidefuse's one-line error.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${IMAGE_CACHE:-.cache/image}
VPY=${VPY:-.venv/bin/python}
DEMO_SLIDE=${DEMO_SLIDE:-.cache/demo/CMU-1-Small-Region.svs}
mkdir -p "$CACHE"

if docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
if [[ $ENGINE == podman ]] && ! { command -v podman && command -v buildah; } >/dev/null; then
    echo "[image] no docker daemon and no podman/buildah here: apt-get install -y podman buildah mmdebstrap" >&2
    exit 1
fi
PODMAN=(podman --storage-driver vfs)
BUILDAH=(buildah --storage-driver vfs)

log() { echo "[image] $*" >&2; }

base_image() {
    if [[ -n "${IMAGE_BASE:-}" ]]; then echo "$IMAGE_BASE"; return; fi
    if [[ $ENGINE == docker ]]; then echo "python:3.11-slim-bookworm"; return; fi
    if ! "${PODMAN[@]}" image exists localhost/debian:bookworm; then
        command -v mmdebstrap >/dev/null || { log "install podman buildah mmdebstrap (apt-get)"; exit 1; }
        [[ -s $CACHE/rootfs.tar ]] || mmdebstrap --variant=minbase bookworm "$CACHE/rootfs.tar"
        "${PODMAN[@]}" import "$CACHE/rootfs.tar" localhost/debian:bookworm >/dev/null
    fi
    echo "localhost/debian:bookworm"
}

build() {
    local target=$1 base secret=() start
    base=$(base_image)
    local cert=${PIP_CERT:-}
    [[ -n $cert && -s $cert ]] && secret=(--secret "id=pip_cert,src=$cert")
    log "building slidefuse:$target FROM $base with $ENGINE"
    start=$(date +%s)
    local trt=()
    if [[ $target == gpu ]]; then
        local with=${IMAGE_TENSORRT:-}
        if [[ -z $with ]]; then  # TensorRT's wheels come only from NVIDIA's index
            if curl -sf -m 15 -o /dev/null https://pypi.nvidia.com/tensorrt-cu12/; then with=1; else
                with=0; log "WARNING: https://pypi.nvidia.com is not reachable: building the GPU image WITHOUT TensorRT"
                log "         (TENSORRT=0; set IMAGE_TENSORRT=1 to insist)"; fi
        fi
        trt=(--build-arg "TENSORRT=$with")
    fi
    local args=(build --network host "${secret[@]}" "${trt[@]}" --build-arg "BASE=$base"
                --build-arg "REVISION=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
                --target "$target" -t "slidefuse:$target" .)
    if [[ $ENGINE == docker ]]; then
        DOCKER_BUILDKIT=1 docker "${args[@]}"
    else
        # --layers=false: vfs copies the whole file system at every committed step; commit only each stage
        "${PODMAN[@]}" "${args[0]}" --isolation chroot --format docker --layers=false "${args[@]:1}"
        "${PODMAN[@]}" image prune -f >/dev/null  # the untagged build stages
    fi
    local secs=$(( $(date +%s) - start ))
    log "built slidefuse:$target in ${secs} s, $(image_size "$target")"
    [[ -n ${IMAGE_TIMES:-} ]] && echo "$target $secs" >> "$IMAGE_TIMES"
    return 0
}

image_size() {
    local bytes
    if [[ $ENGINE == docker ]]; then bytes=$(docker image inspect --format '{{.Size}}' "slidefuse:$1")
    else bytes=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "localhost/slidefuse:$1"); fi
    echo "$(( bytes / 1000000 )) MB"
}

# run_in TARGET MOUNTS... -- CMD...: run CMD in a fresh container of the image (as its user), then remove it.
run_in() {
    local target=$1; shift
    local mounts=()
    while [[ $1 != -- ]]; do mounts+=(-v "$1"); shift; done
    shift
    if [[ $ENGINE == docker ]]; then
        docker run --rm "${mounts[@]}" --entrypoint "$1" "slidefuse:$target" "${@:2}"
        return
    fi
    local ctr rc=0
    ctr=$("${BUILDAH[@]}" from -q "localhost/slidefuse:$target")
    "${BUILDAH[@]}" run --isolation chroot "${mounts[@]}" "$ctr" -- "$@" || rc=$?
    "${BUILDAH[@]}" rm "$ctr" >/dev/null
    return $rc
}

test_cpu() {
    [[ -s $DEMO_SLIDE ]] || "$VPY" tools/fetch_demo_slide.py --dest "$DEMO_SLIDE"
    local slides out here
    slides=$(cd "$(dirname "$DEMO_SLIDE")" && pwd)
    out=$(mktemp -d "$CACHE/out.XXXX"); chmod 777 "$out"
    out=$(cd "$out" && pwd)
    run_in cpu "$slides:/slides:ro" "$out:/out" -- slidefuse segment /slides/CMU-1-Small-Region.svs --out /out
    run_in cpu "$slides:/slides:ro" "$out:/out" -- slidefuse -q segment /slides/CMU-1-Small-Region.svs \
        --backend ov-cpu --formats tiff --out /out/ov-cpu
    local owner
    owner=$(stat -c %u "$out/CMU-1-Small-Region/mask.tif")
    [[ $owner == 1000 ]] || { log "outputs written by uid $owner, expected the image's user 1000"; exit 1; }
    log "outputs written by uid $owner (the image's non-root user)"
    here=$(mktemp -d "$CACHE/here.XXXX")
    .venv/bin/slidefuse -q segment "$DEMO_SLIDE" --backend ort-cpu --out "$here"
    "$VPY" - "$out/CMU-1-Small-Region" "$here/CMU-1-Small-Region" <<'PY'
import json, sys
from pathlib import Path

import numpy as np
import tifffile

inside, here = Path(sys.argv[1]), Path(sys.argv[2])
for name in ("mask.tif", "mask.geojson", "preview.png", "report.json"):
    assert (inside / name).is_file(), f"{inside / name} missing"
a = np.asarray(tifffile.imread(inside / "mask.tif", level=0))
b = np.asarray(tifffile.imread(here / "mask.tif", level=0))
report = json.loads((inside / "report.json").read_text())
assert a.shape == b.shape, (a.shape, b.shape)
differ = int((a != b).sum())
print(f"[image] mask {a.shape} inside the image vs here: {differ} of {a.size} pixels differ; classes "
      f"{np.bincount(a.ravel()).tolist()}; backend {report['backend']['backend']} "
      f"onnxruntime {report['backend'].get('onnxruntime')}")
assert differ == 0, "the image's mask differs from this machine's"
ov = np.asarray(tifffile.imread(inside.parent / "ov-cpu" / inside.name / "mask.tif", level=0))
ov_report = json.loads((inside.parent / "ov-cpu" / inside.name / "report.json").read_text())
print(f"[image] ov-cpu inside the image (openvino {ov_report['backend'].get('openvino')}, "
      f"{ov_report['backend'].get('inference_precision')}): {int((ov != b).sum())} of {b.size} pixels differ")
assert ov_report["backend"]["backend"] == "ov-cpu" and (ov == b).all(), "ov-cpu's mask differs from ort-cpu's"
PY
    rm -rf "$out" "$here"
}

test_gpu() {
    local trt
    if [[ $ENGINE == docker ]]; then
        trt=$(docker image inspect --format '{{index .Config.Labels "io.slidefuse.tensorrt"}}' slidefuse:gpu)
    else
        trt=$("${PODMAN[@]}" image inspect --format '{{index .Config.Labels "io.slidefuse.tensorrt"}}' \
              localhost/slidefuse:gpu)
    fi
    log "GPU image built with TENSORRT=$trt"
    run_in gpu -- python -c "
import importlib.util, onnxruntime as ort
assert 'CUDAExecutionProvider' in ort.get_available_providers(), ort.get_available_providers()
from importlib.metadata import distributions
names = {d.metadata['Name'].lower() for d in distributions()}
assert 'onnxruntime' not in names and 'onnxruntime-gpu' in names, sorted(n for n in names if 'onnx' in n)
has_trt = importlib.util.find_spec('tensorrt') is not None
assert has_trt == ('$trt' == '1'), ('tensorrt importable:', has_trt)
cuda = sorted(n for n in names if n.startswith('nvidia-'))
print('[image] onnxruntime-gpu', ort.__version__, ort.get_available_providers(), 'CUDA wheels', cuda,
      'tensorrt', __import__('tensorrt').__version__ if has_trt else 'not installed')
"
    run_in gpu -- slidefuse-smoke
    [[ -s $DEMO_SLIDE ]] || "$VPY" tools/fetch_demo_slide.py --dest "$DEMO_SLIDE"
    local slides err rc=0
    slides=$(cd "$(dirname "$DEMO_SLIDE")" && pwd)
    err=$(run_in gpu "$slides:/slides:ro" -- sh -c \
        'slidefuse -q segment /slides/CMU-1-Small-Region.svs --backend ort-cuda --out /tmp/o 2>&1 >/dev/null') || rc=$?
    log "ort-cuda without a GPU: exit $rc: $err"
    [[ $rc -ne 0 ]] || { log "ort-cuda ran without a GPU?"; exit 1; }
    # slidefuse's error is one line; onnxruntime's own C++ logger may print its provider-loading messages first,
    # and slidefuse's own warnings (-q keeps them: the demonstration bundle is unsigned) are log lines, not errors
    local ours others
    ours=$(printf '%s\n' "$err" | grep -c "^slidefuse: error: backend 'ort-cuda' is not available here: " || true)
    others=$(printf '%s\n' "$err" | grep -v "^slidefuse: error: " \
             | grep -v -c -e onnxruntime -e '^.\[m$' -e '^$' -e '^[0-9:]* WARNING slidefuse[.a-z_]*: ' || true)
    [[ $ours -eq 1 && $others -eq 0 && $err != *Traceback* ]] \
        || { log "expected slidefuse's one-line error (and at most onnxruntime's log lines)"; exit 1; }
}

case "${1:-}" in
    build) build "${2:?target: cpu or gpu}" ;;
    test) "test_${2:?target: cpu or gpu}" ;;
    *) echo "usage: $0 build|test cpu|gpu" >&2; exit 2 ;;
esac
