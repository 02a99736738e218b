// "Explain a match": the blendshapes a face and its meme both show most, as facial_search/explain.py
// (shared_blendshapes) makes them for the server's answers. Private mode (private.js) explains its own answers
// with this port, from the meme blendshapes of the index export; the match cards (app.js) show either as chips.
//
// Pure functions, no DOM but chips(); the tests run them in the page beside the Python ones.
"use strict";

/** The 52 blendshapes of MediaPipe's FaceLandmarker v1, in model order (facial_search.vision.faces). */
export const BLENDSHAPE_NAMES = Object.freeze([
  "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
  "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
  "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
  "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
  "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
  "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
  "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
  "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
  "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
]);
export const NUM_BLENDSHAPES = BLENDSHAPE_NAMES.length;
/** shared_blendshapes' defaults: at most TOP blendshapes, each shown by both faces at FLOOR or more. */
export const TOP = 3;
export const FLOOR = 0.1;
/** The blendshape never listed: `_neutral` says nothing about what two faces do alike. */
const NEUTRAL = BLENDSHAPE_NAMES.indexOf("_neutral");

/**
 * Python's round(x, 3) of a double: the decimal nearest to x's exact value, a tie (x exactly halfway, which
 * for 3 decimals means x * 16 is an odd integer) to the even last digit.
 */
export function round3(x) {
  if (!Number.isFinite(x)) return x;
  const t = x * 16;
  if (Number.isInteger(t) && t % 2 !== 0) {
    const lo = Math.floor(x * 1000);
    return (lo % 2 === 0 ? lo : lo + 1) / 1000;
  }
  return Number(x.toFixed(3)); // toFixed rounds the exact value: no tie left
}

/**
 * The blendshapes both faces show most (facial_search.explain.shared_blendshapes).
 * @param query 52 scores of the query face in [0, 1], BLENDSHAPE_NAMES order (MediaPipe's, as they are), or null
 * @param match 52 scores of the meme face (private.js: memeBlendshapes), or null
 * @returns {null | {blendshape: string, query: number, match: number}[]} null when either face has none; else up
 *   to `top` objects, by min(query, match) descending (model order on a tie), `_neutral` left out, only those
 *   whose min is at least `floor` (on the unrounded scores); scores rounded to 3 decimals. Doubles throughout,
 *   as the Python function computes in float64.
 * @throws Error scores of another length than 52, or not finite
 */
export function sharedBlendshapes(query, match, top = TOP, floor = FLOOR) {
  if (query == null || match == null) return null;
  if (query.length !== NUM_BLENDSHAPES || match.length !== NUM_BLENDSHAPES) {
    throw new Error("blendshapes: " + query.length + " and " + match.length + " scores, not " + NUM_BLENDSHAPES);
  }
  const cand = [];
  for (let i = 0; i < NUM_BLENDSHAPES; i++) {
    const q = Number(query[i]), m = Number(match[i]);
    if (!Number.isFinite(q) || !Number.isFinite(m)) throw new Error("blendshapes: NaN or infinite scores");
    const both = Math.min(q, m);
    if (i !== NEUTRAL && both >= floor) cand.push([both, i, q, m]);
  }
  cand.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  return cand.slice(0, top).map(([, i, q, m]) => ({ blendshape: BLENDSHAPE_NAMES[i], query: round3(q), match: round3(m) }));
}

/** "jawOpen" -> "jaw open", "mouthSmileLeft" -> "mouth smile left". */
export function readableName(name) {
  return name.replace(/^_/, "").replace(/([a-z])([A-Z])/g, "$1 $2").toLowerCase();
}

/** A match's explain as small chips (<span class="chip">), for under the card's title, into the element `into`
 * (emptied; hidden when there is none). Left and right of one blendshape make one chip ("eyeBlinkLeft" and
 * "eyeBlinkRight": "eye blink"); each chip's data-blendshape names its blendshapes, its title their scores;
 * `into`'s data-explain names them all in the explain's order. */
export function chips(explain, into) {
  const groups = [];
  for (const e of explain || []) {
    const side = e.blendshape.replace(/(Left|Right)$/, "");
    const g = groups.find((x) => x.side === side);
    if (g) g.items.push(e);
    else groups.push({ side, items: [e] });
  }
  const items = groups.map(({ side, items }) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.blendshape = items.map((e) => e.blendshape).join(" ");
    chip.textContent = readableName(items.length > 1 ? side : items[0].blendshape);
    chip.title = items
      .map((e) => e.blendshape + ": you " + e.query.toFixed(2) + ", the meme " + e.match.toFixed(2))
      .join("; ");
    return chip;
  });
  into.replaceChildren(...items);
  into.hidden = !items.length;
  into.dataset.explain = (explain || []).map((e) => e.blendshape).join(" ");
  return into;
}
