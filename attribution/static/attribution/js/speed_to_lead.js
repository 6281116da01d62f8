"use strict";
// The speed-to-lead page: per day and per source, the median time from the
// form to each stage (a chart, log scale: seconds and hours side by side)
// with the numbers beside it (medians, 95th percentiles, the SLA share), fed
// by /api/v1/speed-to-lead. Charts are kept in window.speedToLeadCharts by
// canvas id and <body data-speed-loaded> is set once drawn, so a browser test
// can read back what was plotted.
(function () {
  const charts = {};
  window.speedToLeadCharts = charts;
  const status = document.getElementById("stl-status");
  // One colour per stage (Tableau 10): never two stages in one colour.
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"];

  function escape(text) {
    const el = document.createElement("span");
    el.textContent = String(text);
    return el.innerHTML;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const units = [[86400, "d"], [3600, "h"], [60, "min"]];
    for (const [size, unit] of units) {
      if (seconds >= size) return `${(seconds / size).toLocaleString(undefined, { maximumFractionDigits: 1 })} ${unit}`;
    }
    return `${seconds.toLocaleString(undefined, { maximumFractionDigits: 2 })} s`;
  }

  const share = (v) => (v === null || v === undefined ? "—" : `${(v * 100).toLocaleString(undefined, { maximumFractionDigits: 1 })}%`);

  function table(id, head, rows, stages) {
    // Two header rows: each stage over its median and 95th percentile, the SLA over its share and counts.
    const top = [`<th scope="col" rowspan="2">${escape(head)}</th>`, '<th scope="col" rowspan="2">Leads</th>',
                 ...stages.map((s) => `<th scope="colgroup" colspan="2">${escape(s.label)}</th>`),
                 '<th scope="colgroup" colspan="2">First touch within SLA</th>'];
    const sub = [...stages.flatMap(() => ["median", "95th pct."]), "share", "in time"];
    const th = `<tr>${top.join("")}</tr><tr>${sub.map((c) => `<th scope="col">${c}</th>`).join("")}</tr>`;
    const width = sub.length + 2;
    const body = rows.map((r) => {
      const cells = [r.group.leads, ...stages.flatMap((s) => [duration(r.group.stages[s.key].p50_seconds),
                                                              duration(r.group.stages[s.key].p95_seconds)]),
                     share(r.group.sla.share_within), `${r.group.sla.within} of ${r.group.sla.within + r.group.sla.breached}`];
      return `<tr><th scope="row">${escape(r.label)}</th>${cells.map((c) => `<td class="num">${escape(c)}</td>`).join("")}</tr>`;
    });
    document.getElementById(`${id}-table`).innerHTML =
      `<table class="stl-table"><thead>${th}</thead><tbody>${body.join("") || `<tr><td colspan="${width}">No form submissions in this period.</td></tr>`}</tbody></table>`;
  }

  function draw(id, type, rows, stages, head) {
    if (charts[id]) charts[id].destroy();
    const datasets = stages.map((s, i) => ({
      label: `${s.label} (median)`,
      // A log scale has no zero: an instant stage is drawn at 10 ms (the tooltip and the table say 0 s).
      seconds: rows.map((r) => r.group.stages[s.key].p50_seconds),
      data: rows.map((r) => { const v = r.group.stages[s.key].p50_seconds; return v === null ? null : Math.max(v, 0.01); }),
      borderColor: PALETTE[i % PALETTE.length],
      backgroundColor: type === "line" ? PALETTE[i % PALETTE.length] : `${PALETTE[i % PALETTE.length]}cc`,
      spanGaps: true,
    }));
    charts[id] = new Chart(document.getElementById(id), {
      type,
      data: { labels: rows.map((r) => r.label), datasets },
      options: {
        responsive: true, animation: false, aspectRatio: 1.3,
        scales: { y: { type: "logarithmic", title: { display: true, text: "seconds from the form (log scale)" } } },
        plugins: { tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${duration(c.dataset.seconds[c.dataIndex])}` } } },
      },
    });
    table(id, head, rows, stages);
  }

  function totals(body) {
    const t = body.total;
    const items = body.stages.map((s) => {
      const st = t.stages[s.key];
      return `<dt>${escape(s.label)}</dt><dd>${st.reached} of ${t.leads} leads; median ${escape(duration(st.p50_seconds))}, 95th percentile ${escape(duration(st.p95_seconds))}</dd>`;
    });
    items.push(`<dt>First touch within SLA</dt><dd>${escape(share(t.sla.share_within))} (${t.sla.within} within, ${t.sla.breached} breached, ${t.sla.open} open, ${t.sla.no_sla} without an SLA)</dd>`);
    document.getElementById("stl-total").innerHTML = `<h2>${t.leads} leads from ${escape(body.start)} to ${escape(body.end)}</h2><dl>${items.join("")}</dl>`;
  }

  async function get(params) {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
    const resp = await fetch(`/api/v1/speed-to-lead?${q}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    return body;
  }

  async function load(event) {
    if (event) event.preventDefault();
    document.body.removeAttribute("data-speed-loaded");
    const f = new FormData(document.getElementById("stl-filters"));
    const p = { start: f.get("start"), end: f.get("end"), source: f.get("source") };
    status.textContent = "Loading…";
    try {
      const [byDay, bySource] = await Promise.all([get({ ...p, group_by: "day" }), get({ ...p, group_by: "source" })]);
      totals(byDay);
      // Show the range the API chose when none was given (the last 30 days).
      const form = document.getElementById("stl-filters");
      form.elements.start.value = byDay.start;
      form.elements.end.value = byDay.end;
      draw("chart-day", "line", byDay.results.map((r) => ({ label: r.day, group: r })), byDay.stages, "Day (UTC)");
      draw("chart-source", "bar", bySource.results.map((r) => ({ label: r.source_label, group: r })), bySource.stages, "Source");
      status.textContent = "";
      document.body.setAttribute("data-speed-loaded", "1");
    } catch (err) {
      status.textContent = `Could not load: ${err.message}`;
    }
  }

  document.getElementById("stl-filters").addEventListener("submit", load);
  load();
})();
