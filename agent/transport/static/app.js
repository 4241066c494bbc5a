// The technician's status page: fetches /ui/api/state every few seconds and each
// camera's snapshot while the page is visible. No framework, no build step; every value
// from the agent is written with textContent (ids come from commands and are untrusted).
"use strict";

const $ = (id) => document.getElementById(id);
const settings = { refreshSeconds: 2, snapshotSeconds: 3, urlTest: false };
const cards = new Map(); // "slot\u0000camera" or "registry\u0000camera" -> card parts
let lastState = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = String(value);
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function num(value, digits = 1) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

function facts(dl, rows) {
  dl.replaceChildren(
    ...rows.flatMap(([term, value, cls]) => [
      el("dt", { text: term }),
      el("dd", { text: value, className: cls || null }),
    ]),
  );
}

async function getJson(url, options = {}) {
  const response = await fetch(url, { cache: "no-store", credentials: "same-origin", ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok && !(body && "ok" in body)) {
    const why = body && body.message ? `${body.code}: ${body.message}` : `HTTP ${response.status}`;
    throw new Error(why);
  }
  return body;
}

function oldestText(box) {
  const e = box && box.oldestPending;
  if (!e) return "none";
  return `${duration(e.ageSeconds)} old (${e.type}, slot ${e.slotId}, ${e.attempts} attempts)`;
}

// Agent and model -------------------------------------------------------------------

function renderAgent(state) {
  const a = state.agent;
  const m = state.model;
  const mqtt = state.mqtt;
  const box = state.outbox;
  const providers = Object.entries(m.providers || {})
    .map(([role, list]) => `${role}: ${(list || []).join(", ")}`)
    .join("; ");
  facts($("agent-facts"), [
    ["State", a.state || "—", a.state === "RUNNING" ? "ok" : "bad"],
    ["Version", a.version || "—"],
    ["Site", a.siteId || "—"],
    ["Up for", duration(a.uptimeSeconds)],
    ["Model pack", m.loaded ? m.pack : `NOT LOADED: ${m.reason || "unknown reason"}`, m.loaded ? null : "bad"],
    ["Embedding space", m.embeddingSpace || "—"],
    [
      "Execution providers",
      (providers || "—") + (m.providerWarnings.length ? " (DEGRADED)" : ""),
      m.providerWarnings.length ? "bad" : null,
    ],
    [
      "MQTT link",
      mqtt.connected ? `connected (MQTT ${mqtt.protocol})` : "DISCONNECTED",
      mqtt.connected ? "ok" : "bad",
    ],
    ["Outbox: pending events", box ? String(box.pending ?? "—") : "—"],
    ["Outbox: dead letters", box ? String(box.dead ?? "—") : "—", box && box.dead ? "bad" : null],
    ["Oldest pending event", oldestText(box)],
  ]);
  const plain = state.page && state.page.plainHttp
    ? ["This page and its password travel over plain HTTP: open it through an SSH tunnel (ssh -L 9108:127.0.0.1:9108 user@box) or a TLS reverse proxy, not across the school's network."]
    : [];
  const warnings = [...plain, ...m.providerWarnings.map((w) => `ONNX_PROVIDER_DEGRADED: ${w}`), ...state.warnings];
  const unique = [...new Set(warnings)];
  $("warnings").replaceChildren(
    ...(unique.length ? unique.map((w) => el("li", { text: w, className: "bad" })) : [el("li", { text: "None." })]),
  );
  renderEnded(state.recentSessions || []);
  const r = m.reload || {};
  facts($("model-facts"), [
    ["Pack in service", m.loaded ? m.pack : "none", m.loaded ? null : "bad"],
    ["Embedding space", m.embeddingSpace || "—"],
    [
      "Last reload",
      r.lastAttempt ? new Date(r.lastAttempt * 1000).toLocaleString() : "never",
    ],
    [
      "Its result",
      r.lastAttempt ? (r.lastError ? `FAILED: ${r.lastError}` : "OK") : "—",
      r.lastError ? "bad" : null,
    ],
    ["Reloads / failures / swaps", `${r.attempts ?? 0} / ${r.failures ?? 0} / ${m.swaps ?? 0}`],
  ]);
}

function renderEnded(ended) {
  // The last sessions that ended, newest first, the reason in words; one that ended by
  // itself (cameras, backend) is marked, as the warning above says while it is recent.
  $("recent-sessions").replaceChildren(
    ...(ended.length
      ? ended.map((e) =>
          el("li", {
            text:
              `${e.slotId}: ${e.reasonWords} (${e.reason}), ` +
              `${new Date(e.startedAt).toLocaleString()} to ${new Date(e.endedAt).toLocaleTimeString()}, ` +
              `${e.recognised} of ${e.students} recognised`,
            className: e.byItself ? "bad" : "",
          }),
        )
      : [el("li", { text: "None yet." })]),
  );
}

// Cameras ---------------------------------------------------------------------------

function cardFor(key, title, cameraId, slot) {
  let card = cards.get(key);
  if (card) return card;
  const badge = el("span", { className: "badge" });
  const heading = el("h3", { text: title });
  const img = el("img", { alt: "Snapshot not loaded yet", className: "snapshot", hidden: true });
  const caption = el("figcaption", { text: slot ? "Waiting for the first snapshot…" : "Not in a session: no snapshot." });
  const dl = el("dl", { className: "facts compact" });
  const actions = el("div", { className: "actions" });
  const article = el(
    "article",
    { className: "camera", "data-camera-id": cameraId, "data-slot": slot || "" },
    el("div", { className: "card-head" }, heading, badge),
    el("figure", {}, img, caption),
    dl,
    actions,
  );
  card = { key, article, badge, heading, img, caption, dl, actions, slot, cameraId, url: null };
  cards.set(key, card);
  return card;
}

function setState(card, display) {
  card.article.dataset.state = display;
  card.badge.textContent = display;
  card.badge.className = `badge state-${display.toLowerCase().replace(/[^a-z]/g, "")}`;
}

function testButton(card, cameraId) {
  if (card.actions.childElementCount) return;
  const button = el("button", { type: "button", text: "Test this camera" });
  button.addEventListener("click", () => {
    $("test-camera").value = cameraId;
    runTest({ camera: cameraId });
    $("test").scrollIntoView();
  });
  card.actions.append(button);
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function presenceText(p) {
  if (!p) return null;
  return `${p.present} present, ${p.uncertain} uncertain, ${p.notSeen} not seen`;
}

function coverageRows(c) {
  if (!c) return [];
  const widths = c.widths.length
    ? c.widths.map((w) => `${w.range} px: ${w.seen} seen, ${w.recognised} recognised`).join("; ")
    : "no faces yet";
  return [
    ["Full-resolution detection", `${num(c.fineDetectCores * 100, 1)} % of a core (${plural(c.sweeps, "sweep")}, ${plural(c.regions, "region")})`],
    ["Face widths", widths],
    ["Placement", c.placementHint || "faces large enough", c.placementHint ? "bad" : null],
  ];
}

function renderCameras(state) {
  const seen = new Set();
  const registryIds = new Set(state.registry.map((c) => c.id));
  const list = $("camera-list");
  const ordered = [];
  for (const session of state.sessions) {
    for (const cam of session.cameras) {
      const key = `${session.slotId}\u0000${cam.id}`;
      const card = cardFor(key, cam.name || cam.id, cam.id, session.slotId);
      seen.add(key);
      card.heading.textContent = cam.name && cam.name !== cam.id ? `${cam.name} (${cam.id})` : cam.id;
      setState(card, cam.display);
      const waiting = session.waitingForCamerasSeconds;
      const rows = [
        ["Session", `${session.slotId} (${session.mode}, ${session.students} students)`],
        [
          "Session waits",
          waiting === null || waiting === undefined
            ? null
            : `every camera is down: stops in ${duration(waiting)} unless one comes back`,
          "bad",
        ],
        ["Problem", cam.reason || null, "bad"],
        [
          "Next retry",
          cam.nextRetryInSeconds === null || cam.nextRetryInSeconds === undefined
            ? null
            : `in ${duration(cam.nextRetryInSeconds)}`,
        ],
        ["Frame age", cam.frameAgeSeconds === null ? "no frame yet" : `${num(cam.frameAgeSeconds, 2)} s`],
        ["Analysis rate", "analysisRate" in cam ? `${num(cam.analysisRate)} /s` : null],
        ["Frames read / analysed", `${cam.framesRead ?? 0} / ${cam.framesAnalysed ?? 0}`],
        ["Reconnects", String(cam.reconnects ?? 0)],
        ["Up-time", duration(cam.upSeconds)],
        ["Decoding", "decodeMode" in cam ? `${cam.decodeMode}${cam.decoder ? ` (${cam.decoder})` : ""}` : null],
        ["Analyses shed", "analysesShed" in cam ? String(cam.analysesShed) : null],
        ["Attendance", presenceText(session.presence)],
        ...coverageRows(cam.coverage),
      ].filter((row) => row[1] !== null);
      facts(card.dl, rows);
      // A snapshot of a camera that is down (or whose frame is old) is the past: greyed.
      card.img.classList.toggle("stale", Boolean(cam.stale));
      card.article.dataset.stale = cam.stale ? "true" : "false";
      if (registryIds.has(cam.id)) testButton(card, cam.id);
      ordered.push(card.article);
    }
  }
  for (const cam of state.registry) {
    if (cam.slots.length) continue;
    const key = `registry\u0000${cam.id}`;
    const card = cardFor(key, cam.id, cam.id, null);
    seen.add(key);
    card.heading.textContent = cam.name && cam.name !== cam.id ? `${cam.name} (${cam.id})` : cam.id;
    setState(card, "IDLE");
    card.badge.textContent = "NOT IN A SESSION";
    facts(card.dl, [["Stream", cam.url]]);
    testButton(card, cam.id);
    ordered.push(card.article);
  }
  for (const [key, card] of cards) {
    if (!seen.has(key)) {
      if (card.url) URL.revokeObjectURL(card.url);
      cards.delete(key);
    }
  }
  const current = [...list.children];
  if (current.length !== ordered.length || current.some((node, i) => node !== ordered[i])) {
    list.replaceChildren(...ordered); // only when cards come or go: keeps focus otherwise
  }
  $("cameras-empty").hidden = ordered.length > 0;
}

async function loadSnapshot(card) {
  const query = new URLSearchParams({ slot: card.slot, camera: card.cameraId });
  const response = await fetch(`/ui/api/snapshot?${query}`, { cache: "no-store", credentials: "same-origin" });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).message || message;
    } catch (err) {
      /* not JSON */
    }
    card.caption.textContent = message;
    return;
  }
  const blob = await response.blob();
  const count = Number(response.headers.get("X-Face-Count") || "0");
  let labels = [];
  try {
    labels = JSON.parse(decodeURIComponent(response.headers.get("X-Face-Labels") || "%5B%5D"));
  } catch (err) {
    labels = [];
  }
  const age = response.headers.get("X-Frame-Age");
  const names = labels.map((l) => (l === null ? "unknown" : l));
  const summary = count ? `${count} face${count > 1 ? "s" : ""}: ${names.join(", ")}` : "no face";
  const url = URL.createObjectURL(blob);
  await new Promise((resolve) => {
    card.img.onload = resolve;
    card.img.onerror = resolve;
    card.img.src = url;
  });
  if (card.url) URL.revokeObjectURL(card.url);
  card.url = url;
  card.img.hidden = false;
  card.img.alt = `Snapshot of camera ${card.cameraId}, ${summary}`;
  card.img.dataset.faces = String(count);
  card.img.dataset.labels = names.join(",");
  card.caption.textContent = `${summary} · frame ${age ?? "?"} s old`;
}

async function snapshots() {
  try {
    if (document.visibilityState === "visible") {
      for (const card of [...cards.values()]) {
        if (card.slot) {
          try {
            await loadSnapshot(card);
          } catch (err) {
            card.caption.textContent = `Snapshot failed: ${err.message}`;
          }
        }
      }
    }
  } finally {
    setTimeout(snapshots, settings.snapshotSeconds * 1000);
  }
}

// Polling ---------------------------------------------------------------------------

function announce(text, cls) {
  // A status region: screen readers read it when it changes, so it changes only when the
  // link to the agent does (the update time is shown beside it, outside the region).
  const node = $("connection");
  if (node.textContent !== text) node.textContent = text;
  node.className = cls || "";
}

async function refresh() {
  try {
    const state = await getJson("/ui/api/state");
    Object.assign(settings, state.page);
    lastState = state;
    renderAgent(state);
    renderCameras(state);
    renderTestChoices(state);
    document.body.dataset.loaded = "true";
    announce("Live: updating every few seconds.", null);
    $("updated").textContent = `Last update ${new Date().toLocaleTimeString()}.`;
  } catch (err) {
    announce(`The agent does not answer (${err.message}); retrying…`, "bad");
  } finally {
    setTimeout(refresh, settings.refreshSeconds * 1000);
  }
}

// Camera test -----------------------------------------------------------------------

function renderTestChoices(state) {
  const select = $("test-camera");
  const wanted = state.registry.map((c) => c.id);
  const have = [...select.options].slice(1).map((o) => o.value);
  if (wanted.join("\u0000") !== have.join("\u0000")) {
    const current = select.value;
    select.replaceChildren(
      select.options[0],
      ...state.registry.map((c) => el("option", { value: c.id, text: c.name ? `${c.name} (${c.id})` : c.id })),
    );
    select.value = wanted.includes(current) ? current : "";
  }
  $("test-url-field").hidden = !settings.urlTest;
  select.options[0].textContent = settings.urlTest ? "(none: use the URL below)" : "(choose a camera)";
}

async function runTest(body) {
  const out = $("test-result");
  const button = $("test-run");
  button.disabled = true;
  out.replaceChildren(el("p", { text: "Testing… (a few seconds)" }));
  try {
    const r = await getJson("/ui/api/camera-test", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const dl = el("dl", { className: "facts" });
    facts(dl, [
      ["Stream", r.source],
      ["Result", r.ok ? "DELIVERS FRAMES" : `FAILED (${r.error.code})`, r.ok ? "ok" : "bad"],
      ["Resolution", r.width ? `${r.width} × ${r.height}` : "—"],
      ["Frame rate (measured)", r.fps ? `${r.fps} fps` : "—"],
      ["Frame rate (stream says)", r.reportedFps ? `${r.reportedFps} fps` : "—"],
      ["Frames read", `${r.frames} in ${r.seconds} s`],
      ["What to fix", r.error ? r.error.message : "nothing", r.error ? "bad" : null],
    ]);
    out.replaceChildren(dl);
    if (r.frame) {
      out.append(el("img", { src: r.frame, className: "snapshot", alt: `One frame from ${r.source}` }));
    }
  } catch (err) {
    out.replaceChildren(el("p", { text: `Test refused: ${err.message}`, className: "bad" }));
  } finally {
    button.disabled = false;
  }
}

$("test-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const camera = $("test-camera").value;
  const url = $("test-url").value.trim();
  if (!camera && !url) {
    $("test-result").replaceChildren(el("p", { text: "Choose a registry camera or enter a URL.", className: "bad" }));
    return;
  }
  runTest(camera ? { camera } : { url });
});

// Model packs -------------------------------------------------------------------------

$("verify").addEventListener("click", async () => {
  const out = $("verify-result");
  const button = $("verify");
  button.disabled = true;
  out.replaceChildren(el("p", { text: "Verifying packs (hashing their files)…" }));
  try {
    const r = await getJson("/ui/api/models");
    const lines = r.packs.length ? r.packs.map((p) => p.line) : [`No model pack in ${r.dir}`];
    out.replaceChildren(
      el("pre", { className: "verify", text: lines.join("\n") }),
      el("p", { className: "muted", text: `As \`python -m agent models verify\` prints it (${r.dir}).` }),
    );
  } catch (err) {
    out.replaceChildren(el("p", { text: `Verification failed: ${err.message}`, className: "bad" }));
  } finally {
    button.disabled = false;
  }
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && lastState) renderCameras(lastState);
});

refresh();
snapshots();
