// The face alignment of facial_search/vision/align.py, ported to JavaScript: the same 13 landmarks, the same
// template and similarity transform, the same grey conversion and resampling, with OpenCV's arithmetic:
//
// - grey: cv2.cvtColor(RGB2GRAY) on uint8, fixed point: Y = (9798 R + 19235 G + 3735 B + 16384) >> 15;
// - shrinking (scale < 0.75): cv2.resize(INTER_AREA): an integer ratio averages whole blocks (a 2x2 block
//   (sum + 2) >> 2, others sum * (1/area) rounded to nearest-even); any other ratio weights the source cells
//   by their overlap, in float32 (computeResizeAreaTab);
// - cv2.warpAffine(INTER_LINEAR, BORDER_REPLICATE) for one uint8 channel as OpenCV 5 computes it: the forward
//   matrix inverted, each output pixel's source point (pixel centres at integer coordinates), bilinear weights
//   from its fraction, each tap of the 2x2 neighbourhood clamped to the image (replicated border), the
//   interpolation in float32 fused multiply-adds, rounded to nearest-even. OpenCV rounds the source point to
//   float32 in a way not reproduced here: about 1 output pixel in 10^4 (an interpolated value within 10^-4 of
//   a half) comes out 1 grey level off;
// - the whole-image fallback (no landmarks): the centred square, cv2.resize INTER_AREA down (exact), or
//   INTER_LINEAR up (OpenCV's 11-bit fixed-point bilinear; within 1 grey level of OpenCV 5's, only for images
//   under 48 px).
//
// Pure functions, no DOM: the page (ondevice.js) and the tests call them. An image is
// {data: RGBA Uint8ClampedArray (ImageData's layout), width, height}; a grey image {data: Uint8Array, width,
// height}. Checked against the Python code pixel for pixel by tests/test_web_ondevice.py.
"use strict";

/** Side of the aligned face, pixels (FER+ crops are 48 x 48). */
export const DEFAULT_SIZE = 48;

/** MediaPipe FaceMesh indices used for alignment (eye corners, nose line, nostril wings), as align.py. */
export const ALIGN_LANDMARKS = [33, 133, 362, 263, 168, 6, 197, 195, 5, 4, 1, 98, 327];

/** Canonical (x, y) of ALIGN_LANDMARKS, fractions of the output side (align.py's TEMPLATE). */
export const TEMPLATE = [
  [0.2402, 0.3809],
  [0.3954, 0.3944],
  [0.6046, 0.3944],
  [0.7598, 0.3809],
  [0.5, 0.3709],
  [0.5, 0.4187],
  [0.5, 0.459],
  [0.5, 0.4945],
  [0.5, 0.5325],
  [0.5, 0.5771],
  [0.5, 0.6105],
  [0.4052, 0.63],
  [0.5948, 0.63],
];

const f32 = Math.fround;

/** Python's round(): to nearest, ties to even (numpy and Python 3 alike). */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** OpenCV's saturate_cast<uchar>(float): nearest, ties to even, clamped to 0..255. */
function toU8(v) {
  const r = roundHalfEven(v);
  return r < 0 ? 0 : r > 255 ? 255 : r;
}

/**
 * Least-squares similarity transform (rotation, uniform scale, translation) mapping points src onto dst
 * (arrays of [x, y]); the closed form of Umeyama (1991) in 2-D, identical to align.py's SVD version.
 * @returns {number[]} the 2x3 matrix, row-major [m00, m01, m02, m10, m11, m12], with dst ~= M @ [x, y, 1].
 */
export function similarityTransform(src, dst) {
  const n = src.length;
  let msx = 0, msy = 0, mdx = 0, mdy = 0;
  for (let i = 0; i < n; i++) {
    msx += src[i][0];
    msy += src[i][1];
    mdx += dst[i][0];
    mdy += dst[i][1];
  }
  msx /= n;
  msy /= n;
  mdx /= n;
  mdy /= n;
  let a = 0, b = 0, ss = 0;
  for (let i = 0; i < n; i++) {
    const sx = src[i][0] - msx, sy = src[i][1] - msy;
    const dx = dst[i][0] - mdx, dy = dst[i][1] - mdy;
    a += dx * sx + dy * sy;
    b += dy * sx - dx * sy;
    ss += sx * sx + sy * sy;
  }
  ss = Math.max(ss, 1e-12 * n);
  const c = a / ss, s = b / ss; // scale * cos, scale * sin
  return [c, -s, mdx - (c * msx - s * msy), s, c, mdy - (s * msx + c * msy)];
}

/**
 * The 2x3 similarity transform from image pixels to the size x size canonical face (align.py's
 * alignment_matrix).
 * @param landmarks 478 landmarks, each {x, y} (MediaPipe's NormalizedLandmark) or [x, y, ...], normalised by
 *   the image width and height.
 */
export function alignmentMatrix(landmarks, width, height, size = DEFAULT_SIZE) {
  const src = ALIGN_LANDMARKS.map((i) => {
    const p = landmarks[i];
    const x = p.x !== undefined ? p.x : p[0];
    const y = p.y !== undefined ? p.y : p[1];
    return [x * width, y * height];
  });
  return similarityTransform(
    src,
    TEMPLATE.map(([x, y]) => [x * size, y * size]),
  );
}

/** cv2.invertAffineTransform of a 2x3 matrix (row-major). */
export function invertAffine(m) {
  let d = m[0] * m[4] - m[1] * m[3];
  d = d !== 0 ? 1 / d : 0;
  const a11 = m[4] * d, a22 = m[0] * d, a12 = -m[1] * d, a21 = -m[3] * d;
  return [a11, a12, -a11 * m[2] - a12 * m[5], a21, a22, -a21 * m[2] - a22 * m[5]];
}

/** Grey (cv2 RGB2GRAY, uint8 fixed point) of the region [x0, x1) x [y0, y1) of an RGBA image. */
export function toGrey(image, x0 = 0, y0 = 0, x1 = image.width, y1 = image.height) {
  const w = x1 - x0, h = y1 - y0, src = image.data, stride = image.width * 4;
  const out = new Uint8Array(w * h);
  for (let y = 0; y < h; y++) {
    let p = (y0 + y) * stride + x0 * 4;
    const row = y * w;
    for (let x = 0; x < w; x++, p += 4) {
      out[row + x] = (src[p] * 9798 + src[p + 1] * 19235 + src[p + 2] * 3735 + 16384) >> 15;
    }
  }
  return { data: out, width: w, height: h };
}

// cv::computeResizeAreaTab: [dst index, src index, weight (float32)] for one axis.
function areaTab(ssize, dsize, scale) {
  const tab = [];
  for (let dx = 0; dx < dsize; dx++) {
    const fsx1 = dx * scale;
    const fsx2 = fsx1 + scale;
    const cellWidth = Math.min(scale, ssize - fsx1);
    let sx1 = Math.ceil(fsx1);
    let sx2 = Math.floor(fsx2);
    sx2 = Math.min(sx2, ssize - 1);
    sx1 = Math.min(sx1, sx2);
    if (sx1 - fsx1 > 1e-3) tab.push([dx, sx1 - 1, f32((sx1 - fsx1) / cellWidth)]);
    for (let sx = sx1; sx < sx2; sx++) tab.push([dx, sx, f32(1.0 / cellWidth)]);
    if (fsx2 - sx2 > 1e-3) tab.push([dx, sx2, f32(Math.min(Math.min(fsx2 - sx2, 1), cellWidth) / cellWidth)]);
  }
  return tab;
}

/** cv2.resize(grey, (dw, dh), interpolation=INTER_AREA) for a shrink (dw <= width, dh <= height). */
export function resizeArea(grey, dw, dh) {
  const sw = grey.width, sh = grey.height, src = grey.data;
  const out = new Uint8Array(dw * dh);
  if (dw === sw && dh === sh) {
    out.set(src);
    return { data: out, width: dw, height: dh };
  }
  const scaleX = sw / dw, scaleY = sh / dh;
  const ix = Math.round(scaleX), iy = Math.round(scaleY);
  if (Math.abs(scaleX - ix) < Number.EPSILON && Math.abs(scaleY - iy) < Number.EPSILON) {
    // resizeAreaFast_: whole ix x iy blocks (the block grid covers the output: dw * ix <= sw)
    const area = ix * iy;
    const inv = f32(1 / area);
    for (let dy = 0; dy < dh; dy++) {
      for (let dx = 0; dx < dw; dx++) {
        let sum = 0;
        for (let k = 0; k < iy; k++) {
          const row = (dy * iy + k) * sw + dx * ix;
          for (let j = 0; j < ix; j++) sum += src[row + j];
        }
        out[dy * dw + dx] = area === 4 ? (sum + 2) >> 2 : toU8(f32(sum * inv));
      }
    }
    return { data: out, width: dw, height: dh };
  }
  // resizeArea_<uchar, float>: weighted cells, accumulated in float32, row by row
  const xtab = areaTab(sw, dw, scaleX);
  const ytab = areaTab(sh, dh, scaleY);
  const buf = new Float32Array(dw);
  const sum = new Float32Array(dw);
  let prevDy = ytab[0][0];
  for (const [dy, sy, beta] of ytab) {
    buf.fill(0);
    const row = sy * sw;
    for (const [dxn, si, alpha] of xtab) buf[dxn] = f32(buf[dxn] + f32(src[row + si] * alpha));
    if (dy !== prevDy) {
      for (let dx = 0; dx < dw; dx++) {
        out[prevDy * dw + dx] = toU8(sum[dx]);
        sum[dx] = f32(beta * buf[dx]);
      }
      prevDy = dy;
    } else {
      for (let dx = 0; dx < dw; dx++) sum[dx] = f32(sum[dx] + f32(beta * buf[dx]));
    }
  }
  for (let dx = 0; dx < dw; dx++) out[prevDy * dw + dx] = toU8(sum[dx]);
  return { data: out, width: dw, height: dh };
}

/** cv2.resize(grey, (dw, dh), interpolation=INTER_LINEAR) for uint8, enlarging: OpenCV's fixed-point bilinear
 * (11-bit weights, half-pixel centres, borders clamped); within 1 grey level of cv2's. */
export function resizeLinear(grey, dw, dh) {
  const sw = grey.width, sh = grey.height, src = grey.data;
  const out = new Uint8Array(dw * dh);
  const ONE = 2048;
  const axis = (ssize, dsize) => {
    const scale = ssize / dsize;
    const idx = new Int32Array(dsize * 2);
    const wt = new Int32Array(dsize * 2);
    for (let d = 0; d < dsize; d++) {
      let fx = f32((d + 0.5) * scale - 0.5);
      let sx = Math.floor(fx);
      fx = f32(fx - sx);
      if (sx < 0) {
        fx = 0;
        sx = 0;
      }
      if (sx >= ssize - 1) {
        fx = 0;
        sx = ssize - 1;
      }
      idx[2 * d] = sx;
      idx[2 * d + 1] = Math.min(sx + 1, ssize - 1);
      wt[2 * d] = roundHalfEven((1 - fx) * ONE);
      wt[2 * d + 1] = roundHalfEven(fx * ONE);
    }
    return [idx, wt];
  };
  const [xi, xw] = axis(sw, dw);
  const [yi, yw] = axis(sh, dh);
  const rowBuf = [new Int32Array(dw), new Int32Array(dw)];
  for (let dy = 0; dy < dh; dy++) {
    for (let k = 0; k < 2; k++) {
      const row = yi[2 * dy + k] * sw;
      const b = rowBuf[k];
      for (let dx = 0; dx < dw; dx++) b[dx] = src[row + xi[2 * dx]] * xw[2 * dx] + src[row + xi[2 * dx + 1]] * xw[2 * dx + 1];
    }
    const b0 = yw[2 * dy], b1 = yw[2 * dy + 1];
    for (let dx = 0; dx < dw; dx++) {
      const v = ((b0 * (rowBuf[0][dx] >> 4)) >> 16) + ((b1 * (rowBuf[1][dx] >> 4)) >> 16);
      out[dy * dw + dx] = Math.min(255, Math.max(0, (v + 2) >> 2));
    }
  }
  return { data: out, width: dw, height: dh };
}

/**
 * cv2.warpAffine(grey, m, (size, size), flags=INTER_LINEAR, borderMode=BORDER_REPLICATE), uint8, one channel,
 * as OpenCV 5 computes it (see the header).
 * @param m the 2x3 forward matrix (source pixels -> output pixels), row-major.
 */
export function warpAffineLinear(grey, m, size) {
  const sw = grey.width, sh = grey.height, src = grey.data;
  const inv = invertAffine(m); // warpAffine inverts the forward matrix in double
  const out = new Uint8Array(size * size);
  const at = (x, y) => src[(y < 0 ? 0 : y >= sh ? sh - 1 : y) * sw + (x < 0 ? 0 : x >= sw ? sw - 1 : x)];
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const sx = x * inv[0] + y * inv[1] + inv[2];
      const sy = x * inv[3] + y * inv[4] + inv[5];
      const ix = Math.floor(sx), iy = Math.floor(sy);
      const ax = f32(sx - ix), ay = f32(sy - iy);
      let p00, p01, p10, p11;
      if (ix >= 0 && iy >= 0 && ix < sw - 1 && iy < sh - 1) {
        const o = iy * sw + ix;
        p00 = src[o];
        p01 = src[o + 1];
        p10 = src[o + sw];
        p11 = src[o + sw + 1];
      } else {
        p00 = at(ix, iy);
        p01 = at(ix + 1, iy);
        p10 = at(ix, iy + 1);
        p11 = at(ix + 1, iy + 1);
      }
      // float32 fused multiply-adds (a float32 product plus a small integer is exact in double: one rounding)
      const top = f32(ax * (p01 - p00) + p00);
      const bottom = f32(ax * (p11 - p10) + p10);
      out[y * size + x] = toU8(f32(ay * f32(bottom - top) + top));
    }
  }
  return { data: out, width: size, height: size };
}

/** The whole image as the face: its centred square, resized to size x size grey (align.py's whole_face). */
export function wholeFace(image, size = DEFAULT_SIZE) {
  const side = Math.min(image.width, image.height);
  const y0 = (image.height - side) >> 1, x0 = (image.width - side) >> 1;
  const sq = toGrey(image, x0, y0, x0 + side, y0 + side);
  if (side === size) return sq;
  return side > size ? resizeArea(sq, size, size) : resizeLinear(sq, size, size);
}

/**
 * The face of an RGBA image aligned to the canonical template, grey, size x size (align.py's align_face).
 * @param image {data, width, height}: RGBA pixels (ImageData).
 * @param landmarks the face's 478 landmarks (normalised to the image), or null: the whole image is the face.
 * @returns {{data: Uint8Array, width: number, height: number}}
 */
export function alignFace(image, landmarks, size = DEFAULT_SIZE) {
  if (!landmarks) return wholeFace(image, size);
  const w = image.width, h = image.height;
  let m = alignmentMatrix(landmarks, w, h, size);
  const scale = Math.sqrt(Math.abs(m[0] * m[4] - m[1] * m[3]));
  // the source region of the output square only, with a margin (as align.py)
  const inv = invertAffine(m);
  const cx = [], cy = [];
  for (const [u, v] of [[0, 0], [size, 0], [0, size], [size, size]]) {
    cx.push(u * inv[0] + v * inv[1] + inv[2]);
    cy.push(u * inv[3] + v * inv[4] + inv[5]);
  }
  const margin = 2.0 / Math.min(scale, 1.0);
  const clip = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
  const x0 = clip(Math.floor(Math.min(...cx) - margin), 0, w - 1);
  const y0 = clip(Math.floor(Math.min(...cy) - margin), 0, h - 1);
  const x1 = clip(Math.ceil(Math.max(...cx) + margin), x0 + 1, w);
  const y1 = clip(Math.ceil(Math.max(...cy) + margin), y0 + 1, h);
  let grey = toGrey(image, x0, y0, x1, y1);
  // m @ [[1, 0, x0], [0, 1, y0], [0, 0, 1]]
  m = [m[0], m[1], m[0] * x0 + m[1] * y0 + m[2], m[3], m[4], m[3] * x0 + m[4] * y0 + m[5]];
  if (scale < 0.75 && x1 - x0 >= 2 && y1 - y0 >= 2) {
    // shrinking: area-average the region to about the output scale first, then warp (no aliasing)
    const nw = Math.max(1, roundHalfEven((x1 - x0) * scale));
    const nh = Math.max(1, roundHalfEven((y1 - y0) * scale));
    const small = resizeArea(grey, nw, nh);
    const sx = (x1 - x0) / nw, sy = (y1 - y0) / nh;
    // pixel centres: small (u, v) <-> region ((u + .5) * sx - .5, (v + .5) * sy - .5)
    const tx = 0.5 * sx - 0.5, ty = 0.5 * sy - 0.5;
    m = [m[0] * sx, m[1] * sy, m[0] * tx + m[1] * ty + m[2], m[3] * sx, m[4] * sy, m[3] * tx + m[4] * ty + m[5]];
    grey = small;
  }
  return warpAffineLinear(grey, m, size);
}

/** The face's box [x, y, w, h] in pixels from its landmarks' extent, clipped to the image (faces.py's
 * box_from_landmarks). */
export function boxFromLandmarks(landmarks, width, height) {
  let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
  for (const p of landmarks) {
    const x = p.x !== undefined ? p.x : p[0];
    const y = p.y !== undefined ? p.y : p[1];
    if (x < minX) minX = x;
    if (x > maxX) maxX = x;
    if (y < minY) minY = y;
    if (y > maxY) maxY = y;
  }
  const clip = (v, lo, hi) => Math.min(Math.max(v, lo), hi);
  const x0 = clip(Math.floor(f32(minX * width)), 0, width - 1);
  const y0 = clip(Math.floor(f32(minY * height)), 0, height - 1);
  const x1 = clip(Math.ceil(f32(maxX * width)), x0 + 1, width);
  const y1 = clip(Math.ceil(f32(maxY * height)), y0 + 1, height);
  return [x0, y0, x1 - x0, y1 - y0];
}
