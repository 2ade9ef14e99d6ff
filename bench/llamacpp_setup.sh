#!/usr/bin/env bash
# llama-cpp-python's OpenAI-compatible server and a GGUF of models/large, built into DIR, for
# `bench/vs_peers.py --upstreams --llamacpp DIR` (and for recording tests/transcripts/llamacpp_*.sse again).
# Never run by tests or CI: PyPI has only llama-cpp-python's source, so this compiles llama.cpp (about 25 min
# with one job on a shared 2-core box). Usage: bench/llamacpp_setup.sh DIR [VERSION]  (JOBS=n builds faster).
#   DIR/venv                   python3.11 venv with llama-cpp-python[server]==VERSION built from its sdist
#   DIR/convert-venv           the converter's venv: sentencepiece, the project's .venv beneath (torch,
#                              transformers); gguf is the sdist's own gguf-py (PyPI's gguf 0.19.0 lacks what
#                              this converter calls: LazyChunkedTensor)
#   DIR/gguf/large-f32.gguf    models/large as f32 (the checkpoint is bf16 and 12M parameters: f32 is exact)
set -euo pipefail
DIR=$(mkdir -p "${1:?usage: bench/llamacpp_setup.sh DIR [VERSION]}" && cd "$1" && pwd)
VERSION=${2:-0.3.36}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SDIST=llama_cpp_python-$VERSION
run() { echo "+ $*" >&2; "$@"; }

run python3.11 -m venv "$DIR/venv"
run "$DIR/venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$DIR/sdist"
run tar xzf "$DIR/sdist/$SDIST.tar.gz" -C "$DIR"  # for vendor/llama.cpp/convert_hf_to_gguf.py
echo "+ building llama.cpp (CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-1}, nice 10): see $DIR/build.log" >&2
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-1} \
  run nice -n 10 "$DIR/venv/bin/pip" install -v "$DIR/sdist/$SDIST.tar.gz[server]" > "$DIR/build.log" 2>&1

run python3.11 -m venv "$DIR/convert-venv"
SITE=$("$DIR/convert-venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
run "$ROOT/.venv/bin/python" -c "import torch, transformers, sysconfig; print(sysconfig.get_paths()['purelib'])" \
  > "$SITE/ferryman-venv.pth"
run "$DIR/convert-venv/bin/pip" install -q sentencepiece  # imported before it looks for a tokenizer.model
# Our tokenizer's pre-tokenizer (Digits one by one, then GPT-2's byte-level regex) is SmolLM's; the converter knows
# pre-tokenizers only by a hash of known models' outputs, so it is told the name instead of failing.
mkdir -p "$DIR/gguf"
echo "+ convert_hf_to_gguf.py $ROOT/models/large --outtype f32 (pre-tokenizer: smollm)" >&2
"$DIR/convert-venv/bin/python" - "$DIR/$SDIST/vendor/llama.cpp" "$ROOT/models/large" \
  --outtype f32 --outfile "$DIR/gguf/large-f32.gguf" <<'EOF'
import runpy, sys
from pathlib import Path

llama = Path(sys.argv[1])
sys.path[:0] = [str(llama), str(llama / "gguf-py")]
from conversion import base

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "smollm"
sys.argv = [str(llama / "convert_hf_to_gguf.py"), *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
EOF
run "$DIR/venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
echo "ready: bench/vs_peers.py --upstreams --llamacpp $DIR" >&2
