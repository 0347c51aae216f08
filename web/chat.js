// The chat in a browser: the same lines and commands as client.py, over a
// WebSocket to the server that served this page (one line per message).
//
// Everything a peer sends is put on the page with textContent (or as a
// text node), never as HTML: "<img src=x onerror=...>" shows as typed.
"use strict";

(function () {
  // What the server's lines look like (protocol.py has their makers).
  const NOTICE = "* ";
  const ERROR = "! ";
  const PRIVATE = "[private] ";
  const SENT = "-> ";              // the copy of a private line I sent
  const NICK_PROMPT = "* Choose a nickname";
  const WELCOME = /^\* Welcome( back)?, (\S+)! You are in the chat\.$/;
  const TOKEN = /^\* Resume token: (\S+) \(/;
  const PARTNER = /^\* Your lines now go to (\S+) only\. Type -all/;
  const EVERYONE = "* Your lines now go to everyone.";
  const HISTORY = /^\* \[history \d\d:\d\d\] /;
  const HISTORY_END = "* End of history.";
  const MESSAGE = /^([^\s:]+): ([\s\S]*)$/;
  const ONLINE = /^\* Online \(\d+\): (.*?)(?: and \d+ more \(type -users\))?$/;
  const JOINED = /^\* (\S+) joined the chat$/;
  const LEFT = /^\* (\S+) (?:left the chat|was (?:kicked|banned) by .*)$/;
  const RENAMED = /^\* (\S+) is now known as (\S+)$/;
  const MY_NEW_NICK = /^\* You are now known as (\S+)\.$/;
  const MANY = /^\* (Joined|Left) \(\d+\): (.*?)(?: and \d+ more)?$/;
  const LOST = /^\* (\S+) lost connection$/;
  const BACK = /^\* (\S+) is back$/;
  const RESUME_REFUSED = "! cannot resume";
  const COMMANDS_HINT = "* Commands: ";
  // Lines after which the chat is over on purpose: no reconnecting.
  const THE_END = ["* Server is shutting down", "! you were kicked by",
                   "! you were banned by", "! connection refused",
                   "! your seat was taken over", "* Goodbye, ",
                   "! timed out waiting for a nickname"];

  // Reconnecting, as client.py does: 1, 2, 4, ... 30 s apart, 5 minutes.
  const FIRST_DELAY = 1000;
  const LONGEST_DELAY = 30000;
  const GIVE_UP = 300000;
  const HISTORY_SIZE = 200;        // input lines kept for Up/Down
  const UTF8 = new TextEncoder();
  const MAX_LINES_SHOWN = 2000;    // older lines leave the page

  const $ = (id) => document.getElementById(id);
  const lines = $("lines");
  const say = $("say");

  const state = {
    socket: null,
    nick: sessionStorage.getItem("chat.nick") || "",
    // The secret that gets the seat back after a drop (the server sends
    // it on joining); kept for this tab only, never shown.
    token: sessionStorage.getItem("chat.token") || "",
    answers: [],        // what to say at the next nickname prompts
    lastError: "",      // the last error line, for the nickname prompt
    hintShown: false,   // the commands hint, shown once per page
    joined: false,
    over: false,        // the chat ended on purpose: do not reconnect
    partner: "",        // "" = everyone
    pending: null,      // my private line shown, waiting for its copy
    users: new Map(),   // nick -> marks ("you, admin")
    lostAt: 0,          // when the connection was lost (ms), 0 if not
    delay: FIRST_DELAY,
    typed: [],          // input history
    recall: 0,          // where Up/Down are in it
    flags: ["-to", "-all", "-users", "-history", "-help", "-exit",
            "-admin", "-resume", "-kick"],
    hidden: ["-admin", "-resume"],  // never kept in the input history
    maxLine: 4096,      // bytes of UTF-8 a line may have (--max-line)
  };

  // The command table and the longest line, from the server
  // (protocol.COMMANDS, --max-line); the values above are only for a
  // server that does not serve them.
  fetch("commands.json").then((r) => r.json()).then((table) => {
    const rows = table.commands.filter((row) => row.flag.startsWith("-"));
    state.flags = rows.map((row) => row.flag);
    state.hidden = rows.filter((row) => row.client === "hide")
      .map((row) => row.flag);
    if (Number.isInteger(table.max_line)) state.maxLine = table.max_line;
    say.dataset.maxBytes = String(state.maxLine);  // the limit in force
  }).catch(() => {});

  // --- The connection --------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/chat`);
    state.socket = socket;
    socket.onmessage = (event) => {
      if (socket === state.socket) receive(String(event.data));
    };
    socket.onclose = () => {
      if (socket === state.socket) closed();
    };
  }

  function send(line) {
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      state.socket.send(line);
      return true;
    }
    return false;
  }

  function closed() {
    state.socket = null;
    setState("offline", "disconnected");
    if (!state.joined) {
      if (!$("join-status").textContent) {
        joinStatus("The connection closed; try again.");
      }
      showJoin();
      return;
    }
    if (state.over || !state.token) {
      local("Disconnected. Reload the page to join again.", "error");
      return;
    }
    const now = Date.now();
    if (!state.lostAt) {
      state.lostAt = now;
      state.delay = FIRST_DELAY;
      local("Connection lost; reconnecting...", "notice");
    }
    if (now - state.lostAt > GIVE_UP) {
      local("Could not reconnect; reload the page to join again.", "error");
      return;
    }
    setState("offline", `reconnecting in ${state.delay / 1000} s`);
    setTimeout(() => {
      state.answers = [`-resume ${state.token}`, state.nick];
      connect();
    }, state.delay);
    state.delay = Math.min(state.delay * 2, LONGEST_DELAY);
  }

  // One line from the server.
  function receive(line) {
    if (line.startsWith(NICK_PROMPT)) {
      if (state.answers.length) {
        send(state.answers.shift());
      } else {
        // Asked again, with nothing left to say (after reconnecting, the
        // nickname is taken now): the user chooses; say why.
        if (state.joined) joinStatus(state.lastError);
        state.joined = false;
        showJoin();
      }
      return;
    }
    if (line.startsWith(ERROR)) state.lastError = line.slice(ERROR.length);
    const token = line.match(TOKEN);
    if (token) {
      state.token = token[1];
      sessionStorage.setItem("chat.token", state.token);
      return;
    }
    const welcome = line.match(WELCOME);
    if (welcome) {
      welcomed(welcome[2], Boolean(welcome[1]));
    } else if (!state.joined) {
      if (line.startsWith(RESUME_REFUSED)) {
        state.token = "";
        sessionStorage.removeItem("chat.token");
      } else if (line.startsWith(ERROR)) {
        joinStatus(line.slice(ERROR.length));
      }
      if (!$("chat-view").hidden) show(line);
      return;
    }
    if (line.startsWith(COMMANDS_HINT)) {
      if (state.hintShown) return;  // once, not again after each reconnect
      state.hintShown = true;
    }
    if (THE_END.some((start) => line.startsWith(start))) {
      state.over = true;
      sessionStorage.removeItem("chat.token");
    }
    notePartner(line);
    noteUsers(line);
    show(line);
  }

  function welcomed(nick, back) {
    const resumed = state.lostAt !== 0;
    state.nick = nick;
    state.joined = true;
    state.lostAt = 0;
    state.answers = [];
    sessionStorage.setItem("chat.nick", nick);
    if (!back) {
      // A new seat: lines go to everyone; the old token is void.
      state.partner = "";
      state.token = "";
      sessionStorage.removeItem("chat.token");
      if (resumed) {
        local("The server did not keep your seat (it may have" +
              " restarted): joined again; what was sent to you" +
              " meanwhile is lost.", "notice");
      }
    }
    $("me").textContent = nick;
    setState("online", "online");
    showPartner();
    $("join-view").hidden = true;
    $("chat-view").hidden = false;
    say.focus();
  }

  // --- What the lines change ---------------------------------------------

  function notePartner(line) {
    if (HISTORY.test(line)) return;
    const to = line.match(PARTNER);
    if (to) state.partner = to[1];
    else if (line === EVERYONE) state.partner = "";
    else return;
    showPartner();
  }

  function noteUsers(line) {
    if (!line.startsWith(NOTICE) || HISTORY.test(line)) return;
    let match;
    if ((match = line.match(ONLINE))) {
      state.users.clear();
      // "alice (you, admin), bob, carol (reconnecting)"
      for (const found of match[1].matchAll(/([^\s,()]+)(?: \(([^)]*)\))?/g)) {
        state.users.set(found[1], found[2] || "");
      }
    } else if ((match = line.match(JOINED)) || (match = line.match(BACK))) {
      state.users.set(match[1], "");
    } else if ((match = line.match(LEFT))) {
      state.users.delete(match[1]);
    } else if ((match = line.match(RENAMED))) {
      const marks = state.users.get(match[1]) || "";
      state.users.delete(match[1]);
      state.users.set(match[2], marks);
      if (state.partner === match[1]) {
        state.partner = match[2];  // my lines follow them
        showPartner();
      }
    } else if ((match = line.match(MY_NEW_NICK))) {
      const marks = state.users.get(state.nick) || "you";
      state.users.delete(state.nick);
      state.nick = match[1];
      state.users.set(state.nick, marks);
      sessionStorage.setItem("chat.nick", state.nick);
      $("me").textContent = state.nick;
    } else if ((match = line.match(LOST))) {
      state.users.set(match[1], "reconnecting");
    } else if ((match = line.match(MANY))) {
      for (const nick of match[2].split(", ")) {
        if (match[1] === "Joined") state.users.set(nick, "");
        else state.users.delete(nick);
      }
    } else {
      return;
    }
    showUsers();
  }

  // --- Showing ------------------------------------------------------------

  // One line, styled as client.py styles it: notices, errors, private
  // lines, history (dim, all of it), the sender's nickname in bold and
  // mine highlighted where someone else mentions it.
  function show(line, extraClass) {
    if (line.startsWith(SENT) && state.pending) {
      // The server's copy of my private line: it went. It takes the
      // typed line's place, as in client.py.
      state.pending.className = "private";
      state.pending.textContent = line;
      state.pending = null;
      return;
    }
    if (line.startsWith(ERROR)) state.pending = null;  // it did not go
    const item = document.createElement("li");
    if (HISTORY.test(line) || line === HISTORY_END) {
      item.className = "history";
      item.textContent = line;
    } else if (line.startsWith(NOTICE)) {
      item.className = "notice";
      item.textContent = line;
    } else if (line.startsWith(ERROR)) {
      item.className = "error";
      item.textContent = line;
    } else if (line.startsWith(SENT)) {
      item.className = "private";
      item.textContent = line;
    } else {
      const isPrivate = line.startsWith(PRIVATE);
      const rest = isPrivate ? line.slice(PRIVATE.length) : line;
      const message = rest.match(MESSAGE);
      if (isPrivate) item.className = "private";
      if (message) {
        const nick = document.createElement("span");
        nick.className = "nick";
        nick.textContent = (isPrivate ? PRIVATE : "") + message[1];
        item.append(nick, ": ");
        const fromMe = message[1].toLowerCase() === state.nick.toLowerCase();
        appendMentions(item, message[2], fromMe ? "" : state.nick);
      } else {
        item.textContent = line;
      }
    }
    if (extraClass) item.classList.add(extraClass);
    addLine(item);
  }

  // ``text`` as text nodes, with ``nick`` (a whole word) in <mark>.
  function appendMentions(parent, text, nick) {
    if (!nick) {
      parent.append(text);
      return;
    }
    const lower = text.toLowerCase();
    const key = nick.toLowerCase();
    const wordChar = /[\p{L}\p{N}_]/u;
    let from = 0;
    let at = lower.indexOf(key);
    while (at >= 0) {
      const end = at + key.length;
      if (!wordChar.test(text.charAt(at - 1) || " ") &&
          !wordChar.test(text.charAt(end) || " ")) {
        parent.append(text.slice(from, at));
        const mark = document.createElement("mark");
        mark.textContent = text.slice(at, end);
        parent.append(mark);
        from = end;
      }
      at = lower.indexOf(key, end);
    }
    parent.append(text.slice(from));
  }

  // A line of the page's own, in the notice or error style.
  function local(text, kind) {
    show((kind === "error" ? ERROR : NOTICE) + text);
  }

  function addLine(item) {
    const atBottom =
      lines.scrollHeight - lines.scrollTop - lines.clientHeight < 40;
    lines.append(item);
    while (lines.childElementCount > MAX_LINES_SHOWN) {
      lines.firstElementChild.remove();
    }
    if (atBottom) lines.scrollTop = lines.scrollHeight;
  }

  function showUsers() {
    const list = $("users");
    list.replaceChildren();
    for (const [nick, marks] of state.users) {
      const item = document.createElement("li");
      item.textContent = nick;
      if (marks) {
        const small = document.createElement("span");
        small.className = "marks";
        small.textContent = ` (${marks})`;
        item.append(small);
      }
      list.append(item);
    }
    $("count").textContent = String(state.users.size);
  }

  function promptText() {
    return state.partner ? `[to ${state.partner}]> ` : "[everyone]> ";
  }

  function showPartner() {
    const prompt = $("prompt");
    prompt.textContent = promptText().trim();
    prompt.classList.toggle("partner", Boolean(state.partner));
  }

  function setState(kind, text) {
    const element = $("state");
    element.className = `state ${kind}`;
    element.textContent = text;
  }

  function joinStatus(text) {
    $("join-status").textContent = text;
  }

  function showJoin() {
    $("chat-view").hidden = true;
    $("join-view").hidden = false;
    $("nick").focus();
  }

  // --- Typing ---------------------------------------------------------------

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const nick = $("nick").value.trim();
    if (!nick) return;
    joinStatus("");
    state.over = false;
    if (state.socket && state.socket.readyState === WebSocket.OPEN) {
      send(nick);  // the server asked again, after a refusal
    } else {
      state.answers = [nick];
      connect();
    }
  });

  $("say-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const line = say.value;
    if (!line.trim()) return;
    const flag = line.trim().split(/\s+/)[0].toLowerCase();
    const hidden = state.hidden.includes(flag);
    const size = UTF8.encode(line).length;
    if (size > state.maxLine) {
      // The server would drop it; it stays in the box, to be shortened.
      local(`(not sent: the line is ${size} bytes, over the server's` +
            ` limit of ${state.maxLine}; shorten it)`, "error");
      return;
    }
    if (!send(line)) {
      local(`(not sent: not connected) ${hidden ? flag : line}`, "error");
      return;
    }
    echo(line, flag, hidden);
    if (!hidden && state.typed[state.typed.length - 1] !== line) {
      state.typed.push(line);
      if (state.typed.length > HISTORY_SIZE) state.typed.shift();
    }
    state.recall = state.typed.length;
    if (flag === "-exit") state.over = true;
    say.value = "";
  });

  // The typed line, as client.py leaves it on the screen: "-to bob hi"
  // reads "[to bob]> hi", a password is starred out.
  function echo(line, flag, hidden) {
    const words = line.trim().split(/\s+/);
    let shown = promptText() + line;
    if (hidden) {
      shown = `${promptText()}${words[0]} ********`;
    } else if (flag === "-to" && words.length > 2) {
      shown = `[to ${words[1]}]> ` +
        line.trim().replace(/^\S+\s+\S+\s+/, "");
    } else if (flag === "-all" && words.length > 1) {
      shown = "[everyone]> " + line.trim().replace(/^\S+\s+/, "");
    }
    const item = document.createElement("li");
    item.className = "mine";
    item.textContent = shown;
    addLine(item);
    // A private line waits for the server's copy (see show()).
    const isPrivate = (flag === "-to" && words.length > 2) ||
      (state.partner !== "" && (flag === "-me" || !flag.startsWith("-")));
    state.pending = isPrivate ? item : null;
  }

  say.addEventListener("keydown", (event) => {
    if (event.key === "ArrowUp" || event.key === "ArrowDown") {
      const step = event.key === "ArrowUp" ? -1 : 1;
      const next = state.recall + step;
      if (next < 0 || next > state.typed.length) return;
      event.preventDefault();
      state.recall = next;
      say.value = state.typed[next] || "";
    } else if (event.key === "Tab" && !event.shiftKey) {
      event.preventDefault();
      complete();
    }
  });

  // Tab: the first word completes as a command's flag, any other word as
  // a nickname; several matches are completed as far as they agree, and
  // listed.
  function complete() {
    const caret = say.selectionStart;
    const before = say.value.slice(0, caret);
    const word = before.match(/\S*$/)[0];
    const start = caret - word.length;
    const first = before.slice(0, start).trim() === "";
    const pool = first && word.startsWith("-") ? state.flags
      : [...state.users.keys()].filter((nick) => nick !== state.nick);
    const lower = word.toLowerCase();
    const found = pool.filter((item) => item.toLowerCase().startsWith(lower));
    if (!found.length) return;
    let common = found[0];
    for (const item of found) {
      while (!item.toLowerCase().startsWith(common.toLowerCase())) {
        common = common.slice(0, -1);
      }
    }
    const replacement = found.length === 1 ? `${found[0]} ` : common;
    if (found.length > 1 && common.length <= word.length) {
      local(found.join("  "), "notice");
    }
    say.value = say.value.slice(0, start) + replacement +
      say.value.slice(caret);
    const end = start + replacement.length;
    say.setSelectionRange(end, end);
  }

  // A reload of the page takes the seat back, as a reconnect does.
  if (state.token && state.nick) {
    state.joined = true;
    state.lostAt = Date.now();
    $("join-view").hidden = true;
    $("chat-view").hidden = false;
    state.answers = [`-resume ${state.token}`, state.nick];
    connect();
  } else if (state.nick) {
    $("nick").value = state.nick;
  }
})();
