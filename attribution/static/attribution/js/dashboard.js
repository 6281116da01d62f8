"use strict";
// Charts for the attribution dashboard, fed by the public report API (the
// same endpoints and JSON external dashboards read). Each chart is kept in
// window.attributionCharts by canvas id, and <body data-attribution-loaded>
// is set once all are drawn, so a browser test can read back what was plotted.
(function () {
  const charts = {};
  window.attributionCharts = charts;
  const status = document.getElementById("att-status");

  async function get(path, params) {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
    const resp = await fetch(`/api/v1/attribution/${path}?${q}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    return body;
  }

  function draw(id, type, labels, datasets, options) {
    if (charts[id]) charts[id].destroy();
    charts[id] = new Chart(document.getElementById(id), {
      type, data: { labels, datasets }, options: { responsive: true, animation: false, ...(options || {}) },
    });
  }

  async function load(event) {
    if (event) event.preventDefault();
    document.body.removeAttribute("data-attribution-loaded");
    const f = new FormData(document.getElementById("att-filters"));
    const p = { model: f.get("model"), start: f.get("start"), end: f.get("end") };
    status.textContent = "Loading…";
    try {
      const [byChannel, byCampaign, byMonth, compare, pipeline] = await Promise.all([
        get("report", { ...p, group_by: "channel" }),
        get("report", { ...p, group_by: "campaign" }),
        get("report", { ...p, group_by: "month" }),
        get("compare", { group_by: "channel", start: p.start, end: p.end }),
        get("pipeline", { start: p.start, end: p.end }),
      ]);
      const ch = byChannel.results;
      draw("chart-channel", "bar", ch.map((r) => r.group), [{ label: `Revenue (${p.model})`, data: ch.map((r) => +r.attributed_revenue) }]);
      const cmp = compare.results;
      const models = cmp.length ? Object.keys(cmp[0].revenue) : [];
      draw("chart-compare", "bar", cmp.map((r) => r.group), models.map((m) => ({ label: m, data: cmp.map((r) => +r.revenue[m]) })));
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
      draw("chart-funnel", "bar", funnel.map((r) => r.stage), [{ label: "Leads that reached the stage", data: funnel.map((r) => r.reached) }],
        { indexAxis: "y" });
      const st = pipeline.stages;
      draw("chart-velocity", "bar", st.map((r) => r.stage), [
        { label: "Average days in stage", data: st.map((r) => r.average_days) },
        { label: "Median days in stage", data: st.map((r) => r.median_days) },
      ]);
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
