// Private mode: the whole index on the device (GET /api/index/export), searched here as the server searches it,
// so that not even an embedding leaves the page. The answers are those of POST /api/search/vectors
// (facial_search/index/store.py, MemeIndex.search): exact Euclidean distance between unit-norm embeddings, the
// query renormalised and rounded to float32 as the server does; with one answer per picture group (the default)
// the nearest face of each group; nearest first, the lower row first on a tie; distances rounded to 6 decimals.
//
// Each match is explained as the server explains it (its `explain`: explain.js, the port of
// facial_search/explain.py), from the face's blendshapes and the meme's in the export.
//
// Pure functions but loadIndex (a fetch); the page (app.js) and the tests call them.
"use strict";

import { NUM_BLENDSHAPES, sharedBlendshapes } from "/static/explain.js";

export const FORMAT = "facial-search-export/1";

/** The export document -> a searchable index: {count, dim, embedder, emb: Float32Array (count x dim), rows: Map
 * id -> row, blendshapeBytes: Uint8Array (count x 52) | null, hasBlendshapes: Uint8Array (count), ...the
 * document's columns}. Throws an Error for a document of another format or broken size. */
export function indexFromExport(doc) {
  if (!doc || doc.format !== FORMAT) throw new Error("the server's index export is of another format");
  const bin = atob(doc.embeddings);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  if (bytes.length !== doc.count * doc.dim * 4) throw new Error("the index export's embeddings are truncated");
  // float32, little-endian: read through a DataView so that a big-endian device reads them right too
  const view = new DataView(bytes.buffer);
  const emb = new Float32Array(doc.count * doc.dim);
  for (let i = 0; i < emb.length; i++) emb[i] = view.getFloat32(4 * i, true);
  const rows = new Map();
  doc.ids.forEach((id, r) => rows.set(id, r));
  // each face's blendshapes (uint8, score x 255, as the index stores them), where the index has them
  let blendshapeBytes = null;
  const hasBlendshapes = new Uint8Array(doc.count);
  if (doc.blendshapes) {
    const raw = atob(doc.blendshapes);
    if (raw.length !== doc.count * NUM_BLENDSHAPES) throw new Error("the index export's blendshapes are truncated");
    blendshapeBytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) blendshapeBytes[i] = raw.charCodeAt(i);
    hasBlendshapes.fill(1);
    for (const r of doc.blendshapes_missing || []) hasBlendshapes[r] = 0;
  }
  let groups = 0;
  for (const g of doc.groups) groups = Math.max(groups, g + 1);
  // a video's moments (row -> its place in doc.moments), each shown by its own typical frame
  const momentOf = new Map();
  if (doc.moments) doc.moments.rows.forEach((r, j) => momentOf.set(r, j));
  return { ...doc, emb, rows, groupCount: groups, blendshapeBytes, hasBlendshapes, momentOf };
}

/** Fetch and decode the index (GET url, default /api/index/export); rejects with a message the page can show. */
export async function loadIndex(url = "/api/index/export") {
  const resp = await fetch(url);
  let doc;
  try {
    doc = await resp.json();
  } catch (_) {
    throw new Error("the server's index export is not JSON (HTTP " + resp.status + ")");
  }
  if (!resp.ok) throw new Error(doc.detail || "HTTP " + resp.status);
  return indexFromExport(doc);
}

/** The thumbnail URL of each source file (one per file: every face of it shares it) and of each video moment
 * (its own frame). */
export function thumbUrls(index) {
  const ids = index.thumb_ids.concat(index.moments ? index.moments.rows.map((r) => index.ids[r]) : []);
  return [...new Set(ids)].map((id) => index.thumb_url.replace("{id}", String(id)));
}

/** The thumbnail URL of the face with this id (a moment: its own frame; a picture's face: its file's). */
export function thumbOf(index, id) {
  const row = index.rows.get(id);
  if (row === undefined) return null;
  const shown = index.momentOf.has(row) ? id : index.thumb_ids[index.source[row]];
  return index.thumb_url.replace("{id}", String(shown));
}

/** The moment keys of the search document for a row ({} for a picture's face). */
function momentKeys(index, row) {
  const j = index.momentOf.get(row);
  if (j === undefined) return {};
  const m = index.moments;
  return { t_start: m.t_start[j], t_end: m.t_end[j], t_frame: m.t_frame[j], track: m.track[j] < 0 ? null : m.track[j] };
}

const f32 = Math.fround;

// the server's query: float64 norm, the quotient rounded to float32 (numpy: (q / norms).astype(float32))
function normalised(v) {
  let s = 0;
  for (const x of v) s += x * x;
  const n = Math.sqrt(s);
  return Float32Array.from(v, (x) => f32(x / n));
}

/** Euclidean distances (Float64Array, count) from a float32 query to every row. */
export function distances(index, q) {
  const { emb, dim, count } = index;
  const out = new Float64Array(count);
  for (let r = 0, o = 0; r < count; r++, o += dim) {
    let s = 0;
    for (let j = 0; j < dim; j++) {
      const d = q[j] - emb[o + j];
      s += d * d;
    }
    out[r] = Math.sqrt(s);
  }
  return out;
}

/** The k nearest rows [[distance, row], ...], one per picture group unless allFaces; nearest first, lower row
 * first on a tie. */
export function topRows(index, q, k, allFaces = false) {
  const d = distances(index, q);
  let cand;
  if (allFaces) {
    cand = Array.from(d, (x, r) => [x, r]);
  } else {
    const best = new Int32Array(index.groupCount).fill(-1);
    for (let r = 0; r < index.count; r++) {
      const g = index.groups[r];
      if (best[g] < 0 || d[r] < d[best[g]]) best[g] = r; // rows ascend: a tie keeps the lower row
    }
    cand = [];
    for (const r of best) if (r >= 0) cand.push([d[r], r]);
  }
  cand.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  return cand.slice(0, k);
}

/** The meme blendshapes of a row as the server reads them (uint8 / 255, float32), or null where it has none. */
export function memeBlendshapes(index, row) {
  if (!index.blendshapeBytes || !index.hasBlendshapes[row]) return null;
  const out = new Array(NUM_BLENDSHAPES);
  const o = row * NUM_BLENDSHAPES;
  for (let i = 0; i < NUM_BLENDSHAPES; i++) out[i] = f32(index.blendshapeBytes[o + i] / 255);
  return out;
}

/** Python's round(x, 6) for the document's distances. */
function round6(x) {
  return Math.round(x * 1e6) / 1e6;
}

/**
 * The search document of POST /api/search/vectors, made here.
 * @param index indexFromExport's result
 * @param vectors number[][] (each index.dim long; renormalised as the server does)
 * @param opts {k = 3, allFaces = false, boxes = null (echoed), image = "<vectors>", blendshapes = null (each
 *   vector's 52 scores, or null: each match's `explain`, else null)}
 * @returns {{image: string, faces: {box: number[], matches: object[]}[]}}
 */
export function searchIndex(
  index,
  vectors,
  { k = 3, allFaces = false, boxes = null, image = "<vectors>", blendshapes = null } = {},
) {
  const faces = vectors.map((v, f) => {
    if (v.length !== index.dim) throw new Error("a vector of " + v.length + " numbers; the index has " + index.dim);
    const q = normalised(v);
    const mine = (blendshapes && blendshapes[f]) || null;
    const matches = topRows(index, q, k, allFaces).map(([dist, r], i) => ({
      rank: i + 1,
      id: index.ids[r],
      source: index.sources[index.source[r]],
      face: index.faces[r],
      title: index.titles[index.title[r]],
      distance: round6(dist),
      explain: mine && sharedBlendshapes(mine, memeBlendshapes(index, r)),
      ...momentKeys(index, r),
    }));
    return { box: boxes ? boxes[f].slice() : [0, 0, 0, 0], matches };
  });
  return { image, faces };
}
