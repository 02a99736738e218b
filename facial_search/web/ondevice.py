"""What the page needs to run the pipeline in the browser: the two models and the npm packages' files.

The page's on-device mode (``static/ondevice.js``) runs MediaPipe's FaceLandmarker (``@mediapipe/tasks-vision``,
WebAssembly) and the expression model (``onnxruntime-web``, WebAssembly; WebGPU where the browser has it), then
sends only the 64-d embeddings to ``POST /api/search/vectors``. Everything it loads is served by this server,
never by a CDN:

- ``/models/face_landmarker.task``: the same file the server's pipelines use (:func:`facial_search.io.assets.find_asset`:
  ``--model``, ``$FACIAL_SEARCH_MODELS``, the user cache);
- ``/models/expression.onnx``: the shipped expression model, offered only when it is the index's embedder
  (same name and version: the weights' digest), so the browser's vectors are comparable with the index's;
- ``/vendor/<name>``: the files of :data:`VENDOR_FILES` only, from the npm packages pinned in the checkout's
  ``package.json`` / ``package-lock.json``, installed by ``npm ci`` into ``node_modules/`` beside
  ``pyproject.toml`` (``$FACIAL_SEARCH_NODE_MODULES`` names another folder). Without them the page says so and
  sends frames to ``POST /api/search`` as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from facial_search.errors import FacialSearchError

#: Overrides where the npm packages are (a ``node_modules`` folder).
ENV_NODE_MODULES = "FACIAL_SEARCH_NODE_MODULES"
#: ``node_modules`` of a source checkout: beside ``pyproject.toml`` and ``package.json``.
CHECKOUT_NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"

#: Where the page finds the npm packages' files.
VENDOR_URL = "/vendor/"
JS = "text/javascript"
WASM = "application/wasm"
#: ``/vendor/<name>`` -> (file under ``node_modules``, media type): the only files ``/vendor/`` serves.
VENDOR_FILES: dict[str, tuple[str, str]] = {
    "tasks-vision/vision_bundle.mjs": ("@mediapipe/tasks-vision/vision_bundle.mjs", JS),
    "tasks-vision/wasm/vision_wasm_internal.js": ("@mediapipe/tasks-vision/wasm/vision_wasm_internal.js", JS),
    "tasks-vision/wasm/vision_wasm_internal.wasm": ("@mediapipe/tasks-vision/wasm/vision_wasm_internal.wasm", WASM),
    "tasks-vision/wasm/vision_wasm_nosimd_internal.js": (
        "@mediapipe/tasks-vision/wasm/vision_wasm_nosimd_internal.js",
        JS,
    ),
    "tasks-vision/wasm/vision_wasm_nosimd_internal.wasm": (
        "@mediapipe/tasks-vision/wasm/vision_wasm_nosimd_internal.wasm",
        WASM,
    ),
    # the WebAssembly build of ONNX Runtime, and the one with WebGPU (asyncify), each with its loader
    "onnxruntime-web/ort.wasm.min.mjs": ("onnxruntime-web/dist/ort.wasm.min.mjs", JS),
    "onnxruntime-web/ort-wasm-simd-threaded.mjs": ("onnxruntime-web/dist/ort-wasm-simd-threaded.mjs", JS),
    "onnxruntime-web/ort-wasm-simd-threaded.wasm": ("onnxruntime-web/dist/ort-wasm-simd-threaded.wasm", WASM),
    "onnxruntime-web/ort.webgpu.min.mjs": ("onnxruntime-web/dist/ort.webgpu.min.mjs", JS),
    "onnxruntime-web/ort-wasm-simd-threaded.asyncify.mjs": (
        "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs",
        JS,
    ),
    "onnxruntime-web/ort-wasm-simd-threaded.asyncify.wasm": (
        "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm",
        WASM,
    ),
}
#: npm packages whose files :data:`VENDOR_FILES` lists (their versions are reported by ``GET /api/ondevice``).
PACKAGES = ("@mediapipe/tasks-vision", "onnxruntime-web")


def node_modules() -> Path:
    """The ``node_modules`` folder the vendor files are served from (``$FACIAL_SEARCH_NODE_MODULES``, else the
    checkout's); it may not exist."""
    env = os.environ.get(ENV_NODE_MODULES)
    return Path(env) if env else CHECKOUT_NODE_MODULES


def vendor_file(name: str) -> tuple[Path, str] | None:
    """``(path, media type)`` of ``/vendor/<name>``, or ``None`` when ``name`` is not listed or not installed."""
    if name not in VENDOR_FILES:
        return None
    rel, media_type = VENDOR_FILES[name]
    path = node_modules() / rel
    return (path, media_type) if path.is_file() else None


def package_versions(folder: Path | None = None) -> dict[str, str]:
    """``{package: version}`` of the installed :data:`PACKAGES` (missing ones left out)."""
    folder = folder or node_modules()
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = str(json.loads((folder / pkg / "package.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            continue
    return out


@dataclass(frozen=True)
class OnDeviceAssets:
    """What the server can offer the on-device page, decided once when the app starts.

    Attributes:
        landmarker: path of ``face_landmarker.task``, or ``None``.
        expression: path of the expression model whose vectors the index holds, or ``None``.
        embedder: the index's embedder as the vector API takes it: ``"<name> v<version>"``.
        dim: the embedding's dimension.
        versions: the installed npm packages' versions.
        reason: why on-device mode is not offered (``None``: it is).
    """

    landmarker: Path | None
    expression: Path | None
    embedder: str
    dim: int
    versions: dict[str, str]
    reason: str | None

    @property
    def available(self) -> bool:
        return self.reason is None


def embedder_label(info) -> str:
    """An :class:`~facial_search.index.store.EmbedderInfo` as the vector API names it: ``"expression v3+1a2b..."``
    (the form ``facial-search info`` and ``/healthz`` show, without the ``" (64-d)"``)."""
    return f"{info.name} v{info.version}"


def find_assets(index_embedder, model_path: str | os.PathLike | None = None) -> OnDeviceAssets:
    """What can be served for on-device mode next to an index made by ``index_embedder``.

    On-device mode needs all three: the landmarker model (found as the pipelines found it, never downloaded
    here), the shipped expression model with the index's version (name ``expression``, same weights' digest),
    and every :data:`VENDOR_FILES` file installed.
    """
    from facial_search.embedders import expression
    from facial_search.io.assets import find_asset

    reasons = []
    landmarker = None
    try:
        landmarker = find_asset(path=model_path, download=False)
    except FacialSearchError as e:
        reasons.append(f"no landmarker model to serve ({e})")
    model = None
    if index_embedder.name != expression.ExpressionEmbedder.name:
        reasons.append(f"the index's embedder is {index_embedder.name}; the browser runs only the expression model")
    else:
        path = Path(str(expression.model_path()))
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        except OSError:
            digest = None
        if f"{expression.GENERATION}+{digest}" == index_embedder.version:
            model = path
        else:
            reasons.append(
                f"the index was made with expression v{index_embedder.version}, not the shipped model "
                f"(v{expression.GENERATION}+{digest}): re-index to use the browser's pipeline"
            )
    missing = [name for name in VENDOR_FILES if vendor_file(name) is None]
    if missing:
        reasons.append(f"the browser's packages are not installed (run `npm ci` beside package.json; {node_modules()})")
    return OnDeviceAssets(
        landmarker=landmarker,
        expression=model,
        embedder=embedder_label(index_embedder),
        dim=int(index_embedder.dim),
        versions=package_versions(),
        reason="; ".join(reasons) or None,
    )
