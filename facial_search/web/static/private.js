// Private mode: the whole index on the device (GET /api/index/export), searched here as the server searches it,
// so that not even an embedding leaves the page. The answers are those of POST /api/search/vectors
// (facial_search/index/store.py, MemeIndex.search): exact Euclidean distance between unit-norm embeddings, the
// query renormalised and rounded to float32 as the server does; with one answer per picture group (the default)
// the nearest face of each group; nearest first, the lower row first on a tie; distances rounded to 6 decimals.
//
// Pure functions but loadIndex (a fetch); the page (app.js) and the tests call them.
"use strict";

export const FORMAT = "facial-search-export/1";

/** The export document -> a searchable index: {count, dim, embedder, emb: Float32Array (count x dim), rows: Map
 * id -> row, ...the document's columns}. Throws an Error for a document of another format or broken size. */
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
  let groups = 0;
  for (const g of doc.groups) groups = Math.max(groups, g + 1);
  return { ...doc, emb, rows, groupCount: groups };
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

/** The thumbnail URL of each source file (one per file: every face of it shares it). */
export function thumbUrls(index) {
  return index.thumb_ids.map((id) => index.thumb_url.replace("{id}", String(id)));
}

/** The thumbnail URL of the face with this id. */
export function thumbOf(index, id) {
  const row = index.rows.get(id);
  return row === undefined ? null : index.thumb_url.replace("{id}", String(index.thumb_ids[index.source[row]]));
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

/** Python's round(x, 6) for the document's distances. */
function round6(x) {
  return Math.round(x * 1e6) / 1e6;
}

/**
 * The search document of POST /api/search/vectors, made here.
 * @param index indexFromExport's result
 * @param vectors number[][] (each index.dim long; renormalised as the server does)
 * @param opts {k = 3, allFaces = false, boxes = null (echoed), image = "<vectors>"}
 * @returns {{image: string, faces: {box: number[], matches: object[]}[]}}
 */
export function searchIndex(index, vectors, { k = 3, allFaces = false, boxes = null, image = "<vectors>" } = {}) {
  const faces = vectors.map((v, f) => {
    if (v.length !== index.dim) throw new Error("a vector of " + v.length + " numbers; the index has " + index.dim);
    const q = normalised(v);
    const matches = topRows(index, q, k, allFaces).map(([dist, r], i) => ({
      rank: i + 1,
      id: index.ids[r],
      source: index.sources[index.source[r]],
      face: index.faces[r],
      title: index.titles[index.title[r]],
      distance: round6(dist),
    }));
    return { box: boxes ? boxes[f].slice() : [0, 0, 0, 0], matches };
  });
  return { image, faces };
}
