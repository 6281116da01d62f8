// The email template editor's live preview and "send a test to me": posts
// the editor's unsaved fields and the chosen lead to the admin's JSON views.
"use strict";
(function () {
  function ready(fn) {
    if (document.readyState !== "loading") { fn(); } else { document.addEventListener("DOMContentLoaded", fn); }
  }
  ready(function () {
    var box = document.getElementById("template-preview");
    if (!box) { return; }
    var form = box.closest("form");
    var fields = { subject: "id_subject", preheader: "id_preheader", html_body: "id_html_body", text_body: "id_text_body" };
    var lead = document.getElementById("id_preview_lead");
    var errors = document.getElementById("preview-errors");

    function payload() {
      var data = new FormData();
      data.append("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
      Object.keys(fields).forEach(function (name) {
        var el = document.getElementById(fields[name]);
        data.append(name, el ? el.value : "");
      });
      data.append("lead", lead ? lead.value : "");
      data.append("template", box.dataset.template || "");
      return data;
    }

    function showErrors(map) {
      errors.textContent = "";
      Object.keys(map || {}).forEach(function (field) {
        map[field].forEach(function (msg) {
          var li = document.createElement("li");
          li.textContent = (field === "__all__" ? "" : field.replace("_", " ") + ": ") + msg;
          errors.appendChild(li);
        });
      });
      errors.hidden = !errors.children.length;
    }

    var seq = 0;
    function refresh() {
      var mine = ++seq;
      fetch(box.dataset.previewUrl, { method: "POST", body: payload(), credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          if (mine !== seq) { return; } // a later edit's answer wins
          showErrors(data.errors);
          if (data.errors) { return; }
          document.getElementById("preview-subject").textContent = data.subject;
          document.getElementById("preview-preheader").textContent = data.preheader;
          document.getElementById("preview-html").srcdoc = data.html;
          document.getElementById("preview-text").textContent = data.text;
        })
        .catch(function (e) { showErrors({ __all__: ["The preview failed: " + e] }); });
    }

    var timer = null;
    function later() { clearTimeout(timer); timer = setTimeout(refresh, 300); }
    Object.keys(fields).forEach(function (name) {
      var el = document.getElementById(fields[name]);
      if (el) { el.addEventListener("input", later); }
    });
    if (lead) {
      lead.addEventListener("change", refresh);
      // The admin's autocomplete (select2) announces a choice through jQuery.
      if (window.django && window.django.jQuery) { window.django.jQuery(lead).on("change", refresh); }
    }

    var send = document.getElementById("send-test");
    if (send) {
      send.addEventListener("click", function () {
        var out = document.getElementById("send-test-result");
        out.textContent = "Sending…";
        send.disabled = true;
        fetch(box.dataset.sendTestUrl, { method: "POST", body: payload(), credentials: "same-origin" })
          .then(function (r) { return r.json(); })
          .then(function (data) {
            showErrors(data.errors);
            out.textContent = data.errors ? "Not sent." : data.message;
          })
          .catch(function (e) { out.textContent = "Not sent: " + e; })
          .then(function () { send.disabled = false; });
      });
    }
    refresh();
  });
})();
