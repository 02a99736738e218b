// facial-search web page: camera frames or a photo -> the memes, large. Plain JS modules, no build step.
// On-device mode (the default, where WebAssembly and the models load: ondevice.js) finds and embeds every face
// in the browser at camera rate and sends only the embeddings (and blendshape scores) to POST
// /api/search/vectors. Private mode (the "Private" switch: private.js) holds the whole index in the page and
// searches it here: nothing but static files goes over the network. Otherwise (the page says why) frames and
// photos go to POST /api/search, a few frames a second. One request in flight at most. Each match shows the
// blendshapes the face and the meme share most (its `explain`, explain.js) and can be shared, copied or
// downloaded (share.js); a tap on the preview freezes the matches. The service worker (/sw.js) keeps the page
// for offline use.
"use strict";

import * as priv from "/static/private.js";
import { actionBar } from "/static/share.js";
import { chips } from "/static/explain.js";

(() => {
  const FRAME_SIDE = 320; // longest side of the frames sent, pixels
  const FRAME_INTERVAL_MS = 200; // at most 5 frames a second
  const MAX_UPLOAD = 10 * 1024 * 1024; // the server's limit
  const MAX_PIXELS = 16000000; // the server decodes at most this many pixels (bigger JPEGs reduced, others refused)
  const UPLOAD_SIDE = 2048; // photos over the limit are downscaled to this before sending
  const K = 3;
  const COLORS = ["#ffcc33", "#5ad1ff", "#ff6fa8", "#8be28b", "#c59bff", "#ff9f43", "#f5f5f5", "#00d1b2"];

  const $ = (id) => document.getElementById(id);
  const video = $("video");
  const photo = $("photo");
  const overlay = $("overlay");
  const frame = $("frame");
  const statusEl = $("status");
  const modeEl = $("mode");
  const results = $("results");
  const cameraBtn = $("camera-btn");
  const fileInput = $("file");
  const privateToggle = $("private-toggle");
  const frozenBadge = $("frozen");
  const grab = document.createElement("canvas");
  const CACHE = "facial-search-v1"; // the service worker's cache (sw.js)
  const PRIVATE_KEY = "facial-search.private"; // localStorage: private mode stays on across visits
  // what the service worker keeps (sw.js: KEPT), less the index and the memes
  const OFFLINE_PATHS = [/^\/$/, /^\/static\//, /^\/vendor\//, /^\/models\//, /^\/icons\//, /^\/manifest\.webmanifest$/, /^\/api\/ondevice$/];

  let mode = "idle"; // "camera" | "photo" | "idle"
  let stream = null;
  let loopToken = 0;
  let noFaceStreak = 0;
  let photoURL = null;
  let cameraRequest = 0; // a photo picked while the camera is starting wins: the late stream is dropped
  let device = null; // the on-device pipeline (ondevice.js), or null: pictures go to the server
  let privateIndex = null; // private mode: the index in the page (private.js), searched here
  // private mode asked for (the switch; kept across visits): while it is, no face's embedding and no picture is
  // sent, even before the index has loaded or where private mode cannot run
  let privateWanted = readPrivateWish();
  let frozen = false; // a tap on the preview holds the matches on show

  // ---- on-device mode, else the server's pipeline -------------------------------------------------------------
  const api = (window.facialSearch = {
    pipeline: "starting",
    reason: null,
    backend: null,
    fps: 0,
    frames: 0,
    private: privateWanted ? "loading" : "off", // "loading" | "on" | "off" | "unavailable" (asked, cannot run)
    offline: "no", // "ready": the service worker and its cache hold what the page needs
  });

  function readPrivateWish() {
    try {
      return localStorage.getItem(PRIVATE_KEY) === "1";
    } catch (_) {
      return false;
    }
  }

  function keepPrivateWish(on) {
    privateWanted = on;
    try {
      if (on) localStorage.setItem(PRIVATE_KEY, "1");
      else localStorage.removeItem(PRIVATE_KEY);
    } catch (_) {
      /* storage refused: the wish lasts for this visit */
    }
  }

  function useServer(reason) {
    device = null;
    privateIndex = null;
    api.pipeline = "server";
    api.reason = reason;
    document.body.dataset.pipeline = "server";
    privateToggle.disabled = !privateWanted; // still on: it can be switched off, to use the server
    if (privateWanted) {
      api.private = "unavailable";
      document.body.dataset.private = "unavailable";
      modeEl.textContent =
        "Private mode cannot run here: " + reason + ". Nothing is sent; switch Private off to search on the server.";
    } else {
      modeEl.textContent =
        "On-device mode is off: " + reason + ". Frames and photos are sent to the server, searched and forgotten.";
    }
    modeEl.className = "mode warn";
  }

  async function startPipeline() {
    if (new URLSearchParams(location.search).get("pipeline") === "server") {
      return useServer("the page's address asks for the server's pipeline (?pipeline=server)");
    }
    if (typeof WebAssembly !== "object") return useServer("this browser has no WebAssembly");
    let info;
    try {
      const resp = await fetch("/api/ondevice");
      info = await resp.json();
      if (!resp.ok) throw new Error(info.detail || resp.statusText);
    } catch (err) {
      return useServer("the server did not say what it offers (" + (err.message || err) + ")");
    }
    if (!info.available) return useServer(info.reason);
    try {
      const mod = await import("/static/ondevice.js");
      device = await mod.createOnDevice(info);
    } catch (err) {
      return useServer("the in-browser models did not load (" + ((err && err.message) || err) + ")");
    }
    api.pipeline = "device";
    api.backend = device.backend;
    api.embedder = info.embedder;
    api.embedImage = (source, opts) => device.embedImage(source, opts);
    api.embedFrame = (image, timestampMs) => device.embedFrame(image, timestampMs);
    document.body.dataset.pipeline = "device";
    privateToggle.disabled = false;
    showDeviceMode();
  }

  function showDeviceMode(prefix = "") {
    modeEl.textContent =
      prefix +
      "On-device: faces are found and embedded in this browser (" +
      (device.backend === "webgpu" ? "WebGPU" : "WebAssembly") +
      "); only their embeddings and blendshape scores are sent, never a picture.";
    modeEl.className = "mode " + (prefix ? "warn" : "ok");
  }

  // ---- private mode: the index in the page ------------------------------------------------------------------
  // Fetch `urls` (at most 6 at a time) into the service worker's cache (or the browser's HTTP cache where there
  // is no Cache Storage), those it holds already skipped.
  async function warm(urls, onEach) {
    const cache = "caches" in window ? await caches.open(CACHE).catch(() => null) : null;
    let next = 0;
    async function worker() {
      while (next < urls.length) {
        const url = urls[next++];
        if (!cache || !(await cache.match(url))) {
          const resp = await fetch(url);
          if (!resp.ok) throw new Error(url + ": HTTP " + resp.status);
          if (cache) await cache.put(url, resp);
          else await resp.arrayBuffer();
        }
        if (onEach) onEach();
      }
    }
    await Promise.all(Array.from({ length: Math.min(6, urls.length) }, worker));
  }

  async function enablePrivate() {
    if (!device) {
      privateToggle.checked = false;
      keepPrivateWish(false);
      return;
    }
    keepPrivateWish(true);
    privateToggle.checked = true;
    privateToggle.disabled = true;
    api.private = "loading";
    modeEl.textContent = "Private mode: loading the index…";
    modeEl.className = "mode";
    try {
      const index = await priv.loadIndex();
      if (index.embedder !== api.embedder) {
        throw new Error("the index's embedder (" + index.embedder + ") is not the page's (" + api.embedder + ")");
      }
      // every picture's thumbnail first: which meme matched is then never asked of the server
      const thumbs = priv.thumbUrls(index);
      let done = 0;
      await warm(["/api/index/export", ...thumbs], () => {
        done++;
        if (done % 20 === 0 || done === thumbs.length + 1) {
          modeEl.textContent = "Private mode: loading the pictures… " + Math.max(0, done - 1) + " / " + thumbs.length;
        }
      });
      if (!privateWanted || !device) return; // switched off meanwhile
      privateIndex = index;
      api.private = "on";
      document.body.dataset.private = "on";
      results.replaceChildren(); // the cards again, with the thumbnails held here
      modeEl.textContent =
        "Private: nothing but static files goes over the network. Faces are found, embedded and matched in this " +
        "browser, against the index it holds (" + index.count + " faces, " + thumbs.length + " pictures).";
      modeEl.className = "mode ok private";
    } catch (err) {
      privateIndex = null;
      privateToggle.checked = false;
      keepPrivateWish(false);
      api.private = "off";
      document.body.dataset.private = "off";
      if (device) showDeviceMode("Private mode is off: " + ((err && err.message) || err) + ". ");
    } finally {
      privateToggle.disabled = !device;
    }
  }

  function disablePrivate() {
    keepPrivateWish(false);
    privateIndex = null;
    api.private = "off";
    document.body.dataset.private = "off";
    results.replaceChildren();
    if (device) showDeviceMode();
    else if (api.pipeline === "server") useServer(api.reason);
  }

  privateToggle.addEventListener("change", () => (privateToggle.checked ? enablePrivate() : disablePrivate()));
  api.privateSearch = (vectors, opts) => {
    if (!privateIndex) throw new Error("private mode is off");
    return priv.searchIndex(privateIndex, vectors, opts);
  };

  // ---- offline: the service worker, and what the page loaded in its cache ------------------------------------
  async function makeOffline() {
    if (!("serviceWorker" in navigator)) return "no";
    try {
      try {
        await navigator.serviceWorker.register("/sw.js");
      } catch (err) {
        if (!navigator.serviceWorker.controller) throw err; // offline: the worker in place carries on
      }
      await navigator.serviceWorker.ready;
      await pipelineReady;
      const used = performance
        .getEntriesByType("resource")
        .map((e) => new URL(e.name))
        .filter((u) => u.origin === location.origin && OFFLINE_PATHS.some((re) => re.test(u.pathname)))
        .map((u) => u.pathname + u.search);
      await warm([...new Set(["/", ...used])]);
      return "ready";
    } catch (_) {
      return "no"; // no service worker here (blocked, or a private window): the page works online
    }
  }

  const pipelineReady = startPipeline();
  api.ready = pipelineReady.then(() => api.pipeline);
  privateToggle.checked = privateWanted;
  api.privateReady = pipelineReady.then(async () => {
    if (privateWanted && device) await enablePrivate();
    return api.private;
  });
  api.offlineReady = makeOffline().then((state) => (api.offline = state));

  // the frame takes the picture's shape (portrait on a phone held upright), within the CSS max-height
  function fitFrame(w, h) {
    if (w > 0 && h > 0) frame.style.aspectRatio = w + " / " + h;
  }

  function setStatus(text, kind = "") {
    statusEl.textContent = text;
    statusEl.className = "status" + (kind ? " " + kind : "");
    statusEl.dataset.kind = kind || "info";
  }

  // ---- camera -------------------------------------------------------------------------------------------
  function cameraErrorMessage(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError" || name === "PermissionDeniedError") {
      return "Camera refused. Allow the camera for this site in your browser settings, or pick a photo instead.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
      return "No camera found on this device. Pick a photo instead.";
    }
    if (name === "NotReadableError" || name === "TrackStartError") {
      return "The camera is in use by another app. Close it and try again, or pick a photo instead.";
    }
    return "The camera could not start (" + (name || err) + "). Pick a photo instead.";
  }

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus(
        window.isSecureContext
          ? "This browser gives no camera access. Pick a photo instead."
          : "The camera needs a secure page (https:// or localhost). Pick a photo instead.",
        "warn",
      );
      return;
    }
    setStatus("Starting the camera…");
    const request = ++cameraRequest;
    let s;
    try {
      s = await navigator.mediaDevices.getUserMedia({
        video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } },
        audio: false,
      });
    } catch (err) {
      if (request !== cameraRequest) return; // a photo was picked meanwhile: say nothing of the camera
      setStatus(cameraErrorMessage(err), "warn");
      document.body.dataset.camera = "refused";
      cameraBtn.textContent = "Try the camera again";
      return;
    }
    if (request !== cameraRequest) {
      s.getTracks().forEach((t) => t.stop());
      return;
    }
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = s;
    clearPhoto();
    clearOverlay();
    mode = "camera";
    document.body.dataset.camera = "on";
    frame.classList.add("mirrored");
    video.hidden = false;
    video.srcObject = stream;
    try {
      await video.play();
    } catch (_) {
      /* autoplay is allowed for a muted inline video; play() again on the next tap otherwise */
    }
    if (request !== cameraRequest) return;
    cameraBtn.textContent = "Stop camera";
    setStatus(api.pipeline === "starting" ? "Loading the face models…" : "Looking for a face…");
    noFaceStreak = 0;
    const token = ++loopToken;
    await pipelineReady;
    if (token !== loopToken || mode !== "camera") return;
    if (device) deviceLoop(token);
    else runLoop(token);
  }

  video.addEventListener("loadedmetadata", () => fitFrame(video.videoWidth, video.videoHeight));
  video.addEventListener("resize", () => fitFrame(video.videoWidth, video.videoHeight));

  function stopCamera() {
    loopToken++;
    if (frozen) setFrozen(false);
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
    frame.classList.remove("mirrored");
    document.body.dataset.camera = "off";
    cameraBtn.textContent = "Start camera";
    if (mode === "camera") mode = "idle";
  }

  function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
  }

  async function runLoop(token) {
    while (token === loopToken && mode === "camera") {
      const t0 = performance.now();
      if (document.hidden || frozen || video.readyState < 2 || !video.videoWidth) {
        await sleep(100);
        continue;
      }
      const scale = Math.min(1, FRAME_SIDE / Math.max(video.videoWidth, video.videoHeight));
      grab.width = Math.round(video.videoWidth * scale);
      grab.height = Math.round(video.videoHeight * scale);
      grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
      const blob = await new Promise((r) => grab.toBlob(r, "image/jpeg", 0.8));
      if (blob && token === loopToken) {
        const doc = await search(blob, "camera.jpg");
        if (doc && token === loopToken && mode === "camera") show(doc, grab.width, grab.height);
      }
      await sleep(Math.max(0, FRAME_INTERVAL_MS - (performance.now() - t0)));
    }
  }

  // On-device: every video frame -> landmarks -> embeddings here; the latest embeddings are searched, one
  // request in flight at most. Boxes are the frame's pixels (sent along, echoed in the answer).
  function nextFrame() {
    return new Promise((resolve) => {
      if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(() => resolve());
      else requestAnimationFrame(() => resolve());
    });
  }

  async function deviceLoop(token) {
    let inFlight = false;
    let t0 = performance.now();
    let counted = 0;
    while (token === loopToken && mode === "camera" && device) {
      await nextFrame();
      if (token !== loopToken || mode !== "camera" || !device) break;
      if (document.hidden || video.readyState < 2 || !video.videoWidth) continue;
      grab.width = video.videoWidth;
      grab.height = video.videoHeight;
      const ctx = grab.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(video, 0, 0, grab.width, grab.height);
      const image = ctx.getImageData(0, 0, grab.width, grab.height);
      let result;
      try {
        result = await device.embedFrame(image, performance.now());
      } catch (err) {
        const wasPrivate = privateWanted;
        useServer("the in-browser pipeline failed (" + ((err && err.message) || err) + ")");
        if (wasPrivate) {
          stopCamera(); // private mode never falls back to sending pictures
          setStatus("The in-browser pipeline failed: the camera is stopped, nothing was sent.", "warn");
          return;
        }
        if (token === loopToken && mode === "camera") runLoop(token);
        return;
      }
      api.frames++;
      counted++;
      const now = performance.now();
      if (now - t0 >= 1000) {
        api.fps = (counted * 1000) / (now - t0);
        t0 = now;
        counted = 0;
      }
      if (!result.faces.length) {
        show({ image: "camera", faces: [] }, image.width, image.height);
        continue;
      }
      if (inFlight || frozen) continue;
      inFlight = true;
      const boxes = result.faces.map((f) => f.box);
      searchVectors(result.embeddings, boxes, "camera", result.faces.map((f) => f.blendshapes)).then((doc) => {
        inFlight = false;
        if (doc && token === loopToken && mode === "camera") show(doc, image.width, image.height);
      });
    }
  }

  // ---- photo --------------------------------------------------------------------------------------------
  function clearPhoto() {
    if (photoURL) URL.revokeObjectURL(photoURL);
    photoURL = null;
    photo.hidden = true;
    photo.removeAttribute("src");
  }

  async function usePhoto(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus("That file is not an image (" + file.type + "). Pick a photo.", "warn");
      return;
    }
    cameraRequest++;
    stopCamera();
    mode = "photo";
    clearPhoto();
    photoURL = URL.createObjectURL(file);
    video.hidden = true;
    photo.hidden = false;
    photo.src = photoURL;
    results.replaceChildren();
    clearOverlay();
    setStatus("Searching…");
    try {
      await photo.decode();
    } catch (_) {
      /* the browser cannot show it: the server still decides (e.g. TIFF) */
    }
    fitFrame(photo.naturalWidth, photo.naturalHeight);
    await pipelineReady;
    if (mode !== "photo" || photo.src !== photoURL) return;
    if (device) {
      let result = null;
      try {
        result = await device.embedImage(file);
      } catch (_) {
        result = null; // a format this browser cannot decode: the server decides
      }
      if (result) {
        const doc = result.faces.length
          ? await searchVectors(
              result.embeddings,
              result.faces.map((f) => f.box),
              file.name || "photo.jpg",
              result.faces.map((f) => f.blendshapes),
            )
          : { image: file.name || "photo.jpg", faces: [] };
        if (doc && mode === "photo" && photo.src === photoURL) show(doc, result.width, result.height);
        return;
      }
      if (privateWanted) {
        setStatus("This browser cannot read that image, and private mode sends no picture. Try a JPEG or PNG.", "warn");
        return;
      }
    }
    let body = file;
    let w = photo.naturalWidth;
    let h = photo.naturalHeight;
    if ((file.size > MAX_UPLOAD || w * h > MAX_PIXELS) && w && h) {
      const s = Math.min(1, UPLOAD_SIDE / Math.max(w, h));
      grab.width = Math.round(w * s);
      grab.height = Math.round(h * s);
      grab.getContext("2d").drawImage(photo, 0, 0, grab.width, grab.height);
      body = await new Promise((r) => grab.toBlob(r, "image/jpeg", 0.9));
      w = grab.width;
      h = grab.height;
    }
    const doc = await search(body, file.name || "photo.jpg");
    if (doc && mode === "photo") show(doc, w || 1, h || 1);
  }

  // ---- API ----------------------------------------------------------------------------------------------
  // blendshapes: each face's 52 scores (or null), which explain its matches (each match's `explain`)
  async function searchVectors(vectors, boxes, name, blendshapes = null) {
    if (privateIndex) return priv.searchIndex(privateIndex, vectors, { k: K, boxes, image: name, blendshapes });
    if (privateWanted) {
      setStatus("Private mode is loading the index: nothing is sent meanwhile.");
      return null;
    }
    let resp;
    try {
      resp = await fetch("/api/search/vectors", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ vectors, boxes, k: K, embedder: api.embedder, image: name, ...blendshapesField(blendshapes) }),
      });
    } catch (_) {
      setStatus("Cannot reach the server. Is facial-search serve still running?", "warn");
      await sleep(1000);
      return null;
    }
    return answer(resp);
  }

  // the request's optional "blendshapes": per vector its face's 52 scores, or null (sent where a face has them)
  function blendshapesField(blendshapes) {
    return blendshapes && blendshapes.some((b) => b) ? { blendshapes: blendshapes.map((b) => b || null) } : {};
  }

  async function search(blob, name) {
    if (privateWanted) {
      setStatus("Private mode sends no picture. Switch Private off to search on the server.", "warn");
      await sleep(500);
      return null;
    }
    const form = new FormData();
    form.append("image", blob, name);
    let resp;
    try {
      resp = await fetch("/api/search?k=" + K, { method: "POST", body: form });
    } catch (_) {
      setStatus("Cannot reach the server. Is facial-search serve still running?", "warn");
      await sleep(1000);
      return null;
    }
    return answer(resp);
  }

  async function answer(resp) {
    if (!resp.ok) {
      let detail = resp.statusText;
      try {
        detail = (await resp.json()).detail || detail;
      } catch (_) {
        /* not JSON */
      }
      if (resp.status === 413) detail = "That photo is too large (" + detail + ").";
      setStatus("The server refused it: " + detail, "warn");
      return null;
    }
    return resp.json();
  }

  // ---- drawing ------------------------------------------------------------------------------------------
  function clearOverlay() {
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
  }

  function drawBoxes(faces, w, h) {
    overlay.width = w;
    overlay.height = h;
    const ctx = overlay.getContext("2d");
    const mirrored = frame.classList.contains("mirrored");
    const lw = Math.max(2, Math.round(Math.max(w, h) / 160));
    ctx.lineWidth = lw;
    ctx.font = "bold " + Math.max(12, Math.round(Math.max(w, h) / 22)) + "px system-ui, sans-serif";
    faces.forEach((f, i) => {
      const [x, y, bw, bh] = f.box;
      const color = COLORS[i % COLORS.length];
      ctx.strokeStyle = color;
      ctx.strokeRect(x, y, bw, bh);
      if (faces.length > 1) {
        // text drawn flipped on a mirrored canvas reads the right way round on screen
        ctx.save();
        ctx.fillStyle = color;
        ctx.textBaseline = "top";
        if (mirrored) {
          ctx.scale(-1, 1);
          ctx.fillText(String(i + 1), -(x + bw) + lw * 2, y + lw * 2);
        } else {
          ctx.fillText(String(i + 1), x + lw * 2, y + lw * 2);
        }
        ctx.restore();
      }
    });
  }

  // ---- a video match (issue 18): its moment plays in the card, muted and looping (the clip the server cuts, GET
  // /api/memes/{id}/clip.mp4), and "Download GIF" saves it as a GIF (clip.gif). Not in private mode: asking
  // for a clip would tell the server which meme matched.
  const hasTimes = (m) => m.t_start != null && m.t_end != null; // a video's moment (private mode: its frame)
  const isMoment = (m) => hasTimes(m) && !privateIndex;
  const clipUrl = (m, fmt) => "/api/memes/" + encodeURIComponent(m.id) + "/clip." + fmt;

  function clock(t) {
    const tenths = Math.round(Math.max(0, t) * 10);
    const s = Math.floor(tenths / 10) % 60;
    return Math.floor(tenths / 600) + ":" + String(s).padStart(2, "0") + "." + (tenths % 10);
  }

  function momentPlayer(m) {
    const v = document.createElement("video");
    v.className = "moment";
    v.muted = v.defaultMuted = v.autoplay = v.loop = v.playsInline = true;
    v.setAttribute("playsinline", ""); // iOS Safari plays it in the card, not full screen
    v.preload = "auto";
    v.poster = "/api/memes/" + encodeURIComponent(m.id) + "/thumb"; // the moment's typical frame, while it loads
    v.src = clipUrl(m, "mp4");
    v.setAttribute("aria-label", m.title + ", " + clock(m.t_start) + "–" + clock(m.t_end));
    return v;
  }

  function momentActions(m) {
    const bar = document.createElement("div");
    bar.className = "actions";
    const gif = document.createElement("a");
    gif.className = "action download gif";
    gif.textContent = "Download GIF";
    gif.href = clipUrl(m, "gif");
    const base = String(m.source).split(/[\\/]/).pop().replace(/\.[^.]*$/, "") || "moment";
    gif.download = base + "-" + m.t_start.toFixed(1) + "s.gif";
    gif.setAttribute("aria-label", "Download the moment of " + m.title + " as a GIF");
    gif.addEventListener("click", (e) => e.stopPropagation());
    bar.append(gif);
    return bar;
  }

  function matchCard(m) {
    const fig = document.createElement("figure");
    fig.className = "match";
    fig.dataset.id = String(m.id);
    const moment = isMoment(m);
    const img = moment ? momentPlayer(m) : document.createElement("img");
    // private mode: the thumbnail the page holds (all were fetched); else the meme's own image
    if (!moment) img.src = (privateIndex && priv.thumbOf(privateIndex, m.id)) || "/api/memes/" + encodeURIComponent(m.id) + "/image";
    img.alt = m.title;
    img.loading = "eager";
    const cap = document.createElement("figcaption");
    const title = document.createElement("span");
    title.className = "title";
    const meta = document.createElement("span");
    meta.className = "meta";
    const explain = document.createElement("span");
    explain.className = "explain"; // the blendshapes the face and the meme share most (explain.js chips)
    explain.hidden = true;
    // (a moment in private mode: its frame and times, no image actions: the server holds no image file for it)
    cap.append(title, explain, meta, moment ? momentActions(m) : hasTimes(m) ? document.createElement("div") : actionBar(m, setStatus));
    fig.append(img, cap);
    return fig;
  }

  function updateCard(fig, m) {
    fig.querySelector(".title").textContent = m.title;
    fig.querySelector(".meta").textContent =
      "#" + m.rank + " · distance " + m.distance.toFixed(3) + (hasTimes(m) ? " · " + clock(m.t_start) + "–" + clock(m.t_end) : "");
    fig.dataset.rank = String(m.rank);
    fig.dataset.distance = String(m.distance);
    const explain = fig.querySelector(".explain");
    const shared = (m.explain || []).map((e) => e.blendshape).join(" ");
    if (explain.dataset.explain !== shared) chips(m.explain, explain); // live: rebuilt only when they change
  }

  function faceSection(i, total) {
    const sec = document.createElement("section");
    sec.className = "face";
    const h = document.createElement("h2");
    const sw = document.createElement("span");
    sw.className = "swatch";
    h.append(sw, document.createTextNode(""));
    const list = document.createElement("div");
    list.className = "matches";
    sec.append(h, list);
    return sec;
  }

  // Update the cards in place (same meme in the same slot keeps its image: no flicker while live).
  function renderMatches(faces) {
    while (results.children.length > faces.length) results.lastElementChild.remove();
    faces.forEach((f, i) => {
      let sec = results.children[i];
      if (!sec || !sec.classList.contains("face")) {
        if (sec) sec.remove();
        sec = faceSection(i, faces.length);
        results.insertBefore(sec, results.children[i] || null);
      }
      sec.dataset.face = String(i);
      const h = sec.querySelector("h2");
      h.querySelector(".swatch").style.background = COLORS[i % COLORS.length];
      h.lastChild.textContent =
        faces.length > 1 ? "Face " + (i + 1) + ": your memes" : "Your meme" + (f.matches.length > 1 ? "s" : "");
      const list = sec.querySelector(".matches");
      if (!f.matches.length) {
        list.replaceChildren(Object.assign(document.createElement("p"), { className: "empty", textContent: "No meme in the index." }));
        return;
      }
      while (list.children.length > f.matches.length) list.lastElementChild.remove();
      f.matches.forEach((m, j) => {
        let fig = list.children[j];
        if (!fig || fig.dataset.id !== String(m.id)) {
          const fresh = matchCard(m);
          if (fig) fig.replaceWith(fresh);
          else list.append(fresh);
          fig = fresh;
        }
        updateCard(fig, m);
      });
    });
  }

  function show(doc, w, h) {
    const faces = doc.faces || [];
    drawBoxes(faces, w, h);
    if (frozen && mode === "camera") return; // the matches on show stay until the next tap
    results.dataset.updates = String((Number(results.dataset.updates) || 0) + 1);
    if (!faces.length) {
      noFaceStreak++;
      if (mode === "camera") {
        setStatus("No face seen. Face the camera in good light.", "warn");
        // keep the last memes (dimmed) for a moment: a missed frame should not blank the page
        results.classList.add("stale");
        if (noFaceStreak >= (device ? 15 : 3)) results.replaceChildren(); // about half a second either way
      } else {
        setStatus("No face seen in this photo. Try another one, or the camera.", "warn");
        results.replaceChildren();
      }
      document.body.dataset.faces = "0";
      return;
    }
    noFaceStreak = 0;
    results.classList.remove("stale");
    document.body.dataset.faces = String(faces.length);
    renderMatches(faces);
    const n = faces.length;
    const rate = mode === "camera" && device && api.fps ? " (" + Math.round(api.fps) + " frames/s on this device)" : "";
    setStatus(
      (n === 1 ? "1 face" : n + " faces") +
        (mode === "camera" ? " seen, live" + rate + ". Tap the picture to hold these memes." : " found in the photo"),
      "ok",
    );
  }

  // ---- freeze: a tap on the preview holds the matches, a second tap lets them go -----------------------------
  function setFrozen(on) {
    frozen = on;
    document.body.dataset.frozen = on ? "1" : "0";
    frozenBadge.hidden = !on;
    frame.setAttribute("aria-pressed", String(on));
    if (on) setStatus("Held: these memes stay while you pick one. Tap the picture to go live again.", "ok");
    else setStatus("Live again…");
  }

  function toggleFreeze() {
    if (mode === "camera") setFrozen(!frozen);
  }

  frame.addEventListener("click", toggleFreeze);
  frame.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      toggleFreeze();
    }
  });

  // ---- wiring -------------------------------------------------------------------------------------------
  cameraBtn.addEventListener("click", () => {
    if (mode === "camera") {
      stopCamera();
      setStatus("Camera stopped. Start it again, or pick a photo.");
    } else {
      startCamera();
    }
  });

  fileInput.addEventListener("change", () => {
    usePhoto(fileInput.files && fileInput.files[0]);
    fileInput.value = "";
  });

  let dragDepth = 0;
  window.addEventListener("dragenter", (e) => {
    e.preventDefault();
    dragDepth++;
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) document.body.classList.remove("dragging");
  });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    dragDepth = 0;
    document.body.classList.remove("dragging");
    const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
    if (file) usePhoto(file);
    else setStatus("Drop an image file (JPEG, PNG, …).", "warn");
  });

  startCamera();
})();
