// wafleet admin page: vanilla JavaScript, no build step, served by the gateway (routes/ui.py).
// It talks only to the tenant API (/v1, Authorization: Bearer <key>) and the realtime websocket
// (/v1/events, authenticated by its first message). Every API value reaches the DOM as text:
// this file never hands a string to an HTML parser, so names and texts cannot inject anything.
"use strict";

(function () {
  const KEY = "wafleet.apiKey";
  const RECONNECT_MAX_MS = 15000;
  const LIST_LIMIT = 20;
  const EVENT_LOG_MAX = 30;

  const state = {
    key: null,
    instances: new Map(), // id -> InstanceOut (plus `state` from /status when known)
    selected: null, // instance id
    ws: null,
    wsRetryMs: 500,
    lastEventId: null,
    qrUrl: null, // the blob: URL the QR image shows
    qrSeq: 0, // newest QR request wins
    refreshTimers: new Map(),
  };

  const $ = (id) => document.getElementById(id);

  // One element with attributes and text/element children; values are never parsed as HTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
    }
    return node;
  }

  function setText(id, value) {
    $(id).textContent = value == null ? "" : String(value);
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message || code || "HTTP " + status);
      this.status = status;
      this.code = code || "http_" + status;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.key, Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (!res.ok) {
      let err = null;
      try {
        err = await res.json();
      } catch (_) {
        err = null;
      }
      if (res.status === 401) signOut("The API key was refused: " + ((err && err.message) || "unauthorized"));
      throw new ApiFailure(res.status, err && err.code, err && err.message);
    }
    if (res.status === 204) return null;
    const type = res.headers.get("Content-Type") || "";
    return type.includes("json") ? res.json() : res.blob();
  }

  function showError(err) {
    setText("app-error", err ? (err.code ? err.code + ": " : "") + err.message : "");
  }

  const iid = (id) => encodeURIComponent(id);

  // --- sign in / out ---------------------------------------------------------------------------
  async function signIn(key) {
    state.key = key;
    try {
      const list = await api("GET", "/v1/instances");
      sessionStorage.setItem(KEY, key);
      $("signin").hidden = true;
      $("app").hidden = false;
      $("sign-out").hidden = false;
      setText("signin-error", "");
      state.instances = new Map(list.map((i) => [i.id, i]));
      renderInstances();
      openEvents();
      loadDeliveries();
    } catch (err) {
      state.key = null;
      sessionStorage.removeItem(KEY);
      setText("signin-error", "Could not sign in: " + err.message);
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    state.key = null;
    state.selected = null;
    state.instances.clear();
    if (state.ws) {
      const ws = state.ws;
      state.ws = null;
      ws.close(1000);
    }
    clearQr();
    $("app").hidden = true;
    $("panel").hidden = true;
    $("signin").hidden = false;
    $("sign-out").hidden = true;
    $("api-key").value = "";
    setText("live", "signed out");
    setText("signin-error", message || "");
  }

  // --- instances -------------------------------------------------------------------------------
  function stateOf(inst) {
    return inst.state || inst.status || "";
  }

  function renderInstances() {
    const body = $("instances");
    body.replaceChildren();
    const items = [...state.instances.values()].sort((a, b) => a.name.localeCompare(b.name));
    for (const inst of items) {
      const open = el("button", { type: "button", "data-testid": "open-instance" }, "Open");
      open.addEventListener("click", () => select(inst.id));
      body.append(
        el(
          "tr",
          { "data-testid": "instance-row", "data-instance-id": inst.id },
          el("td", { "data-testid": "row-name" }, inst.name),
          el("td", {}, inst.phone_number || ""),
          el("td", { "data-testid": "row-state", "data-state": stateOf(inst) }, stateOf(inst)),
          el("td", {}, inst.messages_sent),
          el("td", {}, inst.messages_received),
          el("td", {}, open),
        ),
      );
    }
    $("no-instances").hidden = items.length > 0;
  }

  async function createInstance(form) {
    const name = form.elements.name.value.trim();
    const phone = form.elements.phone.value.trim();
    showError(null);
    try {
      const inst = await api("POST", "/v1/instances", { name, phone_number: phone || null });
      state.instances.set(inst.id, inst);
      form.reset();
      renderInstances();
      select(inst.id);
    } catch (err) {
      showError(err);
    }
  }

  async function refreshStatus(id) {
    let status;
    try {
      status = await api("GET", "/v1/instances/" + iid(id) + "/status");
    } catch (err) {
      if (err.status !== 404) return;
      // No status view (an older gateway, or the instance is gone): its stored record, if any.
      try {
        status = await api("GET", "/v1/instances/" + iid(id));
        status.state = status.status;
      } catch (err2) {
        if (err2.status === 404) forget(id);
        return;
      }
    }
    const known = state.instances.get(id) || {};
    state.instances.set(id, Object.assign({}, known, status));
    renderInstances();
    if (state.selected === id) renderPanel();
  }

  // Events come in bursts (QR, connected, statuses): one status read per instance per burst.
  function scheduleRefresh(id) {
    if (state.refreshTimers.has(id)) return;
    state.refreshTimers.set(
      id,
      setTimeout(() => {
        state.refreshTimers.delete(id);
        if (state.key) refreshStatus(id);
      }, 150),
    );
  }

  function forget(id) {
    state.instances.delete(id);
    if (state.selected === id) {
      state.selected = null;
      $("panel").hidden = true;
    }
    renderInstances();
  }

  function select(id) {
    if (state.selected !== id) {
      clearQr();
      hideCode();
      setText("send-result", "");
    }
    state.selected = id;
    $("panel").hidden = false;
    renderPanel();
    refreshStatus(id).then(() => {
      const inst = state.instances.get(id);
      if (!inst || state.selected !== id) return;
      if (stateOf(inst) === "qr_pending") loadQr(id, null);
      if (stateOf(inst) === "code_pending") loadPairingCode(id);
    });
    loadRecent();
  }

  function renderPanel() {
    const inst = state.instances.get(state.selected);
    if (!inst) return;
    setText("panel-name", inst.name);
    setText("panel-id", inst.id);
    const out = $("panel-state");
    out.textContent = stateOf(inst);
    out.setAttribute("data-state", stateOf(inst));
    setText("panel-owner", inst.owner || "none");
    setText("panel-phone", inst.phone_number || "not linked yet");
    setText("panel-queued", inst.queued == null ? "" : inst.queued);
    if (stateOf(inst) === "connected") {
      clearQr();
      hideCode();
    }
  }

  // --- linking ---------------------------------------------------------------------------------
  async function connect(method) {
    const id = state.selected;
    if (!id) return;
    showError(null);
    const body = { method };
    if (method === "code") {
      body.phone = $("code-phone").value.trim();
      if (!body.phone) {
        showError({ code: "invalid_phone", message: "enter the phone number to pair with" });
        return;
      }
    }
    clearQr();
    hideCode();
    try {
      const status = await api("POST", "/v1/instances/" + iid(id) + "/connect", body);
      state.instances.set(id, Object.assign({}, state.instances.get(id), status));
      renderInstances();
      renderPanel();
      // The worker may have moved on (a QR shown) before this answer arrived: read it again.
      scheduleRefresh(id);
    } catch (err) {
      showError(err);
    }
  }

  function clearQr() {
    state.qrSeq += 1;
    if (state.qrUrl) URL.revokeObjectURL(state.qrUrl);
    state.qrUrl = null;
    const img = $("qr-image");
    img.removeAttribute("src");
    img.removeAttribute("data-qr");
    img.removeAttribute("data-index");
    $("qr-box").hidden = true;
  }

  // Shows the instance's current QR: the image is the gateway's SVG, fetched with the key header
  // (an <img src> cannot send it) and shown from a blob: URL. `qr` is the string from the event,
  // or null to read it from GET /qr.
  async function loadQr(id, qr, index) {
    const seq = ++state.qrSeq;
    try {
      if (qr == null) {
        const current = await api("GET", "/v1/instances/" + iid(id) + "/qr");
        qr = current.qr;
        index = current.index;
      }
      const blob = await api("GET", "/v1/instances/" + iid(id) + "/qr.svg");
      if (seq !== state.qrSeq || state.selected !== id) return;
      if (state.qrUrl) URL.revokeObjectURL(state.qrUrl);
      state.qrUrl = URL.createObjectURL(blob);
      const img = $("qr-image");
      img.src = state.qrUrl;
      img.setAttribute("data-qr", qr);
      img.setAttribute("data-index", index == null ? "" : index);
      $("qr-box").hidden = false;
    } catch (err) {
      if (err.status !== 404) showError(err); // 404 no_qr: the QR just expired or was scanned
    }
  }

  function hideCode() {
    setText("pairing-code", "");
    $("code-box").hidden = true;
  }

  function showCode(code) {
    setText("pairing-code", code);
    $("code-box").hidden = false;
  }

  async function loadPairingCode(id) {
    try {
      const got = await api("GET", "/v1/instances/" + iid(id) + "/pairing-code");
      if (state.selected === id) showCode(got.code);
    } catch (err) {
      if (err.status !== 404) showError(err);
    }
  }

  async function lifecycle(action) {
    const id = state.selected;
    if (!id) return;
    showError(null);
    try {
      const status = await api("POST", "/v1/instances/" + iid(id) + "/" + action);
      state.instances.set(id, Object.assign({}, state.instances.get(id), status));
      clearQr();
      hideCode();
      renderInstances();
      renderPanel();
      scheduleRefresh(id);
    } catch (err) {
      showError(err);
    }
  }

  // --- sending and records ---------------------------------------------------------------------
  async function send(form) {
    const id = state.selected;
    if (!id) return;
    const to = form.elements.to.value.trim();
    const text = form.elements.text.value;
    setText("send-result", "sending…");
    try {
      const r = await api("POST", "/v1/instances/" + iid(id) + "/send/text", { to, text });
      setText("send-result", "Accepted as #" + r.outbox_id + " (" + r.status + ")");
      form.elements.text.value = "";
      loadRecent();
    } catch (err) {
      setText("send-result", "Not sent: " + (err.code ? err.code + ": " : "") + err.message);
    }
  }

  async function loadRecent() {
    const id = state.selected;
    if (!id) return;
    try {
      const [outbox, messages] = await Promise.all([
        api("GET", "/v1/instances/" + iid(id) + "/outbox?limit=" + LIST_LIMIT),
        api("GET", "/v1/messages?limit=" + LIST_LIMIT + "&instance_id=" + iid(id)),
      ]);
      if (state.selected !== id) return;
      $("outbox").replaceChildren(
        ...outbox.items.map((o) =>
          el(
            "tr",
            { "data-testid": "outbox-row", "data-status": o.status },
            el("td", {}, o.id),
            el("td", {}, o.chat_jid),
            el("td", { "data-testid": "outbox-status" }, o.status),
            el("td", {}, o.last_error_code || ""),
            el("td", {}, when(o.created_at)),
          ),
        ),
      );
      $("messages").replaceChildren(
        ...messages.items.map((m) =>
          el(
            "tr",
            { "data-testid": "message-row" },
            el("td", {}, when(m.wa_timestamp || m.created_at)),
            el("td", {}, m.direction),
            el("td", {}, m.chat_jid),
            el("td", { "data-testid": "message-text" }, m.body || (m.media ? "[" + m.type + "]" : "")),
            el("td", {}, m.status),
          ),
        ),
      );
    } catch (err) {
      if (err.status !== 404) showError(err);
    }
  }

  async function loadDeliveries() {
    try {
      const hooks = await api("GET", "/v1/webhooks");
      const rows = [];
      for (const hook of hooks) {
        const page = await api("GET", "/v1/webhooks/" + iid(hook.id) + "/deliveries?limit=" + LIST_LIMIT);
        for (const d of page.items) rows.push([hook, d]);
      }
      rows.sort((a, b) => (a[1].created_at < b[1].created_at ? 1 : -1));
      $("deliveries").replaceChildren(
        ...rows.slice(0, LIST_LIMIT).map(([hook, d]) =>
          el(
            "tr",
            { "data-testid": "delivery-row" },
            el("td", {}, hook.url),
            el("td", {}, d.event_type),
            el("td", {}, d.status),
            el("td", {}, d.attempts),
            el("td", {}, d.last_status_code == null ? "" : d.last_status_code),
            el("td", {}, when(d.created_at)),
          ),
        ),
      );
    } catch (err) {
      // A key without the admin scope cannot list webhooks: the section stays empty.
      if (err.status !== 403) showError(err);
    }
  }

  // --- realtime --------------------------------------------------------------------------------
  function openEvents() {
    if (!state.key || state.ws) return;
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/events";
    const ws = new WebSocket(url);
    state.ws = ws;
    setText("live", "connecting to live events…");
    ws.addEventListener("open", () => {
      const hello = { token: state.key };
      if (state.lastEventId) hello.last_event_id = state.lastEventId;
      ws.send(JSON.stringify(hello));
    });
    ws.addEventListener("message", (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch (_) {
        return;
      }
      if (frame.type === "ready") {
        state.wsRetryMs = 500;
        setText("live", "live");
        $("live").setAttribute("data-live", "true");
      } else if (frame.type === "error") {
        setText("live", "live events refused: " + frame.message);
      } else if (typeof frame.type === "string" && frame.type.includes(":")) {
        if (frame.id) state.lastEventId = frame.id;
        onEvent(frame);
      }
    });
    ws.addEventListener("close", (ev) => {
      if (state.ws !== ws) return;
      state.ws = null;
      $("live").setAttribute("data-live", "false");
      if (!state.key) return;
      if (ev.code === 4401) {
        signOut("The API key was refused by the live events.");
        return;
      }
      setText("live", "live events interrupted; reconnecting…");
      setTimeout(openEvents, state.wsRetryMs);
      state.wsRetryMs = Math.min(state.wsRetryMs * 2, RECONNECT_MAX_MS);
    });
  }

  function logEvent(frame) {
    const list = $("events");
    const item = el(
      "li",
      { "data-testid": "event", "data-type": frame.type },
      el("time", { datetime: frame.timestamp || "" }, when(frame.timestamp)),
      " ",
      el("strong", {}, frame.type),
      " ",
      frame.instance_id ? (state.instances.get(frame.instance_id) || {}).name || frame.instance_id : "",
    );
    list.prepend(item);
    while (list.children.length > EVENT_LOG_MAX) list.lastChild.remove();
  }

  function onEvent(frame) {
    logEvent(frame);
    const id = frame.instance_id;
    const data = frame.data || {};
    const selected = id && id === state.selected;
    if (id && !state.instances.has(id)) {
      scheduleRefresh(id); // an instance created elsewhere: its row appears
      return;
    }
    switch (frame.type) {
      case "whatsapp:qr":
        if (selected) {
          hideCode();
          loadQr(id, data.qr, data.index);
        }
        scheduleRefresh(id);
        break;
      case "whatsapp:pairing-code":
        if (selected) {
          clearQr();
          showCode(data.code);
        }
        scheduleRefresh(id);
        break;
      case "whatsapp:connected":
      case "whatsapp:disconnected":
      case "whatsapp:qr-exhausted":
        if (selected) clearQr();
        scheduleRefresh(id);
        break;
      case "whatsapp:message":
      case "whatsapp:message-status":
        if (selected) loadRecent();
        scheduleRefresh(id);
        break;
      default:
        if (id) scheduleRefresh(id);
    }
  }

  // --- wiring ----------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("api-key").value.trim();
      if (key) signIn(key);
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("create-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      createInstance(ev.target);
    });
    $("connect-qr").addEventListener("click", () => connect("qr"));
    $("connect-code").addEventListener("click", () => connect("code"));
    $("disconnect").addEventListener("click", () => lifecycle("disconnect"));
    $("logout").addEventListener("click", () => lifecycle("logout"));
    $("send-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      send(ev.target);
    });
    $("refresh-deliveries").addEventListener("click", loadDeliveries);
    const saved = sessionStorage.getItem(KEY);
    if (saved) signIn(saved);
  });
})();
