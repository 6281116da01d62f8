"use strict";
// Charts for the attribution dashboard, fed by the public report API.
(function () {
  const charts = {};
  const status = document.getElementById("att-status");

  async function get(path, params) {
    const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
    const resp = await fetch(`/api/v1/attribution/${path}?${q}`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await resp.json();
    if (!resp.ok) throw new Error(body.error ? body.error.message : resp.statusText);
    return body.results;
  }

  function draw(id, type, labels, datasets) {
    if (charts[id]) charts[id].destroy();
    charts[id] = new Chart(document.getElementById(id), { type, data: { labels, datasets }, options: { responsive: true } });
  }

  async function load(event) {
    if (event) event.preventDefault();
    const f = new FormData(document.getElementById("att-filters"));
    const p = { model: f.get("model"), start: f.get("start"), end: f.get("end") };
    status.textContent = "Loading…";
    try {
      const [byChannel, byCampaign, byMonth, compare] = await Promise.all([
        get("report", { ...p, group_by: "channel" }),
        get("report", { ...p, group_by: "campaign" }),
        get("report", { ...p, group_by: "month" }),
        get("compare", { group_by: "channel", start: p.start, end: p.end }),
      ]);
      draw("chart-channel", "bar", byChannel.map((r) => r.group), [{ label: "Revenue", data: byChannel.map((r) => +r.attributed_revenue) }]);
      const models = compare.length ? Object.keys(compare[0].revenue) : [];
      draw("chart-compare", "bar", compare.map((r) => r.group), models.map((m) => ({ label: m, data: compare.map((r) => +r.revenue[m]) })));
      draw("chart-spend", "bar", byCampaign.map((r) => r.group), [
        { label: "Spend", data: byCampaign.map((r) => +(r.spend || 0)) },
        { label: "Attributed revenue", data: byCampaign.map((r) => +r.attributed_revenue) },
      ]);
      draw("chart-month", "line", byMonth.map((r) => r.group), [
        { label: "Revenue", data: byMonth.map((r) => +r.attributed_revenue) },
        { label: "Pipeline", data: byMonth.map((r) => +r.attributed_pipeline) },
      ]);
      status.textContent = "";
    } catch (err) {
      status.textContent = `Could not load: ${err.message}`;
    }
  }

  document.getElementById("att-filters").addEventListener("submit", load);
  load();
})();
