// The report page's script, inlined into the HTML by report.py (its CSP allows only this
// exact text, by hash). Data goes into the page only through textContent, attributes set
// from code, and img.src (always a data: URI the writer made). No innerHTML anywhere.
// Review mode: a person accepts, corrects or skips each classified card, keyboard first;
// decisions are kept in localStorage under the report's identity and exported as JSON Lines.
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("meta").textContent);
  const records = JSON.parse(document.getElementById("records").textContent);
  const reviewData = JSON.parse(document.getElementById("review").textContent);
  const grid = document.getElementById("grid");
  const more = document.getElementById("more");
  const filter = document.getElementById("filter");
  const category = document.getElementById("category");
  const search = document.getElementById("search");
  const sort = document.getElementById("sort");
  const count = document.getElementById("count");
  const progress = document.getElementById("progress");
  const saved = document.getElementById("saved");
  const reviewMode = document.getElementById("review-mode");
  const relabelBox = document.getElementById("relabel");
  const relabelInput = document.getElementById("relabel-input");
  const suggestions = document.getElementById("suggestions");
  const pageSize = meta.pageSize || 200;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function pct(p) { return (100 * p).toFixed(1) + "%"; }
  function top1(r) { return r.top && r.top.length ? r.top[0] : null; }
  function topCategory(r) { return r.cats && r.cats.length ? r.cats[0] : null; }
  function confidence(r) { const t = top1(r); return t ? t[1] : -1; }
  function byCount(counts) {
    return Array.from(counts.entries())
      .sort(function (a, b) { return b[1] - a[1] || (a[0] < b[0] ? -1 : 1); });
  }

  const labels = new Map();
  const categories = new Map();
  let failed = 0, uncertain = 0;
  records.forEach(function (r, i) {
    r.order = i;
    const names = (r.top || []).concat(r.cats || []).map(function (t) { return t[0]; });
    r.haystack = [r.input].concat(names).join("\n").toLowerCase();
    if (r.error) { failed += 1; return; }
    if (r.uncertain) uncertain += 1;
    const label = top1(r)[0];
    labels.set(label, (labels.get(label) || 0) + 1);
    const cat = topCategory(r);
    if (cat) categories.set(cat[0], (categories.get(cat[0]) || 0) + 1);
  });

  const parts = [records.length + " images", (records.length - failed) + " classified"];
  if (failed) parts.push(failed + " failed");
  if (meta.context && meta.context.min_probability) {
    parts.push(uncertain + " under " + pct(Number(meta.context.min_probability)));
  }
  Object.keys(meta.context || {}).forEach(function (key) {
    if (key !== "min_probability") parts.push(key + ": " + meta.context[key]);
  });
  document.getElementById("stats").textContent = parts.join(" \u00b7 ");

  function option(select, value, text) {
    const node = el("option", "", text);
    node.value = value;
    select.appendChild(node);
  }
  option(filter, ":unreviewed", "not reviewed yet");
  option(filter, ":changed", "changed by me");
  if (uncertain) option(filter, ":uncertain", "uncertain (" + uncertain + ")");
  if (failed) option(filter, ":failed", "failed (" + failed + ")");
  byCount(labels).forEach(function (e) { option(filter, "=" + e[0], e[0] + " (" + e[1] + ")"); });

  // Records without categories leave the page as it was: no category control, no grouping.
  const categoryRank = new Map();
  if (categories.size) {
    document.getElementById("category-control").hidden = false;
    byCount(categories).forEach(function (e, rank) {
      categoryRank.set(e[0], rank);
      option(category, "=" + e[0], e[0] + " (" + e[1] + ")");
    });
    option(sort, "category", "by category");
    search.placeholder = "file name, label or category";
  }

  function card(r) {
    const node = el("article", "card");
    node.dataset.order = String(r.order);
    const thumb = el("div", "thumb");
    if (r.thumb) {
      const img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = "";
      img.width = r.thumb.w;
      img.height = r.thumb.h;
      img.src = r.thumb.src.indexOf("data:image/") === 0 ? r.thumb.src : "";
      thumb.appendChild(img);
    } else {
      thumb.textContent = r.error ? "\u2715" : "no preview";
    }
    node.appendChild(thumb);
    // The file name in bold; its folder (or URL) below, cut at the left when long.
    const cut = Math.max(r.input.lastIndexOf("/"), r.input.lastIndexOf("\\")) + 1;
    const name = el("div", "name", r.input.slice(cut) || r.input);
    node.title = r.path || r.input;
    node.appendChild(name);
    if (cut > 0 && cut < r.input.length) {
      const dir = el("div", "dir");
      dir.appendChild(el("span", "", r.input.slice(0, cut)));
      node.appendChild(dir);
    }
    if (r.error) {
      node.classList.add("failed");
      node.appendChild(el("span", "badge", r.error.type));
      node.appendChild(el("p", "error", r.error.message));
      return node;
    }
    if (r.uncertain) {
      node.classList.add("uncertain");
      node.appendChild(el("span", "badge", "uncertain"));
    }
    const cat = topCategory(r);
    if (cat) {
      const line = el("div", "cat");
      line.title = r.cats.map(function (c) { return c[0] + " " + pct(c[1]); }).join(", ");
      line.appendChild(el("span", "category", cat[0]));
      line.appendChild(el("span", "pct", pct(cat[1])));
      node.appendChild(line);
    }
    const list = el("ol", "preds");
    r.top.forEach(function (t, i) {
      const row = el("li", "pred");
      row.dataset.pick = String(i);
      if (i < 9) row.appendChild(el("span", "key", String(i + 1)));
      const label = el("span", "label", t[0]);
      label.title = t[0];
      row.appendChild(label);
      row.appendChild(el("span", "pct", pct(t[1])));
      const bar = el("span", "bar");
      const fill = el("span");
      fill.style.width = Math.max(0, Math.min(100, 100 * t[1])).toFixed(1) + "%";
      bar.appendChild(fill);
      row.appendChild(bar);
      list.appendChild(row);
    });
    node.appendChild(list);
    const actions = el("div", "review");
    [["accept", "accept", "a"], ["skip", "skip", "s"], ["relabel", "relabel\u2026", "/"]]
      .forEach(function (a) {
        const button = el("button", "", a[1]);
        button.title = a[1] + " (key " + a[2] + ")";
        button.type = "button";
        button.dataset.act = a[0];
        actions.appendChild(button);
      });
    actions.appendChild(el("span", "status"));
    node.appendChild(actions);
    paint(node, r);
    return node;
  }

  // -- review -------------------------------------------------------------------------------
  // A decision: {r: "a" (accepted) | "c" (corrected) | "s" (skipped), l: chosen label or null}.
  const KINDS = { a: "accepted", c: "corrected", s: "skipped" };
  const storeKey = "resnext-review:" + String(reviewData.id);
  const decisions = new Map();
  const undoStack = [];
  let reviewable = 0, reviewed = 0, changed = 0;
  records.forEach(function (r) { if (!r.error) reviewable += 1; });

  let storage = null;
  try {
    storage = window.localStorage;
    storage.getItem(storeKey);
  } catch {
    storage = null;
  }
  // What is stored is read as data from anywhere: only well-formed decisions for this page.
  function load() {
    let stored = null;
    try {
      stored = JSON.parse(storage ? storage.getItem(storeKey) || "null" : "null");
    } catch {
      stored = null;
    }
    if (!stored || typeof stored !== "object" || typeof stored.d !== "object" || !stored.d) return;
    Object.keys(stored.d).forEach(function (key) {
      const i = Number(key), d = stored.d[key];
      const r = records[i];
      if (!r || r.error || String(i) !== key || !Array.isArray(d) || !KINDS[d[0]]) return;
      if (d[0] === "s" ? d[1] !== null : typeof d[1] !== "string" || !d[1]) return;
      count1(decide1(r, d[0] === "s" ? { r: "s", l: null } : choice(r, d[1])), 1);
    });
  }
  function save() {
    if (!storage) return;
    const d = {};
    decisions.forEach(function (v, k) { d[k] = [v.r, v.l]; });
    try {
      if (decisions.size) storage.setItem(storeKey, JSON.stringify({ v: 1, d: d }));
      else storage.removeItem(storeKey);
      say(saved, "");
    } catch (e) {
      say(saved, "not saved in this browser (" + e.name + "): export to keep them");
    }
  }
  // Saved once per task however many decisions it made, and before the page goes away.
  let saving = false;
  function saveSoon() {
    if (saving) return;
    saving = true;
    setTimeout(function () { saving = false; save(); }, 0);
  }
  window.addEventListener("pagehide", function () { if (saving) save(); });
  function decide1(r, d) {
    if (d) decisions.set(r.order, d);
    else decisions.delete(r.order);
    return d;
  }
  function count1(d, sign) {
    if (!d) return;
    reviewed += sign;
    if (d.r === "c") changed += sign;
  }
  // Text set only when it changes: a new text node lays the page out again.
  function say(node, text) { if (node.textContent !== text) node.textContent = text; }
  function fmt(n) { return n.toLocaleString("en-US"); }
  function progressLine() {
    say(progress, fmt(reviewed) + " of " + fmt(reviewable) + " reviewed, " +
      fmt(changed) + " changed");
  }
  // How a decision shows on its card: a class, the chosen row marked, a status line.
  function paint(node, r) {
    const d = decisions.get(r.order);
    node.classList.remove("accepted", "corrected", "skipped");
    const status = node.querySelector(".status");
    const rows = node.querySelectorAll(".pred");
    rows.forEach(function (row) { row.classList.remove("chosen"); });
    if (!d) {
      say(status, "");
      return;
    }
    node.classList.add(KINDS[d.r]);
    if (d.r === "s") {
      status.textContent = "skipped";
      return;
    }
    r.top.forEach(function (t, i) { if (t[0] === d.l) rows[i].classList.add("chosen"); });
    status.textContent = d.r === "a" ? "\u2713 accepted" : "\u2192 " + d.l;
  }
  // Record a decision for r (null: none), remember the one before for undo, and show it.
  function decide(r, d) {
    if (!r || r.error) return;
    const before = decisions.get(r.order) || null;
    undoStack.push({ r: r, d: before });
    setDecision(r, d);
  }
  function setDecision(r, d) {
    count1(decisions.get(r.order), -1);
    count1(decide1(r, d), 1);
    const node = cards.get(r.order);
    if (node) paint(node, r);
    progressLine();
    saveSoon();
  }
  function choice(r, label) {
    return { r: label === top1(r)[0] ? "a" : "c", l: label };
  }

  let cards = new Map();
  let current = -1;
  function currentRecord() { return current >= 0 ? view[current] : null; }
  // Make the card at view position pos the current one (showing more cards as needed).
  function move(pos) {
    if (!view.length) return;
    pos = Math.max(0, Math.min(view.length - 1, pos));
    while (shown <= pos) showMore();
    const old = current >= 0 && view[current] ? cards.get(view[current].order) : null;
    if (old) {
      old.classList.remove("current");
      old.removeAttribute("aria-current");
    }
    current = pos;
    const node = cards.get(view[pos].order);
    node.classList.add("current");
    node.setAttribute("aria-current", "true");
    document.body.dataset.current = String(view[pos].order);
    scrollSoon();
  }
  // Scrolled to once a frame, so a burst of keys lays the page out once, not once a key.
  let scrolling = false;
  function scrollSoon() {
    if (scrolling || !document.body.dataset.ready) return;
    scrolling = true;
    requestAnimationFrame(function () {
      scrolling = false;
      const r = currentRecord(), node = r ? cards.get(r.order) : null;
      if (node) node.scrollIntoView({ block: "nearest" });
    });
  }
  function next() { if (current < view.length - 1) move(current + 1); }
  function act(r, what, pick) {
    if (!r || r.error) return;
    if (what === "accept") decide(r, choice(r, top1(r)[0]));
    else if (what === "skip") decide(r, { r: "s", l: null });
    else if (what === "pick" && r.top[pick]) decide(r, choice(r, r.top[pick][0]));
    else return;
    next();
  }
  function undo() {
    const last = undoStack.pop();
    if (!last) return;
    setDecision(last.r, last.d);
    const pos = view.indexOf(last.r);
    if (pos >= 0) move(pos);
  }

  // The names the relabel box suggests: the model's labels and categories (as the writer
  // embedded them), then any other label or category in the records. Its own list, not a
  // <datalist>: Chromium restyles the whole page when an input with a list takes focus.
  let names = null;
  function allNames() {
    if (names) return names;
    const set = new Set((reviewData.labels || []).map(String));
    labels.forEach(function (n, label) { set.add(label); });
    categories.forEach(function (n, cat) { set.add(cat); });
    names = Array.from(set).map(function (name) { return [name, name.toLowerCase()]; });
    return names;
  }
  let suggested = [], selected = -1;
  function suggest() {
    const q = relabelInput.value.trim().toLowerCase();
    const first = [], then = [];
    allNames().forEach(function (n) {
      const at = n[1].indexOf(q);
      if (at === 0) first.push(n[0]);
      else if (at > 0) then.push(n[0]);
    });
    suggested = first.concat(then).slice(0, 8);
    selected = -1;
    suggestions.replaceChildren();
    suggested.forEach(function (name, i) {
      const item = el("li", "", name);
      item.dataset.i = String(i);
      item.setAttribute("role", "option");
      suggestions.appendChild(item);
    });
  }
  function select(i) {
    const m = suggested.length + 1;  // the suggestions, and none (-1): round and round
    selected = (((i + 1) % m) + m) % m - 1;
    Array.from(suggestions.children).forEach(function (item, j) {
      item.classList.toggle("selected", j === selected);
      item.setAttribute("aria-selected", String(j === selected));
    });
  }
  let relabelling = null;
  function openRelabel(r) {
    if (!r || r.error) return;
    relabelling = r;
    document.getElementById("relabel-name").textContent = r.input;
    const d = decisions.get(r.order);
    relabelInput.value = d && d.l ? d.l : "";
    suggest();
    relabelBox.hidden = false;
    relabelInput.focus();
  }
  function closeRelabel() {
    relabelBox.hidden = true;
    relabelling = null;
    relabelInput.blur();
  }
  function commitRelabel() {
    const r = relabelling;
    const label = selected >= 0 ? suggested[selected] : relabelInput.value.trim();
    if (!r || !label) return;
    closeRelabel();
    decide(r, choice(r, label));
    const pos = view.indexOf(r);
    if (pos >= 0) move(pos + 1 < view.length ? pos + 1 : pos);
  }
  relabelInput.addEventListener("keydown", function (e) {
    if (e.key === "Enter") commitRelabel();
    else if (e.key === "Escape") closeRelabel();
    else if (e.key === "ArrowDown") select(selected + 1);
    else if (e.key === "ArrowUp") select(selected - 1);
    else return;
    e.preventDefault();
  });
  relabelInput.addEventListener("input", suggest);
  // mousedown would take the focus from the input first: keep it there, then take the click
  suggestions.addEventListener("mousedown", function (e) { e.preventDefault(); });
  suggestions.addEventListener("click", function (e) {
    const item = e.target.closest("li");
    if (!item) return;
    select(Number(item.dataset.i));
    commitRelabel();
  });
  document.getElementById("undo").addEventListener("click", undo);
  document.getElementById("relabel-ok").addEventListener("click", commitRelabel);
  document.getElementById("relabel-cancel").addEventListener("click", closeRelabel);

  function setReviewMode() {
    document.body.classList.toggle("reading", !reviewMode.checked);
    if (!reviewMode.checked) closeRelabel();
  }
  reviewMode.addEventListener("change", setReviewMode);

  const keys = {
    "ArrowRight": function () { next(); }, "ArrowDown": function () { next(); },
    "j": function () { next(); },
    "ArrowLeft": function () { move(current - 1); }, "ArrowUp": function () { move(current - 1); },
    "k": function () { move(current - 1); },
    "a": function () { act(currentRecord(), "accept"); },
    "s": function () { act(currentRecord(), "skip"); },
    "u": undo,
    "/": function () { openRelabel(currentRecord()); },
  };
  document.addEventListener("keydown", function (e) {
    if (!reviewMode.checked || e.ctrlKey || e.metaKey || e.altKey) return;
    // Keys typed into a field are the field's; Escape leaves it. A button or a checkbox
    // keeps Enter and space, and lets the review keys through.
    const t = e.target;
    const clickable = t && (t.tagName === "BUTTON" || (t.tagName === "INPUT" && t.type === "checkbox"));
    if (t && !clickable && (t.isContentEditable || /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName))) {
      if (e.key === "Escape") t.blur();
      return;
    }
    if (clickable && (e.key === "Enter" || e.key === " ")) return;
    const digit = /^[1-9]$/.test(e.key) ? Number(e.key) : 0;
    if (digit) act(currentRecord(), "pick", digit - 1);
    else if (Object.prototype.hasOwnProperty.call(keys, e.key)) keys[e.key]();
    else return;
    e.preventDefault();
  });
  grid.addEventListener("click", function (e) {
    const node = e.target.closest(".card");
    if (!node || !reviewMode.checked) return;
    const pos = Number(node.dataset.pos);
    if (pos !== current) move(pos);
    const r = view[pos];
    const button = e.target.closest("button[data-act]");
    const row = e.target.closest(".pred");
    if (button && button.dataset.act === "relabel") openRelabel(r);
    else if (button) act(r, button.dataset.act);
    else if (row) act(r, "pick", Number(row.dataset.pick));
  });

  // The export: one JSON line per classified image, in input order. size and mtime_ns are
  // whole numbers written as the digits the page holds (a JS number would round them).
  function jsonString(s) {
    return JSON.stringify(String(s)).replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029");
  }
  function exportText() {
    const lines = [];
    records.forEach(function (r) {
      if (r.error) return;
      const d = decisions.get(r.order);
      let line = "{\"input\":" + jsonString(r.input);
      if (typeof r.path === "string") line += ",\"path\":" + jsonString(r.path);
      if (Array.isArray(r.file) && r.file.every(function (n) { return /^-?\d+$/.test(n); })) {
        line += ",\"size\":" + r.file[0] + ",\"mtime_ns\":" + r.file[1];
      }
      line += ",\"model_label\":" + jsonString(top1(r)[0]) +
        ",\"label\":" + (d && d.l !== null ? jsonString(d.l) : "null") +
        ",\"reviewed\":" + (d ? "\"" + KINDS[d.r] + "\"" : "null") + "}\n";
      lines.push(line);
    });
    return lines.join("");
  }
  function exportName() {
    let name;
    try {
      name = decodeURIComponent(window.location.pathname.split("/").pop() || "");
    } catch {
      name = "";
    }
    return (name.replace(/\.html?$/i, "") || "report") + ".reviewed.jsonl";
  }
  document.getElementById("export").addEventListener("click", function () {
    const blob = new Blob([exportText()], { type: "application/x-ndjson" });
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = exportName();
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(link.href); }, 60000);
  });
  document.getElementById("clear").addEventListener("click", function () {
    if (!decisions.size) return;
    if (!window.confirm("Clear your " + decisions.size + " decisions on this report?")) return;
    decisions.clear();
    undoStack.length = 0;
    reviewed = changed = 0;
    save();
    progressLine();
    const r = currentRecord();
    update();
    move(r ? Math.max(0, view.indexOf(r)) : 0);
  });
  if (!storage) saved.textContent = "this browser keeps no decisions here: export to keep them";
  load();

  let view = [];
  let shown = 0;
  let groupSizes = new Map();

  function matches(r) {
    const f = filter.value;
    if (f === ":unreviewed" && (r.error || decisions.has(r.order))) return false;
    if (f === ":changed" && !(decisions.has(r.order) && decisions.get(r.order).r === "c")) {
      return false;
    }
    if (f === ":failed" && !r.error) return false;
    if (f === ":uncertain" && !r.uncertain) return false;
    if (f.charAt(0) === "=" && (r.error || top1(r)[0] !== f.slice(1))) return false;
    const c = category.value;
    if (c && (!topCategory(r) || topCategory(r)[0] !== c.slice(1))) return false;
    const q = search.value.trim().toLowerCase();
    return !q || r.haystack.indexOf(q) !== -1;
  }
  // The group a card is shown under when sorted by category: its top category, if any.
  function group(r) {
    const cat = topCategory(r);
    return cat ? cat[0] : r.error ? "failed" : "no category";
  }
  function groupRank(r) {
    const cat = topCategory(r);
    return cat ? categoryRank.get(cat[0]) : r.error ? categoryRank.size + 1 : categoryRank.size;
  }
  const orders = {
    "input": function (a, b) { return a.order - b.order; },
    "confidence-desc": function (a, b) {
      return confidence(b) - confidence(a) || a.order - b.order;
    },
    "confidence-asc": function (a, b) {
      // failed inputs have no confidence: keep them last either way
      const ca = a.error ? 2 : confidence(a), cb = b.error ? 2 : confidence(b);
      return ca - cb || a.order - b.order;
    },
    "name": function (a, b) {
      return a.input < b.input ? -1 : a.input > b.input ? 1 : a.order - b.order;
    },
    // Largest category first (as in its filter), most probable within it.
    "category": function (a, b) {
      const ca = topCategory(a), cb = topCategory(b);
      return groupRank(a) - groupRank(b) ||
        (cb ? cb[1] : -1) - (ca ? ca[1] : -1) || a.order - b.order;
    },
  };

  // Cards go into blocks of CHUNK, each its own grid that the browser lays out and paints
  // only near the screen: a change to one card never lays out 10,000 of them again. 120 is
  // a whole number of rows at 1 to 6, 8, 10 or 12 columns.
  const CHUNK = 120;
  let chunk = null, inChunk = 0;
  function place(node) {
    if (!chunk || inChunk >= CHUNK) {
      chunk = el("div", "chunk");
      grid.appendChild(chunk);
      inChunk = 0;
    }
    chunk.appendChild(node);
    inChunk += 1;
  }
  function showMore() {
    const end = Math.min(view.length, shown + pageSize);
    const grouped = sort.value === "category";
    for (; shown < end; shown += 1) {
      const r = view[shown];
      if (grouped && (shown === 0 || group(view[shown - 1]) !== group(r))) {
        place(el("h2", "group", group(r) + " (" + groupSizes.get(group(r)) + ")"));
      }
      const node = card(r);
      node.dataset.pos = String(shown);
      cards.set(r.order, node);
      place(node);
    }
    more.hidden = shown >= view.length;
    more.textContent = "show more (" + (view.length - shown) + " left)";
    count.textContent = "showing " + shown + " of " + view.length +
      (view.length === records.length ? "" : " matching (" + records.length + " in all)");
  }
  function update() {
    view = records.filter(matches).sort(orders[sort.value] || orders.input);
    shown = 0;
    cards = new Map();
    current = -1;
    groupSizes = new Map();
    view.forEach(function (r) { groupSizes.set(group(r), (groupSizes.get(group(r)) || 0) + 1); });
    grid.replaceChildren();
    chunk = null;
    grid.dataset.matches = String(view.length);
    grid.dataset.total = String(records.length);
    if (!view.length) grid.appendChild(el("p", "empty", "no image matches"));
    showMore();
  }

  filter.addEventListener("change", update);
  category.addEventListener("change", update);
  sort.addEventListener("change", update);
  search.addEventListener("input", update);
  more.addEventListener("click", showMore);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver(function (entries) {
      const seen = entries.some(function (e) { return e.isIntersecting; });
      if (seen && shown < view.length) showMore();
    }, { rootMargin: "600px" }).observe(more);
  }

  // Controls can be set from the URL: ?label=NAME, ?category=NAME, ?show=failed|uncertain,
  // ?q=TEXT, ?sort=KEY. A label or category this report lacks is offered with a count of 0.
  const params = new URLSearchParams(window.location.search);
  function choose(select, value, text) {
    const known = Array.from(select.options).some(function (o) { return o.value === value; });
    if (!known && text !== undefined) option(select, value, text + " (0)");
    if (known || text !== undefined) select.value = value;
  }
  if (params.has("label")) choose(filter, "=" + params.get("label"), params.get("label"));
  if (params.has("show")) choose(filter, ":" + params.get("show"), params.get("show"));
  if (params.has("category") && categories.size) {
    choose(category, "=" + params.get("category"), params.get("category"));
  }
  if (params.has("sort")) choose(sort, params.get("sort"));
  if (params.has("q")) search.value = params.get("q");
  if (params.get("review") === "0") reviewMode.checked = false;
  setReviewMode();
  progressLine();
  update();
  // Start where the review stopped: the first card without a decision.
  if (reviewMode.checked) {
    move(Math.max(0, view.findIndex(function (r) { return !r.error && !decisions.has(r.order); })));
  }
  document.body.dataset.ready = "1";
})();
