// The page's service worker (served as /sw.js, scope /): it keeps the app shell, the npm packages' files, the
// models, /api/ondevice and, once private mode fetched them, the index export and the thumbnails in Cache
// Storage, so that the page opens and private mode searches with no server. Network first (an update on the
// server is seen at once), the cache when the server cannot be reached. Only GETs of those paths: a POST (a
// question about a face) never goes through it, and nothing else is kept.
"use strict";

const CACHE = "facial-search-v1"; // app.js puts files in the same cache
const SHELL = [
  "/",
  "/static/app.js",
  "/static/style.css",
  "/static/ondevice.js",
  "/static/align.js",
  "/static/private.js",
  "/static/explain.js",
  "/static/share.js",
  "/manifest.webmanifest",
  "/icons/icon-192.png",
  "/icons/icon-512.png",
  "/api/ondevice",
];
const KEPT = [
  /^\/$/,
  /^\/static\//,
  /^\/vendor\//,
  /^\/models\//,
  /^\/icons\//,
  /^\/manifest\.webmanifest$/,
  /^\/api\/ondevice$/,
  /^\/api\/index\/export$/,
  /^\/api\/memes\/\d+\/(thumb|image)$/,
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n.startsWith("facial-search-") && n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

function kept(request) {
  if (request.method !== "GET") return false;
  const url = new URL(request.url);
  return url.origin === self.location.origin && KEPT.some((re) => re.test(url.pathname));
}

async function keep(cache, request, response) {
  // the same version kept already (its ETag): no need to write 25 MB of WebAssembly again
  const old = await cache.match(request);
  const tag = response.headers.get("ETag");
  if (!old || !tag || old.headers.get("ETag") !== tag) await cache.put(request, response);
}

async function networkFirst(event) {
  const request = event.request;
  const cache = await caches.open(CACHE);
  let response;
  try {
    response = await fetch(request);
  } catch (err) {
    const page = request.mode === "navigate" && new URL(request.url).pathname === "/";
    const hit = await cache.match(request, { ignoreSearch: page }); // /?pipeline=server is the same page
    if (hit) return hit;
    throw err;
  }
  if (response.ok && response.type === "basic" && !request.headers.has("range")) {
    event.waitUntil(keep(cache, request, response.clone())); // written after the page has its answer
  }
  return response;
}

self.addEventListener("fetch", (event) => {
  if (kept(event.request)) event.respondWith(networkFirst(event));
});
