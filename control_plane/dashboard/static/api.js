// The /v1 API, called with the operator's key as `Authorization: Bearer` (never in a URL),
// from this origin only (the page's CSP: connect-src 'self').

const session = { key: null, refused: () => {} };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// `refused` runs when the API answers 401 for the key (the page forgets it).
export function useApiKey(key, refused) {
  session.key = key;
  session.refused = refused;
}

async function request(path, options = {}) {
  const headers = { Authorization: "Bearer " + session.key };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    cache: "no-store",
    credentials: "omit",
    redirect: options.redirect || "follow",
  });
  if (!reply.ok && reply.type !== "opaqueredirect") {
    const body = await reply.json().catch(() => null);
    const message = (body && body.error && body.error.message) || reply.statusText;
    if (reply.status === 401) session.refused("The API key was refused: " + message);
    throw new ApiError(reply.status, message);
  }
  return reply;
}

export async function api(path, options = {}) {
  const reply = await request(path, options);
  return reply.json();
}

export const batchPath = (batchId) => "v1/batches/" + encodeURIComponent(batchId);

// A file's bytes saved as `name` through a link to a blob: the key stays in the header. A file
// larger than the API answers inline (HOTBATCH_INLINE_CONTENT_MAX_BYTES) is a redirect to a
// presigned S3 URL on another origin, which this page may not fetch.
export async function download(fileId, name) {
  const path = "v1/files/" + encodeURIComponent(fileId) + "/content";
  const reply = await request(path, { redirect: "manual" });
  if (reply.type === "opaqueredirect") {
    throw new Error("the file is larger than the API serves to this page; download it with " +
      "`hotbatch batches download` or the openai SDK (" + fileId + ")");
  }
  const url = URL.createObjectURL(await reply.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
