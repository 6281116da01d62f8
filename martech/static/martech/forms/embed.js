/* Embedded capture forms: fill in what only the visitor's browser knows.
   The form works without this script (it is a plain HTML post); with it the
   submission carries the page address (kept with the consent), an id that
   makes a double click one submission, the landing page's UTMs, and the
   website tracker's anonymous id when the tracker is on the page. */
(function () {
  "use strict";
  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return "xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0; return (c === "x" ? r : (r & 0x3 | 0x8)).toString(16);
    });
  }
  function hidden(form, name, value) {
    var input = form.querySelector("input[name=" + name + "]");
    if (!input) {
      input = document.createElement("input");
      input.type = "hidden"; input.name = name; input.value = value;
      form.appendChild(input);
    }
    return input;
  }
  function prepare(form) {
    var page = form.querySelector("input[name=page_url]");
    if (page && !page.value) page.value = window.location.href.slice(0, 2000);
    var id = form.querySelector("input[name=submission_id]");
    if (id && !id.value) id.value = uuid();
    var params = new URLSearchParams(window.location.search);
    ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"].forEach(function (name) {
      if (params.get(name)) hidden(form, name, params.get(name));
    });
    // The site's tracker, when it is on the page, fills this with the
    // visitor's anonymous id on submit, so the earlier page views join the lead.
    hidden(form, "anonymous_id", "");
  }
  function remember(event) {
    var form = event.target;
    if (!form || !form.matches || !form.matches("form[data-martech-form]")) return;
    var anon = form.querySelector("input[name=anonymous_id]");
    if (anon && !anon.value && window.martech && window.martech.anonymousId) anon.value = window.martech.anonymousId() || "";
  }
  document.addEventListener("submit", remember, true);
  function run() {
    Array.prototype.forEach.call(document.querySelectorAll("form[data-martech-form]"), prepare);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
  else run();
})();
