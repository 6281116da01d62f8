"use strict";
// Charts for the attribution dashboard, fed by the public report API (the
// same endpoints and JSON external dashboards read). Each chart is kept in
// window.attributionCharts by canvas id, and <body data-attribution-loaded>
// is set once all are drawn, so a browser test can read back what was plotted.
// Codes (channels, models, stages) are shown by their labels (the
// #att-labels JSON the page carries); every series has its own colour (no
// palette wrap-around: twelve models side by side); and every chart has a
// table of the same numbers under it (#<canvas id>-table).
(function () {
  const charts = {};
  window.attributionCharts = charts;
  const status = document.getElementById("att-status");
  const names = JSON.parse(document.getElementById("att-labels").textContent);
  // Twelve distinguishable colours (Tableau 10 and two more), one per series.
  const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                   "#9c755f", "#bab0ac", "#2f4b7c", "#17becf"];
  window.attributionPalette = PALETTE;
  const label = (kind, code) => (names[kind] && names[kind][code]) || code;

  function table(id, labels, datasets) {
    const holder = document.getElementById(`${id}-table`);
    const fmt = (v) => (v === null || v === undefined ? "—" : Number(v).toLocaleString(undefined, { maximumFractionDigits: 2 }));
    const head = `<tr><th scope="col"></th>${datasets.map((d) => `<th scope="col">${escape(d.label)}</th>`).join("")}</tr>`;
    const rows = labels.map((l, i) => `<tr><th scope="row">${escape(l)}</th>${datasets.map((d) => `<td class="num">${fmt(d.data[i])}</td>`).join("")}</tr>`);
    holder.innerHTML = `<table class="att-table"><thead>${head}</thead><tbody>${rows.join("") || '<tr><td>No data for these filters.</td></tr>'}</tbody></table>`;
  }

  function escape(text) {
    const el = document.createElement("span");
    el.textContent = String(text);
    return el.innerHTML;
  }

  async function get(path, params) {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
    const resp = await fetch(`/api/v1/attribution/${path}?${q}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    return body;
  }

  function draw(id, type, labels, datasets, options) {
    if (charts[id]) charts[id].destroy();
    datasets.forEach((d, i) => {
      const colour = PALETTE[i % PALETTE.length];
      d.backgroundColor = type === "line" ? colour : `${colour}cc`;
      d.borderColor = colour;
    });
    charts[id] = new Chart(document.getElementById(id), {
      type, data: { labels, datasets }, options: { responsive: true, animation: false, ...(options || {}) },
    });
    table(id, labels, datasets);
  }

  async function load(event) {
    if (event) event.preventDefault();
    document.body.removeAttribute("data-attribution-loaded");
    const f = new FormData(document.getElementById("att-filters"));
    const p = { model: f.get("model"), start: f.get("start"), end: f.get("end"), currency: (f.get("currency") || "").trim().toUpperCase() };
    status.textContent = "Loading…";
    try {
      const [byChannel, byCampaign, byMonth, compare, pipeline, fc, accuracy] = await Promise.all([
        get("report", { ...p, group_by: "channel" }),
        get("report", { ...p, group_by: "campaign" }),
        get("report", { ...p, group_by: "month" }),
        get("compare", { group_by: "channel", start: p.start, end: p.end, currency: p.currency }),
        get("pipeline", { start: p.start, end: p.end }),
        get("forecast", { currency: p.currency }),
        get("forecast/accuracy", {}),
      ]);
      // Which currency the amounts are in, the rate dates used, and what had no rate.
      const cur = byChannel.currency;
      const money = [byChannel.converted
        ? `Amounts in ${cur}, converted at each deal's close-day rate (creation day while open)` +
          (byChannel.rate_date_first ? `; rates dated ${byChannel.rate_date_first} to ${byChannel.rate_date_last}` : "")
        : `Only deals and spend in ${cur}, unconverted`];
      const missing = [...new Set([...byChannel.unconverted_currencies, ...fc.unconverted_currencies, ...pipeline.unconverted_currencies])];
      if (missing.length) money.push(`left out for want of a rate: ${missing.join(", ")}`);
      document.getElementById("att-money").textContent = money.join("; ") + ".";
      const ch = byChannel.results;
      draw("chart-channel", "bar", ch.map((r) => label("channels", r.group)), [{ label: `Revenue, ${cur} (${label("models", p.model)})`, data: ch.map((r) => +r.attributed_revenue) }]);
      const cmp = compare.results;
      const models = cmp.length ? Object.keys(cmp[0].revenue) : [];
      draw("chart-compare", "bar", cmp.map((r) => label("channels", r.group)), models.map((m) => ({ label: label("models", m), data: cmp.map((r) => +r.revenue[m]) })));
      const cam = byCampaign.results;
      draw("chart-spend", "bar", cam.map((r) => r.group), [
        { label: "Spend", data: cam.map((r) => +(r.spend || 0)) },
        { label: "Attributed revenue", data: cam.map((r) => +r.attributed_revenue) },
      ]);
      const mon = byMonth.results;
      draw("chart-month", "line", mon.map((r) => r.group), [
        { label: "Revenue", data: mon.map((r) => +r.attributed_revenue) },
        { label: "Pipeline", data: mon.map((r) => +r.attributed_pipeline) },
      ]);
      const funnel = pipeline.lifecycle_funnel;
      draw("chart-funnel", "bar", funnel.map((r) => label("stages", r.stage)), [{ label: "Leads that reached the stage", data: funnel.map((r) => r.reached) }],
        { indexAxis: "y" });
      const st = pipeline.stages;
      draw("chart-velocity", "bar", st.map((r) => r.name || r.stage), [
        { label: "Average days in stage", data: st.map((r) => r.average_days) },
        { label: "Median days in stage", data: st.map((r) => r.median_days) },
      ]);
      const fm = fc.by_month;
      draw("chart-forecast-month", "bar", fm.map((r) => r.month), [
        { label: `Weighted, ${fc.currency}`, data: fm.map((r) => +r.weighted) },
        { label: `Commit (${fc.commit_probability}%+), ${fc.currency}`, data: fm.map((r) => +r.commit) },
        { label: `Open pipeline, ${fc.currency}`, data: fm.map((r) => +r.pipeline) },
      ]);
      const fs = fc.by_source;
      draw("chart-forecast-source", "bar", fs.map((r) => label("channels", r.source)), [
        { label: `Weighted, ${fc.currency}`, data: fs.map((r) => +r.weighted) },
        { label: `Commit, ${fc.currency}`, data: fs.map((r) => +r.commit) },
      ]);
      const acc = accuracy.results;
      draw("chart-accuracy", "bar", acc.map((r) => `${r.month} (forecast of ${r.forecast_taken_on})`), [
        { label: `Weighted forecast, ${accuracy.currency}`, data: acc.map((r) => +r.weighted) },
        { label: `Commit forecast, ${accuracy.currency}`, data: acc.map((r) => +r.commit) },
        { label: `Won, ${accuracy.currency}`, data: acc.map((r) => +r.actual) },
      ]);
      const ws = pipeline.win_rate_by_source;
      draw("chart-source", "bar", ws.map((r) => label("channels", r.source)), [
        { label: `Average won deal, ${pipeline.currency}`, data: ws.map((r) => (r.average_deal_size === null ? null : +r.average_deal_size)), yAxisID: "y" },
        { label: "Win rate, %", data: ws.map((r) => Math.round(r.win_rate * 1000) / 10), yAxisID: "y1" },
      ], { scales: { y: { position: "left" }, y1: { position: "right", min: 0, max: 100, grid: { drawOnChartArea: false } } } });
      document.getElementById("att-velocity").textContent =
        pipeline.velocity_days === null ? "no won deals yet" : `${pipeline.velocity_days} days from creation to close won`;
      status.textContent = "";
      document.body.setAttribute("data-attribution-loaded", "1");
    } catch (err) {
      status.textContent = `Could not load: ${err.message}`;
    }
  }

  document.getElementById("att-filters").addEventListener("submit", load);
  load();
})();
