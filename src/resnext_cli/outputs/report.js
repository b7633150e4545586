// The report page's script, inlined into the HTML by report.py (its CSP allows only this
// exact text, by hash). Data goes into the page only through textContent, attributes set
// from code, and img.src (always a data: URI the writer made). No innerHTML anywhere.
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("meta").textContent);
  const records = JSON.parse(document.getElementById("records").textContent);
  const grid = document.getElementById("grid");
  const more = document.getElementById("more");
  const filter = document.getElementById("filter");
  const category = document.getElementById("category");
  const search = document.getElementById("search");
  const sort = document.getElementById("sort");
  const count = document.getElementById("count");
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
    r.top.forEach(function (t) {
      const row = el("li", "pred");
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
    return node;
  }

  let view = [];
  let shown = 0;
  let groupSizes = new Map();

  function matches(r) {
    const f = filter.value;
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

  function showMore() {
    const end = Math.min(view.length, shown + pageSize);
    const batch = document.createDocumentFragment();
    const grouped = sort.value === "category";
    for (; shown < end; shown += 1) {
      const r = view[shown];
      if (grouped && (shown === 0 || group(view[shown - 1]) !== group(r))) {
        batch.appendChild(el("h2", "group", group(r) + " (" + groupSizes.get(group(r)) + ")"));
      }
      batch.appendChild(card(r));
    }
    grid.appendChild(batch);
    more.hidden = shown >= view.length;
    more.textContent = "show more (" + (view.length - shown) + " left)";
    count.textContent = "showing " + shown + " of " + view.length +
      (view.length === records.length ? "" : " matching (" + records.length + " in all)");
  }
  function update() {
    view = records.filter(matches).sort(orders[sort.value] || orders.input);
    shown = 0;
    groupSizes = new Map();
    view.forEach(function (r) { groupSizes.set(group(r), (groupSizes.get(group(r)) || 0) + 1); });
    grid.replaceChildren();
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
  update();
  document.body.dataset.ready = "1";
})();
