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

  function duration(ms) {
    var s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + (s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
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
      section: section, status: status, statusText: statusText, captions: captions, quiet: quiet,
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
    document.title = (urgent.length ? "ALERT: " + urgent.join(", ") + " — " : "") +
      (link.state !== "connected" ? "Not live" : on.length ? on.join(", ") : "Quiet") + " — audiocap";
  }

  function renderAll() {
    nodes.forEach(renderNode);
    renderTitle();
    waiting.hidden = nodes.size > 0;
    if (nodes.size === 0) {
      waiting.textContent = link.state === "connected"
        ? "Connected. No listening device has reported in yet" + (config.node ? " (showing only “" + config.node + "”)." : ".")
        : "Waiting for the caption server…";
    }
  }

  function addHistory(e) {
    var entry = {
      id: e.event_id || "",
      label: e.label,
      node: e.node,
      start: e.start,
      end: e.end,
      startMs: parseTime(e.start),
      endMs: parseTime(e.end),
    };
    history.unshift(entry);
    var li = el("li", "entry cls-" + classKey(entry.label));
    li.setAttribute("data-history-entry", "");
    li.setAttribute("data-label", entry.label);
    li.setAttribute("data-node", entry.node);
    li.setAttribute("data-start", entry.start || "");
    li.setAttribute("data-end", entry.end || "");
    if (entry.id) li.setAttribute("data-event-id", entry.id);
    li.appendChild(symbol(entry.label));
    var body = el("div", "entry-body");
    var top = el("p", "entry-top");
    top.appendChild(el("span", "entry-words", words(entry.label)));
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
    historyList.insertBefore(li, historyList.firstChild);
    while (history.length > config.historySize) {
      history.pop();
      historyList.removeChild(historyList.lastChild);
    }
    historyEmpty.hidden = history.length > 0;
  }

  function clearHistory() {
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
    var client = window.mqtt.connect(config.broker, {
      clientId: "audiocap-display-" + Math.random().toString(16).slice(2, 10),
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
    if (!nodeName || (config.node && nodeName !== config.node)) return;
    var kind = parts[1];
    var text = payload ? payload.toString() : "";
    var retained = !!(packet && packet.retain);
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
        if (!retained) announce(name + " is back online.");
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
      // QoS 1 may deliver an end twice, right after the first: it is in the history already.
      var repeat = history.some(function (h) {
        return h.id === (e.event_id || "") && h.label === e.label && h.start === e.start;
      });
      if (!repeat) {
        addHistory(e);
        announce(words(e.label) + " ended" + (nodes.size > 1 ? " in " + name : "") + ".");
      }
    }
    renderNode(n);
    renderTitle();
    waiting.hidden = true;
  }

  function onState(name, label, value) {
    var n = nodeRecord(name);
    if (value === "ON") {
      // Known from the retained state only (e.g. the page opened mid-caption): no start time.
      if (!n.active.has(label)) {
        n.active.set(label, { label: label, id: "", startIso: null, startMs: null, derived: true, seenMs: now(), fresh: false });
      }
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

  // --- Start ------------------------------------------------------------------------

  function start() {
    bindSwitch("opt-flash", "flash");
    bindSwitch("opt-vibrate", "vibrate");
    bindSwitch("opt-scores", "scores", renderAll);
    if (!("vibrate" in navigator)) {
      document.getElementById("opt-vibrate").closest("label").hidden = true;
    }
    document.getElementById("clear-history").addEventListener("click", clearHistory);
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
