#!/usr/bin/env bash
# Makes a fake webcam stream for Chromium from a shipped image:
#   tests/e2e/make-webcam.sh [IMAGE] [OUT.y4m] [SECONDS]
# defaults: models/images/astronaut.png (has a face), tests/artifacts/webcam.y4m, 2 s.
# Chromium plays it with --use-fake-device-for-media-stream --use-fake-ui-for-media-stream
# --use-file-for-fake-video-capture=OUT.y4m (it loops). 640x480, 15 fps, 4:2:0 (what
# Chromium's y4m reader accepts); a slow zoom so that consecutive frames differ a little.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
image=${1:-$ROOT/models/images/astronaut.png}
out=${2:-$ROOT/tests/artifacts/webcam.y4m}
seconds=${3:-2}
command -v ffmpeg >/dev/null || { echo "ffmpeg is missing: run make setup" >&2; exit 1; }
[ -f "$image" ] || { echo "no such image: $image" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
fps=15
frames=$((seconds * fps))
ffmpeg -hide_banner -loglevel error -y -loop 1 -framerate "$fps" -i "$image" -frames:v "$frames" \
  -vf "scale=640:480:force_original_aspect_ratio=increase,crop=640:480,zoompan=z='1+0.1*on/$frames':x='iw/2-iw/zoom/2':y='ih/2-ih/zoom/2':d=1:s=640x480:fps=$fps,format=yuv420p" \
  -f yuv4mpegpipe "$out"
echo "$out: $(stat -c %s "$out") bytes, $frames frames of 640x480 from $(basename "$image")"
