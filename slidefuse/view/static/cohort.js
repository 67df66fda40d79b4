// The cohort table: click a header to sort by it (again to reverse); type to filter rows; pick a status.
(function () {
  "use strict";
  const table = document.getElementById("cohort");
  const body = table.tBodies[0];
  const filter = document.getElementById("filter");
  const status = document.getElementById("status");
  let sortCol = -1, sortDir = 1;

  function value(row, col) {
    const cell = row.cells[col];
    const v = cell.dataset.v !== undefined ? cell.dataset.v : cell.textContent;
    const n = parseFloat(v);
    return v !== "" && !isNaN(n) && String(n) === String(parseFloat(v)) ? n : v.toLowerCase();
  }

  table.tHead.addEventListener("click", function (ev) {
    const th = ev.target.closest("th");
    if (!th) { return; }
    const col = Number(th.dataset.col);
    sortDir = col === sortCol ? -sortDir : 1;
    sortCol = col;
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = value(a, col), y = value(b, col);
      if (typeof x === typeof y) { return (x < y ? -1 : x > y ? 1 : 0) * sortDir; }
      return (typeof x === "number" ? -1 : 1) * sortDir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.from(table.tHead.rows[0].cells).forEach(function (c) { c.className = ""; });
    th.className = sortDir > 0 ? "asc" : "desc";
  });

  function apply() {
    const text = filter.value.toLowerCase(), st = status.value;
    Array.from(body.rows).forEach(function (r) {
      const ok = (!text || r.textContent.toLowerCase().includes(text)) && (!st || r.dataset.status === st);
      r.hidden = !ok;
    });
  }
  filter.addEventListener("input", apply);
  status.addEventListener("change", apply);
})();
