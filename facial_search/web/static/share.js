// Post the meme: each match card's Share, Copy image and Download.
//
// - Share: the Web Share API with the meme's image file, shown only where the browser has navigator.share and
//   navigator.canShare; where canShare({files}) refuses the file, it downloads it instead.
// - Copy image: the Clipboard API with an image/png item (browsers put only PNG images on the clipboard: a JPEG
//   meme is drawn on a canvas and encoded as PNG). Hidden where the browser has no ClipboardItem.
// - Download: an <a download> of the meme's own file (GET /api/memes/{id}/image), under the file's own name.
"use strict";

/** The meme file's name, from a match's `source` (a server path). */
export function fileName(match) {
  const base = String(match.source).split(/[\\/]/).pop() || "meme";
  return /\.[a-z0-9]{2,5}$/i.test(base) ? base : base + ".jpg";
}

export function imageUrl(match) {
  return "/api/memes/" + encodeURIComponent(match.id) + "/image";
}

async function memeBlob(match) {
  const resp = await fetch(imageUrl(match));
  if (!resp.ok) throw new Error("the meme's image did not load (HTTP " + resp.status + ")");
  return resp.blob();
}

/** A PNG of an image blob (the blob itself when it is one already). */
export async function toPng(blob) {
  if (blob.type === "image/png") return blob;
  const bitmap = await createImageBitmap(blob);
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  canvas.getContext("2d").drawImage(bitmap, 0, 0);
  bitmap.close();
  const png = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  if (!png) throw new Error("the browser could not encode the image as PNG");
  return png;
}

export const canShare = () => typeof navigator.share === "function" && typeof navigator.canShare === "function";
export const canCopy = () =>
  typeof ClipboardItem === "function" && !!navigator.clipboard && typeof navigator.clipboard.write === "function";

function button(cls, text, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "action " + cls;
  b.textContent = text;
  b.setAttribute("aria-label", label);
  return b;
}

/**
 * The action bar of one match card.
 * @param match a match of the search document ({id, title, source, ...})
 * @param say (text, kind) => void: the page's status line
 * @returns {HTMLElement}
 */
export function actionBar(match, say) {
  const bar = document.createElement("div");
  bar.className = "actions";
  const share = button("share", "Share", "Share " + match.title);
  const copy = button("copy", "Copy image", "Copy the image of " + match.title);
  const download = document.createElement("a");
  download.className = "action download";
  download.textContent = "Download";
  download.href = imageUrl(match);
  download.download = fileName(match);
  download.setAttribute("aria-label", "Download " + match.title);
  share.hidden = !canShare();
  copy.hidden = !canCopy();

  share.addEventListener("click", async (e) => {
    e.stopPropagation();
    try {
      const blob = await memeBlob(match);
      const file = new File([blob], fileName(match), { type: blob.type || "image/jpeg" });
      if (!navigator.canShare({ files: [file] })) {
        download.click(); // this browser shares no files: the file goes to the downloads instead
        say("This browser cannot share a picture: downloaded " + fileName(match) + " instead.", "ok");
        return;
      }
      await navigator.share({ files: [file], title: match.title });
      say("Shared: " + match.title, "ok");
    } catch (err) {
      if (err && err.name === "AbortError") return; // the share sheet was closed
      say("Could not share it (" + ((err && err.message) || err) + ").", "warn");
    }
  });

  copy.addEventListener("click", async (e) => {
    e.stopPropagation();
    try {
      // the blob as a promise: the clipboard is written within the tap (Safari asks for that)
      const png = memeBlob(match).then(toPng);
      await navigator.clipboard.write([new ClipboardItem({ "image/png": png })]);
      say("Copied: " + match.title + " (paste it in a chat)", "ok");
    } catch (err) {
      say("Could not copy the image (" + ((err && err.message) || err) + ").", "warn");
    }
  });

  download.addEventListener("click", (e) => e.stopPropagation());
  bar.append(share, copy, download);
  return bar;
}
