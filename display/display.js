/* audiocap caption display.
 *
 * Reads the daemon's MQTT topics over WebSockets (mqtt.js browser build,
 * loaded before this file as the global `mqtt`) and shows:
 *   - the sounds on now, per node (room), very large, with how long each is on;
 *   - the captions that ended, with local start–end times;
 *   - whether each node is online, and whether this page itself is connected.
 *
 * The page keeps a small model (nodes, active captions, history) and updates
 * only the elements that changed, so focus, screen readers and animations are
 * not disturbed by the once-a-second refresh of durations and levels.
 *
 * DOM contract (docs/display.md): [data-active-caption], [data-history-entry],
 * [data-node-status]; extras: [data-connection], [data-scores-t].
 */
(function () {
  "use strict";

  // --- Configuration from the URL ---------------------------------------------------

  var query = new URLSearchParams(window.location.search);
  // Parameters may also follow "#": the fragment never leaves the browser (not in the
  // page request, not in server logs), so it is the place for the password.
  new URLSearchParams(window.location.hash.replace(/^#/, "")).forEach(function (value, key) {
    query.set(key, value);
  });

  function defaultBroker() {
    // The page is normally served by mosquitto's own websockets listener:
    // the broker is the page's origin, ws/wss matching http/https.
    if (window.location.protocol === "http:" || window.location.protocol === "https:") {
      return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host;
    }
    return "";
  }

  function flag(name, fallback) {
    var v = query.get(name);
    if (v === null || v === "") return fallback;
    return !/^(0|false|no|off)$/i.test(v);
  }

  var config = {
    broker: query.get("broker") || defaultBroker(),
    prefix: (query.get("prefix") || "audiocap").replace(/\/+$/, ""),
    node: query.get("node") || "",
    user: query.get("user") || undefined,
    password: query.get("password") || undefined,
    historySize: Math.min(500, Math.max(1, parseInt(query.get("history"), 10) || 50)),
  };

  var RECONNECT_MS = 2000;
  var ANNOUNCE_KEEP = 6;

  // --- How each sound class looks: a symbol (SVG, drawn here) and words ------------

  var SVG_NS = "http://www.w3.org/2000/svg";
  // Shapes on a 48×48 grid; `fill` shapes use the class colour, `stroke` ones a 3.5 px line.
  var SYMBOLS = {
    Speech: [
      ["path", { d: "M9 8h30a5 5 0 0 1 5 5v16a5 5 0 0 1-5 5H23l-10 8v-8H9a5 5 0 0 1-5-5V13a5 5 0 0 1 5-5z", stroke: 1 }],
      ["path", { d: "M13 17h22M13 25h14", stroke: 1 }],
    ],
    Animal: [
      ["ellipse", { cx: 24, cy: 33, rx: 10, ry: 8.5 }],
      ["ellipse", { cx: 10, cy: 21, rx: 4.2, ry: 5.4 }],
      ["ellipse", { cx: 18.5, cy: 11.5, rx: 4.2, ry: 5.6 }],
      ["ellipse", { cx: 29.5, cy: 11.5, rx: 4.2, ry: 5.6 }],
      ["ellipse", { cx: 38, cy: 21, rx: 4.2, ry: 5.4 }],
    ],
    Music: [
      ["ellipse", { cx: 13, cy: 37, rx: 6.5, ry: 5 }],
      ["ellipse", { cx: 35, cy: 33, rx: 6.5, ry: 5 }],
      ["path", { d: "M17.5 7.5 41 3v9.5L17.5 17z" }],
      ["path", { d: "M17.75 36V8M39.25 32V4", stroke: 1 }],
    ],
    Vehicle: [
      ["path", { d: "M4 33v-8l6-3 5-8h17l7 8 5 2v9z", stroke: 1 }],
      ["path", { d: "M16.5 16.5 13 22h11v-5.5zM27.5 16.5V22h9l-4.5-5.5z" }],
      ["circle", { cx: 14, cy: 34, r: 5 }],
      ["circle", { cx: 35, cy: 34, r: 5 }],
    ],
    Alarm: [
      ["path", { d: "M24 5a3 3 0 0 1 3 3v1.6c5.8 1.4 10 6.8 10 13.2v8.2l4 5H7l4-5v-8.2c0-6.4 4.2-11.8 10-13.2V8a3 3 0 0 1 3-3z" }],
      ["circle", { cx: 24, cy: 41.5, r: 3.5 }],
    ],
    "Doorbell or knock": [
      ["path", { d: "M11 44V6a2 2 0 0 1 2-2h22a2 2 0 0 1 2 2v38M6 44h36", stroke: 1 }],
      ["circle", { cx: 30, cy: 25, r: 2.6 }],
    ],
    "Baby crying": [
      ["circle", { cx: 24, cy: 26, r: 15, stroke: 1 }],
      ["path", { d: "M17 21l4 2M31 21l-4 2M24 8c-3-4 2-6 4-3", stroke: 1 }],
      ["ellipse", { cx: 24, cy: 32, rx: 4.5, ry: 3.5 }],
    ],
    "Water running": [
      ["path", { d: "M24 5S10 21 10 30a14 14 0 0 0 28 0C38 21 24 5 24 5z" }],
    ],
    _other: [
      ["path", { d: "M8 19v10M16 13v22M24 7v34M32 13v22M40 19v10", stroke: 1 }],
    ],
  };

  function symbol(label) {
    var shapes = SYMBOLS[label] || SYMBOLS._other;
    var svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 48 48");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "symbol");
    shapes.forEach(function (s) {
      var el = document.createElementNS(SVG_NS, s[0]);
      Object.keys(s[1]).forEach(function (k) {
        if (k !== "stroke") el.setAttribute(k, s[1][k]);
      });
      el.setAttribute("class", s[1].stroke ? "line" : "solid");
      svg.appendChild(el);
    });
    return svg;
  }

  // The words come from the caption text ("[Animal sounds]" -> "Animal sounds").
  var wordsByLabel = { Animal: "Animal sounds" };

  function words(label) {
    return wordsByLabel[label] || label;
  }

  function learnWords(label, caption) {
    if (typeof caption === "string") {
      var w = caption.replace(/^\s*\[(.*)\]\s*$/, "$1").trim();
      if (w) wordsByLabel[label] = w;
    }
  }

  function classKey(label) {
    return SYMBOLS[label] ? label.toLowerCase().replace(/[^a-z0-9]+/g, "-") : "other";
  }

  // --- Small helpers ----------------------------------------------------------------

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function parseTime(iso) {
    var t = iso ? Date.parse(iso) : NaN;
    return isNaN(t) ? null : t;
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function timeEl(iso, ms) {
    var t = el("time", "", clock(ms));
    t.setAttribute("datetime", iso || new Date(ms).toISOString());
    return t;
  }

  // A number and its unit never part at a line break (U+00A0 between them).
  function duration(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + "\u00a0s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + "\u00a0min " + (s % 60) + "\u00a0s";
    return Math.floor(m / 60) + "\u00a0h " + (m % 60) + "\u00a0min";
  }

  // A total for a summary: "2 h 10 min", "35 min", "40 s".
  function roughDuration(ms) {
    var s = Math.round(ms / 1000);
    if (s < 60) return s + "\u00a0s";
    var m = Math.round(s / 60);
    if (m < 60) return m + "\u00a0min";
    return Math.floor(m / 60) + "\u00a0h" + (m % 60 ? " " + (m % 60) + "\u00a0min" : "");
  }

  function now() {
    return Date.now();
  }

  // --- Settings (switches), remembered on this device --------------------------------

  var reducedMotion = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  function stored(name) {
    try {
      return window.localStorage.getItem("audiocap." + name);
    } catch (e) {
      return null;
    }
  }

  function setting(name, fallback) {
    // The URL wins (a kiosk link), then what was chosen on this device, then the default.
    if (query.get(name) !== null) return flag(name, fallback);
    var s = stored(name);
    if (s !== null) return s === "1";
    return fallback;
  }

  var settings = {
    flash: setting("flash", !reducedMotion),
    vibrate: setting("vibrate", !reducedMotion),
    scores: setting("scores", true),
  };

  function bindSwitch(id, name, onChange) {
    var box = document.getElementById(id);
    box.checked = settings[name];
    box.addEventListener("change", function () {
      settings[name] = box.checked;
      try {
        window.localStorage.setItem("audiocap." + name, box.checked ? "1" : "0");
      } catch (e) {
        /* private mode: the choice lasts for this page only */
      }
      if (onChange) onChange();
    });
  }

  // --- The model --------------------------------------------------------------------

  var nodes = new Map(); // name -> node record (see nodeRecord)
  var history = []; // newest first: {id, label, node, start, end, startMs, endMs}
  var link = { state: "connecting", everConnected: false, connectedAt: null, lostAt: null, attempts: 0, error: "" };
  var client = null;
  var clientId = "audiocap-display-" + Math.random().toString(16).slice(2, 10);
  var HISTORY_LEVEL = "_history";
  var historyBase = config.prefix + "/" + HISTORY_LEVEL;
  var responseTopic = historyBase + "/response/" + clientId;
  var openedAt = now();

  function nodeRecord(name) {
    var n = nodes.get(name);
    if (n) return n;
    n = {
      name: name,
      state: null, // "online" | "offline" | null (not reported yet)
      offlineSince: null, // ms, when this page learned it
      offlineBefore: false, // the offline status was retained: it went offline before we looked
      active: new Map(), // label -> {label, id, startIso, startMs, derived, seenMs}
      scores: null,
      scoresT: null,
      ui: null,
    };
    nodes.set(name, n);
    return n;
  }

  // --- Rendering --------------------------------------------------------------------

  var nodesBox = document.getElementById("nodes");
  var waiting = document.getElementById("waiting");
  var historyList = document.getElementById("history");
  var historyEmpty = document.getElementById("history-empty");
  var announceBox = document.getElementById("announce");
  var linkState = document.getElementById("link-state");
  var linkText = document.getElementById("link-text");
  var banner = document.getElementById("banner");
  var bannerTitle = document.getElementById("banner-title");
  var bannerDetail = document.getElementById("banner-detail");
  var nowTitle = document.getElementById("now-title");
  var alertsBox = document.getElementById("alerts");
  var alertList = document.getElementById("alert-list");
  var announceUrgentBox = document.getElementById("announce-urgent");

  function nodeId(name) {
    return "node-" + name.replace(/[^A-Za-z0-9_-]/g, "_");
  }

  function buildNodeUi(n) {
    var section = el("section", "node");
    section.setAttribute("data-node-group", n.name);
    section.setAttribute("aria-labelledby", nodeId(n.name) + "-name");
    var head = el("div", "node-head");
    var name = el("h3", "node-name", n.name);
    name.id = nodeId(n.name) + "-name";
    var status = el("p", "node-status");
    status.setAttribute("data-node-status", "");
    status.setAttribute("data-node", n.name);
    var dot = el("span", "dot");
    dot.setAttribute("aria-hidden", "true");
    var statusText = el("span", "status-text");
    status.appendChild(dot);
    status.appendChild(statusText);
    head.appendChild(name);
    head.appendChild(status);
    var hide = el("button", "button hide-room", "Hide this room");
    hide.type = "button";
    hide.setAttribute("aria-label", "Hide this room: " + n.name + " (offline), on this screen");
    hide.addEventListener("click", function () {
      hideRoom(n.name);
    });
    head.appendChild(hide);
    var captions = el("ul", "captions");
    captions.setAttribute("aria-label", "Sounds on now in " + n.name);
    var quiet = el("p", "quiet", "Quiet — no sounds it knows right now");
    var stale = el("p", "stale");
    var levels = el("div", "levels");
    levels.setAttribute("role", "group");
    levels.setAttribute("aria-label", "What " + n.name + " hears now");
    var levelsTitle = el("p", "levels-title", "What it hears now");
    levelsTitle.setAttribute("aria-hidden", "true");
    levels.appendChild(levelsTitle);
    section.appendChild(head);
    section.appendChild(captions);
    section.appendChild(quiet);
    section.appendChild(stale);
    section.appendChild(levels);
    n.ui = {
      section: section, status: status, statusText: statusText, captions: captions, quiet: quiet, hide: hide,
      stale: stale, levels: levels, levelRows: new Map(), cards: new Map(),
    };
    // Groups in name order, so rooms keep their place on the wall.
    var after = null;
    Array.prototype.some.call(nodesBox.children, function (child) {
      if (child.getAttribute("data-node-group") > n.name) {
        after = child;
        return true;
      }
      return false;
    });
    nodesBox.insertBefore(section, after);
  }

  function renderNode(n) {
    if (!n.ui) buildNodeUi(n);
    var ui = n.ui;
    var online = n.state !== "offline";
    ui.section.classList.toggle("is-offline", !online);
    // A room offline for long (or already offline when the page opened) may be hidden on this screen.
    ui.hide.hidden = online || !(n.offlineBefore || (n.offlineSince !== null && now() - n.offlineSince >= HIDE_AFTER_MS));
    ui.section.hidden = hiddenRooms.indexOf(n.name) >= 0;
    ui.status.setAttribute("data-state", online ? "online" : "offline");
    var text;
    if (online) {
      text = n.state === "online" ? "Listening" : "Listening (status not reported yet)";
    } else if (n.offlineSince === null) {
      text = "Offline";
    } else {
      text = (n.offlineBefore ? "Offline since before " : "Offline since ") + clock(n.offlineSince);
    }
    // Without the broker the page cannot know: it says so.
    ui.statusText.textContent = link.state === "connected" ? text : "Last known: " + text.charAt(0).toLowerCase() + text.slice(1);

    // Cards: exactly the active captions of an online node.
    var want = online ? n.active : new Map();
    ui.cards.forEach(function (card, label) {
      if (!want.has(label)) {
        card.remove();
        ui.cards.delete(label);
      }
    });
    want.forEach(function (a, label) {
      var card = ui.cards.get(label);
      if (!card) {
        card = buildCard(n, a);
        ui.cards.set(label, card);
        // Urgent sounds go first.
        if (a.urgent || urgentLabels[label]) ui.captions.insertBefore(card, ui.captions.firstChild);
        else ui.captions.appendChild(card);
        if (a.fresh && !(a.urgent || urgentLabels[label])) flash(card);
      } else {
        updateCard(card, a);
      }
      a.fresh = false;
    });
    ui.quiet.hidden = !online || want.size > 0;

    // An offline node's last captions are not current: say what it heard, plainly.
    if (!online && n.active.size > 0) {
      var heard = [];
      n.active.forEach(function (a) {
        heard.push(words(a.label));
      });
      ui.stale.textContent = "Not live. Before it went offline it heard: " + heard.join(", ") + ".";
      ui.stale.hidden = false;
    } else if (!online) {
      ui.stale.textContent = "Not live: sounds in this room are not being captioned.";
      ui.stale.hidden = false;
    } else {
      ui.stale.hidden = true;
    }
    renderLevels(n);
  }

  function buildCard(n, a) {
    var card = el("li", "caption cls-" + classKey(a.label) + (a.urgent || urgentLabels[a.label] ? " urgent" : ""));
    card.setAttribute("data-active-caption", "");
    card.setAttribute("data-label", a.label);
    card.setAttribute("data-node", n.name);
    var body = el("div", "caption-body");
    body.appendChild(symbol(a.label));
    var text = el("span", "caption-text");
    text.appendChild(el("span", "words", words(a.label)));
    text.appendChild(el("span", "since"));
    body.appendChild(text);
    card.appendChild(body);
    updateCard(card, a);
    return card;
  }

  function updateCard(card, a) {
    if (a.id) card.setAttribute("data-event-id", a.id);
    card.querySelector(".words").textContent = words(a.label);
    var since = card.querySelector(".since");
    if (a.startMs !== null) {
      since.textContent = "on for " + duration(now() - a.startMs);
      since.title = "since " + clock(a.startMs);
    } else {
      since.textContent = "on since before " + clock(a.seenMs);
    }
  }

  function renderLevels(n) {
    var ui = n.ui;
    var show = settings.scores && n.scores !== null && n.state !== "offline" && link.state === "connected";
    ui.levels.hidden = !show;
    if (!show) return;
    ui.levels.setAttribute("data-scores-t", n.scoresT || "");
    Object.keys(n.scores).forEach(function (label) {
      var v = Number(n.scores[label]);
      if (!isFinite(v)) return;
      var pct = Math.round(Math.min(1, Math.max(0, v)) * 100);
      var row = ui.levelRows.get(label);
      if (!row) {
        row = el("div", "level cls-" + classKey(label));
        var name = el("span", "level-name", label); // the short class name: four fit on one line
        var bar = el("span", "bar");
        bar.setAttribute("aria-hidden", "true");
        bar.appendChild(el("span", "fill"));
        row.appendChild(name);
        row.appendChild(bar);
        row.appendChild(el("span", "level-value"));
        ui.levelRows.set(label, row);
        ui.levels.appendChild(row);
      }
      row.querySelector(".fill").style.width = pct + "%";
      row.querySelector(".level-value").textContent = pct + " %";
    });
    // How loud it is, when the device hears audio (a replay of embeddings has none).
    if (!ui.loudness) {
      ui.loudness = el("p", "loudness");
      ui.levels.appendChild(ui.loudness);
    }
    var db = Number(n.level);
    ui.loudness.hidden = n.level === null || n.level === undefined || !isFinite(db);
    if (!ui.loudness.hidden) ui.loudness.textContent = "Loudness " + Math.round(db) + " dBFS";
  }

  // The tab or window title says what is on now, for a glance at a taskbar.
  function renderTitle() {
    var on = [];
    nodes.forEach(function (n) {
      if (n.state === "offline") return;
      n.active.forEach(function (a) {
        if (on.indexOf(words(a.label)) < 0) on.push(words(a.label));
      });
    });
    var urgent = [];
    alerts.forEach(function (al) {
      if (urgent.indexOf(words(al.label)) < 0) urgent.push(words(al.label));
    });
    // What the alert names is not said again ("ALERT: Alarm — Alarm").
    on = on.filter(function (w) { return urgent.indexOf(w) < 0; });
    var rest = link.state !== "connected" ? "Not live" : on.length ? on.join(", ") : urgent.length ? "" : "Quiet";
    document.title = (urgent.length ? "ALERT: " + urgent.join(", ") + " — " : "") + (rest ? rest + " — " : "") + "audiocap";
  }

  function renderAll() {
    nodes.forEach(renderNode);
    renderTitle();
    renderHiddenRooms();
    waiting.hidden = nodes.size > 0;
    if (nodes.size === 0) {
      waiting.textContent = link.state === "connected"
        ? "Connected. No listening device has reported in yet" + (config.node ? " (showing only “" + config.node + "”)." : ".")
        : "Waiting for the caption server…";
    }
  }

  // One element per past caption, live or from the history service: `listed` maps
  // node + event id to it, so a caption is never listed twice (QoS 1 repeats, a
  // caption both in "While you were away" and live, a catch-up after a gap).
  var listed = new Map();

  function captionKey(node, id) {
    return node + "\n" + id;
  }

  function entryElement(e, tag) {
    var entry = {
      id: e.event_id || "", label: e.label, node: e.node, start: e.start, end: e.end,
      startMs: parseTime(e.start), endMs: parseTime(e.end), urgent: e.urgent === true,
    };
    learnWords(e.label, e.caption);
    var li = el("li", "entry cls-" + classKey(entry.label) + (entry.urgent ? " urgent" : ""));
    li.setAttribute(tag || "data-history-entry", "");
    li.setAttribute("data-label", entry.label);
    li.setAttribute("data-node", entry.node);
    li.setAttribute("data-start", entry.start || "");
    li.setAttribute("data-end", entry.end || "");
    if (entry.id) li.setAttribute("data-event-id", entry.id);
    li.appendChild(symbol(entry.label));
    var body = el("div", "entry-body");
    var top = el("p", "entry-top");
    top.appendChild(el("span", "entry-words", words(entry.label)));
    if (entry.urgent) top.appendChild(el("span", "entry-urgent", "urgent"));
    if (nodes.size > 1 || !config.node) top.appendChild(el("span", "entry-node", entry.node));
    body.appendChild(top);
    var when = el("p", "entry-when");
    if (entry.startMs !== null) when.appendChild(timeEl(entry.start, entry.startMs));
    if (entry.endMs !== null) {
      when.appendChild(document.createTextNode(" – "));
      when.appendChild(timeEl(entry.end, entry.endMs));
      if (entry.startMs !== null) when.appendChild(el("span", "entry-dur", " (" + duration(entry.endMs - entry.startMs) + ")"));
    }
    body.appendChild(when);
    li.appendChild(body);
    entry.li = li;
    return entry;
  }

  // Adds an ended caption to "Earlier", in start order (newest first); false if it is listed already.
  function addHistory(e) {
    var key = captionKey(e.node, e.event_id || "");
    if (e.event_id && listed.has(key)) return false;
    var entry = entryElement(e);
    var at = 0;
    while (at < history.length && entry.startMs !== null && history[at].startMs !== null && history[at].startMs > entry.startMs) at++;
    history.splice(at, 0, entry);
    historyList.insertBefore(entry.li, at + 1 < history.length ? history[at + 1].li : null);
    if (entry.id) listed.set(key, entry.li);
    while (history.length > config.historySize) {
      var gone = history.pop();
      gone.li.remove();
      listed.delete(captionKey(gone.node, gone.id));
    }
    historyEmpty.hidden = history.length > 0;
    return true;
  }

  function clearHistory() {
    history.forEach(function (h) { listed.delete(captionKey(h.node, h.id)); });
    history = [];
    historyList.textContent = "";
    historyEmpty.hidden = false;
    historyEmpty.textContent = "The list was cleared at " + clock(now()) + ".";
  }

  // --- Urgent sounds -----------------------------------------------------------------
  // An urgent caption (the bundle flags alarms, the door, a crying baby) is shown
  // above everything, large, and flashes and vibrates whatever the gentle-effect
  // switches say, until someone acknowledges it or the sound ends. The flash is a
  // slow pulse (one per 1.6 s), far below the three-flashes-a-second limit.

  var urgentLabels = {}; // labels seen with "urgent": true
  var alerts = new Map(); // node + "\n" + label -> {node, label, id, startMs, item}
  var buzzTimer = null;

  function alertKey(node, label) {
    return node + "\n" + label;
  }

  function raiseAlert(n, a) {
    var key = alertKey(n.name, a.label);
    var old = alerts.get(key);
    if (old && old.id === a.id) return; // a QoS 1 repeat
    if (old) old.item.remove();
    var where = nodes.size > 1 || !config.node ? " in " + n.name : "";
    var item = el("li", "alert cls-" + classKey(a.label));
    item.setAttribute("data-alert", "");
    item.setAttribute("data-label", a.label);
    item.setAttribute("data-node", n.name);
    if (a.id) item.setAttribute("data-event-id", a.id);
    var body = el("div", "alert-body");
    body.appendChild(symbol(a.label));
    var text = el("p", "alert-text");
    text.appendChild(el("span", "alert-words", words(a.label)));
    text.appendChild(el("span", "alert-where", (where ? where.slice(1) + " · " : "") +
      "since " + clock(a.startMs !== null ? a.startMs : now())));
    body.appendChild(text);
    var ack = el("button", "button alert-ack", "Acknowledge");
    ack.type = "button";
    ack.setAttribute("aria-label", "Acknowledge " + words(a.label) + where);
    ack.addEventListener("click", function () {
      acknowledge(key);
    });
    body.appendChild(ack);
    item.appendChild(body);
    alertList.insertBefore(item, alertList.firstChild);
    alerts.set(key, { node: n.name, label: a.label, id: a.id, item: item });
    announceUrgent("Alert: " + words(a.label) + where + ".");
    renderAlerts(true);
  }

  function endAlert(node, label) {
    var key = alertKey(node, label);
    var al = alerts.get(key);
    if (!al) return;
    al.item.remove();
    alerts.delete(key);
    renderAlerts(false);
  }

  function acknowledge(key) {
    var al = alerts.get(key);
    if (!al) return;
    var next = al.item.nextElementSibling || al.item.previousElementSibling;
    al.item.remove();
    alerts.delete(key);
    announce(words(al.label) + " acknowledged.");
    renderAlerts(false);
    // Keep the keyboard where it was: on the next alert, else on the sounds on now.
    var target = next && next.querySelector(".alert-ack");
    if (target) target.focus();
    else document.getElementById("now").focus();
  }

  function renderAlerts(raised) {
    alertsBox.hidden = alerts.size === 0;
    document.body.classList.toggle("alerting", alerts.size > 0);
    if (alerts.size === 0) {
      if (buzzTimer !== null) window.clearInterval(buzzTimer);
      buzzTimer = null;
      if (navigator.vibrate) {
        try { navigator.vibrate(0); } catch (e) { /* nothing to stop */ }
      }
      return;
    }
    if (raised) buzz();
    if (buzzTimer === null) buzzTimer = window.setInterval(buzz, 8000);
    renderTitle();
  }

  function buzz() {
    if (!navigator.vibrate) return;
    try {
      navigator.vibrate([400, 200, 400, 200, 400]);
    } catch (e) {
      /* not allowed before the first touch on some browsers */
    }
  }

  function announceUrgent(text) {
    announceUrgentBox.appendChild(el("p", "", text));
    while (announceUrgentBox.children.length > ANNOUNCE_KEEP) announceUrgentBox.removeChild(announceUrgentBox.firstChild);
  }

  function announce(text) {
    announceBox.appendChild(el("p", "", text));
    while (announceBox.children.length > ANNOUNCE_KEEP) announceBox.removeChild(announceBox.firstChild);
  }

  // A gentle cue for people who are not looking: one soft glow (never more than
  // one per caption: far below the three-flashes-a-second limit) and a short buzz.
  function flash(card) {
    if (settings.flash) {
      card.classList.add("flash");
      document.body.classList.remove("glow");
      void document.body.offsetWidth; // restart the animation
      document.body.classList.add("glow");
    }
    if (settings.vibrate && navigator.vibrate) {
      try {
        navigator.vibrate([180, 120, 180]);
      } catch (e) {
        /* not allowed before the first touch on some browsers */
      }
    }
  }

  // --- The connection ----------------------------------------------------------------

  function renderLink() {
    linkState.setAttribute("data-connection", link.state);
    var where = config.broker || "(no broker)";
    if (link.state === "connected") {
      linkText.textContent = "Live — connected since " + clock(link.connectedAt);
      banner.hidden = true;
      nowTitle.textContent = "On now";
      return;
    }
    linkText.textContent = link.state === "connecting" ? "Connecting…" : "Not connected";
    var show = link.everConnected || link.attempts > 0 || link.error || !config.broker;
    banner.hidden = !show;
    nowTitle.textContent = link.everConnected ? "On now (last known, not live)" : "On now";
    if (!config.broker) {
      bannerTitle.textContent = "No caption server given";
      bannerDetail.textContent = "Open this page from the broker (http://BROKER:9001/) or add ?broker=ws://BROKER:9001 to its address.";
      return;
    }
    bannerTitle.textContent = link.everConnected
      ? "Connection lost at " + clock(link.lostAt) + " — captions here are not live"
      : "Cannot reach the caption server";
    var detail = "Trying again every " + RECONNECT_MS / 1000 + " s";
    if (link.attempts > 0) detail += " (attempt " + link.attempts + ")";
    detail += " to " + where + ".";
    if (link.error) detail += " Last error: " + link.error + ".";
    bannerDetail.textContent = detail;
  }

  function topics() {
    var base = config.prefix + "/" + (config.node || "+");
    return {
      status: { topic: base + "/status", qos: 1 },
      events: { topic: base + "/events", qos: 1 },
      scores: { topic: base + "/scores", qos: 0 },
      state: { topic: base + "/state/+", qos: 1 },
      // The history service (docs/history.md): its status, the digests, this page's answers.
      historyStatus: { topic: historyBase + "/status", qos: 1 },
      digest: { topic: historyBase + "/digest/" + (config.node || "+"), qos: 1 },
      answers: { topic: responseTopic, qos: 1 },
    };
  }

  function connect() {
    if (!config.broker) {
      renderLink();
      return;
    }
    if (typeof window.mqtt === "undefined") {
      link.error = "the MQTT library is missing (run: npm ci --prefix display)";
      link.attempts = 1;
      renderLink();
      return;
    }
    client = window.mqtt.connect(config.broker, {
      clientId: clientId,
      protocolVersion: 5, // request/response with the history service
      username: config.user,
      password: config.password,
      clean: true,
      keepalive: 10,
      connectTimeout: 8000,
      reconnectPeriod: RECONNECT_MS,
      reconnectOnConnackError: true,
      resubscribe: false, // we subscribe on every connect ourselves
    });
    client.on("connect", function () {
      link.state = "connected";
      link.everConnected = true;
      link.connectedAt = now();
      link.attempts = 0;
      link.error = "";
      var t = topics();
      var subs = {};
      Object.keys(t).forEach(function (k) {
        subs[t[k].topic] = { qos: t[k].qos };
      });
      client.subscribe(subs, function (err, granted) {
        var refused = (granted || []).filter(function (g) {
          return g.qos === 128;
        });
        if (err || refused.length) {
          link.error = "the server refused the subscription (check the account's read access to " + config.prefix + "/#)";
          announce(link.error);
        }
      });
      renderLink();
      renderAll();
      historyOnConnect();
    });
    client.on("reconnect", function () {
      link.attempts += 1;
      if (link.state !== "connected") renderLink();
    });
    client.on("close", function () {
      if (link.state === "connected") {
        link.state = "lost";
        link.lostAt = now();
        announce("Connection to the caption server lost.");
      } else if (link.state === "connecting") {
        link.attempts = Math.max(link.attempts, 1);
      }
      renderLink();
      renderAll();
    });
    client.on("error", function (err) {
      link.error = describeError(err);
      renderLink();
    });
    client.on("message", onMessage);
  }

  function describeError(err) {
    var msg = (err && err.message) || String(err);
    if (/not authori[sz]ed|bad user ?name or password/i.test(msg)) {
      return "the server refused the login (" + msg + "); check user and password in the page address";
    }
    return msg;
  }

  // --- Messages ---------------------------------------------------------------------

  function onMessage(topic, payload, packet) {
    var base = config.prefix + "/";
    if (topic.indexOf(base) !== 0) return;
    var parts = topic.slice(base.length).split("/");
    var nodeName = parts[0];
    var text = payload ? payload.toString() : "";
    var retained = !!(packet && packet.retain);
    if (nodeName === HISTORY_LEVEL) {
      try {
        onHistoryMessage(parts.slice(1), text, packet);
      } catch (e) {
        if (window.console) console.warn("audiocap display: skipped a message on " + topic + ": " + e);
      }
      return;
    }
    // A node's name never starts with "_" (the daemon strips it): such levels are services.
    if (!nodeName || nodeName.charAt(0) === "_" || (config.node && nodeName !== config.node)) return;
    var kind = parts[1];
    try {
      if (kind === "status" && parts.length === 2) onStatus(nodeName, text.trim(), retained);
      else if (kind === "events" && parts.length === 2) onEvent(nodeName, JSON.parse(text), retained);
      else if (kind === "scores" && parts.length === 2) onScores(nodeName, JSON.parse(text));
      else if (kind === "state" && parts.length === 3) onState(nodeName, parts[2], text.trim());
    } catch (e) {
      // A malformed message is skipped; the page keeps going.
      if (window.console) console.warn("audiocap display: skipped a message on " + topic + ": " + e);
    }
  }

  function onStatus(name, value, retained) {
    if (value === "") {
      forgetRoom(name); // its retained status was cleared: `audiocapd --retire-node`
      return;
    }
    var n = nodeRecord(name);
    if (value === "offline") {
      if (n.state !== "offline") {
        n.offlineSince = now();
        n.offlineBefore = retained;
        if (!retained) announce(name + " went offline: its sounds are not captioned now.");
      }
      n.state = "offline";
    } else if (value === "online") {
      if (n.state === "offline") {
        // A daemon that comes back starts with no caption open.
        n.active.clear();
        if (!retained) {
          announce(name + " is back online.");
          catchUp(n.offlineSince !== null ? n.offlineSince : openedAt, [name]);
        }
        unhideRoom(name);
      }
      n.state = "online";
      n.offlineSince = null;
    } else {
      return;
    }
    renderAll();
  }

  function onEvent(name, e, retained) {
    if (!e || typeof e.label !== "string" || (e.type !== "start" && e.type !== "end")) return;
    e.node = name;
    learnWords(e.label, e.caption);
    var n = nodeRecord(name);
    if (n.state === null) n.state = "online"; // it is publishing
    var a = n.active.get(e.label);
    if (e.type === "start") {
      if (a && a.id === e.event_id) return; // a QoS 1 repeat
      var urgent = e.urgent === true;
      if (urgent) urgentLabels[e.label] = true;
      n.active.set(e.label, {
        label: e.label, id: e.event_id || "", startIso: e.start, startMs: parseTime(e.start),
        derived: false, seenMs: now(), fresh: !retained && !a, urgent: urgent,
      });
      if (urgent && !retained) raiseAlert(n, n.active.get(e.label));
      else if (!a) announce(words(e.label) + " started" + (nodes.size > 1 ? " in " + name : "") + ".");
    } else {
      if (a && (!a.id || a.id === e.event_id)) n.active.delete(e.label);
      endAlert(name, e.label);
      // QoS 1 may deliver an end twice; the history may have listed it already: once only.
      if (addHistory(e)) {
        announce(words(e.label) + " ended" + (nodes.size > 1 ? " in " + name : "") + ".");
        dayAdd(e);
      }
    }
    renderNode(n);
    renderTitle();
    waiting.hidden = true;
  }

  function onState(name, label, value) {
    if (value !== "ON" && value !== "OFF") return; // a cleared state (a retired room) makes no room
    var n = nodeRecord(name);
    if (value === "ON") {
      // Known from the retained state only (e.g. the page opened mid-caption): no start time.
      if (!n.active.has(label)) {
        n.active.set(label, { label: label, id: "", startIso: null, startMs: null, derived: true, seenMs: now(), fresh: false });
      }
      urgentFromHistory(n);
    } else if (value === "OFF") {
      n.active.delete(label);
      endAlert(name, label);
    } else {
      return;
    }
    renderAll();
  }

  function onScores(name, s) {
    if (!s || typeof s.scores !== "object" || s.scores === null) return;
    var n = nodeRecord(name);
    if (n.state === null) n.state = "online";
    n.scores = s.scores;
    n.scoresT = s.t || "";
    n.level = typeof s.level_dbfs === "number" ? s.level_dbfs : null;
    if (n.ui) renderLevels(n);
    else renderAll();
  }

  // A wall display must not go dark: keep the screen on while the page is shown
  // (Screen Wake Lock; browsers offer it on https and localhost only).
  function keepScreenOn() {
    if (!navigator.wakeLock || document.visibilityState !== "visible") return;
    navigator.wakeLock.request("screen").catch(function () {
      /* refused (battery saver, insecure origin): the screen's own settings apply */
    });
  }

  // --- Rooms hidden on this screen ---------------------------------------------------
  // A room offline for long can be hidden (remembered on this device); it comes back
  // by itself when its device is online again.

  var HIDE_AFTER_MS = 10 * 60 * 1000;
  var hiddenRooms = [];
  try {
    hiddenRooms = JSON.parse(stored("hidden." + config.prefix) || "[]").filter(function (x) { return typeof x === "string"; });
  } catch (e) {
    hiddenRooms = [];
  }

  function saveHidden() {
    try {
      window.localStorage.setItem("audiocap.hidden." + config.prefix, JSON.stringify(hiddenRooms));
    } catch (e) {
      /* private mode: for this page only */
    }
  }

  function hideRoom(name) {
    if (hiddenRooms.indexOf(name) < 0) hiddenRooms.push(name);
    saveHidden();
    announce(name + " hidden. Settings lists hidden rooms.");
    renderAll();
    document.getElementById("now").focus();
  }

  // A retired room (docs/daemon.md, "Retiring a node") leaves every screen at once.
  function forgetRoom(name) {
    var n = nodes.get(name);
    if (!n) return;
    n.active.forEach(function (a, label) {
      endAlert(name, label);
    });
    if (n.ui) n.ui.section.remove();
    nodes.delete(name);
    var i = hiddenRooms.indexOf(name);
    if (i >= 0) {
      hiddenRooms.splice(i, 1);
      saveHidden();
    }
    announce(name + " was removed from audiocap.");
    renderAll();
  }

  function unhideRoom(name) {
    var i = hiddenRooms.indexOf(name);
    if (i < 0) return;
    hiddenRooms.splice(i, 1);
    saveHidden();
    renderAll();
  }

  function renderHiddenRooms() {
    var box = document.getElementById("hidden-rooms");
    box.textContent = "";
    box.hidden = hiddenRooms.length === 0;
    if (!hiddenRooms.length) return;
    box.appendChild(el("span", "", "Hidden rooms:"));
    hiddenRooms.forEach(function (name) {
      var b = el("button", "button", "Show " + name);
      b.type = "button";
      b.addEventListener("click", function () {
        unhideRoom(name);
      });
      box.appendChild(b);
    });
  }

  // --- The history service: "While you were away" and "Today" ---------------------------
  // audiocap-history keeps every caption (docs/history.md). The page asks it over MQTT 5
  // request/response (its answers come to this page's own response topic with the
  // correlation data it sent) and reads its retained digest per node.

  var ASK_TIMEOUT_MS = 10000;
  var AWAY_LIMIT = 200;
  var SEEN_EVERY_MS = 15000;
  var seenKey = "seen." + config.prefix + (config.node ? "." + config.node : "");
  var asked = new Map(); // correlation -> callback
  var askSeq = 0;
  var historyState = null; // its retained status: "online" | "offline" | null (not known)
  var awayAsked = false;
  var openUrgent = new Map(); // node -> [urgent captions the history has open]

  function iso(ms) {
    return new Date(ms).toISOString();
  }

  function localMidnight(ms) {
    var d = new Date(ms);
    return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
  }

  function topicName(label) {
    return label.replace(/[^A-Za-z0-9_-]+/g, "_").replace(/^_+|_+$/g, "") || "class";
  }

  function ask(query, done) {
    if (!client || link.state !== "connected") {
      done(null);
      return;
    }
    var corr = clientId + ":" + (++askSeq);
    var timer = window.setTimeout(function () {
      asked.delete(corr);
      done(null);
    }, ASK_TIMEOUT_MS);
    asked.set(corr, function (answer) {
      window.clearTimeout(timer);
      done(answer);
    });
    if (config.node && !query.nodes) query.nodes = [config.node];
    client.publish(historyBase + "/request", JSON.stringify(query),
      { qos: 1, properties: { responseTopic: responseTopic, correlationData: corr } });
  }

  function onHistoryMessage(parts, text, packet) {
    if (parts[0] === "status" && parts.length === 1) {
      var was = historyState;
      historyState = text.trim();
      // Back after being away (or first seen after the page's own questions went unanswered): ask again.
      if (historyState === "online" && (was === "offline" || (was === null && !awayAsked))) historyOnConnect();
    } else if (parts[0] === "digest" && parts.length === 2) {
      onDigest(parts[1], JSON.parse(text));
    } else if (parts[0] === "response") {
      var props = (packet && packet.properties) || {};
      var corr = props.correlationData;
      if (corr && typeof corr !== "string") corr = new TextDecoder().decode(corr);
      var cb = asked.get(corr);
      if (!cb) return; // not ours, or too late
      asked.delete(corr);
      cb(JSON.parse(text));
    }
  }

  // An urgent sound already on when the page opens: the retained state says ON but
  // not that it is urgent; the history's digest does.
  function onDigest(node, d) {
    if (!d || !Array.isArray(d.open) || (config.node && node !== config.node)) return;
    openUrgent.set(node, d.open.filter(function (c) { return c && c.urgent === true && typeof c.label === "string"; }));
    if (d.last_urgent && typeof d.last_urgent.label === "string") urgentLabels[d.last_urgent.label] = true;
    var n = nodes.get(node);
    if (n) urgentFromHistory(n);
  }

  function urgentFromHistory(n) {
    var open = openUrgent.get(n.name) || [];
    if (n.state === "offline" || !open.length) return;
    open.forEach(function (c) {
      urgentLabels[c.label] = true;
      // The card is known from the retained state (keyed by its topic name) or from the start event.
      var key = n.active.has(c.label) ? c.label : n.active.has(topicName(c.label)) ? topicName(c.label) : null;
      if (key === null) return;
      var a = n.active.get(key);
      if (a.id && a.id !== c.event_id) return; // another caption of that class is on now
      n.active.delete(key);
      var fresh = { label: c.label, id: c.event_id, startIso: c.start, startMs: parseTime(c.start), derived: false,
                    seenMs: now(), fresh: false, urgent: true };
      n.active.set(c.label, fresh);
      if (n.ui && n.ui.cards.has(key)) {
        n.ui.cards.get(key).remove();
        n.ui.cards.delete(key);
      }
      raiseAlert(n, fresh);
    });
    renderNode(n);
    renderTitle();
  }

  // --- What this device saw last ----------------------------------------------------------

  function lastSeen() {
    var v = parseInt(stored(seenKey), 10);
    return isFinite(v) && v > 0 && v <= now() ? v : null;
  }

  // Called every few seconds while the page is shown, and with an event when it is hidden or left.
  function markSeen(ev) {
    if (link.state !== "connected" || !awayAsked || (!ev && document.visibilityState === "hidden")) return;
    try {
      window.localStorage.setItem("audiocap." + seenKey, String(now()));
    } catch (e) {
      /* private mode: every opening is a first one */
    }
  }

  function historyOnConnect() {
    if (link.state !== "connected") return;
    if (!awayAsked) {
      showAway();
    } else if (link.lostAt !== null) {
      catchUp(link.lostAt, null); // what the page missed while it was not connected
    }
    loadDay();
  }

  // --- While you were away -------------------------------------------------------------------

  var awayBox = document.getElementById("away");

  function showAway() {
    var seen = lastSeen();
    var since = seen !== null ? seen : localMidnight(openedAt); // a first visit: today so far
    awayAsked = true;
    ask({ q: "captions", since: iso(since), until: iso(Math.max(now(), since + 1)), limit: AWAY_LIMIT }, function (a) {
      if (!a || !a.ok) {
        awayAsked = !!a; // no answer: ask again when the history comes online
        return;
      }
      renderAway(a, since, seen === null);
      markSeen();
    });
  }

  function summaryText(totals) {
    var parts = Object.keys(totals).map(function (label) {
      var t = totals[label];
      // Urgent and short sounds are counted ("Alarm once", "Dog 12 times"), long ones timed ("Music 2 h 10 min").
      var counted = t.n > 0 && (t.urgent > 0 || t.s / t.n < 15);
      return { label: label, s: t.s, text: words(label) + " " + (counted ? (t.n === 1 ? "once" : t.n + " times") : roughDuration(t.s * 1000)) };
    });
    parts.sort(function (a, b) { return b.s - a.s; });
    return parts.map(function (p) { return p.text; }).join(", ");
  }

  function renderAway(a, since, firstVisit) {
    var urgentList = document.getElementById("away-urgent");
    var list = document.getElementById("away-list");
    urgentList.textContent = "";
    list.textContent = "";
    document.getElementById("away-title").textContent = firstVisit ? "Today so far" : "While you were away";
    var sinceEl = document.getElementById("away-since");
    sinceEl.textContent = "";
    sinceEl.appendChild(document.createTextNode(firstVisit ? "Since midnight, " : "Since you last looked, at "));
    sinceEl.appendChild(timeEl(iso(since), since));
    var shown = 0;
    var urgentCount = 0;
    (a.captions || []).forEach(function (c) {
      if (!c || typeof c.label !== "string" || !c.end || typeof c.node !== "string") return; // on now: in "On now"
      if (config.node && c.node !== config.node) return;
      var key = captionKey(c.node, c.event_id || "");
      if (listed.has(key)) return;
      var entry = entryElement(c);
      (c.urgent ? urgentList : list).appendChild(entry.li);
      listed.set(key, entry.li);
      shown += 1;
      if (c.urgent) urgentCount += 1;
    });
    var totals = a.totals || {};
    var summary = summaryText(totals);
    var total = Object.keys(totals).reduce(function (n, k) { return n + (totals[k].n || 0); }, 0);
    document.getElementById("away-summary").textContent = summary ? summary + "." : "Nothing happened.";
    document.getElementById("away-urgent-title").hidden = urgentCount === 0;
    var more = document.getElementById("away-more");
    more.hidden = !a.truncated;
    more.textContent = a.truncated ? "The latest " + shown + " of " + total + " are listed." : "";
    awayBox.hidden = false;
    if (urgentCount) announce("While you were away: " + urgentCount + " urgent. " + summary + ".");
  }

  function closeAway() {
    awayBox.querySelectorAll("[data-history-entry]").forEach(function (li) {
      listed.delete(captionKey(li.getAttribute("data-node"), li.getAttribute("data-event-id") || ""));
    });
    awayBox.hidden = true;
    document.getElementById("now").focus();
  }

  // After a gap (the page's connection, a node offline), what ended meanwhile goes to "Earlier".
  function catchUp(sinceMs, nodeNames) {
    var q = { q: "captions", since: iso(sinceMs), limit: config.historySize };
    if (nodeNames) q.nodes = nodeNames;
    ask(q, function (a) {
      if (!a || !a.ok) return;
      var added = 0;
      (a.captions || []).slice().reverse().forEach(function (c) {
        if (c && typeof c.label === "string" && c.end && typeof c.node === "string" && addHistory(c)) {
          added += 1;
          dayAdd(c);
        }
      });
      if (added) announce(added + " caption" + (added > 1 ? "s" : "") + " from while it was not live added to Earlier.");
    });
  }

  // --- Today: one strip per class over the day ----------------------------------------------

  var day = null; // {from, hours, labels: {label: {n: [], s: [], urgent: []}}, counted: Set}
  var dayBox = document.getElementById("today");
  var dayStrip = document.getElementById("day-strip");
  var dayDetail = document.getElementById("day-detail");
  var marks = new Map(); // label + "\n" + hour -> rect
  var dayTimer = null;

  function loadDay() {
    var from = localMidnight(now());
    var next = localMidnight(from + 36 * 3600 * 1000); // the next midnight (23 or 25 hours on a DST day)
    var hours = Math.round((next - from) / 3600000);
    ask({ q: "hourly", from: iso(from), hours: hours }, function (a) {
      if (!a || !a.ok || typeof a.labels !== "object") return;
      day = { from: from, hours: hours, labels: a.labels, counted: new Set() };
      var focused = document.activeElement && document.activeElement.hasAttribute &&
        document.activeElement.hasAttribute("data-day-mark") ? document.activeElement : null;
      dayStrip.textContent = "";
      marks.clear();
      renderDay();
      if (focused) { // the same mark keeps the keyboard
        var again = marks.get(focused.getAttribute("data-label") + "\n" + focused.getAttribute("data-hour"));
        if (again) {
          allMarks().forEach(function (x) { x.setAttribute("tabindex", x === again ? "0" : "-1"); });
          again.focus();
        }
      }
      if (dayTimer !== null) window.clearTimeout(dayTimer);
      dayTimer = window.setTimeout(loadDay, next - now() + 1000); // a new day, a new strip
    });
  }

  // A caption that ended while the page watched is added to the strip.
  function dayAdd(c) {
    if (!day || !c.event_id) return;
    var key = captionKey(c.node, c.event_id);
    var s0 = parseTime(c.start), s1 = parseTime(c.end);
    if (day.counted.has(key) || s0 === null || s1 === null) return;
    day.counted.add(key);
    var until = day.from + day.hours * 3600000;
    if (s1 < day.from || s0 >= until) return;
    var t = day.labels[c.label];
    if (!t) {
      t = day.labels[c.label] = { n: [], s: [], urgent: [] };
      for (var i = 0; i < day.hours; i++) { t.n.push(0); t.s.push(0); t.urgent.push(0); }
    }
    if (s0 >= day.from) {
      var h0 = Math.floor((s0 - day.from) / 3600000);
      t.n[h0] += 1;
      if (c.urgent === true) t.urgent[h0] += 1;
    }
    for (var a = Math.max(s0, day.from); a < Math.min(s1, until);) {
      var h = Math.floor((a - day.from) / 3600000);
      var edge = Math.min(s1, until, day.from + (h + 1) * 3600000);
      t.s[h] += (edge - a) / 1000;
      a = edge;
    }
    renderDay();
  }

  function hourLabel(h) {
    return new Date(day.from + h * 3600000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }

  function markText(label, h, t) {
    var parts = [words(label) + ", " + hourLabel(h) + " to " + hourLabel(h + 1)];
    if (t.n[h]) parts.push(t.n[h] === 1 ? "once" : t.n[h] + " times");
    if (t.s[h] >= 1) parts.push(roughDuration(t.s[h] * 1000) + " on");
    if (t.urgent[h]) parts.push(t.urgent[h] + " urgent");
    return parts.join(", ");
  }

  function renderDay() {
    if (!day) return;
    // Urgent classes first (known from a live caption, the digest, or an urgent one today), then by name.
    function rank(label) {
      var t = day.labels[label];
      return urgentLabels[label] || (t && t.urgent.some(function (u) { return u > 0; })) ? 0 : 1;
    }
    var labels = Object.keys(day.labels).sort(function (a, b) {
      return rank(a) - rank(b) || a.localeCompare(b);
    });
    dayBox.hidden = false;
    document.getElementById("day-empty").hidden = labels.length > 0;
    var axis = document.getElementById("day-axis");
    if (!axis.childElementCount) {
      for (var q = 0; q <= 4; q++) {
        var tick = el("span", "tick", hourLabel(Math.round(q * day.hours / 4)));
        tick.style.left = (100 * q / 4) + "%";
        axis.appendChild(tick);
      }
    }
    labels.forEach(function (label) {
      var t = day.labels[label];
      var row = dayStrip.querySelector('[data-day-row="' + CSS.escape(label) + '"]');
      if (!row) {
        row = el("div", "day-row cls-" + classKey(label));
        row.setAttribute("data-day-row", label);
        row.setAttribute("role", "group");
        row.setAttribute("aria-label", words(label) + " today");
        var name = el("p", "day-name");
        name.appendChild(symbol(label));
        name.appendChild(el("span", "", words(label)));
        row.appendChild(name);
        var svg = document.createElementNS(SVG_NS, "svg");
        svg.setAttribute("class", "day-svg");
        svg.setAttribute("viewBox", "0 0 " + day.hours * 10 + " 10");
        svg.setAttribute("preserveAspectRatio", "none");
        var bg = document.createElementNS(SVG_NS, "rect");
        bg.setAttribute("class", "day-bg");
        bg.setAttribute("x", 0); bg.setAttribute("y", 0);
        bg.setAttribute("width", day.hours * 10); bg.setAttribute("height", 10);
        svg.appendChild(bg);
        row.appendChild(svg);
        // Keep the rows in order: urgent classes first, then by name.
        var before = null;
        Array.prototype.some.call(dayStrip.children, function (other) {
          var ol = other.getAttribute("data-day-row");
          var cmp = rank(ol) - rank(label) || ol.localeCompare(label);
          if (cmp > 0) { before = other; return true; }
          return false;
        });
        dayStrip.insertBefore(row, before);
      }
      var svgEl = row.querySelector("svg.day-svg");
      for (var h = 0; h < day.hours; h++) {
        var key = label + "\n" + h;
        var on = t.n[h] > 0 || t.s[h] >= 1;
        var m = marks.get(key);
        if (!on) continue;
        if (!m) {
          m = document.createElementNS(SVG_NS, "rect");
          m.setAttribute("class", "day-mark");
          m.setAttribute("data-day-mark", "");
          m.setAttribute("data-label", label);
          m.setAttribute("data-hour", String(h));
          m.setAttribute("data-from", iso(day.from + h * 3600000));
          m.setAttribute("role", "button");
          m.setAttribute("tabindex", "-1");
          m.setAttribute("x", h * 10 + 0.6);
          m.setAttribute("width", 8.8);
          m.addEventListener("click", openMark);
          m.addEventListener("keydown", markKey);
          svgEl.appendChild(m);
          marks.set(key, m);
        }
        // Taller for more time on; a short sound is still plainly seen.
        var height = 4 + 6 * Math.min(1, t.s[h] / 1800);
        m.setAttribute("y", 10 - height);
        m.setAttribute("height", height);
        m.classList.toggle("urgent", t.urgent[h] > 0);
        if (t.urgent[h] > 0) m.setAttribute("data-urgent", String(t.urgent[h]));
        m.setAttribute("aria-label", markText(label, h, t));
      }
    });
    // One tab stop for the whole strip; the arrow keys move between marks.
    var all = allMarks();
    if (all.length && !all.some(function (m) { return m.getAttribute("tabindex") === "0"; })) all[0].setAttribute("tabindex", "0");
  }

  function allMarks() {
    return Array.prototype.slice.call(dayStrip.querySelectorAll("[data-day-mark]")).sort(function (a, b) {
      var ra = a.closest(".day-row"), rb = b.closest(".day-row");
      if (ra !== rb) return ra.compareDocumentPosition(rb) & Node.DOCUMENT_POSITION_FOLLOWING ? -1 : 1;
      return Number(a.getAttribute("data-hour")) - Number(b.getAttribute("data-hour"));
    });
  }

  function markKey(ev) {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      openMark(ev);
      return;
    }
    var all = allMarks();
    var i = all.indexOf(ev.currentTarget);
    var j = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: all.length - 1 }[ev.key];
    if (j === undefined || j < 0 || j >= all.length) return;
    ev.preventDefault();
    all[i].setAttribute("tabindex", "-1");
    all[j].setAttribute("tabindex", "0");
    all[j].focus();
  }

  function openMark(ev) {
    var m = ev.currentTarget;
    var label = m.getAttribute("data-label");
    var h = Number(m.getAttribute("data-hour"));
    allMarks().forEach(function (x) { x.setAttribute("tabindex", x === m ? "0" : "-1"); });
    var from = day.from + h * 3600000;
    ask({ q: "captions", since: iso(from), until: iso(from + 3600000), labels: [label], limit: 50 }, function (a) {
      dayDetail.textContent = "";
      var title = el("h3", "day-detail-title", markText(label, h, day.labels[label]));
      dayDetail.appendChild(title);
      if (!a || !a.ok) {
        dayDetail.appendChild(el("p", "empty", "The history did not answer; try again."));
        announce("The history did not answer.");
        return;
      }
      var list = el("ol", "history-list");
      a.captions.forEach(function (c) {
        if (c && typeof c.label === "string" && typeof c.node === "string") list.appendChild(entryElement(c, "data-day-entry").li);
      });
      dayDetail.appendChild(list);
      announce(title.textContent + ": " + list.childElementCount + " listed below the strip.");
      if (a.truncated) dayDetail.appendChild(el("p", "away-more", "The latest " + a.captions.length + " are listed."));
    });
  }

  // --- Start ------------------------------------------------------------------------

  function start() {
    bindSwitch("opt-flash", "flash");
    bindSwitch("opt-vibrate", "vibrate");
    bindSwitch("opt-scores", "scores", renderAll);
    if (!("vibrate" in navigator)) {
      document.getElementById("opt-vibrate").closest("label").hidden = true;
    }
    document.getElementById("clear-history").addEventListener("click", clearHistory);
    document.getElementById("away-done").addEventListener("click", closeAway);
    // This device's "last looked": while the page is shown and live, and when it is left.
    window.setInterval(markSeen, SEEN_EVERY_MS);
    document.addEventListener("visibilitychange", markSeen);
    window.addEventListener("pagehide", markSeen);
    // The skip link moves focus without replacing the address's fragment (it may hold the login).
    document.querySelector(".skip").addEventListener("click", function (ev) {
      ev.preventDefault();
      document.getElementById("now").focus();
    });
    var fs = document.getElementById("fullscreen");
    if (document.documentElement.requestFullscreen) {
      fs.addEventListener("click", function () {
        if (document.fullscreenElement) document.exitFullscreen();
        else document.documentElement.requestFullscreen().catch(function () {});
      });
      document.addEventListener("fullscreenchange", function () {
        fs.textContent = document.fullscreenElement ? "Leave full screen" : "Full screen";
      });
    } else {
      fs.hidden = true;
    }
    document.getElementById("about").textContent =
      "Captions from " + (config.broker || "?") + ", topics " + config.prefix + "/" + (config.node || "+") + "/…";
    renderLink();
    renderAll();
    keepScreenOn();
    document.addEventListener("visibilitychange", keepScreenOn); // the lock ends when the page is hidden
    // Durations tick once a second; nothing else is redrawn.
    window.setInterval(function () {
      nodes.forEach(function (n) {
        if (!n.ui) return;
        n.ui.cards.forEach(function (card, label) {
          var a = n.active.get(label);
          if (a) updateCard(card, a);
        });
      });
    }, 1000);
    connect();
  }

  start();
})();
