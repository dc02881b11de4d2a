// pyapply dashboard: live updates without a reload. The agent's /events stream says that a
// pass finished or a container changed; the page then fetches its own fragment (the inside
// of <main>, rendered and escaped by the server) and swaps it in. Log pages append the
// lines their stream sends, as text. No inline script anywhere: the CSP forbids it.
(function () {
  "use strict";
  var main = document.getElementById("content");
  var live = document.getElementById("live");
  if (!main || !window.EventSource || !window.fetch) { return; }

  function say(text) { if (live) { live.textContent = text; } }

  function fragmentUrl() {
    var q = window.location.search;
    return window.location.pathname + (q ? q + "&" : "?") + "fragment=1";
  }

  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var focused = document.activeElement && document.activeElement.id;
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (typeof html === "string") {
          main.innerHTML = html;
          if (focused) {
            var again_el = document.getElementById(focused);
            if (again_el) { again_el.focus(); }
          }
          say("live updates: on (updated " + new Date().toLocaleTimeString() + ")");
        }
      })
      .catch(function () { say("live updates: update failed, retrying"); })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  var mode = main.getAttribute("data-live");
  if (mode === "page") {
    // the change count the page was rendered at: a change between the render and the
    // stream's start is caught up on at once (the stream's hello says where it is)
    var seen = main.getAttribute("data-seq");
    var source = new EventSource(main.getAttribute("data-events") || "/events");
    source.addEventListener("hello", function (ev) {
      if (ev.data !== seen) { seen = ev.data; refresh(); }
    });
    source.addEventListener("change", function (ev) { seen = ev.data; refresh(); });
    source.onopen = function () { say("live updates: on"); };
    source.onerror = function () { say("live updates: reconnecting"); };
  }

  // log pages: one stream per replica, appended as text, the last data-limit lines kept
  var logs = document.querySelectorAll("pre[data-stream]");
  Array.prototype.forEach.call(logs, function (pre) {
    var limit = parseInt(pre.getAttribute("data-limit"), 10) || 500;
    var stream = new EventSource(pre.getAttribute("data-stream"));
    // the stream starts with the whole tail (again after a reconnect): what the page shows
    stream.addEventListener("reset", function (ev) {
      var lines;
      try { lines = JSON.parse(ev.data); } catch (e) { return; }
      pre.textContent = lines.length ? lines.join("\n") + "\n" : "";
      pre.scrollTop = pre.scrollHeight;
    });
    stream.addEventListener("lines", function (ev) {
      var lines;
      try { lines = JSON.parse(ev.data); } catch (e) { return; }
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      lines.forEach(function (line) { pre.appendChild(document.createTextNode(line + "\n")); });
      var all = pre.textContent.split("\n");
      if (all.length > limit + 1) { pre.textContent = all.slice(all.length - limit - 1).join("\n"); }
      if (atEnd) { pre.scrollTop = pre.scrollHeight; }
    });
    stream.onopen = function () { say("following the logs"); };
    stream.onerror = function () { say("logs: reconnecting"); };
  });
}());
