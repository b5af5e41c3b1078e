// The chat page's client: one WebSocket per tab, reconnected with backoff, an outbox for what
// is typed while offline. Text goes into the page only through textContent, never as HTML.
"use strict";
(() => {
  const MAX_LOG = 500;            // lines kept in the page; older ones are dropped
  const BACKOFF_FIRST = 500;      // ms before the first retry, doubled per failure...
  const BACKOFF_CAP = 15000;      // ...up to this; each wait is drawn from [half, all] of it
  const STABLE = 5000;            // a connection open this long resets the backoff
  const CONNECT_TIMEOUT = 10000;  // a handshake not done by then is given up and retried
  const PING_AFTER = 15000;       // silence after which the page pings the server...
  const DEAD_AFTER = 30000;       // ...and after which it takes the connection for dead
  const REFUSED = 1008;           // the server's "pick another name": no automatic retry

  const $ = (id) => document.getElementById(id);
  const log = $("log"), status = $("status"), retry = $("retry"), input = $("text");
  const naming = $("naming"), nameInput = $("name"), nameProblem = $("name-problem"), hint = $("hint");

  // The page is …/room/<segment>; the socket is …/chat/<segment>, resolved against the page's
  // own URL so a mount prefix stays, and ws:/wss: follow http:/https:.
  const segment = location.pathname.slice(location.pathname.lastIndexOf("/") + 1);
  let room = segment;
  try { room = decodeURIComponent(segment); } catch (e) { /* shown as typed */ }
  function socketURL(name) {
    const url = new URL("../chat/" + segment, location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.search = new URLSearchParams({ name }).toString();
    url.hash = "";
    return url.href;
  }

  let name = sessionStorage.getItem("chat-name");
  let ws = null;            // the current socket; events of older ones are ignored
  let welcomed = false;     // the server has said welcome on ws: sends may go
  let attempt = 0;          // failures since the last stable connection
  let openedAt = 0;
  let lastHeard = 0;
  let timers = [];
  const outbox = new Map(); // id -> {text, item}: sent or waiting, not yet seen back from the server
  const seen = new Set();   // the server's ids of the messages shown, so a replay shows each once
  const MAX_SEEN = 2000;

  function later(fn, ms, repeat) {
    const t = repeat ? setInterval(fn, ms) : setTimeout(fn, ms);
    timers.push(t);
  }
  function clearTimers() {
    for (const t of timers) { clearTimeout(t); clearInterval(t); }
    timers = [];
  }

  let statusText = "";
  function setStatus(state, text) {
    status.dataset.state = state;
    document.body.dataset.state = state;
    statusText = text;
    showStatus();
  }
  function showStatus() {
    const waiting = outbox.size;
    status.textContent = waiting && status.dataset.state !== "online" ? `${statusText} · ${waiting} unsent` : statusText;
  }

  // Lines in the log.

  function stamp(li, time) {
    const t = document.createElement("time");
    const when = new Date(time || Date.now());
    t.dateTime = when.toISOString();
    t.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    t.title = when.toLocaleString();
    li.prepend(t);
  }
  function append(li) {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    log.append(li);
    while (log.childElementCount > MAX_LOG) log.firstElementChild.remove();
    if (atBottom || li.classList.contains("mine")) log.scrollTop = log.scrollHeight;
  }
  function notice(text, time, trouble) {
    const li = document.createElement("li");
    li.className = trouble ? "notice trouble" : "notice";
    li.textContent = text;
    stamp(li, time);
    append(li);
    return li;
  }
  function message(who, text, time, mine) {
    const li = document.createElement("li");
    li.className = mine ? "message mine" : "message";
    const w = document.createElement("span");
    w.className = "who";
    w.textContent = who;
    const t = document.createElement("span");
    t.className = "text";
    t.textContent = text;
    li.append(w, t);
    stamp(li, time);
    append(li);
    return li;
  }
  function setItemState(item, text) {
    let s = item.querySelector(".state");
    if (!s) {
      s = document.createElement("span");
      s.className = "state";
      item.append(s);
    }
    s.textContent = text;
  }

  // The outbox: a message stays in it, shown as pending, until the server sends it back.

  function newId() {
    const bytes = crypto.getRandomValues(new Uint8Array(12)); // randomUUID needs a secure context
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  function transmit(id) {
    const entry = outbox.get(id);
    if (!entry) return;
    if (ws && welcomed && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "say", id, text: entry.text }));
      setItemState(entry.item, "sending…");
    } else {
      setItemState(entry.item, "not sent yet: goes when back online");
    }
  }
  function flush() {
    for (const id of outbox.keys()) transmit(id);
  }

  $("say").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) {
      showHint("Type a message first.");
      return;
    }
    hideHint();
    const id = newId();
    const item = message(name, text, Date.now(), true);
    item.classList.add("pending");
    outbox.set(id, { text, item });
    input.value = "";
    transmit(id);
    showStatus();
  });
  input.addEventListener("input", hideHint);
  function showHint(text) { hint.textContent = text; hint.hidden = false; }
  function hideHint() { hint.hidden = true; }

  // What the server says.

  function received(m) {
    if (seen.has(m.mid)) return;
    seen.add(m.mid);
    if (seen.size > MAX_SEEN) seen.delete(seen.values().next().value);
    const mine = outbox.get(m.id);
    if (mine) {
      outbox.delete(m.id);
      showStatus();
      mine.item.classList.remove("pending");
      mine.item.querySelector(".state")?.remove();
      mine.item.querySelector("time").remove();
      stamp(mine.item, m.time);
    } else {
      message(m.name, m.text, m.time, false);
    }
  }

  function handle(data) {
    let m;
    try { m = JSON.parse(data); } catch (e) { return; }
    switch (m.type) {
      case "welcome": {
        welcomed = true;
        openedAt = Date.now();
        retry.hidden = true;
        room = m.room;
        showRoom();
        $("me").textContent = `as ${m.name}`;
        const back = attempt > 0;
        if (back) notice(`back online in #${m.room} as ${m.name}`, m.time);
        // What was said while away; and ours that arrived though the socket died before the
        // server's echo did, which must not be sent again.
        for (const r of m.recent || []) received(r);
        if (!back) notice(`you joined #${m.room} as ${m.name}`, m.time);
        setStatus("online", "online");
        flush();
        break;
      }
      case "joined":
        notice(`${m.name} joined`, m.time);
        break;
      case "left":
        notice(`${m.name} left`, m.time);
        break;
      case "message":
        received(m);
        break;
      case "error": {
        const mine = outbox.get(m.id);
        if (mine) {
          outbox.delete(m.id);
          showStatus();
          mine.item.classList.replace("pending", "failed");
          setItemState(mine.item, `not sent: ${m.text}`);
        } else {
          notice(`server: ${m.text}`, m.time, true);
        }
        break;
      }
    }
  }

  // The connection.

  function connect() {
    clearTimers();
    if (!name) return askName();
    welcomed = false;
    setStatus(attempt ? "reconnecting" : "connecting", attempt ? `reconnecting (try ${attempt + 1})…` : "connecting…");
    let sock;
    try {
      sock = new WebSocket(socketURL(name));
    } catch (e) {
      return lost(null, 0, String(e));
    }
    ws = sock;
    later(() => { if (!welcomed) drop(sock, "no answer from the server"); }, CONNECT_TIMEOUT);
    sock.onmessage = (event) => {
      if (sock !== ws) return;
      lastHeard = Date.now();
      handle(event.data);
    };
    sock.onopen = () => {
      if (sock !== ws) return;
      lastHeard = Date.now();
      later(() => {
        const quiet = Date.now() - lastHeard;
        if (quiet >= DEAD_AFTER) drop(sock, "the server stopped answering");
        else if (quiet >= PING_AFTER && sock.readyState === WebSocket.OPEN) sock.send('{"type":"ping"}');
      }, PING_AFTER / 3, true);
    };
    sock.onclose = (event) => lost(sock, event.code, event.reason);
  }

  // Give up on a socket now, without waiting for a close handshake that may never come.
  function drop(sock, why) {
    if (sock !== ws) return;
    sock.onclose = sock.onmessage = sock.onopen = null;
    try { sock.close(); } catch (e) { /* already closing */ }
    lost(sock, 0, why);
  }

  function lost(sock, code, reason) {
    if (sock !== ws) return;
    ws = null;
    const wasOnline = welcomed;
    welcomed = false;
    clearTimers();
    if (openedAt && Date.now() - openedAt >= STABLE) attempt = 0;
    openedAt = 0;
    for (const entry of outbox.values()) setItemState(entry.item, "not sent yet: goes when back online");
    if (code === REFUSED) {
      retry.hidden = true;
      notice(`the server refused the name: ${reason}`, 0, true);
      setStatus("refused", "not joined");
      return askName(reason);
    }
    if (wasOnline) {
      notice(`disconnected${reason ? ` (${reason})` : code === 1001 ? " (server going away)" : ""}`, 0, true);
    }
    schedule();
  }

  function schedule() {
    const ceiling = Math.min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** attempt);
    const wait = ceiling / 2 + Math.random() * ceiling / 2;
    attempt += 1;
    const due = Date.now() + wait;
    const tick = () => setStatus("offline", `offline · retrying in ${Math.max(1, Math.ceil((due - Date.now()) / 1000))} s`);
    tick();
    retry.hidden = false;
    later(tick, 1000, true);
    later(connect, wait);
  }

  const waiting = () => !ws && name && naming.hidden; // offline, and not for want of a name
  retry.addEventListener("click", () => { if (waiting()) connect(); });
  // The network came back (a phone leaving a tunnel): no point waiting out the backoff.
  window.addEventListener("online", () => { if (waiting()) connect(); });
  // A tab in the background has its timers slowed to a minute; a phone may have slept with the
  // socket dead and nobody told. Coming back into view: retry now, or check the socket now.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    if (waiting()) connect();
    else if (ws && welcomed && Date.now() - lastHeard >= PING_AFTER) ws.send('{"type":"ping"}');
  });
  window.addEventListener("beforeunload", (event) => {
    if (outbox.size) event.preventDefault(); // the browser asks before dropping unsent messages
  });

  // The name.

  function showRoom() {
    $("room").textContent = `#${room}`;
    $("naming-room").textContent = `#${room}`;
    document.title = `#${room} · crowtwist chat`;
  }
  function askName(problem) {
    input.disabled = true;
    $("rename").hidden = true;
    nameInput.value = name || localStorage.getItem("chat-name") || "";
    nameProblem.textContent = problem || "";
    nameProblem.hidden = !problem;
    naming.hidden = false;
    nameInput.focus();
  }
  naming.addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = nameInput.value.trim().replace(/\s+/g, " ");
    if (!chosen) {
      nameProblem.textContent = "Type a name first.";
      nameProblem.hidden = false;
      return;
    }
    name = chosen;
    sessionStorage.setItem("chat-name", name);  // this tab keeps it across reloads
    localStorage.setItem("chat-name", name);    // the next tab suggests it
    naming.hidden = true;
    input.disabled = false;
    $("rename").hidden = false;
    input.focus();
    attempt = 0;
    connect();
  });
  $("rename").addEventListener("click", () => {
    const sock = ws;
    ws = null;
    welcomed = false;
    clearTimers();
    if (sock) {
      sock.onclose = sock.onmessage = sock.onopen = null;
      sock.close(1000, "changing name");
    }
    retry.hidden = true;
    setStatus("offline", "choosing a name");
    askName();
  });

  showRoom();
  if (name) {
    input.disabled = false;
    $("rename").hidden = false;
    connect();
  } else {
    setStatus("offline", "choosing a name");
    askName();
  }
})();
