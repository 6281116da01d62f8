/* Website tracker (plain ES5, no build step).
 *
 * Included by the snippet shown on a Website's admin page:
 *   <script async src=".../static/martech/tracker.js" data-key="pk_..."
 *           data-endpoint=".../api/v1/t" data-respect-privacy="1"></script>
 *
 * - keeps a first-party anonymous id in a cookie (_mt_aid, one year) with a
 *   localStorage copy, and fills <input name="anonymous_id"> in the page's forms;
 * - sends a page view on load; martech.page(), martech.track(event, properties),
 *   martech.identify(userIdOrEmail, traits) queue more;
 * - sends the queue in batches (text/plain JSON, so the browser needs no
 *   preflight): a keepalive fetch shortly after calls, navigator.sendBeacon
 *   when the page is hidden or left;
 * - with data-respect-privacy="1" and Do Not Track or Global Privacy Control
 *   on, does nothing at all: no cookie, no storage, no request.
 */
(function (window, document) {
  "use strict";

  var VERSION = "1";
  var COOKIE = "_mt_aid";
  var USER_KEY = "_mt_uid";
  var FLUSH_DELAY_MS = 1000;
  var MAX_BATCH = 20; // the endpoint takes at most 50 per request
  var YEAR_S = 365 * 24 * 3600;

  var script = document.currentScript || (function () {
    var found = document.querySelectorAll("script[data-key][data-endpoint]");
    return found[found.length - 1];
  })();
  if (!script) { return; }
  var key = script.getAttribute("data-key");
  var endpoint = script.getAttribute("data-endpoint");
  var cookieDomain = script.getAttribute("data-cookie-domain");
  var queued = window.martech && typeof window.martech.length === "number" ? window.martech : [];
  if (window.martech && window.martech.loaded) { return; } // included twice

  function privacySignal() {
    var nav = window.navigator || {};
    return nav.doNotTrack === "1" || window.doNotTrack === "1" || nav.globalPrivacyControl === true;
  }

  if (!key || !endpoint || (script.getAttribute("data-respect-privacy") === "1" && privacySignal())) {
    // Calls made by the page still work; they do nothing.
    var noop = function () {};
    window.martech = { loaded: true, disabled: true, page: noop, track: noop, identify: noop, flush: noop,
      anonymousId: function () { return null; } };
    return;
  }

  function uuid() {
    var c = window.crypto;
    if (c && c.randomUUID) { return c.randomUUID(); }
    var b = new Uint8Array(16);
    if (c && c.getRandomValues) { c.getRandomValues(b); } else {
      for (var i = 0; i < 16; i++) { b[i] = Math.floor(Math.random() * 256); }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = "";
    for (var j = 0; j < 16; j++) {
      h += (b[j] + 0x100).toString(16).slice(1);
      if (j === 3 || j === 5 || j === 7 || j === 9) { h += "-"; }
    }
    return h;
  }

  function storageGet(name) {
    try { return window.localStorage.getItem(name); } catch (e) { return null; }
  }
  function storageSet(name, value) {
    try { window.localStorage.setItem(name, value); } catch (e) { /* private mode, disabled storage */ }
  }
  function cookieGet(name) {
    var parts = document.cookie ? document.cookie.split("; ") : [];
    for (var i = 0; i < parts.length; i++) {
      var eq = parts[i].indexOf("=");
      if (parts[i].slice(0, eq) === name) { return decodeURIComponent(parts[i].slice(eq + 1)); }
    }
    return null;
  }
  function cookieSet(name, value) {
    var c = name + "=" + encodeURIComponent(value) + "; path=/; max-age=" + YEAR_S + "; SameSite=Lax";
    if (cookieDomain) { c += "; domain=" + cookieDomain; }
    if (window.location.protocol === "https:") { c += "; Secure"; }
    document.cookie = c;
  }

  var anonymousId = cookieGet(COOKIE) || storageGet(COOKIE) || uuid();
  cookieSet(COOKIE, anonymousId); // renews the year on every visit
  storageSet(COOKIE, anonymousId);
  var userId = storageGet(USER_KEY);

  function utm(url) {
    var out = {};
    var names = { utm_source: "source", utm_medium: "medium", utm_campaign: "name", utm_term: "term", utm_content: "content" };
    var query = (url.split("#")[0].split("?")[1] || "").split("&");
    for (var i = 0; i < query.length; i++) {
      var kv = query[i].split("=");
      var name = names[decodeURIComponent(kv[0] || "")];
      if (name && kv[1]) {
        try { out[name] = decodeURIComponent(kv[1].replace(/\+/g, " ")); } catch (e) { out[name] = kv[1]; }
      }
    }
    return out;
  }

  function pageInfo() {
    var loc = window.location;
    return { url: loc.href, path: loc.pathname, search: loc.search, referrer: document.referrer || "", title: document.title || "" };
  }

  function context() {
    var page = pageInfo();
    var ctx = { page: page, library: { name: "martech-tracker", version: VERSION },
      locale: (window.navigator && window.navigator.language) || "" };
    var campaign = utm(page.url);
    for (var k in campaign) { if (campaign.hasOwnProperty(k)) { ctx.campaign = campaign; break; } }
    return ctx;
  }

  var queue = [];
  var timer = null;

  function enqueue(item) {
    item.messageId = uuid();
    item.anonymousId = anonymousId;
    if (userId) { item.userId = userId; }
    item.timestamp = new Date().toISOString();
    item.context = context();
    queue.push(item);
    if (queue.length >= MAX_BATCH) { flush(false); } else if (!timer) { timer = setTimeout(function () { flush(false); }, FLUSH_DELAY_MS); }
  }

  function flush(leaving) {
    if (timer) { clearTimeout(timer); timer = null; }
    while (queue.length) {
      var body = JSON.stringify({ key: key, sentAt: new Date().toISOString(), batch: queue.splice(0, MAX_BATCH) });
      send(body, leaving);
    }
  }

  function send(body, leaving) {
    var nav = window.navigator;
    if (leaving && nav.sendBeacon && nav.sendBeacon(endpoint, body)) { return; } // a string is sent as text/plain
    if (window.fetch) {
      window.fetch(endpoint, { method: "POST", body: body, keepalive: true, credentials: "omit", mode: "cors",
        headers: { "Content-Type": "text/plain" } })["catch"](function () {});
      return;
    }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", endpoint, true);
    xhr.setRequestHeader("Content-Type", "text/plain");
    xhr.send(body);
  }

  function copy(obj) {
    var out = {};
    if (obj && typeof obj === "object") { for (var k in obj) { if (obj.hasOwnProperty(k)) { out[k] = obj[k]; } } }
    return out;
  }

  function page(name, properties) {
    if (typeof name === "object" && name !== null) { properties = name; name = null; }
    var props = copy(pageInfo());
    var extra = copy(properties);
    for (var k in extra) { if (extra.hasOwnProperty(k)) { props[k] = extra[k]; } }
    enqueue({ type: "page", name: name || document.title || "", properties: props });
  }

  function track(event, properties) {
    if (!event) { return; }
    enqueue({ type: "track", event: String(event), properties: copy(properties) });
  }

  function identify(userIdOrEmail, traits) {
    if (typeof userIdOrEmail === "object" && userIdOrEmail !== null) { traits = userIdOrEmail; userIdOrEmail = null; }
    var t = copy(traits);
    if (userIdOrEmail) {
      var value = String(userIdOrEmail);
      if (value.indexOf("@") > 0) { t.email = value; } else { userId = value; storageSet(USER_KEY, value); }
    }
    enqueue({ type: "identify", traits: t });
  }

  function fillForms(root) {
    var inputs = (root || document).querySelectorAll('input[name="anonymous_id"]');
    for (var i = 0; i < inputs.length; i++) { if (!inputs[i].value) { inputs[i].value = anonymousId; } }
  }

  var api = { loaded: true, page: page, track: track, identify: identify, flush: function () { flush(false); },
    anonymousId: function () { return anonymousId; }, VERSION: VERSION };
  window.martech = api;

  // Forms present now, added later, or filled in just before they are sent.
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () { fillForms(); });
  } else { fillForms(); }
  document.addEventListener("submit", function (e) { if (e.target && e.target.querySelectorAll) { fillForms(e.target); } }, true);

  document.addEventListener("visibilitychange", function () { if (document.visibilityState === "hidden") { flush(true); } });
  window.addEventListener("pagehide", function () { flush(true); });

  // Calls the page made before this script loaded (the snippet's queue).
  var hadPage = false;
  for (var q = 0; q < queued.length; q++) {
    var call = queued[q];
    if (call && api[call[0]]) {
      if (call[0] === "page") { hadPage = true; }
      api[call[0]].apply(null, call.slice(1));
    }
  }
  if (!hadPage) { page(); }
})(window, document);
