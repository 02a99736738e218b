// On-device mode: the pipeline of facial_search/pipeline.py in the browser. MediaPipe's FaceLandmarker
// (@mediapipe/tasks-vision, WebAssembly, the server's face_landmarker.task) finds every face and its 478
// landmarks; align.js turns each into the 48x48 grey face align.py makes; ONNX Runtime Web (WebAssembly, or
// WebGPU where the browser has it) runs the server's expression model on all faces of a frame at once. Only the
// 64-d unit-norm embeddings and MediaPipe's 52 blendshape scores of each face (which explain its matches) leave
// the page (POST /api/search/vectors): never a picture.
//
// Everything is loaded from our server (/vendor/, /models/), never from a CDN. createOnDevice(info) rejects
// with an Error saying why when something cannot load; the page then falls back to sending pictures.
"use strict";

import { FaceLandmarker, FilesetResolver } from "/vendor/tasks-vision/vision_bundle.mjs";
import { alignFace, boxFromLandmarks, DEFAULT_SIZE, roundHalfEven } from "/static/align.js";

/** Most faces per image, and MediaPipe's thresholds: as facial_search/vision/faces.py (FaceFinderOptions). */
export const MAX_FACES = 8;
const CONFIDENCE = { minFaceDetectionConfidence: 0.5, minFacePresenceConfidence: 0.5, minTrackingConfidence: 0.5 };
/** Tiles where a whole photo shows no face (faces.py: TILE_GRID, TILE_OVERLAP, TILE_MIN_CONFIDENCE, TILE_MIN_SIDE). */
const TILE_GRID = 2;
const TILE_OVERLAP = 0.25;
const TILE_MIN_CONFIDENCE = 0.75;
const TILE_MIN_SIDE = 96;
/** A ready-made face crop (faces.py: CROP_PAD, CROP_SHARPEN): padded, then sharpened, then as it is. */
const CROP_PAD = 1 / 6;
const CROP_SHARPEN = [
  [0.8, 1.0],
  [1.5, 1.0],
  [3.0, 1.5],
];

const WASM_DIR = "/vendor/tasks-vision/wasm";
const f32 = Math.fround;
const ORT_DIR = "/vendor/onnxruntime-web/";

async function loadOrt() {
  // WebGPU where the browser offers an adapter; the model's int8 operators run on WebAssembly either way
  let webgpu = false;
  try {
    webgpu = !!(navigator.gpu && (await navigator.gpu.requestAdapter()));
  } catch (_) {
    webgpu = false;
  }
  const ort = await import(ORT_DIR + (webgpu ? "ort.webgpu.min.mjs" : "ort.wasm.min.mjs"));
  ort.env.wasm.wasmPaths = ORT_DIR;
  ort.env.wasm.numThreads = 1; // threads need a cross-origin-isolated page; one is enough for a 1 MB model
  ort.env.wasm.proxy = false;
  ort.env.logLevel = "error";
  return { ort, webgpu };
}

async function landmarker(fileset, url, runningMode, confidence = CONFIDENCE) {
  return FaceLandmarker.createFromOptions(fileset, {
    baseOptions: { modelAssetPath: url, delegate: "CPU" },
    runningMode,
    numFaces: MAX_FACES,
    ...confidence,
    outputFaceBlendshapes: true, // the 52 scores that explain a match (explain.js), sent beside the embedding
    outputFacialTransformationMatrixes: false,
  });
}

// ---- pixels ---------------------------------------------------------------------------------------------------
function canvas2d(w, h) {
  const c = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(w, h) : document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c.getContext("2d", { willReadFrequently: true });
}

/** An image file (URL or Blob) as RGBA pixels, as facial_search.io.images.load_image decodes it: EXIF rotation
 * applied, colour profile ignored, alpha composited on white, the first frame of an animation. */
export async function decodeImage(source) {
  const blob = source instanceof Blob ? source : await (await fetch(source)).blob();
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
    imageOrientation: "from-image",
  });
  const ctx = canvas2d(bitmap.width, bitmap.height);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, bitmap.width, bitmap.height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, ctx.canvas.width, ctx.canvas.height);
}

function crop(image, x, y, w, h) {
  const out = new ImageData(w, h);
  for (let r = 0; r < h; r++) {
    const from = ((y + r) * image.width + x) * 4;
    out.data.set(image.data.subarray(from, from + w * 4), r * w * 4);
  }
  return out;
}

function padEdge(image, py, px) {
  const w = image.width + 2 * px, h = image.height + 2 * py;
  const out = new ImageData(w, h);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(Math.max(y - py, 0), image.height - 1);
    for (let x = 0; x < w; x++) {
      const sx = Math.min(Math.max(x - px, 0), image.width - 1);
      const s = (sy * image.width + sx) * 4, d = (y * w + x) * 4;
      out.data[d] = image.data[s];
      out.data[d + 1] = image.data[s + 1];
      out.data[d + 2] = image.data[s + 2];
      out.data[d + 3] = 255;
    }
  }
  return out;
}

// cv2.addWeighted(img, 1 + amount, cv2.GaussianBlur(img, (0, 0), sigma), -amount, 0): an unsharp mask (the kernel
// side OpenCV picks for uint8, reflect-101 borders; float arithmetic: only the detector sees these pixels).
function unsharp(image, amount, sigma) {
  const k = Math.round(sigma * 6 + 1) | 1;
  const half = k >> 1;
  const kernel = new Float64Array(k);
  let sum = 0;
  for (let i = 0; i < k; i++) sum += kernel[i] = Math.exp(-((i - half) ** 2) / (2 * sigma * sigma));
  for (let i = 0; i < k; i++) kernel[i] /= sum;
  const w = image.width, h = image.height, src = image.data;
  const reflect = (i, n) => (n === 1 ? 0 : i < 0 ? -i : i >= n ? 2 * n - 2 - i : i);
  const tmp = new Float64Array(w * h * 3);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      for (let c = 0; c < 3; c++) {
        let v = 0;
        for (let i = 0; i < k; i++) v += kernel[i] * src[(y * w + reflect(x + i - half, w)) * 4 + c];
        tmp[(y * w + x) * 3 + c] = Math.min(255, Math.max(0, Math.round(v))); // blurred image is uint8 too
      }
  const out = new ImageData(w, h);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++)
      for (let c = 0; c < 3; c++) {
        let v = 0;
        for (let i = 0; i < k; i++) v += kernel[i] * tmp[(reflect(y + i - half, h) * w + x) * 3 + c];
        const blurred = Math.min(255, Math.max(0, Math.round(v)));
        const p = (y * w + x) * 4 + c;
        out.data[p] = roundHalfEven((1 + amount) * src[p] - amount * blurred);
      }
  for (let i = 3; i < out.data.length; i += 4) out.data[i] = 255;
  return out;
}

// ---- faces ----------------------------------------------------------------------------------------------------
function toFace(landmarks, w, h, blendshapes = null) {
  return { landmarks, box: boxFromLandmarks(landmarks, w, h), blendshapes };
}

/** The 52 blendshape scores of each face of a FaceLandmarker result (categories by index: BLENDSHAPE_NAMES
 * order), or null for a face without them. */
function scoresOf(result, i) {
  const cls = result.faceBlendshapes && result.faceBlendshapes[i];
  if (!cls || !cls.categories || !cls.categories.length) return null;
  return cls.categories
    .slice()
    .sort((a, b) => a.index - b.index)
    .map((c) => Math.min(1, Math.max(0, c.score))); // in [0, 1], as the vector API takes them
}

/** Every face of a FaceLandmarker result, with its blendshapes. */
function facesOf(result, w, h) {
  return result.faceLandmarks.map((l, i) => toFace(l, w, h, scoresOf(result, i)));
}

function leftToRight(faces) {
  return faces.sort((a, b) => a.box[0] - b.box[0] || a.box[1] - b.box[1]);
}

function iou(a, b) {
  const iw = Math.max(0, Math.min(a[0] + a[2], b[0] + b[2]) - Math.max(a[0], b[0]));
  const ih = Math.max(0, Math.min(a[1] + a[3], b[1] + b[3]) - Math.max(a[1], b[1]));
  const inter = iw * ih;
  const union = a[2] * a[3] + b[2] * b[3] - inter;
  return union > 0 ? inter / union : 0;
}

function tileWindows(h, w) {
  const th = Math.max(1, roundHalfEven(h / (TILE_GRID - (TILE_GRID - 1) * TILE_OVERLAP)));
  const tw = Math.max(1, roundHalfEven(w / (TILE_GRID - (TILE_GRID - 1) * TILE_OVERLAP)));
  const steps = Math.max(1, TILE_GRID - 1);
  const out = [];
  for (let i = 0; i < TILE_GRID; i++)
    for (let j = 0; j < TILE_GRID; j++)
      out.push([roundHalfEven((i * (h - th)) / steps), roundHalfEven((j * (w - tw)) / steps), th, tw]);
  return out;
}

/**
 * Build the on-device pipeline.
 * @param info GET /api/ondevice's document (model URLs, the embedder's name, the input side).
 * @returns {Promise<object>} {embedFrame, embedImage, embedFaces, backend, info, close}
 */
export async function createOnDevice(info) {
  if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly");
  const size = info.input_size || DEFAULT_SIZE;
  const [fileset, { ort, webgpu }, modelBytes] = await Promise.all([
    FilesetResolver.forVisionTasks(WASM_DIR),
    loadOrt(),
    fetch(info.model_url).then((r) => {
      if (!r.ok) throw new Error("the expression model did not load (HTTP " + r.status + ")");
      return r.arrayBuffer();
    }),
  ]);
  let session;
  let backend = "wasm";
  if (webgpu) {
    try {
      session = await ort.InferenceSession.create(modelBytes, { executionProviders: ["webgpu", "wasm"] });
      backend = "webgpu";
    } catch (_) {
      session = null;
    }
  }
  if (!session) session = await ort.InferenceSession.create(modelBytes, { executionProviders: ["wasm"] });
  const video = await landmarker(fileset, info.landmarker_url, "VIDEO");
  let still = null; // IMAGE-mode landmarkers, made on first use
  let tiles = null;
  let lastTimestamp = -1;

  /** Unit-norm embeddings (arrays of numbers) of faces [{landmarks | null}] of an RGBA image, one model run. */
  async function embedFaces(image, faces) {
    if (!faces.length) return [];
    const input = new Float32Array(faces.length * size * size);
    faces.forEach((f, i) => {
      const grey = alignFace(image, f.landmarks, size).data;
      for (let p = 0; p < grey.length; p++) input[i * size * size + p] = grey[p];
    });
    const out = await session.run({ image: new ort.Tensor("float32", input, [faces.length, size, size]) });
    const emb = out.embedding.data;
    const dim = out.embedding.dims[1];
    return faces.map((_, i) => {
      const v = Array.from(emb.subarray(i * dim, (i + 1) * dim));
      const n = Math.hypot(...v) || 1;
      return v.map((x) => x / n);
    });
  }

  async function imageLandmarkers() {
    if (!still) still = await landmarker(fileset, info.landmarker_url, "IMAGE");
    return still;
  }

  function detect(lm, image) {
    return facesOf(lm.detect(image), image.width, image.height);
  }

  // faces.py's detect_in_tiles: for faces too small for the detector on the whole picture
  async function detectInTiles(image) {
    const h = image.height, w = image.width;
    if (Math.min(h, w) < TILE_MIN_SIDE) return [];
    if (!tiles) {
      const strict = {
        minFaceDetectionConfidence: TILE_MIN_CONFIDENCE,
        minFacePresenceConfidence: TILE_MIN_CONFIDENCE,
        minTrackingConfidence: 0.5,
      };
      tiles = await landmarker(fileset, info.landmarker_url, "IMAGE", strict);
    }
    const found = [];
    for (const [y, x, th, tw] of tileWindows(h, w)) {
      const result = tiles.detect(crop(image, x, y, tw, th));
      result.faceLandmarks.forEach((l, i) => {
        // float32 arithmetic, as numpy does it on MediaPipe's float32 landmarks
        const lm = l.map((p) => ({ x: f32(f32(p.x * f32(tw / w)) + x / w), y: f32(f32(p.y * f32(th / h)) + y / h), z: p.z }));
        found.push(toFace(lm, w, h, scoresOf(result, i)));
      });
    }
    const kept = [];
    for (const f of found.sort((a, b) => b.box[2] * b.box[3] - a.box[2] * a.box[3])) {
      if (kept.every((k) => iou(f.box, k.box) <= 0.3)) kept.push(f);
    }
    return leftToRight(kept.slice(0, MAX_FACES));
  }

  // faces.py's detect_in_crop: the largest face of a ready-made face crop, else the whole crop
  async function detectInCrop(lm, image) {
    const h = image.height, w = image.width;
    const py = Math.max(1, roundHalfEven(h * CROP_PAD)), px = Math.max(1, roundHalfEven(w * CROP_PAD));
    const padded = padEdge(image, py, px);
    const views = [() => [padded, py, px], ...CROP_SHARPEN.map(([a, s]) => () => [unsharp(padded, a, s), py, px])];
    views.push(() => [image, 0, 0]);
    for (const view of views) {
      const [img, ty, tx] = view();
      const found = detect(lm, img);
      if (!found.length) continue;
      const face = found.reduce((a, b) => (b.box[2] * b.box[3] > a.box[2] * a.box[3] ? b : a));
      const W = w + 2 * tx, H = h + 2 * ty;
      const mapped = face.landmarks.map((p) => ({
        x: f32(f32(f32(p.x * W) - tx) / w),
        y: f32(f32(f32(p.y * H) - ty) / h),
        z: f32(f32(p.z * W) / w),
      }));
      return toFace(mapped, w, h, face.blendshapes);
    }
    return { landmarks: null, box: [0, 0, w, h], blendshapes: null };
  }

  return {
    backend,
    info,
    versions: info.versions,
    embedFaces,

    /** Faces ({box, landmarks, blendshapes: 52 scores | null}) and embeddings of one video frame (VIDEO mode:
     * tracks between frames). */
    async embedFrame(image, timestampMs) {
      const t = Math.max(Math.round(timestampMs), lastTimestamp + 1);
      lastTimestamp = t;
      const faces = leftToRight(facesOf(video.detectForVideo(image, t), image.width, image.height));
      return { faces, embeddings: await embedFaces(image, faces) };
    },

    /**
     * Faces and embeddings of a photo (a URL or a Blob), as Pipeline.faces + Pipeline.embed do it in Python:
     * IMAGE mode, tiles where the whole photo shows no face; with {cropped: true} a ready-made face crop
     * (padded, sharpened, else the whole crop: always one face).
     * @returns {Promise<{width, height, faces: [{box, landmarks, blendshapes}], embeddings: number[][]}>}
     */
    async embedImage(source, { cropped = false } = {}) {
      const image = source instanceof ImageData ? source : await decodeImage(source);
      const lm = await imageLandmarkers();
      let faces;
      if (cropped) {
        faces = [await detectInCrop(lm, image)];
      } else {
        faces = leftToRight(detect(lm, image));
        if (!faces.length) faces = await detectInTiles(image);
      }
      const embeddings = await embedFaces(image, faces);
      return { width: image.width, height: image.height, faces, embeddings };
    },

    close() {
      for (const t of [video, still, tiles]) if (t) t.close();
      session.release();
    },
  };
}
